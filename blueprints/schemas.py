"""Request-body schemas (marshmallow). Unknown keys are errors everywhere in our own API.

The exceptions are OpenAI's own requests (`ChatCompletionsRequestSchema`,
`CompletionsRequestSchema`): OpenAI clients send keys such as `user`, `seed` or
`frequency_penalty` that change nothing here, so unknown keys are dropped there; the view
rejects values it cannot honour.

`/v1/responses` stays strict (an unknown key is a 422), but it also takes the fields the
official `openai` SDK sends (`ResponsesRequestSchema`); those the pool cannot honour are
loaded so the view can refuse them with a 400 naming them (`llmpool.serving.responses_request`).
Content arrays take OpenAI's Responses parts (`input_text`, `input_image`) as aliases of
ours, normalised to `text` / `image_url` here, so the core sees one shape.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from llmpool.config.fields import StrictBool, StrictInt
from llmpool.config.schema import DecodingSchema, decoding_fields
from llmpool.errors import InvalidParam
from llmpool.serving.responses_request import InputItems

THINKING = ("default", "enabled", "disabled")
DETAIL = ("auto", "low", "high")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class ImageUrlSchema(_Strict):
    url = fields.String(required=True, validate=validate.Length(min=1))
    detail = fields.String(load_default="auto", validate=validate.OneOf(DETAIL))


class TextItemSchema(_Strict):
    type = fields.String(required=True, validate=validate.Equal("text"))
    text = fields.String(required=True)


class ImageItemSchema(_Strict):
    type = fields.String(required=True, validate=validate.Equal("image_url"))
    image_url = fields.Nested(ImageUrlSchema, required=True)


class InputTextSchema(_Strict):
    """OpenAI Responses' text part (`output_text`: an assistant turn replayed as input)."""

    type = fields.String(required=True, validate=validate.OneOf(("input_text", "output_text")))
    text = fields.String(required=True)
    annotations = fields.List(fields.Raw(), load_default=None)  # on replayed output_text


class InputImageSchema(_Strict):
    """OpenAI Responses' image part: `image_url` is a URL (data:, https:, file:) or, for
    an uploaded file, absent in favour of `file_id`, which the pool has no store for."""

    type = fields.String(required=True, validate=validate.Equal("input_image"))
    image_url = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1))
    file_id = fields.String(load_default=None, allow_none=True)
    detail = fields.String(load_default="auto", allow_none=True, validate=validate.OneOf(DETAIL))


_ITEM_SCHEMAS: dict[str, Schema] = {
    "text": TextItemSchema(),
    "image_url": ImageItemSchema(),
    "input_text": InputTextSchema(),
    "output_text": InputTextSchema(),
    "input_image": InputImageSchema(),
}
# OpenAI part types the pool knows but cannot take: a 400 naming them, not a 422.
_UNSUPPORTED_PARTS = ("input_file", "input_audio", "refusal")


def _normalised(item: dict[str, Any], param: str) -> dict[str, Any]:
    """One loaded content item in the core's shape (`text` / `image_url`)."""
    if item["type"] in ("input_text", "output_text"):
        return {"type": "text", "text": item["text"]}
    if item["type"] == "input_image":
        if item["image_url"] is None:
            raise InvalidParam(
                f"{param}.image_url",
                "input_image needs image_url (a data:, https: or file: URL); the pool keeps no "
                "uploaded files, so file_id cannot be used.",
            )
        return {
            "type": "image_url",
            "image_url": {"url": item["image_url"], "detail": item["detail"] or "auto"},
        }
    return item


