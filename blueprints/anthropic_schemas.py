"""Request schemas of Anthropic's Messages API (POST /v1/messages and its count_tokens).

Strict, as Anthropic's own API is: an unknown key is a 422. Content blocks and tools are
dispatched by their `type` (`Blocks`): each type the pool takes has its schema below; the
types it knows but cannot take (documents, server tools, ...) load as they are and are
refused, with a 400 naming the block, by `llmpool.serving.anthropic_request`, which maps
the loaded body onto the core's request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from blueprints.content import Strict
from blueprints.fields import Only, OnlyEmpty
from blueprints.schemas import FUNCTION_NAME, RequestBody, _optional_decoding
from llmpool.config.fields import StrictBool, StrictInt
from llmpool.serving.anthropic_request import REFUSED_BLOCKS

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MIN_THINKING_BUDGET = 1024  # Anthropic's floor, so a request valid here is valid there
MAX_STOP_SEQUENCES = 16


class CacheControlSchema(Strict):
    """A prompt-cache breakpoint. Taken as Anthropic defines it, a hint that never changes
    the answer: the runtimes keep prompt prefixes cached on their own."""

    type = fields.String(required=True, validate=validate.Equal("ephemeral"))
    ttl = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(("5m", "1h")))


def _cache() -> fields.Nested:
    return fields.Nested(CacheControlSchema, load_default=None, allow_none=True)


class TextBlockSchema(Strict):
    type = fields.String(required=True, validate=validate.Equal("text"))
    text = fields.String(required=True)
    cache_control = _cache()


class ImageSourceSchema(Strict):
    type = fields.String(required=True, validate=validate.OneOf(("base64", "url", "file")))
    media_type = fields.String(load_default=None, validate=validate.OneOf(IMAGE_TYPES))
    data = fields.String(load_default=None, validate=validate.Length(min=1))
    url = fields.String(load_default=None, validate=validate.Length(min=1))
    file_id = fields.String(load_default=None)

    @validates_schema
    def _complete(self, data: dict[str, Any], **_: Any) -> None:
        needs = {"base64": ("media_type", "data"), "url": ("url",), "file": ("file_id",)}[data["type"]]
        for name in needs:
            if data.get(name) is None:
                raise ValidationError(f"Required for a source of type '{data['type']}'.", name)


class ImageBlockSchema(Strict):
    type = fields.String(required=True, validate=validate.Equal("image"))
    source = fields.Nested(ImageSourceSchema, required=True)
    cache_control = _cache()


class ToolUseBlockSchema(Strict):
    """A call the model made earlier (an assistant turn, replayed)."""

    type = fields.String(required=True, validate=validate.Equal("tool_use"))
    id = fields.String(required=True, validate=validate.Length(min=1))
    name = fields.String(required=True, validate=FUNCTION_NAME)
    input = fields.Dict(required=True)
    cache_control = _cache()


class ThinkingBlockSchema(Strict):
    """Thoughts of an earlier answer, replayed: as Anthropic does, they are not shown to
    the model again (only the last turn's own thinking counts, and that is generated)."""

    type = fields.String(required=True, validate=validate.Equal("thinking"))
    thinking = fields.String(required=True)
    signature = fields.String(load_default=None, allow_none=True)


class RedactedThinkingBlockSchema(Strict):
    type = fields.String(required=True, validate=validate.Equal("redacted_thinking"))
    data = fields.String(required=True)


class Blocks(fields.Field):
    """A list of blocks dispatched by `type` (`kinds`), or, with `text`, a plain string
    (kept a string). Types in `refused` load as they are, for the mapping to refuse by
    name; `default`: the type of an item that names none; `others_refused`: every type
    not in `kinds` is a refusal (tools: any type but a client tool is a server tool)."""

    def __init__(
        self,
        kinds: Mapping[str, Schema],
        *,
        text: bool = False,
        refused: tuple[str, ...] = (),
        default: str | None = None,
        others_refused: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kinds, self.text, self.refused = kinds, text, refused
        self.default, self.others_refused = default, others_refused

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if self.text and isinstance(value, str):
            return value
        if not isinstance(value, list) or (self.text and not value):
            raise ValidationError(
                "Must be a string or a non-empty array of blocks." if self.text else "Must be an array."
            )
        items: list[Any] = []
        errors: dict[int, Any] = {}
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                errors[index] = ["Must be an object."]
                continue
            kind = item.get("type", self.default)
            if isinstance(kind, str) and (
                kind in self.refused or (self.others_refused and kind not in self.kinds)
            ):
                items.append(dict(item))
                continue
            schema = self.kinds.get(kind) if isinstance(kind, str) else None
            if schema is None:
                errors[index] = {"type": [f"Must be one of: {', '.join(self.kinds)}."]}
                continue
            try:
                items.append(schema.load({"type": kind, **item}))
            except ValidationError as exc:
                errors[index] = exc.messages
        if errors:
            raise ValidationError(errors)
        return items


class ToolResultBlockSchema(Strict):
    """What a call returned: text (images in a result are refused by the mapping)."""

    type = fields.String(required=True, validate=validate.Equal("tool_result"))
    tool_use_id = fields.String(required=True, validate=validate.Length(min=1))
    content = Blocks(
        {"text": TextBlockSchema(), "image": ImageBlockSchema()},
        text=True,
        refused=REFUSED_BLOCKS,
        load_default="",
    )
    is_error = StrictBool(load_default=None, allow_none=True)
    cache_control = _cache()


MESSAGE_BLOCKS: dict[str, Schema] = {
    "text": TextBlockSchema(),
    "image": ImageBlockSchema(),
    "tool_use": ToolUseBlockSchema(),
    "tool_result": ToolResultBlockSchema(),
    "thinking": ThinkingBlockSchema(),
    "redacted_thinking": RedactedThinkingBlockSchema(),
}


class AnthropicTurnSchema(Strict):
    role = fields.String(required=True, validate=validate.OneOf(("user", "assistant")))
    content = Blocks(MESSAGE_BLOCKS, text=True, refused=REFUSED_BLOCKS, required=True)


class AnthropicToolSchema(Strict):
    """A client tool: the model may call it; the client runs it."""

    type = fields.String(load_default="custom", validate=validate.Equal("custom"))
    name = fields.String(required=True, validate=FUNCTION_NAME)
    description = fields.String(load_default=None, allow_none=True)
    input_schema = fields.Dict(required=True)
    # Anthropic's strict tool use: the pool checks every call against its schema anyway.
    strict = StrictBool(load_default=None, allow_none=True)
    cache_control = _cache()


class AnthropicToolChoiceSchema(Strict):
    type = fields.String(required=True, validate=validate.OneOf(("auto", "any", "tool", "none")))
    name = fields.String(load_default=None, validate=FUNCTION_NAME)
    disable_parallel_tool_use = StrictBool(load_default=None, allow_none=True)

    @validates_schema
    def _named(self, data: dict[str, Any], **_: Any) -> None:
        if (data["type"] == "tool") != (data.get("name") is not None):
            raise ValidationError(
                "A choice of type 'tool' names the tool; no other type takes a name.", "name"
            )


class AnthropicThinkingSchema(Strict):
    """`enabled` (with a budget for the thoughts), `disabled`, or `adaptive` (the model's
    own default)."""

    type = fields.String(required=True, validate=validate.OneOf(("enabled", "disabled", "adaptive")))
    budget_tokens = StrictInt(load_default=None, validate=validate.Range(min=MIN_THINKING_BUDGET))
    display = fields.String(
        load_default=None, allow_none=True, validate=validate.OneOf(("summarized", "omitted"))
    )

    @validates_schema
    def _budget(self, data: dict[str, Any], **_: Any) -> None:
        if (data["type"] == "enabled") != (data.get("budget_tokens") is not None):
            raise ValidationError(
                "Required with type 'enabled', and taken with no other type.", "budget_tokens"
            )


class AnthropicMetadataSchema(Strict):
    user_id = fields.String(load_default=None, allow_none=True)


class OutputFormatSchema(Strict):
    type = fields.String(required=True, validate=validate.Equal("json_schema"))
    schema = fields.Dict(required=True)


class OutputConfigSchema(Strict):
    format = fields.Nested(OutputFormatSchema, load_default=None, allow_none=True)
    effort = fields.String(
        load_default=None,
        allow_none=True,
        validate=[
            validate.OneOf(("low", "medium", "high", "xhigh", "max")),
            Only([], "output_config.effort is not supported; use thinking."),
        ],
    )


NO_SERVER = "The pool runs no {} of its own."


class _Prompt(RequestBody, Strict):
    """What a message request and its token count share."""

    model = fields.String(required=True, validate=validate.Length(min=1))
    messages = fields.List(fields.Nested(AnthropicTurnSchema), required=True, validate=validate.Length(min=1))
    system = Blocks({"text": TextBlockSchema()}, text=True, load_default=None, allow_none=True)
    tools = Blocks(
        {"custom": AnthropicToolSchema()},
        default="custom",
        others_refused=True,
        load_default=None,
        allow_none=True,
    )
    tool_choice = fields.Nested(AnthropicToolChoiceSchema, load_default=None, allow_none=True)
    thinking = fields.Nested(AnthropicThinkingSchema, load_default=None, allow_none=True)
    output_config = fields.Nested(OutputConfigSchema, load_default=None, allow_none=True)
    cache_control = _cache()
    # The pool's own (as on every inference route): the model may be a remote API.
    allow_remote = StrictBool(load_default=False)
    # Known, and refused: nothing here would honour them.
    speed = fields.String(
        load_default=None,
        allow_none=True,
        validate=[validate.OneOf(("standard", "fast")), Only(["standard"], "speed 'fast' is not supported.")],
    )
    mcp_servers = fields.List(
        fields.Raw(), load_default=None, allow_none=True, validate=OnlyEmpty(NO_SERVER.format("MCP servers"))
    )
    container = fields.Raw(
        load_default=None, allow_none=True, validate=Only([], NO_SERVER.format("containers"))
    )
    context_management = fields.Raw(
        load_default=None, allow_none=True, validate=Only([], "context_management is not supported.")
    )
    diagnostics = fields.Raw(
        load_default=None, allow_none=True, validate=Only([], "diagnostics are not supported.")
    )
    inference_geo = fields.String(
        load_default=None,
        allow_none=True,
        validate=Only([], "inference_geo is not supported: the pool runs here."),
    )


class MessagesRequestSchema(_Prompt):
    max_tokens = _optional_decoding("max_tokens")
    stop_sequences = fields.List(
        fields.String(validate=validate.Length(min=1)),
        load_default=None,
        allow_none=True,
        validate=validate.Length(max=MAX_STOP_SEQUENCES),
    )
    stream = StrictBool(load_default=False)
    temperature = _optional_decoding("temperature")
    top_p = _optional_decoding("top_p")
    top_k = _optional_decoding("top_k")
    metadata = fields.Nested(AnthropicMetadataSchema, load_default=None, allow_none=True)
    # Accepted and harmless: there is one tier here.
    service_tier = fields.String(
        load_default=None, allow_none=True, validate=validate.OneOf(("auto", "standard_only"))
    )

    @validates_schema
    def _max_tokens_given(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("max_tokens") is None:  # required, as Anthropic has it
            raise ValidationError("Missing data for required field.", "max_tokens")


class CountTokensRequestSchema(_Prompt):
    """What `count_tokens` counts: the prompt of a message request, without its sampling."""
