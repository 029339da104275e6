"""The one place errors become HTTP responses.

- `PoolError` (and every subclass): {"detail": {code, message, model}} with its status.
- Schema errors (marshmallow) and core field errors: 422 {"detail": [{loc, msg, type}]}.
- Flask/werkzeug HTTP errors (404 route, 405, 413 body too large): the same detail shape.
- Anything else is a bug: 500 internal_error, trace in the log, never in the body.

On the OpenAI routes (`OPENAI_PREFIXES`) the same errors, with the same statuses and
headers, are rendered in OpenAI's shape instead: {"error": {message, type, param, code}}.
The shape follows the path, not the matched blueprint, so errors raised before or
instead of routing (401, 404, 405, 413) take the route's shape too. On Anthropic's routes
(`ANTHROPIC_PREFIXES`) likewise, in Anthropic's shape: {"type": "error", "error": {type,
message}} (plus the pool's `code`).

POST /v1/responses serves both the pool's own clients and OpenAI's SDK, so its errors
carry both: the pool's `detail` and, beside it, OpenAI's `error` object (the SDK puts it
on the exception it raises, chosen by the status: 400 BadRequestError, 404 NotFoundError,
422 UnprocessableEntityError, 429 RateLimitError, ...).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from blueprints.observe import note_error
from llmpool.errors import InvalidParam, PoolError, RequestFieldInvalid, bug
from llmpool.serving.anthropic_api import anthropic_error_body
from llmpool.serving.openai_common import openai_error_body, openai_pool_error

log = logging.getLogger("llmpool.http")

# Routes whose clients expect OpenAI's error body (its SDK reads `error.message`).
OPENAI_PREFIXES = ("/v1/chat/", "/v1/completions")
# Routes whose clients expect Anthropic's error body (its SDK reads `error.type`).
ANTHROPIC_PREFIXES = ("/v1/messages",)
# Routes whose errors carry both shapes (see the module docstring).
BOTH_SHAPES = ("/v1/responses",)
# The error shapes (`shape_of`; blueprints.contract documents each route's).
POOL, OPENAI, ANTHROPIC, BOTH = "pool", "openai", "anthropic", "both"


def shape_of(path: str) -> str:
    """The shape of every error answered on `path`."""
    if path.startswith(OPENAI_PREFIXES):
        return OPENAI
    if path.startswith(ANTHROPIC_PREFIXES):
        return ANTHROPIC
    return BOTH if path in BOTH_SHAPES else POOL


class ArgumentsInvalid(ValidationError):
    """A request's arguments failed their schema; `loc` is where they came from
    (["body"], ["query"]), the start of each error's `loc`."""

    def __init__(self, messages: Any, loc: list[str | int]) -> None:
        super().__init__(messages)
        self.loc = loc


__all__ = ["InvalidParam", "openai_error_body", "openai_pool_error", "register_error_handlers"]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def _json(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def foreign(status: int, openai: dict[str, Any], headers: dict[str, str] | None = None) -> Response | None:
    """The error (given in OpenAI's shape) in the shape of the route's client: OpenAI's or
    Anthropic's; None on the pool's own routes, which write theirs."""
    shape = shape_of(request.path)
    if shape == OPENAI:
        return _json(openai, status, headers)
    if shape == ANTHROPIC:
        error = openai["error"]
        return _json(anthropic_error_body(status, error["code"], error["message"]), status, headers)
    return None


def _native(detail: Any, openai: dict[str, Any]) -> dict[str, Any]:
    """The pool's body `{"detail": ...}`, plus OpenAI's `error` on the routes that take both."""
    if shape_of(request.path) == BOTH:
        return {"detail": detail, **openai}
    return {"detail": detail}


def pool_error_response(exc: PoolError) -> Response:
    note_error(exc.code)
    if (answer := foreign(exc.status, openai_pool_error(exc), exc.headers)) is not None:
        return answer
    if isinstance(exc, RequestFieldInvalid):
        detail = [{"loc": exc.loc, "msg": exc.message, "type": exc.type}]
        return _json(_native(detail, openai_pool_error(exc)), 422)
    return _json(_native(exc.to_detail(), openai_pool_error(exc)), exc.status, exc.headers)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(PoolError)
    def _pool(exc: PoolError) -> Response:
        if exc.status >= 500:
            log.warning("%s %s: %s", exc.status, exc.code, exc.message)
        return pool_error_response(exc)

    @app.errorhandler(ValidationError)
    def _schema(exc: ValidationError) -> Response:
        note_error("validation_error")
        details = validation_details(exc.messages, exc.loc if isinstance(exc, ArgumentsInvalid) else None)
        openai = _openai_validation(details)
        if (answer := foreign(422, openai)) is not None:
            return answer
        return _json(_native(details, openai), 422)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = exc.description or code
        # 405 must keep its Allow header; werkzeug puts it on the exception's own response.
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        note_error(code)
        openai = openai_error_body(status, code, message)
        if (answer := foreign(status, openai, headers)) is not None:
            return answer
        return _json(_native({"code": code, "message": message, "model": None}, openai), status, headers)

    @app.errorhandler(Exception)
    def _bug(exc: Exception) -> Response:
        log.exception("unhandled error")
        return pool_error_response(bug())


# -- OpenAI's error shape -------------------------------------------------------------
_OPENAI_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter"}


def _openai_validation(details: list[dict[str, Any]]) -> dict[str, Any]:
    """Schema errors: `param` is the dotted path of the first bad field."""
    params = [".".join(str(p) for p in d["loc"][1:]) or None for d in details]
    text = "; ".join(f"{p}: {d['msg']}" if p else d["msg"] for p, d in zip(params, details, strict=True))
    code = _OPENAI_CODES.get(details[0]["type"], "invalid_value") if details else "invalid_value"
    return openai_error_body(422, code, text, params[0] if params else None)


def validation_details(messages: Any, loc: list[str | int] | None = None) -> list[dict[str, Any]]:
    """marshmallow's nested messages -> FastAPI-style [{loc, msg, type}]."""
    loc = loc if loc is not None else ["body"]
    if isinstance(messages, dict):
        out = []
        for key, value in messages.items():
            sub = loc if key == "_schema" else [*loc, key]
            out.extend(validation_details(value, sub))
        return out
    if isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages):
        return [{"loc": loc, "msg": m, "type": _error_type(m)} for m in messages]
    if isinstance(messages, list):
        return [d for m in messages for d in validation_details(m, loc)]
    return [{"loc": loc, "msg": str(messages), "type": _error_type(str(messages))}]


def _error_type(message: str) -> str:
    if message.startswith("Missing data"):
        return "missing"
    if message.startswith("Unknown field"):
        return "extra_forbidden"
    return "value_error"
