"""OpenAI-style message lists (chat `messages`, Responses `input` items) into the pool's
instructions and turns: one rule for both APIs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmpool.errors import InvalidParam
from llmpool.generation import Message, ToolCall, content_text

SYSTEM_ROLES = ("system", "developer")


def split_system(
    entries: list[dict[str, Any]], field: str, content_param: Callable[[int], str]
) -> tuple[list[str], list[Message]]:
    """OpenAI-style messages as (system and developer texts, the other turns in order).
    A system text with non-text parts, or a conversation that does not end with the
    user's turn, is a 400 naming the field."""
    system: list[str] = []
    turns: list[Message] = []
    for index, entry in enumerate(entries):
        content = entry["content"]
        if entry["role"] in SYSTEM_ROLES:
            if not isinstance(content, str) and any(part["type"] != "text" for part in content):
                raise InvalidParam(content_param(index), "System and developer messages take text only.")
            system.append(content_text(content))
        else:
            turns.append(_turn(entry))
    if not turns or turns[-1].role not in ("user", "tool"):
        message = f"The last message of '{field}' must have role 'user' (or 'tool', answering a call)."
        raise InvalidParam(field, message, "invalid_value")
    return system, turns


def _turn(entry: dict[str, Any]) -> Message:
    """A user, assistant or tool turn; an assistant's calls and a tool's call id kept."""
    calls = tuple(
        ToolCall(call["id"], call["function"]["name"], call["function"]["arguments"])
        for call in entry.get("tool_calls") or ()
    )
    content = entry["content"] if entry["content"] is not None else ""
    return Message(entry["role"], content, calls, entry.get("tool_call_id"), entry.get("name"))
