"""OpenAI-compatible surface: POST /v1/chat/completions (SPEC §3).

The same engine path as POST /v1/responses (Pool.submit: admission, scheduler, metrics,
cancellation); only the request mapping and the response shapes differ:

- request: OpenAI's chat body. system/developer messages become `instructions` (joined
  with a blank line), the rest the conversation, which must end with a user message.
  `max_completion_tokens` wins over `max_tokens`; omitted decoding fields come from
  `engine.decoding`. n > 1, tools, logprobs and structured output are refused with a 400.
  Remote models need `X-LLM-Pool-Allow-Remote: true` or a body field `allow_remote: true`.
- JSON: a `chat.completion` object with `usage` (null counts where the backend does not
  know them) plus the pool's `metrics` under a non-standard key that clients ignore.
- stream: `data: <chat.completion.chunk>` lines: a role chunk, one chunk per backend delta
  (`content`, or `reasoning_content`), a chunk with the finish_reason (and `metrics`),
  with `stream_options.include_usage` a usage chunk with `choices: []`, then
  `data: [DONE]`. `: queued N` comments while the job waits. A failure after the stream
  began is a `data: {"error": ...}` line and the stream ends without [DONE].
- errors: OpenAI's {"error": {message, type, param, code}}, same statuses as elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request
from marshmallow import Schema

from blueprints.body import json_body
from blueprints.errors import (
    InvalidParam,
    openai_error_body,
    openai_pool_error,
)
from blueprints.messages import split_system
from blueprints.observe import note_job, note_model
from blueprints.responses import pool, wait_for_result
from blueprints.schemas import ChatCompletionsRequestSchema
from blueprints.sse import cancel_on_close, client_socket, data_line, job_events, sse_response
from llmpool.generation import Final, GenerationRequest
from llmpool.job import Delta, Done, Failed, Job
from llmpool.pool import Pool

bp = Blueprint("openai_compat", __name__)
# One instance each: building a schema deep-copies its fields (measurable per request).
CHAT_SCHEMA = ChatCompletionsRequestSchema()

ALLOW_REMOTE_HEADER = "X-LLM-Pool-Allow-Remote"


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    return serve(CHAT_SCHEMA, refuse_unsupported, to_generation_request, stream_chat, completion)


def serve(
    schema: Schema,
    refuse: Callable[[dict[str, Any]], None],
    to_request: Callable[[dict[str, Any], Pool], GenerationRequest],
    stream: Callable[[Pool, Job, bool], Iterator[str]],
    answer: Callable[[Job, Done], dict[str, Any]],
) -> Response:
    """One OpenAI-style route (chat and legacy completions): parse, refuse what cannot be
    honoured, submit, then a JSON answer or a stream."""
    started = time.monotonic()
    body = schema.load(json_body())
    note_model(body["model"])
    refuse(body)
    p = pool()
    allow_remote = (
        bool(body["allow_remote"]) or request.headers.get(ALLOW_REMOTE_HEADER, "").lower() == "true"
    )
    job = p.submit(body["model"], to_request(body, p), allow_remote=allow_remote, pool_started=started)
    note_job(job)
    if body["stream"]:
        include_usage = bool((body["stream_options"] or {}).get("include_usage"))
        return sse_response(stream(p, job, include_usage))
    return jsonify(answer(job, wait_for_result(p, job)))


# -- request ---------------------------------------------------------------------------
def refuse_unsupported(body: dict[str, Any]) -> None:
    """400 for OpenAI features the pool cannot honour; dropping them would change the answer."""
    if body["n"] not in (None, 1):
        raise InvalidParam("n", "Only n=1 is supported.")
    if body["tools"] or body["functions"]:
        param = "tools" if body["tools"] else "functions"
        raise InvalidParam(param, "Tool and function calling are not supported.")
    if body["logprobs"]:
        raise InvalidParam("logprobs", "logprobs are not supported.")
    response_format = body["response_format"]
    if response_format is not None and response_format != {"type": "text"}:
        raise InvalidParam("response_format", "Only response_format {'type': 'text'} is supported.")


def to_generation_request(body: dict[str, Any], p: Pool) -> GenerationRequest:
    """The chat body as the core's request.

    A single remaining turn goes to a model without multi-turn support as `input`, so
    single-turn runtimes serve plain chat requests too; multi-turn models always get
    `messages`, so they render the conversation with their chat template.
    """
    system, turns = split_system(body["messages"], "messages", lambda index: f"messages.{index}.content")
    single_turn = len(turns) == 1 and not p.entry(body["model"]).capabilities.multi_turn
    max_tokens = body["max_completion_tokens"] or body["max_tokens"]
    decoding = {k: body[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "stop")}
    return GenerationRequest(
        input=turns[0].content if single_turn else None,
        messages=None if single_turn else tuple(turns),
        instructions="\n\n".join(system) if system else None,
        decoding=p.settings.decoding.merged({**decoding, "max_tokens": max_tokens}),
    )


# -- response --------------------------------------------------------------------------
def completion_id(job: Job) -> str:
    # The job's own hex id, so logs and metrics of both APIs name a request the same way.
    return "chatcmpl-" + job.id.removeprefix("resp_")


def finish_reason(done: Done) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def usage(final: Final | None) -> dict[str, int | None]:
    prompt = final.prompt_tokens if final else None
    output = final.output_tokens if final else None
    total = prompt + output if prompt is not None and output is not None else None
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": total}


def completion(job: Job, done: Done) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": done.output_text}
    if done.reasoning_text:
        message["reasoning_content"] = done.reasoning_text
    return {
        "id": completion_id(job),
        "object": "chat.completion",
        "created": job.created,
        "model": job.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(done)}],
        "usage": usage(done.final),
        "metrics": job.metrics(done.final),
    }


# -- stream ----------------------------------------------------------------------------
def stream_chat(p: Pool, job: Job, include_usage: bool) -> Iterator[str]:
    """The SSE body; never raises once started, and cancels the job if the client goes."""

    def bug() -> str:
        return data_line(openai_error_body(500, "internal_error", "internal server error"))

    return cancel_on_close(p, job, _chunks(p, job, include_usage), bug, client_socket())


def _chunks(p: Pool, job: Job, include_usage: bool) -> Iterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        # OpenAI sends `usage: null` on every other chunk when usage was asked for.
        tail = {"usage": None} if include_usage else {}
        return data_line({**head, "choices": [choice], **tail, **extra})

    head = {
        "id": completion_id(job),
        "object": "chat.completion.chunk",
        "created": job.created,
        "model": job.model,
    }
    yield chunk({"role": "assistant", "content": ""})
    for event in job_events(p, job):
        if isinstance(event, str):
            yield event
        elif isinstance(event, Delta):
            delta = {}
            if event.reasoning:
                delta["reasoning_content"] = event.reasoning
            if event.text:
                delta["content"] = event.text
            if delta:
                yield chunk(delta)
        elif isinstance(event, Done):
            yield chunk({}, finish_reason(event), metrics=job.metrics(event.final))
            if include_usage:
                yield data_line({**head, "choices": [], "usage": usage(event.final)})
            yield "data: [DONE]\n\n"
        elif isinstance(event, Failed):
            yield data_line(openai_pool_error(event.error))
