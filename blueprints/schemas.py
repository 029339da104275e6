"""Request-body schemas (marshmallow). Unknown keys are errors everywhere in our own API.

The one exception is the OpenAI-compatible request (`ChatCompletionsRequestSchema`):
OpenAI clients send keys such as `user`, `seed` or `frequency_penalty` that change nothing
here, so unknown keys are dropped there; the view rejects values it cannot honour.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from llmpool.config.fields import StrictBool, StrictInt
from llmpool.config.schema import DecodingSchema, decoding_fields

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


_ITEM_SCHEMAS: dict[str, Schema] = {"text": TextItemSchema(), "image_url": ImageItemSchema()}


class Content(fields.Field):
    """A string, or a non-empty array of text / image_url content items."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not value:
            raise ValidationError("Must be a string or a non-empty array of content items.")
        items: list[Any] = []
        errors: dict[int, Any] = {}
        for index, item in enumerate(value):
            kind = item.get("type") if isinstance(item, dict) else None
            schema = _ITEM_SCHEMAS.get(kind) if isinstance(kind, str) else None
            if schema is None:
                errors[index] = {"type": ["Must be 'text' or 'image_url'."]}
                continue
            try:
                items.append(schema.load(item))
            except ValidationError as exc:
                errors[index] = exc.messages
        if errors:
            raise ValidationError(errors)
        return items


class MessageSchema(_Strict):
    role = fields.String(required=True, validate=validate.OneOf(("user", "assistant")))
    content = Content(required=True)


class ResponsesRequestSchema(_Strict):
    model = fields.String(required=True, validate=validate.Length(min=1))
    input = Content(load_default=None)
    messages = fields.List(fields.Nested(MessageSchema), load_default=None)
    instructions = fields.String(load_default=None, allow_none=True)
    source_lang_code = fields.String(load_default=None, allow_none=True)
    target_lang_code = fields.String(load_default=None, allow_none=True)
    allow_remote = StrictBool(load_default=False)
    stream = StrictBool(load_default=False)
    thinking = fields.String(load_default="default", validate=validate.OneOf(THINKING))
    decoding = fields.Nested(DecodingSchema, load_default=dict)

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


def _optional_decoding(name: str) -> fields.Field:
    """The decoding setting's field and range, but optional and nullable as OpenAI's are."""
    model = decoding_fields()[name]
    return type(model)(load_default=None, allow_none=True, validate=model.validators)


class ChatCompletionsRequestSchema(_Lenient):
    model = fields.String(required=True, validate=validate.Length(min=1))
    messages = fields.List(fields.Nested(ChatMessageSchema), required=True, validate=validate.Length(min=1))
    temperature = _optional_decoding("temperature")
    top_p = _optional_decoding("top_p")
    max_tokens = _optional_decoding("max_tokens")
    max_completion_tokens = _optional_decoding("max_tokens")
    stop = Stop(load_default=None, allow_none=True)
    stream = StrictBool(load_default=False, allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, load_default=None, allow_none=True)
    # Not OpenAI's, but vLLM's server takes them too.
    top_k = _optional_decoding("top_k")
    repetition_penalty = _optional_decoding("repetition_penalty")
    allow_remote = StrictBool(load_default=False, allow_none=True)
    # Loaded so the view can refuse values it cannot honour with a 400 (not silently drop).
    n = StrictInt(load_default=None, allow_none=True)
    logprobs = StrictBool(load_default=None, allow_none=True)
    tools = fields.Raw(load_default=None, allow_none=True)
    functions = fields.Raw(load_default=None, allow_none=True)
    response_format = fields.Raw(load_default=None, allow_none=True)


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
