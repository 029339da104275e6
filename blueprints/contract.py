"""The HTTP contract, declared once per route with flask-smorest, drives both the parsing of
each request and GET /openapi.json.

A route declares its arguments (`@bp.arguments(Schema, location="json"|"query")`), its
answers (`@bp.response(status, Schema)`, `@bp.alt_response`) and the error statuses
beyond those its arguments imply (`errors=` on the route). From that:

- the body is read by our hostile-body reader (`blueprints.body`) and loaded with the
  declared schema; a schema error is rendered by `blueprints.errors` in the route's shape
  (`ArgumentsInvalid`, 422 `{"detail": [{loc, msg, type}]}` or OpenAI's), never by
  webargs; a body route may also answer 400 (unreadable, refused) and 413 (too large);
- the document lists each route with those schemas, every error status with the body the
  renderer writes for that path (`blueprints.errors.shape_of`), and, from our field
  types and validators (`blueprints.fields`, `blueprints.content`), the JSON Schema that
  marshmallow's plugin cannot infer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flask_smorest
from apispec.ext.marshmallow import MarshmallowPlugin, OpenAPIConverter
from flask import Flask, Response, jsonify
from marshmallow import Schema, ValidationError, fields, validate
from webargs.flaskparser import FlaskParser

from blueprints import response_schemas as out
from blueprints.anthropic_schemas import Blocks
from blueprints.body import json_body
from blueprints.content import ITEM_SCHEMAS, MESSAGE_ITEM, Content, ResponsesInput
from blueprints.errors import ANTHROPIC, BOTH, OPENAI, ArgumentsInvalid, shape_of
from blueprints.fields import OnlyEmpty, OnlyValue, Prompt, Stop
from llmpool import __version__
from llmpool.config.fields import IntOrString, StrictBool

# The body each error status carries, by the route's error shape: (other, 422).
ERROR_BODIES: dict[str, tuple[type[Schema], type[Schema]]] = {
    OPENAI: (out.OpenAIErrorSchema, out.OpenAIErrorSchema),
    ANTHROPIC: (out.AnthropicErrorSchema, out.AnthropicErrorSchema),
    BOTH: (out.ResponsesErrorSchema, out.ResponsesValidationErrorSchema),
}
POOL_BODIES = (out.ErrorSchema, out.ValidationErrorSchema)
# What declaring arguments implies: an unreadable (400), too large (413) or invalid (422) body.
IMPLIED = {"json": (400, 413, 422), "query": (422,)}
_LOCATIONS = {"json": "body", "query": "query"}


class Parser(FlaskParser):
    """webargs' parser with our body reader and our error renderer."""

    def load_json(self, req: Any, schema: Schema) -> Any:
        # A body whose schema requires nothing may be empty (it reads as {}).
        return json_body(optional=not any(f.required for f in schema.fields.values()))

    def handle_error(self, error: ValidationError, req: Any, schema: Schema, **_: Any) -> Any:
        # webargs put the messages under the location they came from.
        messages: dict[str, Any] = error.messages  # type: ignore[assignment]
        ((location, inner),) = messages.items()
        raise ArgumentsInvalid(inner, [_LOCATIONS.get(location, location)])


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()

    def arguments(self, schema: Schema, *, location: str = "json", **kwargs: Any) -> Callable[..., Any]:
        """flask-smorest's arguments; a body is required unless its schema requires nothing
        (then an empty body reads as {}, see `Parser.load_json`)."""
        if location == "json":
            kwargs.setdefault("required", any(f.required for f in schema.fields.values()))
        return super().arguments(schema, location=location, **kwargs)

    def response(self, status_code: int, schema: Any = None, **kwargs: Any) -> Callable[..., Any]:
        """flask-smorest's response, documented the same, but the answer is not dumped
        through `schema`: on these open shapes the dump is an identity that cost about
        0.1 ms a request, and it would coerce a value that drifted instead of showing it
        (the fuzz run checks every answer against the document)."""
        document = super().response(status_code, schema, **kwargs)

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(func)
            def view(*args: Any, **kw: Any) -> Any:
                result = func(*args, **kw)
                if isinstance(result, Response):
                    return result
                body, status = result if isinstance(result, tuple) else (result, status_code)
                answer = jsonify(body)
                answer.status_code = status
                return answer

            view._apidoc = document(func)._apidoc  # type: ignore[attr-defined]
            return view

        return decorator

    def alt_response(self, status_code: int, **kwargs: Any) -> Callable[..., Any]:
        """flask-smorest's alt_response, documented the same, without its pass-through
        wrapper: a route documents about ten statuses, and ten wrappers (each asking
        `inspect` whether the view is a coroutine) cost tens of µs per request."""
        document = super().alt_response(status_code, **kwargs)

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            func._apidoc = document(func)._apidoc  # type: ignore[attr-defined]
            return func

        return decorator

    def route(self, rule: str, *, errors: tuple[int, ...] = (), **options: Any) -> Callable[..., Any]:
        """flask-smorest's route, plus `errors`: the statuses the view may answer beyond
        those its arguments imply, each documented with the renderer's body for this path."""
        path = (self.url_prefix or "") + rule
        register = super().route(rule, **options)

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            declared = getattr(func, "_apidoc", {}).get("arguments", {}).get("parameters", [])
            implied = {s for p in declared for s in IMPLIED.get(p["in"], ())}
            other, invalid = ERROR_BODIES.get(shape_of(path), POOL_BODIES)
            for status in sorted(implied | set(errors), reverse=True):
                schema = invalid if status == 422 else other
                func = self.alt_response(status, schema=schema, description=f"{status} error")(func)
            return register(func)

        return decorator


