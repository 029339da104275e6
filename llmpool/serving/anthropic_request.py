"""A request of Anthropic's Messages API as the core's `GenerationRequest`.

The body is loaded by its schema (`blueprints.anthropic_schemas`); here the blocks become
turns, and what the pool cannot take is a 400 naming the block:

- `system` (a string or text blocks) is the instructions.
- A user turn's `tool_result` blocks are tool turns answering the call they name (an
  `is_error` result reads "Error: ..." to the model), in order with the user's own text
  and images, which stay one user turn between them. Results are text: an image in one is
  refused.
- An assistant turn's `tool_use` blocks are its calls; its thinking blocks are not shown
  to the model again (Anthropic drops earlier turns' thoughts too).
- The last turn is the user's (or tool results): a final assistant turn, which Anthropic
  calls prefill, is refused, as Anthropic refuses it on models that do not continue one.
- `thinking`: `enabled` thinks, with `budget_tokens` (< max_tokens) bounding the
  thoughts: past it the answer ends as if max_tokens cut it; `disabled` does not think;
  `adaptive` leaves it to the model's default. A model without that mode is a 400, as
  for every API.
- `tools` with `tool_choice` (`auto`, `any` = at least one call, `tool` = that one,
  `none`, `disable_parallel_tool_use`); `output_config.format` asks for JSON valid against
  its schema.
"""

from __future__ import annotations

import json
from typing import Any

from llmpool import structured
from llmpool.errors import InvalidParam
from llmpool.generation import ContentItem, GenerationRequest, Message, OutputFormat, ToolCall, ToolUse
from llmpool.pool import Pool
from llmpool.serving import tool_use

# Block types Anthropic has that the pool cannot take: a 400 naming the block.
REFUSED_BLOCKS = (
    "document",
    "search_result",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "tool_search_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
    "tool_reference",
)
USER_BLOCKS = ("text", "image", "tool_result")
ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")
THINKING = {"enabled": "enabled", "disabled": "disabled", "adaptive": "default"}
TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def to_generation_request(body: dict[str, Any], pool: Pool, *, count_only: bool = False) -> GenerationRequest:
    """The core's request; `count_only`: for count_tokens (one token sampled, unchecked)."""
    turns = _turns(body["messages"])
    thinking, budget = _thinking(body, count_only)
    single_turn = len(turns) == 1 and not pool.entry(body["model"]).capabilities.multi_turn
    decoding: dict[str, Any] = (
        {"max_tokens": 1}
        if count_only
        else {
            "max_tokens": body["max_tokens"],
            "temperature": body["temperature"],
            "top_p": body["top_p"],
            "top_k": body["top_k"],
            "stop": body["stop_sequences"],
        }
    )
    return GenerationRequest(
        input=turns[0].content if single_turn else None,
        messages=None if single_turn else tuple(turns),
        instructions=_system(body["system"]),
        thinking=thinking,
        thinking_budget=budget,
        decoding=pool.settings.decoding.requested(decoding),
        output_format=None if count_only else _output_format(body["output_config"]),
        tools=_tools(body),
        count_only=count_only,
    )


