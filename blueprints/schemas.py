"""Request schemas (marshmallow): bodies and query strings. Unknown body keys are errors
everywhere in our own API; unknown query parameters are ignored everywhere.

`/v1/responses` also takes the fields the official `openai` SDK sends
(`ResponsesRequestSchema`); OpenAI's Chat Completions and Completions bodies are in
`blueprints.openai_schemas`. What a request may name but the pool
cannot honour carries a refusal validator (`blueprints.fields.Only`, `OnlyEmpty`,
`OnlyValue`): documented as what is honoured, a 400 naming the field otherwise.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from blueprints.content import Content, ResponsesInput, Strict
from blueprints.fields import Count, Flag, Only, OnlyEmpty, ToolChoice, refuse
from blueprints.sparse import SparseLoad
from llmpool.config.fields import StrictBool, StrictInt
from llmpool.config.schema import DecodingSchema, decoding_fields

THINKING = ("default", "enabled", "disabled")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
SUMMARIES = ("auto", "concise", "detailed")
NO_SUMMARY = "Reasoning summaries are not produced; the reasoning text itself is returned."
NO_STATE = "'{}' is not supported: the pool keeps no stored state; send the input."
NO_LOGPROBS = "logprobs are not supported."


class StreamOptionsSchema(Strict):
    """`stream_options` of /v1/responses (Chat Completions adds `include_usage`)."""

    # OpenAI pads each streamed event with random characters unless this is false. The
    # pool never pads: false, or leaving it out, is what happens here.
    include_obfuscation = StrictBool(
        load_default=None,
        allow_none=True,
        validate=Only(
            [False], "stream_options.include_obfuscation: true is not supported; events are not padded."
        ),
    )


class RequestBody(SparseLoad):
    """A whole request body: refusals are checked once it is otherwise valid; only the
    fields it names are loaded one by one (`blueprints.sparse`)."""

    @post_load
    def _refuse(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        refuse(self, data)
        return data


class MessageSchema(Strict):
    role = fields.String(required=True, validate=validate.OneOf(("user", "assistant")))
    content = Content(required=True)


class ReasoningSchema(Strict):
    effort = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(EFFORTS))
    summary = fields.String(
        load_default=None, allow_none=True, validate=[validate.OneOf(SUMMARIES), Only(["auto"], NO_SUMMARY)]
    )
    generate_summary = fields.String(
        load_default=None, allow_none=True, validate=[validate.OneOf(SUMMARIES), Only(["auto"], NO_SUMMARY)]
    )


class TextFormatSchema(Strict):
    """OpenAI Responses' `text.format`: plain text, any JSON object, or JSON valid against
    `schema` (llmpool.structured checks the schema, and every answer against it)."""

    type = fields.String(required=True, validate=validate.OneOf(("text", "json_object", "json_schema")))
    name = fields.String(load_default=None)
    schema = fields.Dict(load_default=None)
    description = fields.String(load_default=None)
    strict = StrictBool(load_default=None, allow_none=True)

    @validates_schema
    def _schema_with_json_schema(self, data: dict[str, Any], **_: Any) -> None:
        if data["type"] == "json_schema" and data.get("schema") is None:
            raise ValidationError("Required for type 'json_schema'.", "schema")


class TextSchema(Strict):
    format = fields.Nested(TextFormatSchema, load_default=None, allow_none=True)
    verbosity = fields.String(
        load_default=None,
        allow_none=True,
        validate=[
            validate.OneOf(("low", "medium", "high")),
            Only(["medium"], "Only verbosity 'medium' (the model's own) is supported."),
        ],
    )


def _optional_decoding(name: str) -> fields.Field:
    """The decoding setting's field and range, but optional and nullable as OpenAI's are."""
    model = decoding_fields()[name]
    return type(model)(load_default=None, allow_none=True, validate=model.validators)


class ResponsesToolSchema(Strict):
    """A function tool as the Responses API writes it (flat: name beside type)."""

    type = fields.String(
        required=True,
        validate=Only(["function"], "Only function tools are supported: the pool runs no built-in tools."),
    )
    # Required of a function tool only: a built-in tool (which has none) is refused by its
    # type, after the 422 rules (blueprints.fields.refuse).
    name = fields.String(load_default=None, validate=validate.Regexp(r"^[A-Za-z0-9_-]{1,64}$"))
    description = fields.String(load_default=None, allow_none=True)
    parameters = fields.Dict(load_default=None, allow_none=True)
    strict = StrictBool(load_default=None, allow_none=True)

    @validates_schema
    def _named(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("type") == "function" and data.get("name") is None:
            raise ValidationError("Missing data for required field.", "name")


class ResponsesRequestSchema(RequestBody, Strict):
    model = fields.String(required=True, validate=validate.Length(min=1))
    input = ResponsesInput(load_default=None)
    messages = fields.List(
        fields.Nested(MessageSchema),
        load_default=None,
        validate=validate.Length(min=1, error="Must contain at least one message."),
    )
    instructions = fields.String(load_default=None, allow_none=True)
    source_lang_code = fields.String(load_default=None, allow_none=True)
    target_lang_code = fields.String(load_default=None, allow_none=True)
    allow_remote = StrictBool(load_default=False)
    stream = StrictBool(load_default=False)
    thinking = fields.String(load_default="default", validate=validate.OneOf(THINKING))
    decoding = fields.Nested(DecodingSchema, load_default=dict)
    # OpenAI's Responses fields (what the official SDK sends), mapped onto ours by the view.
    max_output_tokens = _optional_decoding("max_tokens")
    temperature = _optional_decoding("temperature")
    top_p = _optional_decoding("top_p")
    # Accepted and harmless: they change nothing the pool does.
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), load_default=None, allow_none=True)
    user = fields.String(load_default=None, allow_none=True)
    safety_identifier = fields.String(load_default=None, allow_none=True)
    prompt_cache_key = fields.String(load_default=None, allow_none=True)
    service_tier = fields.String(load_default=None, allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, load_default=None, allow_none=True)
    # Function tools (llmpool.serving.tool_use): the model's calls come back as
    # function_call items; built-in tools are refused by type.
    tools = fields.List(fields.Nested(ResponsesToolSchema), load_default=None, allow_none=True)
    tool_choice = ToolChoice(flat=True, load_default=None, allow_none=True)
    parallel_tool_calls = StrictBool(load_default=None, allow_none=True)
    # Honoured only at the values their validators name; anything else is a 400 naming it.
    max_tool_calls = StrictInt(
        load_default=None,
        allow_none=True,
        validate=Only([], "max_tool_calls is not supported; parallel_tool_calls: false allows one call."),
    )
    store = StrictBool(
        load_default=None,
        allow_none=True,
        validate=Only([False], "The pool stores no responses; send store: false or omit it."),
    )
    background = StrictBool(
        load_default=None, allow_none=True, validate=Only([False], "Background responses are not supported.")
    )
    previous_response_id = fields.String(
        load_default=None, allow_none=True, validate=Only([], NO_STATE.format("previous_response_id"))
    )
    conversation = fields.Raw(
        load_default=None, allow_none=True, validate=Only([], NO_STATE.format("conversation"))
    )
    prompt = fields.Raw(load_default=None, allow_none=True, validate=Only([], NO_STATE.format("prompt")))
    text = fields.Nested(TextSchema, load_default=None, allow_none=True)
    include = fields.List(
        fields.String(),
        load_default=None,
        allow_none=True,
        validate=OnlyEmpty("Cannot include {value}: the pool produces none of them."),
    )
    truncation = fields.String(
        load_default=None,
        allow_none=True,
        validate=[
            validate.OneOf(("auto", "disabled")),
            Only(["disabled"], "truncation 'auto' is not supported; a prompt too long is a 400."),
        ],
    )
    top_logprobs = StrictInt(
        load_default=None, allow_none=True, validate=[validate.Range(min=0, max=20), Only([0], NO_LOGPROBS)]
    )
    reasoning = fields.Nested(ReasoningSchema, load_default=None, allow_none=True)
    # Exactly one of these is given (and not null); documented as a `oneOf` of the two.
    exactly_one = ("input", "messages")

    @validates_schema
    def _one_prompt(self, data: dict[str, Any], **_: Any) -> None:
        if sum(data.get(name) is not None for name in self.exactly_one) != 1:
            names = " and ".join(repr(name) for name in self.exactly_one)
            raise ValidationError(f"Provide exactly one of {names}.", self.exactly_one[0])
        messages = data.get("messages")
        if messages is not None and messages[-1]["role"] != "user":
            raise ValidationError("The last message must have role 'user'.", "messages")


FUNCTION_NAME = validate.Regexp(r"^[A-Za-z0-9_-]{1,64}$", error="1 to 64 letters, digits, '_' or '-'.")


class LoadRequestSchema(Strict):
    replicas = StrictInt(load_default=None, validate=validate.Range(min=1))
    target_inflight = StrictInt(load_default=None, validate=validate.Range(min=1))
    overrides = fields.Dict(keys=fields.String(), values=fields.Raw(), load_default=dict)


# -- query strings (admin) ---------------------------------------------------------------
MAX_TAIL = 100_000
MAX_SEQ = 2**53  # line numbers stay exact as JSON numbers in every client


class LoadQuerySchema(Schema):
    wait = Flag(load_default=True, metadata={"description": "false: answer 202 at once"})


class UnloadQuerySchema(Schema):
    force = Flag(load_default=False, metadata={"description": "true: cancel running jobs at once"})


class LogsQuerySchema(Schema):
    since = Count(MAX_SEQ, metadata={"description": "`next` of an earlier answer"})
    tail = Count(
        MAX_TAIL,
        metadata={"description": "lines per replica (default 200, or all buffered with `since`)"},
    )