def load_content(value: Any, param: str) -> Any:
    """A string, or a non-empty array of content items normalised to the core's shape.

    Raises ValidationError (422) for malformed parts, InvalidParam (400) for OpenAI part
    types the pool cannot take. `param` is the field's path, for the 400's `param`.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise ValidationError("Must be a string or a non-empty array of content items.")
    items: list[Any] = []
    errors: dict[int, Any] = {}
    for index, item in enumerate(value):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind in _UNSUPPORTED_PARTS:
            raise InvalidParam(f"{param}[{index}].type", f"Content parts of type '{kind}' are not supported.")
        schema = _ITEM_SCHEMAS.get(kind) if isinstance(kind, str) else None
        if schema is None:
            errors[index] = {"type": ["Must be 'text', 'image_url', 'input_text' or 'input_image'."]}
            continue
        try:
            items.append(_normalised(schema.load(item), f"{param}[{index}]"))
        except ValidationError as exc:
            errors[index] = exc.messages
    if errors:
        raise ValidationError(errors)
    return items


class Content(fields.Field):
    """A string, or a non-empty array of content items (ours or OpenAI Responses' parts)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        return load_content(value, attr or "content")


INPUT_ROLES = ("system", "developer", "user", "assistant")
# OpenAI item types other than messages (tool calls and their outputs, reasoning replays,
# references to stored items): the pool runs no tools and stores nothing.
_UNSUPPORTED_ITEMS = (
    "function_call",
    "function_call_output",
    "reasoning",
    "item_reference",
    "custom_tool_call",
    "custom_tool_call_output",
    "computer_call",
    "computer_call_output",
    "web_search_call",
    "file_search_call",
    "local_shell_call",
    "local_shell_call_output",
    "mcp_call",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "image_generation_call",
    "code_interpreter_call",
    "compaction",
)


def _is_item(value: Any) -> bool:
    return isinstance(value, dict) and (
        "role" in value or value.get("type") in ("message", *_UNSUPPORTED_ITEMS)
    )


class ResponsesInput(Content):
    """`input`: a string, a content array, or OpenAI's list of input items (what the SDK
    sends: `[{"role": ..., "content": ...}]`, optionally with `"type": "message"`)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not (isinstance(value, list) and value and any(_is_item(v) for v in value)):
            return super()._deserialize(value, attr, data, **kwargs)
        items = InputItems()
        errors: dict[int, Any] = {}
        for index, item in enumerate(value):
            kind = item.get("type", "message") if isinstance(item, dict) else None
            if kind in _UNSUPPORTED_ITEMS:
                raise InvalidParam(
                    f"input[{index}].type",
                    f"Input items of type '{kind}' are not supported (the pool runs no tools "
                    "and keeps no stored items); send messages.",
                )
            if kind != "message" or not isinstance(item, dict):
                errors[index] = {"type": ["Must be a message item ({role, content})."]}
                continue
            try:
                items.append(_MESSAGE_ITEM.load(item))
            except ValidationError as exc:
                errors[index] = exc.messages
                continue
            items[-1]["content"] = load_content(items[-1]["content"], f"input[{index}].content")
        if errors:
            raise ValidationError(errors)
        return items


class MessageSchema(_Strict):
    role = fields.String(required=True, validate=validate.OneOf(("user", "assistant")))
    content = Content(required=True)


class InputMessageSchema(_Strict):
    """One OpenAI Responses input message; content is checked by `load_content` after."""

    type = fields.String(load_default="message", validate=validate.Equal("message"))
    role = fields.String(required=True, validate=validate.OneOf(INPUT_ROLES))
    content = fields.Raw(required=True)
    id = fields.String(load_default=None, allow_none=True)  # on replayed output messages
    status = fields.String(load_default=None, allow_none=True)


_MESSAGE_ITEM = InputMessageSchema()
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


class ReasoningSchema(_Strict):
    effort = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(EFFORTS))
    summary = fields.String(
        load_default=None, allow_none=True, validate=validate.OneOf(("auto", "concise", "detailed"))
    )
    generate_summary = fields.String(
        load_default=None, allow_none=True, validate=validate.OneOf(("auto", "concise", "detailed"))
    )


class TextFormatSchema(_Strict):
    type = fields.String(required=True, validate=validate.OneOf(("text", "json_object", "json_schema")))
    name = fields.String(load_default=None)
    schema = fields.Dict(load_default=None)
    description = fields.String(load_default=None)
    strict = StrictBool(load_default=None, allow_none=True)


class TextSchema(_Strict):
    format = fields.Nested(TextFormatSchema, load_default=None, allow_none=True)
    verbosity = fields.String(
        load_default=None, allow_none=True, validate=validate.OneOf(("low", "medium", "high"))
    )


def _optional_decoding(name: str) -> fields.Field:
    """The decoding setting's field and range, but optional and nullable as OpenAI's are."""
    model = decoding_fields()[name]
    return type(model)(load_default=None, allow_none=True, validate=model.validators)


class ResponsesRequestSchema(_Strict):
    model = fields.String(required=True, validate=validate.Length(min=1))
    input = ResponsesInput(load_default=None)
    messages = fields.List(fields.Nested(MessageSchema), load_default=None)
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
    reasoning = fields.Nested(ReasoningSchema, load_default=None, allow_none=True)
    # Accepted and harmless: they change nothing the pool does.
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), load_default=None, allow_none=True)
    user = fields.String(load_default=None, allow_none=True)
    safety_identifier = fields.String(load_default=None, allow_none=True)
    prompt_cache_key = fields.String(load_default=None, allow_none=True)
    service_tier = fields.String(load_default=None, allow_none=True)
    parallel_tool_calls = StrictBool(load_default=None, allow_none=True)
    max_tool_calls = StrictInt(load_default=None, allow_none=True, validate=validate.Range(min=1))
    stream_options = fields.Dict(load_default=None, allow_none=True)
    # Loaded so the view can refuse what it cannot honour with a 400 naming the field.
    store = StrictBool(load_default=None, allow_none=True)
    background = StrictBool(load_default=None, allow_none=True)
    tools = fields.List(fields.Raw(), load_default=None, allow_none=True)
    tool_choice = fields.Raw(load_default=None, allow_none=True)
    previous_response_id = fields.String(load_default=None, allow_none=True)
    conversation = fields.Raw(load_default=None, allow_none=True)
    prompt = fields.Raw(load_default=None, allow_none=True)
    text = fields.Nested(TextSchema, load_default=None, allow_none=True)
    include = fields.List(fields.String(), load_default=None, allow_none=True)
    truncation = fields.String(
        load_default=None, allow_none=True, validate=validate.OneOf(("auto", "disabled"))
    )
    top_logprobs = StrictInt(load_default=None, allow_none=True, validate=validate.Range(min=0, max=20))

    @validates_schema
    def _one_prompt(self, data: dict[str, Any], **_: Any) -> None:
        has_input, messages = data.get("input") is not None, data.get("messages")
        if has_input == (messages is not None):
            raise ValidationError("Provide exactly one of 'input' and 'messages'.", "input")
        if messages is not None:
            if not messages:
                raise ValidationError("Must contain at least one message.", "messages")
            if messages[-1]["role"] != "user":
                raise ValidationError("The last message must have role 'user'.", "messages")


CHAT_ROLES = ("system", "developer", "user", "assistant")


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


class ChatMessageSchema(_Lenient):
    # `developer` is OpenAI's newer name for `system`; extra keys such as `name` are dropped.
    role = fields.String(required=True, validate=validate.OneOf(CHAT_ROLES))
    content = Content(required=True)


class StreamOptionsSchema(_Lenient):
    include_usage = StrictBool(load_default=False, allow_none=True)


class Stop(fields.Field):
    """OpenAI's `stop`: a string or a list of strings (max 16), normalised to a list."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValidationError("Must be a string or an array of strings.")
        if len(items) > 16:
            raise ValidationError("At most 16 stop strings.")
        return items


class _OpenAISampling(_Lenient):
    """What OpenAI's chat and legacy Completions requests share."""

    model = fields.String(required=True, validate=validate.Length(min=1))
    temperature = _optional_decoding("temperature")
    top_p = _optional_decoding("top_p")
    max_tokens = _optional_decoding("max_tokens")
    stop = Stop(load_default=None, allow_none=True)
    stream = StrictBool(load_default=False, allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, load_default=None, allow_none=True)
    # Not OpenAI's, but vLLM's server takes them too.
    top_k = _optional_decoding("top_k")
    repetition_penalty = _optional_decoding("repetition_penalty")
    allow_remote = StrictBool(load_default=False, allow_none=True)
    # Loaded so the view can refuse values it cannot honour with a 400 (not silently drop).
    n = StrictInt(load_default=None, allow_none=True)


class ChatCompletionsRequestSchema(_OpenAISampling):
    messages = fields.List(fields.Nested(ChatMessageSchema), required=True, validate=validate.Length(min=1))
    max_completion_tokens = _optional_decoding("max_tokens")
    logprobs = StrictBool(load_default=None, allow_none=True)
    tools = fields.Raw(load_default=None, allow_none=True)
    functions = fields.Raw(load_default=None, allow_none=True)
    response_format = fields.Raw(load_default=None, allow_none=True)


class Prompt(fields.Field):
    """OpenAI Completions' `prompt`: one non-empty string (a list of exactly one string is
    taken as that string). Token-id arrays and several prompts are a 400 naming `prompt`.
    An empty prompt is refused: with no BOS token (SmolLM2, for one) it is no tokens at
    all, which no runtime can continue."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            value = value[0]
        if isinstance(value, str):
            if not value:
                raise ValidationError("Must not be empty.")
            return value
        if isinstance(value, list) and value:
            raise InvalidParam(
                "prompt", "Send one prompt as a string: token arrays and several prompts are not supported."
            )
        raise ValidationError("Must be a string.")


class CompletionsRequestSchema(_OpenAISampling):
    """OpenAI's legacy Completions request (unknown keys dropped, as for chat)."""

    prompt = Prompt(required=True)
    best_of = StrictInt(load_default=None, allow_none=True)
    echo = StrictBool(load_default=None, allow_none=True)
    logprobs = StrictInt(load_default=None, allow_none=True)
    suffix = fields.String(load_default=None, allow_none=True)
    logit_bias = fields.Dict(load_default=None, allow_none=True)


class LoadRequestSchema(_Strict):
    replicas = StrictInt(load_default=None, validate=validate.Range(min=1))
    target_inflight = StrictInt(load_default=None, validate=validate.Range(min=1))
    overrides = fields.Dict(keys=fields.String(), values=fields.Raw(), load_default=dict)


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
