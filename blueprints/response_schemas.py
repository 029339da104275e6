"""Response schemas: the JSON body each route answers with, as /openapi.json describes it
(`@bp.response` in the route modules). The bodies are written as the core returns them,
not dumped through these; the fuzz run (`tests/fuzz_api.py`) checks every answer against
the document, so a body that drifts from its schema fails there. The error bodies are
written by `blueprints.errors` and declared per route by `blueprints.contract`.

Bodies may hold keys their schema does not name (rows grow; clients must ignore what they
do not use): `_Open` schemas say so.
"""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields

from llmpool.metrics import METRIC_KEYS
from llmpool.states import ModelState

_STATES = [s.value for s in ModelState]


class _Out(Schema):
    """A response body as the document describes it (never used to dump: see
    `blueprints.contract.Blueprint.response`)."""


class _Open(_Out):
    """Documented keys, more allowed (rows grow; clients must ignore what they do not use)."""

    class Meta:
        unknown = INCLUDE


# -- errors -------------------------------------------------------------------------
class ErrorDetailSchema(_Open):
    code = fields.String(required=True)
    message = fields.String(required=True)
    model = fields.String(required=True, allow_none=True)


class ErrorSchema(_Out):
    detail = fields.Nested(ErrorDetailSchema, required=True)


class FieldErrorSchema(_Out):
    loc = fields.List(fields.Raw(), required=True)
    msg = fields.String(required=True)
    type = fields.String(required=True)


class ValidationErrorSchema(_Out):
    detail = fields.List(fields.Nested(FieldErrorSchema), required=True)


class OpenAIErrorBodySchema(_Out):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.String(required=True, allow_none=True)


class OpenAIErrorSchema(_Out):
    error = fields.Nested(OpenAIErrorBodySchema, required=True)


class AnthropicErrorBodySchema(_Open):
    type = fields.String(required=True)
    message = fields.String(required=True)
    code = fields.String(required=True, allow_none=True)  # the pool's own


class AnthropicErrorSchema(_Out):
    type = fields.String(required=True, metadata={"enum": ["error"]})
    error = fields.Nested(AnthropicErrorBodySchema, required=True)


class ResponsesErrorSchema(_Out):
    """/v1/responses: the pool's detail and OpenAI's error, side by side."""

    detail = fields.Nested(ErrorDetailSchema, required=True)
    error = fields.Nested(OpenAIErrorBodySchema, required=True)


class ResponsesValidationErrorSchema(_Out):
    detail = fields.List(fields.Nested(FieldErrorSchema), required=True)
    error = fields.Nested(OpenAIErrorBodySchema, required=True)


# -- inference ----------------------------------------------------------------------
MetricsSchema = _Out.from_dict(
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


class CalledFunctionOutSchema(_Out):
    name = fields.String(required=True)
    arguments = fields.String(required=True, metadata={"description": "the arguments object, as JSON text"})


class ToolCallOutSchema(_Out):
    id = fields.String(required=True)
    type = fields.String(required=True, metadata={"enum": ["function"]})
    function = fields.Nested(CalledFunctionOutSchema, required=True)


class ChatMessageOutSchema(_Open):
    role = fields.String(required=True)
    content = fields.String(required=True, allow_none=True, metadata={"description": "null: tool calls only"})
    tool_calls = fields.List(fields.Nested(ToolCallOutSchema))


class ChatChoiceSchema(_Open):
    index = fields.Integer(required=True)
    message = fields.Nested(ChatMessageOutSchema, required=True)
    finish_reason = fields.String(required=True, metadata={"enum": ["stop", "length", "tool_calls"]})


class ChatUsageSchema(_Out):
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


class AnthropicBlockSchema(_Open):
    """A content block: `text` (text), `thinking` (thinking, signature), `tool_use` (id,
    name, input)."""

    type = fields.String(required=True, metadata={"enum": ["text", "thinking", "tool_use"]})


class AnthropicUsageSchema(_Open):
    input_tokens = fields.Integer(required=True, allow_none=True)
    output_tokens = fields.Integer(required=True, allow_none=True)


class AnthropicMessageSchema(_Open):
    id = fields.String(required=True)
    type = fields.String(required=True, metadata={"enum": ["message"]})
    role = fields.String(required=True, metadata={"enum": ["assistant"]})
    model = fields.String(required=True)
    content = fields.List(fields.Nested(AnthropicBlockSchema), required=True)
    stop_reason = fields.String(
        required=True, metadata={"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use"]}
    )
    stop_sequence = fields.String(required=True, allow_none=True)
    usage = fields.Nested(AnthropicUsageSchema, required=True)


class TokenCountSchema(_Out):
    input_tokens = fields.Integer(required=True)


class ModelCardSchema(_Open):
    id = fields.String(required=True)
    object = fields.String(required=True)
    owned_by = fields.String(required=True)
    capabilities = fields.Dict(
        required=True,
        metadata={
            "description": "what requests the model takes: modalities, multi_turn, "
            "thinking_modes, streaming, structured_output, structured_after_thinking, "
            "tool_calls, forced_tool_calls, message_names (a chat message's `name` reaches the model; "
            "where false it is a 400), and decoding: the knobs among beam_size, top_k, "
            "repetition_penalty and seed that its runtime honours (setting another is a 400)"
        },
    )
    loaded = fields.Boolean(metadata={"description": "false: a request would load it (load_on_demand)"})


class ModelListSchema(_Open):
    object = fields.String(required=True)
    data = fields.List(fields.Nested(ModelCardSchema), required=True)
    models = fields.List(fields.String(), required=True)


class HealthSchema(_Out):
    status = fields.String(required=True)


# `load` would shadow Schema.load as an attribute: declared from a dict.
LoadSchema = _Out.from_dict(
    {
        "load": fields.Integer(required=True, metadata={"description": "waiting + running"}),
        "waiting": fields.Integer(required=True),
        "running": fields.Integer(required=True),
    },
    name="LoadSchema",
)


class ReadySchema(_Out):
    ready = fields.Boolean(required=True)
    models = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


# -- admin --------------------------------------------------------------------------
class WorkerCrashesSchema(_Out):
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


class AdminRowsSchema(_Out):
    models = fields.List(fields.Nested(AdminRowSchema), required=True)


class ReplicaLogSchema(_Out):
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
