"""Structured output as each API asks for it, mapped onto one `OutputFormat`.

Chat Completions sends `response_format` ({type, json_schema: {name, schema, strict}});
OpenAI Responses, and so the pool's own `/v1/responses`, send `text.format` ({type, name,
schema, strict}). `text` asks for nothing. The schema is checked here, as the request
arrives, so a broken schema is a 400 naming the field rather than a grammar error later.
"""

from __future__ import annotations

from typing import Any

from llmpool import structured
from llmpool.generation import OutputFormat


def from_response_format(value: dict[str, Any] | None) -> OutputFormat | None:
    """Chat Completions' `response_format` (already shaped by the request schema)."""
    if value is None or value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return OutputFormat("json_object", "response_format")
    spec = value["json_schema"]
    schema = structured.check_schema("response_format.json_schema.schema", spec["schema"])
    return OutputFormat("json_schema", "response_format", schema, spec["name"], bool(spec["strict"]))


def from_text_format(text: dict[str, Any] | None) -> OutputFormat | None:
    """OpenAI Responses' `text.format`."""
    value = (text or {}).get("format")
    if value is None or value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return OutputFormat("json_object", "text.format")
    schema = structured.check_schema("text.format.schema", value["schema"])
    return OutputFormat("json_schema", "text.format", schema, value["name"], bool(value["strict"]))


def text_format_echo(fmt: OutputFormat | None) -> dict[str, Any]:
    """The Response object's `text.format`: what the answer was constrained to."""
    if fmt is None:
        return {"type": "text"}
    if fmt.kind == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "name": fmt.name, "schema": fmt.schema, "strict": fmt.strict}
