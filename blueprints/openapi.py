"""GET /openapi.json: an OpenAPI 3.1 document made from the marshmallow schemas.

Request bodies come from the same schema instances the views load with, so the document
cannot drift from what is validated; the response schemas below describe what the views
and the error renderer write, and `make test` holds the running server to them
(schemathesis checks every response against this document). `ROUTES` lists every route;
a test checks it against Flask's URL map, so a new route cannot be left out.

Model names are free strings (an unknown one is a 404), with the configured names as
examples so a generated request can reach a real model.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify
from marshmallow import INCLUDE, Schema, fields

from blueprints.context import pool
from blueprints.schemas import (
    INPUT_ROLES,
    ChatCompletionsRequestSchema,
    CompletionsRequestSchema,
    Content,
    LoadRequestSchema,
    Prompt,
    ResponsesInput,
    ResponsesRequestSchema,
    Stop,
)
from llmpool import __version__
from llmpool.config.fields import IntOrString, StrictBool
from llmpool.metrics import METRIC_KEYS
from llmpool.states import ModelState

bp = Blueprint("openapi", __name__)

_STATES = [s.value for s in ModelState]


class _Open(Schema):
    """Documented keys, more allowed (rows grow; clients must ignore what they do not use)."""

    class Meta:
        unknown = INCLUDE


# -- errors -------------------------------------------------------------------------
class ErrorDetailSchema(_Open):
    code = fields.String(required=True)
    message = fields.String(required=True)
    model = fields.String(required=True, allow_none=True)


class ErrorSchema(Schema):
    detail = fields.Nested(ErrorDetailSchema, required=True)


class FieldErrorSchema(Schema):
    loc = fields.List(fields.Raw(), required=True)
    msg = fields.String(required=True)
    type = fields.String(required=True)


class ValidationErrorSchema(Schema):
    detail = fields.List(fields.Nested(FieldErrorSchema), required=True)


class OpenAIErrorBodySchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.String(required=True, allow_none=True)


class OpenAIErrorSchema(Schema):
    error = fields.Nested(OpenAIErrorBodySchema, required=True)


class ResponsesErrorSchema(Schema):
    """/v1/responses: the pool's detail and OpenAI's error, side by side."""

    detail = fields.Nested(ErrorDetailSchema, required=True)
    error = fields.Nested(OpenAIErrorBodySchema, required=True)


class ResponsesValidationErrorSchema(Schema):
    detail = fields.List(fields.Nested(FieldErrorSchema), required=True)
    error = fields.Nested(OpenAIErrorBodySchema, required=True)


# -- inference ----------------------------------------------------------------------
MetricsSchema = Schema.from_dict(
    {k: fields.Float(required=True, allow_none=True) for k in METRIC_KEYS}, name="MetricsSchema"
)


class UsageSchema(_Open):
    input_tokens = fields.Integer(required=True, allow_none=True)
    output_tokens = fields.Integer(required=True, allow_none=True)
    total_tokens = fields.Integer(required=True, allow_none=True)


class OutputItemSchema(_Open):
    """output[0] is the pool's `{"type": "output_text", "text"}`; OpenAI's `reasoning`
    and `message` items follow it."""

    type = fields.String(required=True)


class ResponseObjectSchema(_Open):
    id = fields.String(required=True)
    object = fields.String(required=True)
    created = fields.Integer(required=True)
    created_at = fields.Integer(required=True)
    status = fields.String(required=True)
    model = fields.String(required=True)
    output = fields.List(fields.Nested(OutputItemSchema), required=True)
    output_text = fields.String(required=True)
    reasoning_text = fields.String(required=True, allow_none=True)
    finish_reason = fields.String(required=True)
    usage = fields.Nested(UsageSchema, required=True)
    metrics = fields.Nested(MetricsSchema, required=True)


class ChatMessageOutSchema(_Open):
    role = fields.String(required=True)
    content = fields.String(required=True, allow_none=True)


class ChatChoiceSchema(_Open):
    index = fields.Integer(required=True)
    message = fields.Nested(ChatMessageOutSchema, required=True)
    finish_reason = fields.String(required=True)


class ChatUsageSchema(Schema):
    prompt_tokens = fields.Integer(required=True, allow_none=True)
    completion_tokens = fields.Integer(required=True, allow_none=True)
    total_tokens = fields.Integer(required=True, allow_none=True)


class ChatCompletionSchema(_Open):
    id = fields.String(required=True)
    object = fields.String(required=True)
    created = fields.Integer(required=True)
    model = fields.String(required=True)
    choices = fields.List(fields.Nested(ChatChoiceSchema), required=True)
    usage = fields.Nested(ChatUsageSchema, required=True)


class TextChoiceSchema(_Open):
    index = fields.Integer(required=True)
    text = fields.String(required=True)
    finish_reason = fields.String(required=True)


class TextCompletionSchema(_Open):
    id = fields.String(required=True)
    object = fields.String(required=True)
    created = fields.Integer(required=True)
    model = fields.String(required=True)
    choices = fields.List(fields.Nested(TextChoiceSchema), required=True)
    usage = fields.Nested(ChatUsageSchema, required=True)


class ModelCardSchema(_Open):
    id = fields.String(required=True)
    object = fields.String(required=True)
    owned_by = fields.String(required=True)


class ModelListSchema(_Open):
    object = fields.String(required=True)
    data = fields.List(fields.Nested(ModelCardSchema), required=True)
    models = fields.List(fields.String(), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)


class ReadySchema(Schema):
    ready = fields.Boolean(required=True)
    models = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


# -- admin --------------------------------------------------------------------------
class WorkerCrashesSchema(Schema):
    count = fields.Integer(required=True, metadata={"description": "Workers that died in this runtime."})
    last = fields.Dict(
        required=True, allow_none=True, metadata={"description": "model, signal, meaning, activity, at, pid"}
    )
    quarantined = fields.String(
        required=True, allow_none=True, metadata={"description": "Why not loaded (admin load lifts it)."}
    )


class AdminRowSchema(_Open):
    name = fields.String(required=True)
    backend = fields.String(required=True)
    enabled = fields.Boolean(required=True)
    state = fields.String(required=True, metadata={"enum": _STATES})
    last_error = fields.String(required=True, allow_none=True)
    replicas = fields.Integer(required=True)
    replica_max = fields.Integer(required=True)
    queue_depth = fields.Integer(required=True)
    inflight = fields.Integer(required=True)
    replica_states = fields.List(fields.Dict(), required=True)
    capabilities = fields.Dict(required=True)
    load_constraints = fields.List(fields.Dict(), required=True)
    load_override = fields.Dict(required=True, allow_none=True)
    vram = fields.Dict(required=True)
    worker_crashes = fields.Nested(WorkerCrashesSchema, required=True)
    definition = fields.Dict(required=True)


class AdminRowsSchema(Schema):
    models = fields.List(fields.Nested(AdminRowSchema), required=True)


class ReplicaLogSchema(Schema):
    id = fields.Integer(required=True)
    pid = fields.Integer(required=True, allow_none=True)
    lines = fields.List(fields.String(), required=True)


class LogsSchema(_Open):
    name = fields.String(required=True)
    replicas = fields.List(fields.Nested(ReplicaLogSchema), required=True)


class GpuMemorySchema(_Open):
    gpus = fields.List(fields.Dict(), required=True)
    models = fields.List(fields.Dict(), required=True)
    error = fields.String(required=True, allow_none=True)


class DeviceMemorySchema(_Open):
    device = fields.String(required=True)
    budget_mib = fields.Float(required=True, allow_none=True)
    loaded = fields.List(fields.Dict(), required=True)
    reserved = fields.List(fields.Dict(), required=True)
    used_mib = fields.Float(required=True)
    reserved_mib = fields.Float(required=True)
    free_mib = fields.Float(required=True, allow_none=True)


class MemorySchema(_Open):
    devices = fields.List(fields.Nested(DeviceMemorySchema), required=True)
    waiting = fields.List(fields.Dict(), required=True)
    swaps = fields.Integer(required=True)


class ReloadReportSchema(_Open):
    added = fields.List(fields.String(), required=True)
    removed = fields.List(fields.String(), required=True)
    updated = fields.List(fields.String(), required=True)
    unchanged = fields.List(fields.String(), required=True)
    conflicts = fields.List(fields.Dict(), required=True)
    settings_changed = fields.List(fields.String(), required=True)


# -- the document -------------------------------------------------------------------
_TEXT_ITEM = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
    "additionalProperties": False,
}
_IMAGE_ITEM = {
    "type": "object",
    "properties": {
        "type": {"const": "image_url"},
        "image_url": {
            "type": "object",
            "properties": {
                "url": {"type": "string", "minLength": 1},
                "detail": {"enum": ["auto", "low", "high"]},
            },
            "required": ["url"],
            "additionalProperties": False,
        },
    },
    "required": ["type", "image_url"],
    "additionalProperties": False,
}


_INPUT_TEXT = {
    "type": "object",
    "properties": {"type": {"enum": ["input_text", "output_text"]}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
_INPUT_IMAGE = {
    "type": "object",
    "properties": {
        "type": {"const": "input_image"},
        "image_url": {"type": "string", "minLength": 1},
        "detail": {"enum": ["auto", "low", "high"]},
    },
    "required": ["type", "image_url"],
}
_PARTS = {
    "type": "array",
    "minItems": 1,
    "items": {"oneOf": [_TEXT_ITEM, _IMAGE_ITEM, _INPUT_TEXT, _INPUT_IMAGE]},
}
_INPUT_ITEM = {
    "type": "object",
    "properties": {
        "type": {"const": "message"},
        "role": {"enum": list(INPUT_ROLES)},
        "content": {"oneOf": [{"type": "string"}, _PARTS]},
    },
    "required": ["role", "content"],
}


def _custom_fields(self: Any, field: fields.Field, **_: Any) -> dict[str, Any]:
    """JSON Schema for the fields marshmallow's plugin cannot infer."""
    nullable = [{"type": "null"}] if field.allow_none else []
    if isinstance(field, ResponsesInput):
        items = {"type": "array", "minItems": 1, "items": _INPUT_ITEM}
        return {"oneOf": [{"type": "string"}, _PARTS, items, *nullable]}
    if isinstance(field, Content):
        return {"oneOf": [{"type": "string"}, _PARTS, *nullable]}
    if isinstance(field, Prompt):
        return {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string", "minLength": 1}},
            ]
        }
    if isinstance(field, Stop):
        many = {"type": "array", "maxItems": 16, "items": {"type": "string"}}
        return {"oneOf": [{"type": "string"}, many, *nullable]}
    if isinstance(field, StrictBool):
        return {"type": ["boolean", "null"] if field.allow_none else "boolean"}
    if isinstance(field, IntOrString):
        return {"oneOf": [{"type": "integer"}, {"type": "string"}, *nullable]}
    return {}


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(statuses: tuple[int, ...], shape: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        name = {"Error": "ValidationError", "ResponsesError": "ResponsesValidationError"}.get(shape, shape)
        name = name if status == 422 else shape
        out[str(status)] = {"description": f"{status} error", "content": _json(name)}
    return out


_BODY_ERRORS = (400, 413, 422)
_INFERENCE_ERRORS = (*_BODY_ERRORS, 401, 403, 404, 409, 429, 502, 504)
_PATH_MODEL: dict[str, Any] = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}

