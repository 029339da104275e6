"""Calls held by a JSON constraint (llmpool.tool_calls: `forced_schema`, `read_forced`),
the way in-process vLLM holds a named or required tool choice; and the vllm adapter's
prompt, which shows the model its tools through its own template."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from llmpool.backends.vllm import VllmAdapter, template_messages
from llmpool.config.loader import load_settings
from llmpool.generation import Chunk, Final, GenerationRequest, Message, Tool, ToolCall, ToolUse
from llmpool.tool_calls import forced_schema, read_forced

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ZONE = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
TOOLS = (Tool("get_weather", CITY), Tool("get_time", ZONE))


def chunks(text: str, final: Final | None = None) -> Iterator[Chunk]:
    yield Chunk(reasoning="hmm")
    for i in range(0, len(text), 3):
        yield Chunk(text=text[i : i + 3])
    yield Chunk(final=final or Final())


def calls_of(pieces: list[Chunk]) -> list[dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for piece in pieces:
        if piece.tool_call is not None:
            call = calls.setdefault(piece.tool_call.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.tool_call.id or ""
            call["name"] += piece.tool_call.name or ""
            call["arguments"] += piece.tool_call.arguments
    return list(calls.values())


def test_a_named_choice_is_held_to_its_tools_arguments() -> None:
    use = ToolUse(TOOLS, "function", "get_time")
    assert forced_schema(use) == ZONE
    pieces = list(read_forced(chunks('{"zone": "UTC"}'), use))
    assert pieces[0] == Chunk(reasoning="hmm")  # thoughts pass as they are
    assert not any(p.text for p in pieces)  # the JSON never reaches the client as text
    [call] = calls_of(pieces)
    assert call["name"] == "get_time" and call["id"].startswith("call_")
    assert json.loads(call["arguments"]) == {"zone": "UTC"}
    assert pieces[-1].final is not None  # the final chunk comes last, after the calls


def test_a_required_choice_is_an_array_of_allowed_calls() -> None:
    schema = forced_schema(ToolUse(TOOLS, "required", parallel=True))
    two = [
        {"name": "get_weather", "arguments": {"city": "Oslo"}},
        {"name": "get_time", "arguments": {"zone": "UTC"}},
    ]
    jsonschema.validate(two, schema)
    for wrong in (
        [],
        [{"name": "launch", "arguments": {}}],
        [{"name": "get_time", "arguments": {"city": "x"}}],
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    one = forced_schema(ToolUse(TOOLS, "required", parallel=False))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(two, one)
    calls = calls_of(list(read_forced(chunks(json.dumps(two)), ToolUse(TOOLS, "required"))))
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        (c["name"], c["arguments"]) for c in two
    ]


def test_json_that_is_no_calls_still_becomes_a_call_that_fails_its_check() -> None:
    [call] = calls_of(list(read_forced(chunks('{"zone": "UT'), ToolUse(TOOLS, "required"))))
    assert call["name"] == "" and call["arguments"] == '{"zone": "UT'


def test_closing_the_reader_closes_the_runtimes_stream() -> None:
    closed: list[bool] = []

    def runtime() -> Iterator[Chunk]:
        try:
            yield from chunks('{"zone": "UTC"}')
        finally:
            closed.append(True)

    reader = read_forced(runtime(), ToolUse(TOOLS, "function", "get_time"))
    next(reader)
    reader.close()
    assert closed == [True]


class RecordingTokenizer:
    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        self.seen = {"messages": messages, **kwargs}
        return "rendered"


def test_vllm_shows_the_tools_and_the_history_through_the_template(
    write_settings: Callable[..., Path],
) -> None:
    definition = {"backend": "vllm", "vllm_model": "/models/m", "prompt_format": "hermes_template"}
    write_settings({"engine": {"models": {"v": definition}}})
    spec = load_settings().models["v"]
    caps = VllmAdapter.capabilities(spec)
    assert caps.tool_calls and caps.forced_tool_calls
    adapter = VllmAdapter(spec, 0)
    tokenizer = adapter._tokenizer = RecordingTokenizer()
    history = (
        Message("user", "Weather in Oslo?"),
        Message("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),)),
        Message("tool", "18 C", tool_call_id="call_1"),
    )
    request = GenerationRequest(messages=history, tools=ToolUse(TOOLS))
    assert adapter.prompt(request) == {"prompt": "rendered"}
    assert tokenizer.seen["tools"] == [tool.openai() for tool in TOOLS]
    messages = tokenizer.seen["messages"]
    # Hugging Face templates take a call's arguments as an object.
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert messages[2] == {"role": "tool", "content": "18 C", "tool_call_id": "call_1"}
    adapter.prompt(GenerationRequest(input="hi"))
    assert "tools" not in tokenizer.seen  # no tools offered: none shown
    plain = {"backend": "vllm", "vllm_model": "/models/m"}
    write_settings({"engine": {"models": {"v": plain}}})
    assert not VllmAdapter.capabilities(load_settings().models["v"]).tool_calls


def test_template_messages_leave_plain_turns_as_they_were() -> None:
    messages, _ = template_messages(GenerationRequest(messages=(Message("user", "hi"),)))
    assert messages == [{"role": "user", "content": "hi"}]


def test_template_messages_keep_a_participants_name() -> None:
    """In-process vLLM renders with the model's chat template, which is given the name."""
    request = GenerationRequest(messages=(Message("user", "hi", name="ann"), Message("user", "and?")))
    messages, _ = template_messages(request)
    assert messages == [{"role": "user", "content": "hi", "name": "ann"}, {"role": "user", "content": "and?"}]
