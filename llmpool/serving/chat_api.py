"""OpenAI's Chat Completions (POST /v1/chat/completions) as a serving API (SPEC §3).

- request: system/developer messages become `instructions` (joined with a blank line),
  the rest the conversation, which must end with a user message. A message's `name` is
  a 400 where it would not reach the model (`refuse_names`). A single remaining turn
  goes to a model without multi-turn support as `input`, so single-turn runtimes serve
  plain chat too. `max_completion_tokens` wins over `max_tokens`; omitted decoding fields
  come from `engine.decoding`; `response_format` asks for structured output
  (llmpool.serving.formats); `reasoning_effort` maps onto `thinking` as /v1/responses'
  `reasoning.effort` does. n > 1, logprobs and OpenAI's penalties are a 400 naming
  the field (refused by the request schema, before this module sees the body).
- JSON: a `chat.completion` with `usage` (null counts where the backend does not know
  them) and the pool's `metrics` under a key clients ignore.
- stream: a role chunk, one chunk per delta (`content`, or `reasoning_content`), a chunk
  with the finish_reason (and `metrics`), a usage chunk when
  `stream_options.include_usage`, then `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from llmpool.errors import InvalidParam
from llmpool.generation import GenerationRequest, ToolCallDelta
from llmpool.job import Delta, Done, Job
from llmpool.pool import Pool
from llmpool.serving import formats, tool_use
from llmpool.serving.api import Api, Call, Encoder
from llmpool.serving.messages import SYSTEM_ROLES, split_system
from llmpool.serving.openai_common import SAMPLING_KEYS, OpenAIChunks, finish_reason, usage
from llmpool.serving.responses_request import EFFORT_THINKING
from llmpool.serving.sse import Template


def completion_id(job: Job) -> str:
    # The job's own hex id, so logs and metrics of every API name a request the same way.
    return "chatcmpl-" + job.id.removeprefix("resp_")


def completion(job: Job, done: Done) -> dict[str, Any]:
    # OpenAI's content is null on an answer that is tool calls only.
    content = done.output_text if done.output_text or not done.tool_calls else None
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if done.reasoning_text:
        message["reasoning_content"] = done.reasoning_text
    if done.tool_calls:
        message["tool_calls"] = [call.openai() for call in done.tool_calls]
    return {
        "id": completion_id(job),
        "object": "chat.completion",
        "created": job.created,
        "model": job.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(done)}],
        "usage": usage(done.final),
        "metrics": job.metrics(done.final),
    }


def refuse_names(body: dict[str, Any], pool: Pool) -> None:
    """A 400 naming the first message whose `name` would not reach the model: a system or
    developer message's (its text joins the instructions), or any on a model without
    Capabilities.message_names. A tool result may name the function of the call it
    answers (as many clients send it): that says nothing its call id does not."""
    entry = pool.entry(body["model"])
    called: dict[str, str] = {}  # call id -> function name, from the assistant turns so far
    for index, message in enumerate(body["messages"]):
        for call in message["tool_calls"] or ():
            called[call["id"]] = call["function"]["name"]
        if message["name"] is None:
            continue
        if message["role"] == "tool" and called.get(message["tool_call_id"]) == message["name"]:
            continue
        param = f"messages.{index}.name"
        if message["role"] in SYSTEM_ROLES:
            raise InvalidParam(param, f"{param}: a {message['role']} message has no name here; leave it out")
        if not entry.capabilities.message_names:
            where = f"model '{entry.name}' (backend '{entry.spec.backend}'), whose prompt the pool renders"
            raise InvalidParam(param, f"{param}: message names are not supported by {where}; leave it out")


class ChatApi(Api):
    name = "chat.completions"

    def to_request(self, body: dict[str, Any], pool: Pool) -> GenerationRequest:
        if any(m["name"] is not None for m in body["messages"]):
            refuse_names(body, pool)
        system, turns = split_system(body["messages"], "messages", lambda index: f"messages.{index}.content")
        single_turn = len(turns) == 1 and not pool.entry(body["model"]).capabilities.multi_turn
        max_tokens = body["max_completion_tokens"] or body["max_tokens"]
        decoding = {k: body[k] for k in SAMPLING_KEYS}
        return GenerationRequest(
            input=turns[0].content if single_turn else None,
            messages=None if single_turn else tuple(turns),
            instructions="\n\n".join(system) if system else None,
            thinking=EFFORT_THINKING.get(body["reasoning_effort"] or "", "default"),
            decoding=pool.settings.decoding.requested({**decoding, "max_tokens": max_tokens}),
            output_format=formats.from_response_format(body["response_format"]),
            tools=tool_use.from_chat(body),
        )

    def answer(self, call: Call, done: Done) -> dict[str, Any]:
        return completion(call.job, done)

    def encoder(self, call: Call) -> Encoder:
        return ChatChunks(call.job, call.body)


class ChatChunks(OpenAIChunks):
    def __init__(self, job: Job, body: dict[str, Any]) -> None:
        head = {"id": completion_id(job), "object": "chat.completion.chunk", "created": job.created}
        super().__init__(job, body, {**head, "model": job.model})
        # The two deltas nearly every event is, rendered once; the rest goes through delta().
        self._content = Template(lambda text: self.chunk(self._choice({"content": text})), 1)
        self._reasoning = Template(lambda text: self.chunk(self._choice({"reasoning_content": text})), 1)

    @staticmethod
    def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def open(self) -> Iterator[str]:
        yield self.chunk(self._choice({"role": "assistant", "content": ""}))

    def delta(self, delta: Delta) -> Iterable[str]:
        if delta.tool_call is None:
            if not delta.reasoning:
                return (self._content.fill_text(delta.text),) if delta.text else ()
            if not delta.text:
                return (self._reasoning.fill_text(delta.reasoning),)
        return self._chunks(delta)

    def _chunks(self, delta: Delta) -> Iterator[str]:
        out: dict[str, Any] = {}
        if delta.reasoning:
            out["reasoning_content"] = delta.reasoning
        if delta.text:
            out["content"] = delta.text
        if delta.tool_call is not None:
            out["tool_calls"] = [_tool_call_delta(delta.tool_call)]
        if out:
            yield self.chunk(self._choice(out))

    def done(self, done: Done) -> Iterator[str]:
        return self.finish(self._choice({}, finish_reason(done)), done)


def _tool_call_delta(piece: ToolCallDelta) -> dict[str, Any]:
    """As OpenAI streams a call: index, id, type and the function's name first (with empty
    arguments), then argument text under the same index."""
    if piece.id is not None:
        function = {"name": piece.name, "arguments": piece.arguments}
        return {"index": piece.index, "id": piece.id, "type": "function", "function": function}
    return {"index": piece.index, "function": {"arguments": piece.arguments}}