def _system(system: str | list[dict[str, Any]] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system or None
    return "\n\n".join(block["text"] for block in system) or None


def _thinking(body: dict[str, Any], count_only: bool) -> tuple[str, int | None]:
    config = body["thinking"]
    if config is None:
        return "default", None
    budget = config["budget_tokens"]
    if budget is not None and not count_only and budget >= body["max_tokens"]:
        raise InvalidParam(
            "thinking.budget_tokens", "thinking.budget_tokens must be less than max_tokens.", "invalid_value"
        )
    return THINKING[config["type"]], budget


def _output_format(config: dict[str, Any] | None) -> OutputFormat | None:
    spec = (config or {}).get("format")
    if spec is None:
        return None
    schema = structured.check_schema("output_config.format.schema", spec["schema"])
    return OutputFormat("json_schema", "output_config.format", schema, "output", strict=True)


def _tools(body: dict[str, Any]) -> ToolUse | None:
    offered: list[tool_use.Offered] = []
    for index, tool in enumerate(body["tools"] or ()):
        if tool.get("type", "custom") != "custom":
            raise InvalidParam(
                f"tools.{index}.type",
                f"tools.{index}: '{tool['type']}' is a server tool; the pool runs no tools of its own.",
            )
        function = {
            "name": tool["name"],
            "description": tool["description"],
            "parameters": tool["input_schema"],
        }
        offered.append((function, f"tools.{index}"))
    choice: Any = None
    parallel: bool | None = None
    if (spec := body["tool_choice"]) is not None:
        name = spec["name"]
        choice = {"type": "function", "function": {"name": name}} if name else TOOL_CHOICE[spec["type"]]
        if spec["disable_parallel_tool_use"] is not None:
            parallel = not spec["disable_parallel_tool_use"]
    return tool_use.tool_use(offered, choice, parallel, schema_key="input_schema")


# -- turns ----------------------------------------------------------------------------
def _turns(messages: list[dict[str, Any]]) -> list[Message]:
    turns: list[Message] = []
    for index, message in enumerate(messages):
        where = f"messages.{index}.content"
        content = message["content"]
        if message["role"] == "assistant":
            turns.append(_assistant(content, where))
        elif isinstance(content, str):
            turns.append(Message("user", content))
        else:
            turns.extend(_user(content, where))
    if turns[-1].role == "assistant":
        raise InvalidParam(
            "messages",
            "The last message must be the user's: a final assistant turn (prefill) is not supported.",
            "invalid_value",
        )
    return turns


def _refuse(block: dict[str, Any], where: str, allowed: tuple[str, ...], role: str) -> None:
    kind = block["type"]
    if kind in REFUSED_BLOCKS:
        raise InvalidParam(f"{where}.type", f"{where}: blocks of type '{kind}' are not supported.")
    if kind not in allowed:
        raise InvalidParam(f"{where}.type", f"{where}: a {role} turn takes no '{kind}' block.")


def _user(blocks: list[dict[str, Any]], where: str) -> list[Message]:
    turns: list[Message] = []
    parts: list[ContentItem] = []
    for index, block in enumerate(blocks):
        at = f"{where}.{index}"
        _refuse(block, at, USER_BLOCKS, "user")
        if block["type"] == "tool_result":
            if parts:
                turns.append(Message("user", parts))
                parts = []
            turns.append(Message("tool", _result_text(block, at), tool_call_id=block["tool_use_id"]))
        else:
            parts.append(_part(block, at))
    if parts:
        turns.append(Message("user", parts))
    return turns


def _part(block: dict[str, Any], where: str) -> ContentItem:
    """A text or image block in the core's content shape."""
    if block["type"] == "text":
        return {"type": "text", "text": block["text"]}
    source = block["source"]
    if source["type"] == "file":
        raise InvalidParam(f"{where}.source", f"{where}: the pool keeps no uploaded files; send the image.")
    url = source["url"] if source["type"] == "url" else f"data:{source['media_type']};base64,{source['data']}"
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


def _result_text(block: dict[str, Any], where: str) -> str:
    content = block["content"]
    if isinstance(content, str):
        text = content
    else:
        for index, part in enumerate(content):
            _refuse(part, f"{where}.content.{index}", ("text",), "tool result")
        text = "".join(part["text"] for part in content)
    return f"Error: {text}" if block["is_error"] else text


def _assistant(content: str | list[dict[str, Any]], where: str) -> Message:
    if isinstance(content, str):
        return Message("assistant", content)
    text: list[str] = []
    calls: list[ToolCall] = []
    for index, block in enumerate(content):
        _refuse(block, f"{where}.{index}", ASSISTANT_BLOCKS, "assistant")
        if block["type"] == "text":
            text.append(block["text"])
        elif block["type"] == "tool_use":
            calls.append(ToolCall(block["id"], block["name"], json.dumps(block["input"], ensure_ascii=False)))
    return Message("assistant", "".join(text), tuple(calls))
