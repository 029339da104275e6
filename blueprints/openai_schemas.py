"""OpenAI's own request bodies: Chat Completions and the legacy Completions.

Strict like the rest of the API: a key the pool does not know is a 422 naming it, since a
client that sends `min_p` or `presence_penalty` must not believe it took effect.
OpenAI's fields are all declared, each either honoured, harmless (`user`, `metadata`: they
change nothing here), or honoured only at the value that changes nothing (a 400 naming it
otherwise: `blueprints.fields.Only`). Messages stay lenient: the SDK replays an answer's
message with keys such as `refusal` and `annotations`, which are dropped; a message's `name`
is declared (passed on, or a 400 where it cannot reach the model: serving.chat_api).
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from blueprints.content import Content, Strict
from blueprints.fields import Only, OnlyEmpty, OnlyValue, Prompt, Stop, ToolChoice
from blueprints.schemas import (
    EFFORTS,
    FUNCTION_NAME,
    NO_LOGPROBS,
    RequestBody,
    StreamOptionsSchema,
    _optional_decoding,
)
from llmpool.config.fields import StrictBool, StrictFloat, StrictInt

NO_PENALTY = "{} is not supported; repetition_penalty is the pool's penalty for repeats."


def _only_at(name: str, value: bool) -> StrictBool:
    """A flag honoured only at `value`, what the pool always does."""
    return StrictBool(
        load_default=None,
        allow_none=True,
        validate=Only([value], f"{name}: {str(not value).lower()} is not supported."),
    )


def _penalty(name: str) -> StrictFloat:
    """OpenAI's frequency and presence penalties: honoured only at 0 (no penalty)."""
    return StrictFloat(
        load_default=None,
        allow_none=True,
        validate=[validate.Range(-2, 2), Only([0], NO_PENALTY.format(name))],
    )


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


class CalledFunctionSchema(Strict):
    name = fields.String(required=True, validate=FUNCTION_NAME)
    arguments = fields.String(required=True)


class ToolCallSchema(Strict):
    """A call in an assistant turn of the history (as the API returned it)."""

    id = fields.String(required=True, validate=validate.Length(min=1))
    type = fields.String(required=True, validate=validate.OneOf(("function",)))
    function = fields.Nested(CalledFunctionSchema, required=True)


class ChatMessageSchema(_Lenient):
    # `developer` is OpenAI's newer name for `system`. `name` goes where the runtime renders
    # the chat with the model's template, else it is a 400 (llmpool.serving.chat_api); other
    # extra keys (what SDKs echo back of an answer: `refusal`, `annotations`) are dropped.
    role = fields.String(required=True, validate=validate.OneOf(CHAT_ROLES))
    content = Content(load_default=None, allow_none=True)
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1))
    tool_calls = fields.List(fields.Nested(ToolCallSchema), load_default=None, allow_none=True)
    tool_call_id = fields.String(load_default=None, allow_none=True)

    @validates_schema
    def _turn_shape(self, data: dict[str, Any], **_: Any) -> None:
        role = data["role"]
        if data.get("tool_calls") and role != "assistant":
            raise ValidationError("Only an assistant message makes tool calls.", "tool_calls")
        if role == "tool" and not data.get("tool_call_id"):
            raise ValidationError("A tool message names the call it answers.", "tool_call_id")
        if data.get("content") is None and not (role == "assistant" and data.get("tool_calls")):
            raise ValidationError("Missing data for required field.", "content")


class FunctionSchema(Strict):
    name = fields.String(required=True, validate=FUNCTION_NAME)
    description = fields.String(load_default=None, allow_none=True)
    parameters = fields.Dict(load_default=None, allow_none=True)
    strict = StrictBool(load_default=None, allow_none=True)


class ToolSchema(Strict):
    type = fields.String(required=True, validate=validate.OneOf(("function",)))
    function = fields.Nested(FunctionSchema, required=True)


class OpenAIStreamOptionsSchema(StreamOptionsSchema):
    include_usage = StrictBool(load_default=False, allow_none=True)


def _only_one(name: str) -> StrictInt:
    return StrictInt(load_default=None, allow_none=True, validate=Only([1], f"Only {name}=1 is supported."))


class _OpenAISampling(RequestBody, Strict):
    """What OpenAI's chat and legacy Completions requests share."""

    model = fields.String(required=True, validate=validate.Length(min=1))
    temperature = _optional_decoding("temperature")
    top_p = _optional_decoding("top_p")
    max_tokens = _optional_decoding("max_tokens")
    stop = Stop(load_default=None, allow_none=True)
    stream = StrictBool(load_default=False, allow_none=True)
    stream_options = fields.Nested(OpenAIStreamOptionsSchema, load_default=None, allow_none=True)
    # Not OpenAI's, but vLLM's server takes them too.
    top_k = _optional_decoding("top_k")
    repetition_penalty = _optional_decoding("repetition_penalty")
    # OpenAI's: a seed per request, where the runtime takes one (else a 400 naming it).
    seed = _optional_decoding("seed")
    allow_remote = StrictBool(load_default=False, allow_none=True)
    # Accepted and harmless: they change nothing the pool does.
    user = fields.String(load_default=None, allow_none=True)
    # Honoured only at the values their validators name; anything else is a 400 naming it.
    n = _only_one("n")
    frequency_penalty = _penalty("frequency_penalty")
    presence_penalty = _penalty("presence_penalty")
    logit_bias = fields.Dict(
        load_default=None, allow_none=True, validate=OnlyEmpty("logit_bias is not supported.")
    )
    # SGLang's and vLLM's extensions, which vllm-router writes into every body it forwards,
    # at these values: honoured only there.
    ignore_eos = _only_at("ignore_eos", False)
    no_stop_trim = _only_at("no_stop_trim", False)
    skip_special_tokens = _only_at("skip_special_tokens", True)
    return_hidden_states = _only_at("return_hidden_states", False)


