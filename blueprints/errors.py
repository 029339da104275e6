"""The one place errors become HTTP responses.

- `PoolError` (and every subclass): {"detail": {code, message, model}} with its status.
- Schema errors (marshmallow) and core field errors: 422 {"detail": [{loc, msg, type}]}.
- Flask/werkzeug HTTP errors (404 route, 405, 413 body too large): the same detail shape.
- Anything else is a bug: 500 internal_error, trace in the log, never in the body.

The OpenAI-compatible blueprint renders the same errors, with the same statuses, in
OpenAI's shape instead: {"error": {message, type, param, code}} (`openai_error_body`,
installed on that blueprint only by `register_openai_error_handlers`).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from blueprints.schemas import validation_details
from llmpool.errors import InvalidRequest, PoolError, RequestFieldInvalid

log = logging.getLogger("llmpool.http")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


class InvalidParam(InvalidRequest):
    """A well-formed request for something the pool does not do (OpenAI's `n` > 1, tools,
    ...): 400, with `param` naming the offending field as OpenAI's error body does."""

    def __init__(self, param: str, message: str, code: str = "unsupported_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def _json(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def pool_error_response(exc: PoolError) -> Response:
    if isinstance(exc, RequestFieldInvalid):
        return _json({"detail": [{"loc": exc.loc, "msg": exc.message, "type": exc.type}]}, 422)
    return _json({"detail": exc.to_detail()}, exc.status, exc.headers)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(PoolError)
    def _pool(exc: PoolError) -> Response:
        if exc.status >= 500:
            log.warning("%s %s: %s", exc.status, exc.code, exc.message)
        return pool_error_response(exc)

    @app.errorhandler(ValidationError)
    def _schema(exc: ValidationError) -> Response:
        return _json({"detail": validation_details(exc.messages)}, 422)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        return _json({"detail": {"code": code, "message": exc.description, "model": None}}, status)

    @app.errorhandler(Exception)
    def _bug(exc: Exception) -> Response:
        log.exception("unhandled error")
        body = {"code": "internal_error", "message": "internal server error", "model": None}
        return _json({"detail": body}, 500)


# -- OpenAI's error shape -------------------------------------------------------------
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_OPENAI_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter"}


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


def _openai_validation(messages: Any) -> dict[str, Any]:
    """Schema errors: `param` is the dotted path of the first bad field."""
    details = validation_details(messages)
    params = [".".join(str(p) for p in d["loc"][1:]) or None for d in details]
    text = "; ".join(f"{p}: {d['msg']}" if p else d["msg"] for p, d in zip(params, details, strict=True))
    code = _OPENAI_CODES.get(details[0]["type"], "invalid_value") if details else "invalid_value"
    return openai_error_body(422, code, text, params[0] if params else None)


def register_openai_error_handlers(bp: Blueprint) -> None:
    """The handlers above, for one blueprint, in OpenAI's shape (same statuses, headers)."""

    @bp.errorhandler(PoolError)
    def _pool(exc: PoolError) -> Response:
        if exc.status >= 500:
            log.warning("%s %s: %s", exc.status, exc.code, exc.message)
        return _json(openai_pool_error(exc), exc.status, exc.headers)

    @bp.errorhandler(ValidationError)
    def _schema(exc: ValidationError) -> Response:
        return _json(_openai_validation(exc.messages), 422)

    @bp.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        return _json(openai_error_body(status, code, exc.description or code), status)

    @bp.errorhandler(Exception)
    def _bug(exc: Exception) -> Response:
        log.exception("unhandled error")
        return _json(openai_error_body(500, "internal_error", "internal server error"), 500)
