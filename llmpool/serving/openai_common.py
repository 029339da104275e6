"""What OpenAI's Chat Completions and legacy Completions share: the error object, the
finish reason, usage, and the end of a stream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llmpool.errors import PoolError, RequestFieldInvalid
from llmpool.generation import Final
from llmpool.job import Done, Job
from llmpool.serving.api import Encoder
from llmpool.serving.sse import DONE_LINE, data_line

# The sampling fields Chat Completions and Completions share, each read as the pool's
# decoding field of the same name (max_tokens apart: chat has two names for it).
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "stop", "seed")

_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def openai_error_body(
    status: int, code: str | None, message: str, param: str | None = None
) -> dict[str, Any]:
    """{"error": {...}}; `type` follows the status the way OpenAI's API assigns it."""
    type_ = "server_error" if status >= 500 else _OPENAI_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_pool_error(exc: PoolError) -> dict[str, Any]:
    param = getattr(exc, "param", None)
    if isinstance(exc, RequestFieldInvalid):
        # Core locs name our own request layout; OpenAI's decoding fields are top-level.
        param = ".".join(str(p) for p in exc.loc if p not in ("body", "decoding")) or None
    return openai_error_body(exc.status, exc.code, exc.message, param)


def finish_reason(done: Done) -> str:
    return done.finish_reason if done.finish_reason in ("length", "tool_calls") else "stop"


def usage(final: Final | None) -> dict[str, int | None]:
    prompt = final.prompt_tokens if final else None
    output = final.output_tokens if final else None
    total = prompt + output if prompt is not None and output is not None else None
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": total}


class OpenAIChunks(Encoder):
    """A stream of `data:` chunks of one object (`head`), OpenAI's way for both APIs:
    `usage: null` on every chunk when usage was asked for (`stream_options.include_usage`),
    the finish chunk with the pool's `metrics`, a usage chunk with `choices: []` when
    asked, then `data: [DONE]`; a failure is an error line and no [DONE]."""

    def __init__(self, job: Job, body: dict[str, Any], head: dict[str, Any]) -> None:
        self.job = job
        self.include_usage = bool((body["stream_options"] or {}).get("include_usage"))
        self.head = head
        self.tail: dict[str, Any] = {"usage": None} if self.include_usage else {}

    def chunk(self, choice: dict[str, Any], **extra: Any) -> str:
        return data_line({**self.head, "choices": [choice], **self.tail, **extra})

    def finish(self, last_choice: dict[str, Any], done: Done) -> Iterator[str]:
        yield self.chunk(last_choice, metrics=self.job.metrics(done.final))
        if self.include_usage:
            yield data_line({**self.head, "choices": [], "usage": usage(done.final)})
        yield DONE_LINE

    def failed(self, error: PoolError) -> str:
        return data_line(openai_pool_error(error))