NO_TOOLS = "The legacy functions and function_call fields are not supported; send tools."


class JsonSchemaSpec(Strict):
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    schema = fields.Dict(required=True)
    strict = StrictBool(load_default=None, allow_none=True)
    description = fields.String(load_default=None, allow_none=True)


class ResponseFormatSchema(Strict):
    """Chat Completions' `response_format`: text, any JSON object, or JSON valid against
    `json_schema.schema` (llmpool.structured checks both)."""

    type = fields.String(required=True, validate=validate.OneOf(("text", "json_object", "json_schema")))
    json_schema = fields.Nested(JsonSchemaSpec, load_default=None)

    @validates_schema
    def _spec_with_json_schema(self, data: dict[str, Any], **_: Any) -> None:
        if data["type"] == "json_schema" and data.get("json_schema") is None:
            raise ValidationError("Required for type 'json_schema'.", "json_schema")


class ChatCompletionsRequestSchema(_OpenAISampling):
    messages = fields.List(fields.Nested(ChatMessageSchema), required=True, validate=validate.Length(min=1))
    max_completion_tokens = _optional_decoding("max_tokens")
    tools = fields.List(fields.Nested(ToolSchema), load_default=None, allow_none=True)
    tool_choice = ToolChoice(load_default=None, allow_none=True)
    parallel_tool_calls = StrictBool(load_default=None, allow_none=True)
    # The legacy `functions` / `function_call` of the API before tools: not taken.
    functions = fields.List(fields.Raw(), load_default=None, allow_none=True, validate=OnlyEmpty(NO_TOOLS))
    function_call = fields.Raw(load_default=None, allow_none=True, validate=Only(["none"], NO_TOOLS))
    logprobs = StrictBool(load_default=None, allow_none=True, validate=Only([False], NO_LOGPROBS))
    top_logprobs = StrictInt(
        load_default=None, allow_none=True, validate=[validate.Range(min=0, max=20), Only([0], NO_LOGPROBS)]
    )
    response_format = fields.Nested(ResponseFormatSchema, load_default=None, allow_none=True)
    # More of vllm-router's: the pool's reasoning split is what they ask for.
    continue_final_message = _only_at("continue_final_message", False)
    separate_reasoning = _only_at("separate_reasoning", True)
    stream_reasoning = _only_at("stream_reasoning", True)
    include_reasoning = _only_at("include_reasoning", True)
    # Onto `thinking`, as /v1/responses maps `reasoning.effort`.
    reasoning_effort = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(EFFORTS))
    # Accepted and harmless.
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), load_default=None, allow_none=True)
    safety_identifier = fields.String(load_default=None, allow_none=True)
    prompt_cache_key = fields.String(load_default=None, allow_none=True)
    service_tier = fields.String(load_default=None, allow_none=True)
    # Honoured only where they ask for nothing.
    store = StrictBool(
        load_default=None,
        allow_none=True,
        validate=Only([False], "The pool stores no completions; send store: false or omit it."),
    )
    modalities = fields.List(
        fields.String(),
        load_default=None,
        allow_none=True,
        validate=OnlyValue(["text"], "Only text output is supported: modalities ['text']."),
    )
    audio = fields.Raw(
        load_default=None, allow_none=True, validate=Only([], "Audio output is not supported.")
    )
    prediction = fields.Raw(
        load_default=None, allow_none=True, validate=Only([], "Predicted outputs are not supported.")
    )
    verbosity = fields.String(
        load_default=None,
        allow_none=True,
        validate=[
            validate.OneOf(("low", "medium", "high")),
            Only(["medium"], "verbosity other than 'medium' is not supported."),
        ],
    )
    web_search_options = fields.Raw(
        load_default=None, allow_none=True, validate=Only([], "Web search is not supported.")
    )


class CompletionsRequestSchema(_OpenAISampling):
    """OpenAI's legacy Completions request."""

    prompt = Prompt(required=True)
    best_of = _only_one("best_of")
    echo = StrictBool(load_default=None, allow_none=True, validate=Only([False], "echo is not supported."))
    logprobs = StrictInt(load_default=None, allow_none=True, validate=Only([], NO_LOGPROBS))
    suffix = fields.String(
        load_default=None, allow_none=True, validate=Only([""], "suffix (insertion) is not supported.")
    )
