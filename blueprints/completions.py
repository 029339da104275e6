"""OpenAI's legacy Completions API: POST /v1/completions (a raw prompt, no chat template).

The same engine path as the other inference routes (Pool.submit: admission, scheduler,
metrics, request log, cancellation on hang-up); the prompt reaches the runtime as it is,
through no chat template and no prompt format (`GenerationRequest.prompt`; the tokenizer
adds BOS as usual), and the runtime's text comes back unsplit.

- request: `model`, `prompt` (a string, or a list of one string), `max_tokens` (omitted:
  `engine.decoding.max_tokens`, not OpenAI's 16), `temperature`, `top_p`, `stop`,
  `stream`, `stream_options.include_usage`, plus `top_k` and `repetition_penalty` as vLLM
  takes them. `n`/`best_of` other than 1, `echo`, `logprobs`, a non-empty `suffix` or
  `logit_bias` are a 400 naming the field. Remote models need allow_remote, as for chat.
- JSON: a `text_completion` object with `usage` and the pool's `metrics`.
- stream: `data:` chunks of the same object with text deltas, a last chunk with the
  finish_reason (and `metrics`), a usage chunk with `choices: []` when asked, then
  `data: [DONE]`; `: queued N` comments while the job waits. A failure after the stream
  began is a `data: {"error": ...}` line, and no [DONE].
- errors: OpenAI's {"error": {message, type, param, code}} (blueprints.errors).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response

from blueprints.errors import InvalidParam, openai_error_body, openai_pool_error
from blueprints.openai_compat import finish_reason, serve, usage
from blueprints.schemas import CompletionsRequestSchema
from blueprints.sse import cancel_on_close, client_socket, data_line, job_events
from llmpool.generation import GenerationRequest
from llmpool.job import Delta, Done, Failed, Job
from llmpool.pool import Pool

bp = Blueprint("completions", __name__)
COMPLETIONS_SCHEMA = CompletionsRequestSchema()


@bp.post("/v1/completions")
def completions() -> Response:
    return serve(COMPLETIONS_SCHEMA, refuse_unsupported, to_generation_request, stream_completion, completion)


def refuse_unsupported(body: dict[str, Any]) -> None:
    """400 for Completions features the pool cannot honour; dropping them would change the answer."""
    for key in ("n", "best_of"):
        if body[key] not in (None, 1):
            raise InvalidParam(key, f"Only {key}=1 is supported.")
    if body["echo"]:
        raise InvalidParam("echo", "echo is not supported.")
    if body["logprobs"] is not None:
        raise InvalidParam("logprobs", "logprobs are not supported.")
    if body["suffix"]:
        raise InvalidParam("suffix", "suffix (insertion) is not supported.")
    if body["logit_bias"]:
        raise InvalidParam("logit_bias", "logit_bias is not supported.")


def to_generation_request(body: dict[str, Any], p: Pool) -> GenerationRequest:
    decoding = {
        k: body[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "stop", "max_tokens")
    }
    return GenerationRequest(prompt=body["prompt"], decoding=p.settings.decoding.merged(decoding))


# -- response --------------------------------------------------------------------------
def completion_id(job: Job) -> str:
    return "cmpl-" + job.id.removeprefix("resp_")


def _head(job: Job) -> dict[str, Any]:
    return {"id": completion_id(job), "object": "text_completion", "created": job.created, "model": job.model}


def _choice(text: str, finish: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def _text(delta: Delta) -> str:
    # A raw prompt is answered unsplit; should a runtime still report reasoning, it is
    # part of the text the model wrote, in order, never dropped.
    return delta.reasoning + delta.text


def completion(job: Job, done: Done) -> dict[str, Any]:
    text = (done.reasoning_text or "") + done.output_text
    return {
        **_head(job),
        "choices": [_choice(text, finish_reason(done))],
        "usage": usage(done.final),
        "metrics": job.metrics(done.final),
    }


# -- stream ----------------------------------------------------------------------------
def stream_completion(p: Pool, job: Job, include_usage: bool) -> Iterator[str]:
    """The SSE body; never raises once started, and cancels the job if the client goes."""

    def bug() -> str:
        return data_line(openai_error_body(500, "internal_error", "internal server error"))

    return cancel_on_close(p, job, _chunks(p, job, include_usage), bug, client_socket())


def _chunks(p: Pool, job: Job, include_usage: bool) -> Iterator[str]:
    head = _head(job)
    tail = {"usage": None} if include_usage else {}
    for event in job_events(p, job):
        if isinstance(event, str):
            yield event
        elif isinstance(event, Delta):
            if text := _text(event):
                yield data_line({**head, "choices": [_choice(text, None)], **tail})
        elif isinstance(event, Done):
            last = {**head, "choices": [_choice("", finish_reason(event))], **tail}
            yield data_line({**last, "metrics": job.metrics(event.final)})
            if include_usage:
                yield data_line({**head, "choices": [], "usage": usage(event.final)})
            yield "data: [DONE]\n\n"
        elif isinstance(event, Failed):
            yield data_line(openai_pool_error(event.error))
