"""Content arrays and OpenAI Responses input items (request-body fields).

Content arrays take OpenAI's Responses parts (`input_text`, `input_image`) as aliases of
ours, normalised to `text` / `image_url` here, so the core sees one shape. The part
schemas below are what `load_content` checks each item with, and what the document
lists as the array's items (`blueprints.contract`).
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from llmpool.errors import InvalidParam
from llmpool.serving.responses_request import InputItems

DETAIL = ("auto", "low", "high")


class Strict(Schema):
    class Meta:
        unknown = RAISE


class ImageUrlSchema(Strict):
    url = fields.String(required=True, validate=validate.Length(min=1))
    detail = fields.String(load_default="auto", validate=validate.OneOf(DETAIL))


class TextItemSchema(Strict):
    type = fields.String(required=True, validate=validate.Equal("text"))
    text = fields.String(required=True)


class ImageItemSchema(Strict):
    type = fields.String(required=True, validate=validate.Equal("image_url"))
    image_url = fields.Nested(ImageUrlSchema, required=True)


class InputTextSchema(Strict):
    """OpenAI Responses' text part (`output_text`: an assistant turn replayed as input)."""

    type = fields.String(required=True, validate=validate.OneOf(("input_text", "output_text")))
    text = fields.String(required=True)
    annotations = fields.List(fields.Raw(), load_default=None)  # on replayed output_text


class InputImageSchema(Strict):
    """OpenAI Responses' image part: `image_url` is a URL (data:, https:, file:) or, for
    an uploaded file, absent in favour of `file_id`, which the pool has no store for."""

    type = fields.String(required=True, validate=validate.Equal("input_image"))
    image_url = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1))
    file_id = fields.String(load_default=None, allow_none=True)
    detail = fields.String(load_default="auto", allow_none=True, validate=validate.OneOf(DETAIL))


ITEM_SCHEMAS: dict[str, Schema] = {
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
        schema = ITEM_SCHEMAS.get(kind) if isinstance(kind, str) else None
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


class ItemContent(Content):
    """An input item's content: documented as `Content`, loaded as it is and checked by
    `load_content` after, with the item's path for the 400's `param`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        return value


INPUT_ROLES = ("system", "developer", "user", "assistant")
# OpenAI item types other than messages and function calls with their outputs (built-in
# tools, reasoning replays, references to stored items): the pool runs no tools of its own
# and stores nothing.
_UNSUPPORTED_ITEMS = (
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


class InputMessageSchema(Strict):
    """One OpenAI Responses input message; content is checked by `load_content` after."""

    type = fields.String(load_default="message", validate=validate.Equal("message"))
    role = fields.String(required=True, validate=validate.OneOf(INPUT_ROLES))
    content = ItemContent(required=True)
    id = fields.String(load_default=None, allow_none=True)  # on replayed output messages
    status = fields.String(load_default=None, allow_none=True)


MESSAGE_ITEM = InputMessageSchema()


class FunctionCallItemSchema(Strict):
    """A call the model made earlier, replayed (`function_call`)."""

    type = fields.String(required=True, validate=validate.Equal("function_call"))
    call_id = fields.String(required=True, validate=validate.Length(min=1))
    name = fields.String(required=True, validate=validate.Length(min=1))
    arguments = fields.String(required=True)
    id = fields.String(load_default=None, allow_none=True)
    status = fields.String(load_default=None, allow_none=True)


class FunctionCallOutputItemSchema(Strict):
    """What a call returned (`function_call_output`): text, as the tool turn's content."""

    type = fields.String(required=True, validate=validate.Equal("function_call_output"))
    call_id = fields.String(required=True, validate=validate.Length(min=1))
    output = fields.String(required=True)
    id = fields.String(load_default=None, allow_none=True)
    status = fields.String(load_default=None, allow_none=True)


CALL_ITEMS = {
    "function_call": FunctionCallItemSchema(),
    "function_call_output": FunctionCallOutputItemSchema(),
}


def _call_entry(item: dict[str, Any], before: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A function call item as a chat turn: calls join the assistant turn just before them
    (a turn's parallel calls are one turn), an output is a tool turn. None: merged."""
    if item["type"] == "function_call_output":
        return {"role": "tool", "content": item["output"], "tool_call_id": item["call_id"]}
    call = {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }
    last = before[-1] if before else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        return None
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _is_item(value: Any) -> bool:
    return isinstance(value, dict) and (
        "role" in value or value.get("type") in ("message", *CALL_ITEMS, *_UNSUPPORTED_ITEMS)
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
                    f"Input items of type '{kind}' are not supported (the pool runs no tools of "
                    "its own and keeps no stored items); send messages and function calls.",
                )
            if kind in CALL_ITEMS and isinstance(item, dict):
                try:
                    entry = _call_entry(CALL_ITEMS[kind].load(item), items)
                except ValidationError as exc:
                    errors[index] = exc.messages
                    continue
                if entry is not None:
                    items.append(entry)
                continue
            if kind != "message" or not isinstance(item, dict):
                errors[index] = {"type": ["Must be a message item ({role, content})."]}
                continue
            try:
                items.append(MESSAGE_ITEM.load(item))
            except ValidationError as exc:
                errors[index] = exc.messages
                continue
            items[-1]["content"] = load_content(items[-1]["content"], f"input[{index}].content")
        if errors:
            raise ValidationError(errors)
        return items
