"""Reading a JSON request body that anyone may have sent.

Every way a body can be hostile ends in a structured 4xx here, before a schema or the
core sees it:

- over `service.max_body_mb` (declared or, for chunked bodies, counted while read): 413;
- a body the server cannot read (a malformed chunk size, a connection that breaks
  mid-body): 400;
- not JSON, not an object, nested deeper than `MAX_DEPTH`: 422;
- a string or key with a lone UTF-16 surrogate (`"\\ud800"` is valid JSON but not
  Unicode text; it would fail in a tokenizer later): 422 naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, request
from marshmallow import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from llmpool.errors import InvalidRequest, RequestFieldInvalid, RequestTooLarge

# No request of ours nests deeper than ~6 (messages -> content -> item -> image_url);
# the limit sits far above that and far below the interpreter's recursion limit.
MAX_DEPTH = 64
_READ_CHUNK = 1 << 16


_CACHE_KEY = "llmpool.body"


def raw_body() -> bytes:
    """The body, at most MAX_CONTENT_LENGTH bytes, however it was framed (read once per
    request; later calls return the same bytes)."""
    cached = request.environ.get(_CACHE_KEY)
    if cached is None:
        cached = request.environ[_CACHE_KEY] = _read_capped()
    return cached


def _read_capped() -> bytes:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        if declared is not None:
            # A read of the whole declared length first: the usual body is done in one call,
            # without the read-until-empty round (the loop goes on after a short read).
            chunk = request.stream.read(declared)
            if len(chunk) == declared:
                return bytes(chunk)
            chunks.append(chunk)
            size = len(chunk)
        while True:
            chunk = request.stream.read(_READ_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except RequestEntityTooLarge:
        raise _too_large(limit) from None
    except RequestTooLarge:
        raise
    except Exception as exc:  # the server's framing errors are not ours to name
        raise InvalidRequest(f"the request body could not be read ({type(exc).__name__})") from None
    return b"".join(chunks)


def _too_large(limit: int) -> RequestTooLarge:
    mib = limit / (1024 * 1024)
    return RequestTooLarge(f"the request body is larger than {mib:g} MiB (service.max_body_mb)")


def json_body(*, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object (`optional`: an empty body is `{}`)."""
    raw = raw_body()
    if optional and not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValidationError({"_schema": [f"JSON nested deeper than {MAX_DEPTH} levels."]}) from None
    except ValueError:  # includes UnicodeDecodeError
        raise ValidationError({"_schema": ["Body must be a JSON object."]}) from None
    if not isinstance(data, dict):
        raise ValidationError({"_schema": ["Body must be a JSON object."]})
    check_tree(data)
    return data


def check_tree(data: Any) -> None:
    """Depth and lone surrogates, walked without recursion (the input decides the depth).
    A node's place is kept as (parent's place, key) and spelled out only for an error."""
    stack: list[tuple[Any, int, _Place]] = [(data, 1, None)]
    while stack:
        node, depth, place = stack.pop()
        if depth > MAX_DEPTH:
            deep = f"JSON nested deeper than {MAX_DEPTH} levels."
            raise RequestFieldInvalid(_loc(place)[:8], deep, "value_error")
        if isinstance(node, str):
            if not node.isascii():  # the common case, without encoding a copy
                _check_text(node, place)
        elif isinstance(node, dict):
            for key, value in node.items():
                if not key.isascii():
                    _check_text(key, (place, "(key)"))
                stack.append((value, depth + 1, (place, key)))
        elif isinstance(node, list):
            stack.extend((value, depth + 1, (place, index)) for index, value in enumerate(node))


_Place = tuple[Any, str | int] | None  # (the parent's place, key); None is the body itself


def _loc(place: _Place) -> list[str | int]:
    keys: list[str | int] = []
    while place is not None:
        place, key = place
        keys.append(key)
    return ["body", *reversed(keys)]


def _check_text(text: str, place: _Place) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestFieldInvalid(
            _loc(place),
            f"Contains a lone UTF-16 surrogate at character {exc.start}; send valid Unicode text.",
            "value_error.unicode",
        ) from None
