"""The one place errors become HTTP responses.

- `PoolError` (and every subclass): {"detail": {code, message, model}} with its status.
- Schema errors (marshmallow) and core field errors: 422 {"detail": [{loc, msg, type}]}.
- Flask/werkzeug HTTP errors (404 route, 405, 413 body too large): the same detail shape.
- Anything else is a bug: 500 internal_error, trace in the log, never in the body.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from blueprints.schemas import validation_details
from llmpool.errors import PoolError, RequestFieldInvalid

log = logging.getLogger("llmpool.http")

_HTTP_CODES = {
    400: "bad_request",
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
