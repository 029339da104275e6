"""What OpenAI's Chat Completions and legacy Completions share: the error object, the
finish reason, usage, and the end of a stream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llmpool.errors import PoolError, RequestFieldInvalid
from llmpool.generation import Final
from llmpool.job import Done
from llmpool.serving.sse import DONE_LINE, data_line

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
    return "length" if done.finish_reason == "length" else "stop"


def usage(final: Final | None) -> dict[str, int | None]:
    prompt = final.prompt_tokens if final else None
    output = final.output_tokens if final else None
    total = prompt + output if prompt is not None and output is not None else None
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": total}


def wants_usage(body: dict[str, Any]) -> bool:
    return bool((body["stream_options"] or {}).get("include_usage"))


def stream_end(head: dict[str, Any], done: Done, include_usage: bool) -> Iterator[str]:
    """After the finish chunk: the usage chunk (`choices: []`) when asked, then [DONE]."""
    if include_usage:
        yield data_line({**head, "choices": [], "usage": usage(done.final)})
    yield DONE_LINE


def stream_error(error: PoolError) -> str:
    """A failure after the stream began: an error line, and no [DONE]."""
    return data_line(openai_pool_error(error))