# (path, method, summary, request schema or None, {status: (description, content)}, errors)
ROUTES: list[tuple[str, str, str, str | None, dict[str, Any], tuple[int, ...], str]] = [
    (
        "/v1/responses",
        "post",
        "Generate (JSON, or SSE with stream: true)",
        "ResponsesRequest",
        {
            "200": {
                "description": "the response, or its event stream",
                "content": {**_json("ResponseObject"), "text/event-stream": {"schema": {"type": "string"}}},
            }
        },
        _INFERENCE_ERRORS,
        "ResponsesError",
    ),
    (
        "/v1/completions",
        "post",
        "OpenAI (legacy) completions of a raw prompt (JSON, or SSE with stream: true)",
        "CompletionsRequest",
        {
            "200": {
                "description": "the completion, or its chunk stream",
                "content": {**_json("TextCompletion"), "text/event-stream": {"schema": {"type": "string"}}},
            }
        },
        _INFERENCE_ERRORS,
        "OpenAIError",
    ),
    (
        "/v1/chat/completions",
        "post",
        "OpenAI chat completions (JSON, or SSE with stream: true)",
        "ChatCompletionsRequest",
        {
            "200": {
                "description": "the completion, or its chunk stream",
                "content": {**_json("ChatCompletion"), "text/event-stream": {"schema": {"type": "string"}}},
            }
        },
        _INFERENCE_ERRORS,
        "OpenAIError",
    ),
    (
        "/v1/models",
        "get",
        "Loaded models",
        None,
        {"200": {"description": "ids", "content": _json("ModelList")}},
        (401,),
        "Error",
    ),
    (
        "/healthz",
        "get",
        "Liveness",
        None,
        {"200": {"description": "alive", "content": _json("Health")}},
        (),
        "Error",
    ),
    (
        "/readyz",
        "get",
        "Readiness: start-up loading finished",
        None,
        {
            "200": {"description": "ready", "content": _json("Ready")},
            "503": {"description": "still loading", "content": _json("Ready")},
        },
        (),
        "Error",
    ),
    (
        "/metrics",
        "get",
        "Prometheus metrics",
        None,
        {
            "200": {
                "description": "text exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
        (401,),
        "Error",
    ),
    (
        "/openapi.json",
        "get",
        "This document",
        None,
        {
            "200": {
                "description": "OpenAPI 3.1",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
        (401,),
        "Error",
    ),
    (
        "/v1/admin/models",
        "get",
        "Every configured model",
        None,
        {"200": {"description": "rows", "content": _json("AdminRows")}},
        (401,),
        "Error",
    ),
    (
        "/v1/admin/models/{name}",
        "get",
        "One model",
        None,
        {"200": {"description": "row", "content": _json("AdminRow")}},
        (401, 404),
        "Error",
    ),
    (
        "/v1/admin/models/{name}/load",
        "post",
        "Load (optionally with replicas, target_inflight, overrides); ?wait=false answers 202",
        "LoadRequest",
        {
            "200": {"description": "loaded", "content": _json("AdminRow")},
            "202": {"description": "loading", "content": _json("AdminRow")},
        },
        (*_BODY_ERRORS, 401, 404, 409, 500),
        "Error",
    ),
    (
        "/v1/admin/models/{name}/unload",
        "post",
        "Unload (?force=true stops running jobs)",
        None,
        {"200": {"description": "unloaded", "content": _json("AdminRow")}},
        (401, 404, 409, 422),
        "Error",
    ),
    (
        "/v1/admin/models/{name}/logs",
        "get",
        "The last lines each replica printed",
        None,
        {"200": {"description": "lines", "content": _json("Logs")}},
        (401, 404, 422),
        "Error",
    ),
    (
        "/v1/admin/gpu-memory",
        "get",
        "NVML's view and per-model estimates",
        None,
        {"200": {"description": "memory", "content": _json("GpuMemory")}},
        (401,),
        "Error",
    ),
    (
        "/v1/admin/memory",
        "get",
        "Memory budgets per device: loaded models, reservations, free, waiting loads",
        None,
        {"200": {"description": "memory", "content": _json("Memory")}},
        (401,),
        "Error",
    ),
    (
        "/v1/admin/settings/reload",
        "post",
        "Re-read the settings files, atomically",
        None,
        {"200": {"description": "what changed", "content": _json("ReloadReport")}},
        (400, 401, 409),
        "Error",
    ),
]
_QUERY: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {
    ("/v1/admin/models/{name}/load", "post"): [
        ("wait", {"type": "string", "enum": ["true", "false", "1", "0"]})
    ],
    ("/v1/admin/models/{name}/unload", "post"): [
        ("force", {"type": "string", "enum": ["true", "false", "1", "0"]})
    ],
    ("/v1/admin/models/{name}/logs", "get"): [("tail", {"type": "string", "pattern": "^[0-9]{1,6}$"})],
}

_SCHEMAS: dict[str, Any] = {
    "ResponsesRequest": ResponsesRequestSchema,
    "ChatCompletionsRequest": ChatCompletionsRequestSchema,
    "CompletionsRequest": CompletionsRequestSchema,
    "LoadRequest": LoadRequestSchema,
    "ResponseObject": ResponseObjectSchema,
    "ChatCompletion": ChatCompletionSchema,
    "TextCompletion": TextCompletionSchema,
    "ModelList": ModelListSchema,
    "Health": HealthSchema,
    "Ready": ReadySchema,
    "AdminRows": AdminRowsSchema,
    "AdminRow": AdminRowSchema,
    "Logs": LogsSchema,
    "GpuMemory": GpuMemorySchema,
    "Memory": MemorySchema,
    "ReloadReport": ReloadReportSchema,
    "Error": ErrorSchema,
    "ValidationError": ValidationErrorSchema,
    "OpenAIError": OpenAIErrorSchema,
    "ResponsesError": ResponsesErrorSchema,
    "ResponsesValidationError": ResponsesValidationErrorSchema,
}


def build_document(model_names: list[str]) -> dict[str, Any]:
    # Nested schemas inline (no resolver name): one component per documented schema.
    plugin = MarshmallowPlugin(schema_name_resolver=lambda schema: None)  # type: ignore[arg-type,return-value]
    spec = APISpec(title="llm-pool", version=__version__, openapi_version="3.1.0", plugins=[plugin])
    plugin.converter.add_attribute_function(_custom_fields)  # type: ignore[union-attr]
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for name, schema in _SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    for path, method, summary, request_schema, responses, errors, shape in ROUTES:
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {**responses, **_errors(errors, shape)},
            # Bearer only when the pool is configured with tokens (service.*_env).
            "security": [{}, {"bearer": []}],
        }
        parameters = [_PATH_MODEL] if "{name}" in path else []
        for q, schema in _QUERY.get((path, method), []):
            parameters.append({"name": q, "in": "query", "required": False, "schema": schema})
        if parameters:
            operation["parameters"] = parameters
        if request_schema is not None:
            operation["requestBody"] = {
                "required": request_schema != "LoadRequest",
                "content": {"application/json": {"schema": request_schema}},
            }
        spec.path(path=path, operations={method: operation})
    document = spec.to_dict()
    _refine_requests(document["components"]["schemas"])
    _add_model_examples(document, model_names)
    return document


def _refine_requests(schemas: dict[str, Any]) -> None:
    """Rules the views enforce that marshmallow's fields do not carry."""
    not_null = {"not": {"type": "null"}}
    schemas["ResponsesRequest"]["oneOf"] = [
        {"required": ["input"], "properties": {"input": not_null}},
        {"required": ["messages"], "properties": {"messages": {**not_null, "minItems": 1}}},
    ]
    responses = schemas["ResponsesRequest"]["properties"]
    # Accepted only at the values the pool honours; anything else is a 400 naming it.
    responses["tools"] = {"oneOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}
    responses["tool_choice"] = {"enum": ["none", "auto", None]}
    responses["include"] = responses["tools"]
    for key in ("store", "background"):
        responses[key] = {"enum": [False, None]}
    for key in ("previous_response_id", "conversation", "prompt"):
        responses[key] = {"type": "null"}
    responses["truncation"] = {"enum": ["disabled", None]}
    responses["top_logprobs"] = {"enum": [0, None]}
    completions = schemas["CompletionsRequest"]["properties"]
    completions["n"] = completions["best_of"] = {"enum": [1, None]}
    completions["echo"] = {"enum": [False, None]}
    completions["logprobs"] = {"type": "null"}
    completions["suffix"] = {"enum": ["", None]}
    completions["logit_bias"] = {"oneOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}]}
    chat = schemas["ChatCompletionsRequest"]["properties"]
    # Accepted only at the values the pool honours; anything else is a 400 naming it.
    chat["n"] = {"enum": [1, None]}
    chat["logprobs"] = {"enum": [False, None]}
    chat["tools"] = chat["functions"] = {"oneOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}
    chat["response_format"] = {
        "oneOf": [
            {"type": "null"},
            {
                "type": "object",
                "properties": {"type": {"const": "text"}},
                "required": ["type"],
                "additionalProperties": False,
            },
        ]
    }


def _add_model_examples(document: dict[str, Any], names: list[str]) -> None:
    if not names:
        return
    schemas = document["components"]["schemas"]
    for request in ("ResponsesRequest", "ChatCompletionsRequest", "CompletionsRequest"):
        schemas[request]["properties"]["model"]["examples"] = names
    for item in document["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "name":
                    parameter["schema"] = {"type": "string", "examples": names}


@bp.get("/openapi.json")
def openapi_document() -> Response:
    return jsonify(build_document(list(pool().models)))
