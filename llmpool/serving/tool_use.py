"""Tool calling as Chat Completions and the Responses API ask for it, mapped onto one
`ToolUse`.

`tools` (functions, each with a JSON schema for its arguments), `tool_choice` (`none`,
`auto`, `required`, or a named function) and `parallel_tool_calls`. Each schema is checked
as the request arrives, so a broken one is a 400 naming the tool; a choice that names a
tool the request does not offer is a 400 too. `tool_choice: none` means no tools: the
model answers in text and its runtime is not shown them.
"""

from __future__ import annotations

from typing import Any

from llmpool import structured
from llmpool.errors import InvalidParam
from llmpool.generation import Tool, ToolUse

NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


# One offered function: {name, description, parameters} and the param path of its object.
Offered = tuple[dict[str, Any], str]


def from_chat(body: dict[str, Any]) -> ToolUse | None:
    """Chat Completions' tools (`{"type": "function", "function": {...}}`)."""
    functions = [
        (entry["function"], f"tools.{i}.function") for i, entry in enumerate(body.get("tools") or [])
    ]
    return tool_use(functions, body.get("tool_choice"), body.get("parallel_tool_calls"))


def from_responses(body: dict[str, Any]) -> ToolUse | None:
    """The Responses API's tools (`{"type": "function", "name", ...}`, flat)."""
    functions = [(entry, f"tools.{i}") for i, entry in enumerate(body.get("tools") or [])]
    return tool_use(functions, body.get("tool_choice"), body.get("parallel_tool_calls"))


def tool_use(
    functions: list[Offered], choice: Any, parallel: bool | None, schema_key: str = "parameters"
) -> ToolUse | None:
    """The request's ToolUse from (function, its param path) pairs and a tool_choice as
    the request schema loads it (a mode, or {"type": "function", "function": {"name"}}).
    `schema_key`: the field of the arguments' schema as the API names it, for the 400."""
    if choice is None:
        choice = "auto" if functions else "none"
    if not functions:
        if choice not in ("none", "auto"):  # auto with no tools is plain text, as OpenAI has it
            raise InvalidParam("tool_choice", "tool_choice asks for a call, but the request offers no tools.")
        return None
    if choice == "none":
        return None
    tools: list[Tool] = []
    for function, where in functions:
        if any(t.name == function["name"] for t in tools):
            raise InvalidParam(f"{where}.name", f"Two tools are named '{function['name']}'.")
        parameters = function["parameters"] or NO_ARGUMENTS
        structured.check_schema(f"{where}.{schema_key}", parameters)
        tools.append(Tool(function["name"], parameters, function["description"]))
    use = ToolUse(tuple(tools), parallel=parallel is not False)
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if use.tool(name) is None:
            raise InvalidParam("tool_choice", f"tool_choice names '{name}', which is not in tools.")
        return ToolUse(use.tools, "function", name, use.parallel)
    return ToolUse(use.tools, choice, None, use.parallel)
