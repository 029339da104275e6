"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) as serving APIs.

The request mapping is `anthropic_request`. The answer is a `message`: its content blocks
in the order the model produced them (thinking, text, tool_use), a `stop_reason`
(`end_turn`, `max_tokens`, `stop_sequence` with the sequence where the runtime names it,
`tool_use`) and usage (null counts where the runtime does not know them).

The stream is Anthropic's event sequence: `message_start`; per block
`content_block_start`, its deltas (`text_delta`, `thinking_delta`, `input_json_delta`)
and `content_block_stop`; `message_delta` with the stop reason and usage; `message_stop`.
A failure after the stream began is an `error` event. Between events the pipeline's
comment lines keep proxies awake; SSE clients skip them.

`thinking.display: omitted` keeps the thinking blocks but not their text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from llmpool.errors import InvalidParam, PoolError
from llmpool.generation import GenerationRequest, ToolCall, ToolCallDelta
from llmpool.job import Delta, Done, Job
from llmpool.pool import Pool
from llmpool.serving.anthropic_request import to_generation_request
from llmpool.serving.api import Api, Call, Encoder
from llmpool.serving.sse import frame

# Error `type` by status, as Anthropic's API assigns them.
_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error_body(status: int, code: str | None, message: str) -> dict[str, Any]:
    """Anthropic's `{"type": "error", "error": {type, message}}`, with the pool's own code
    beside them (clients read `type` and `message`)."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message, "code": code}}


def message_id(job: Job) -> str:
    return "msg_" + job.id.removeprefix("resp_")


def stop_fields(done: Done) -> dict[str, str | None]:
    """`stop_reason` and `stop_sequence`, as both the message and its stream's
    message_delta carry them."""
    sequence = done.final.stop_sequence if done.final is not None else None
    if done.finish_reason == "tool_calls":
        reason = "tool_use"
    elif done.finish_reason == "length":
        reason = "max_tokens"
    else:
        reason = "stop_sequence" if sequence else "end_turn"
    return {"stop_reason": reason, "stop_sequence": sequence}


def usage(done: Done) -> dict[str, Any]:
    final = done.final
    return {
        "input_tokens": final.prompt_tokens if final else None,
        "output_tokens": final.output_tokens if final else None,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None,
    }


def tool_input(call: ToolCall) -> Any:
    # Checked against the tool's schema before the job finished: it is a JSON object.
    return json.loads(call.arguments) if call.arguments.strip() else {}


def _shows_thinking(body: dict[str, Any]) -> bool:
    return ((body["thinking"] or {}).get("display") or "summarized") != "omitted"


def _thinking_block(text: str) -> dict[str, Any]:
    # The signature proves Anthropic's thoughts unaltered; the pool's have none to prove.
    return {"type": "thinking", "thinking": text, "signature": ""}


class MessagesApi(Api):
    name = "messages"

    def to_request(self, body: dict[str, Any], pool: Pool) -> GenerationRequest:
        return to_generation_request(body, pool)

    def answer(self, call: Call, done: Done) -> dict[str, Any]:
        job = call.job
        content: list[dict[str, Any]] = []
        if done.reasoning_text:
            content.append(_thinking_block(done.reasoning_text if _shows_thinking(call.body) else ""))
        if done.output_text:
            content.append({"type": "text", "text": done.output_text})
        for tool_call in done.tool_calls:
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_call.id,
                    "name": tool_call.name,
                    "input": tool_input(tool_call),
                }
            )
        return {
            "id": message_id(job),
            "type": "message",
            "role": "assistant",
            "model": job.model,
            "content": content,
            **stop_fields(done),
            "usage": usage(done),
            "metrics": job.metrics(done.final),
        }

    def encoder(self, call: Call) -> Encoder:
        return MessageEvents(call.job, _shows_thinking(call.body))


class CountTokensApi(Api):
    """count_tokens: the model's runtime renders the prompt exactly as for an answer (chat
    template, tools, thinking) and reads it; its length is the count. One token is
    sampled on the way, so the count waits in the model's line like any request."""

    name = "messages.count_tokens"

    def to_request(self, body: dict[str, Any], pool: Pool) -> GenerationRequest:
        return to_generation_request(body, pool, count_only=True)

    def answer(self, call: Call, done: Done) -> dict[str, Any]:
        tokens = done.final.prompt_tokens if done.final else None
        if tokens is None:
            raise InvalidParam(
                "model", f"The runtime of '{call.job.model}' does not say how long a prompt is."
            )
        return {"input_tokens": tokens}

    def encoder(self, call: Call) -> Encoder:
        raise NotImplementedError("count_tokens does not stream")


class MessageEvents(Encoder):
    """One message's stream. Blocks open as their first delta arrives: a delta of another
    kind than the open block's (thoughts, text, or a new tool call) closes it first."""

    def __init__(self, job: Job, show_thinking: bool) -> None:
        self.job = job
        self.show_thinking = show_thinking
        self.index = -1  # of the open block
        self.open_kind: str | None = None  # "thinking" | "text" | "tool_use"

    @staticmethod
    def event(name: str, **data: Any) -> str:
        return frame(name, {"type": name, **data})

    def open(self) -> Iterator[str]:
        job = self.job
        message: dict[str, Any] = {
            "id": message_id(job),
            "type": "message",
            "role": "assistant",
            "model": job.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": None, "output_tokens": 0},
        }
        yield self.event("message_start", message=message)

    def _block(self, kind: str, block: dict[str, Any]) -> Iterator[str]:
        yield from self._close()
        self.index += 1
        self.open_kind = kind
        yield self.event("content_block_start", index=self.index, content_block=block)

    def _close(self) -> Iterator[str]:
        if self.open_kind is not None:
            yield self.event("content_block_stop", index=self.index)
            self.open_kind = None

    def _delta(self, delta: dict[str, Any]) -> str:
        return self.event("content_block_delta", index=self.index, delta=delta)

    def delta(self, delta: Delta) -> Iterator[str]:
        if delta.reasoning:
            if self.open_kind != "thinking":
                yield from self._block("thinking", _thinking_block(""))
            if self.show_thinking:
                yield self._delta({"type": "thinking_delta", "thinking": delta.reasoning})
        if delta.text:
            if self.open_kind != "text":
                yield from self._block("text", {"type": "text", "text": ""})
            yield self._delta({"type": "text_delta", "text": delta.text})
        if delta.tool_call is not None:
            yield from self._tool_call(delta.tool_call)

    def _tool_call(self, piece: ToolCallDelta) -> Iterator[str]:
        if piece.id is not None:
            block: dict[str, Any] = {"type": "tool_use", "id": piece.id, "name": piece.name, "input": {}}
            yield from self._block("tool_use", block)
        if piece.arguments:
            yield self._delta({"type": "input_json_delta", "partial_json": piece.arguments})

    def done(self, done: Done) -> Iterator[str]:
        yield from self._close()
        metrics = self.job.metrics(done.final)
        yield self.event("message_delta", delta=stop_fields(done), usage=usage(done), metrics=metrics)
        yield self.event("message_stop")

    def failed(self, error: PoolError) -> str:
        return frame("error", anthropic_error_body(error.status, error.code, error.message))