class Converter(OpenAPIConverter):
    """apispec's converter, told about our field types, refusals and schema rules."""

    def init_attribute_functions(self) -> None:
        super().init_attribute_functions()
        self.attribute_functions.append(self.pool_fields)

    def schema2jsonschema(self, schema: Any) -> dict[str, Any]:
        jsonschema: dict[str, Any] = super().schema2jsonschema(schema)
        names = getattr(schema, "exactly_one", ())
        if names:
            given = {"not": {"type": "null"}}
            jsonschema["oneOf"] = [{"required": [n], "properties": {n: given}} for n in names]
        return jsonschema

    def pool_fields(self, field: fields.Field, ret: dict[str, Any], **_: Any) -> dict[str, Any]:
        """JSON Schema for what marshmallow's plugin cannot infer (it may edit `ret`)."""
        nullable = [{"type": "null"}] if field.allow_none else []
        for validator in field.validators:
            if isinstance(validator, validate.Range):  # apispec ignores the bounds' inclusivity
                for bound, inclusive, word in (
                    (validator.min, validator.min_inclusive, "Minimum"),
                    (validator.max, validator.max_inclusive, "Maximum"),
                ):
                    if bound is not None and not inclusive:
                        ret.pop(word.lower(), None)
                        ret[f"exclusive{word}"] = bound
            if isinstance(validator, OnlyValue):
                ret["enum"] = [validator.value, *([None] if field.allow_none else [])]
            if isinstance(validator, OnlyEmpty) and isinstance(field, fields.Dict):
                ret.pop("maxLength", None)
                ret["maxProperties"] = 0
        if isinstance(field, Blocks):
            items = {"oneOf": [self.resolve_nested_schema(s) for s in field.kinds.values()]}
            blocks = {"type": "array", "items": items, **({"minItems": 1} if field.text else {})}
            return {"oneOf": [*([{"type": "string"}] if field.text else []), blocks, *nullable]}
        if isinstance(field, Content):
            return {"oneOf": [{"type": "string"}, *self._content_arrays(field), *nullable]}
        if isinstance(field, Prompt):
            text = {"type": "string", "minLength": 1}
            return {"oneOf": [text, {"type": "array", "minItems": 1, "maxItems": 1, "items": text}]}
        if isinstance(field, Stop):
            many = {"type": "array", "maxItems": Stop.MAX, "items": {"type": "string"}}
            return {"oneOf": [{"type": "string"}, many, *nullable]}
        if isinstance(field, StrictBool):
            return {"type": ["boolean", "null"] if field.allow_none else "boolean"}
        if isinstance(field, IntOrString):
            return {"oneOf": [{"type": "integer"}, {"type": "string"}, *nullable]}
        return {}

    def _content_arrays(self, field: Content) -> list[dict[str, Any]]:
        """A content array's items are the part schemas `load_content` checks them with;
        `input` also takes OpenAI's input items."""
        parts = {type(s): s for s in ITEM_SCHEMAS.values()}
        items = {"oneOf": [self.resolve_nested_schema(s) for s in parts.values()]}
        arrays = [{"type": "array", "minItems": 1, "items": items}]
        if isinstance(field, ResponsesInput):
            message = self.resolve_nested_schema(MESSAGE_ITEM)
            arrays.append({"type": "array", "minItems": 1, "items": message})
        return arrays


class _Plugin(MarshmallowPlugin):
    Converter = Converter


class Api(flask_smorest.Api):
    ERROR_SCHEMA = out.ErrorSchema  # flask-smorest's own error body is never sent
    DEFAULT_ERROR_RESPONSE_NAME = None  # each route declares its error statuses


def make_api(app: Flask) -> Api:
    spec = {
        "title": "llm-pool",
        "version": __version__,
        "openapi_version": "3.1.0",
        "marshmallow_plugin": _Plugin(),
        # Bearer only when the pool is configured with tokens (service.*_env).
        "security": [{}, {"bearer": []}],
    }
    api = Api(app, spec_kwargs=spec)
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    return api
