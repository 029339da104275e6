"""Tool calls out of a model's streamed answer text, for runtimes that return raw text
(in-process llama.cpp): the Hermes convention that Qwen2.5, Qwen3 and Hermes templates
teach, one JSON object `{"name": ..., "arguments": {...}}` between a prompt format's
`TOOL_CALLS` markers (`<tool_call>` … `</tool_call>`).

`ToolCallSplitter` takes the answer's deltas (after the thoughts were split off) and
gives back text pieces and whole calls:
- text outside a block is answer text; a tail that could begin the open marker is held
  back until the next delta decides, so no piece of a call ever reaches the client as
  text;
- a block becomes one call when its close marker arrives (a block still open at the end
  is a call too, so a truncated one is reported, and then fails its check);
- whitespace around a call is layout, dropped; all other text is kept as it came.

A block whose JSON cannot be read still becomes a call (name "", the raw text as its
arguments): the check after generation (`llmpool.structured`) fails it by name, so a
malformed call is an error, never text passed on as valid.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from llmpool.generation import Chunk, ToolCallDelta, ToolUse
from llmpool.reasoning import Markers, partial_suffix


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class Piece:
    text: str = ""
    call: ToolCallDelta | None = None


class ToolCallSplitter:
    """Answer text and whole tool calls from streamed deltas. One per generation."""

    def __init__(self, markers: Markers) -> None:
        self.markers = markers
        self._buffer = ""
        self._inside = False
        self._calls = 0
        self._space = ""  # trailing whitespace held back (see _text)
        self._after_call = False

    def feed(self, delta: str) -> Iterator[Piece]:
        self._buffer += delta
        while self._buffer:
            if self._inside:
                end = self._buffer.find(self.markers.close)
                if end < 0:
                    return  # the rest of the block is still coming
                yield self._call(self._buffer[:end])
                self._buffer = self._buffer[end + len(self.markers.close) :]
                self._inside = False
                continue
            start = self._buffer.find(self.markers.open)
            if start >= 0:
                yield from self._text(self._buffer[:start], before_call=True)
                self._buffer = self._buffer[start + len(self.markers.open) :]
                self._inside = True
                continue
            keep = partial_suffix(self._buffer, self.markers.open)
            ready, self._buffer = (
                self._buffer[: len(self._buffer) - keep],
                self._buffer[len(self._buffer) - keep :],
            )
            yield from self._text(ready, before_call=False)
            return

    def flush(self) -> Iterator[Piece]:
        """The end of the answer: an open block is a call, a held tail is text."""
        rest, self._buffer = self._buffer, ""
        if self._inside:
            self._inside = False
            yield self._call(rest)
        elif rest:
            yield from self._text(rest, before_call=False)
        if self._space and not self._calls:
            yield Piece(text=self._space)  # an answer that ends in whitespace keeps it
        self._space = ""

    def _text(self, text: str, *, before_call: bool) -> Iterator[Piece]:
        if self._after_call:  # the whitespace that follows a call is layout
            text = text.lstrip()
            self._after_call = not text
        body = text.rstrip()
        if body:
            yield Piece(text=self._space + body)
            self._space = ""
        # Trailing whitespace waits: layout before a call, text before more text.
        self._space = "" if before_call else self._space + text[len(body) :]

    def _call(self, body: str) -> Piece:
        index, self._calls = self._calls, self._calls + 1
        self._space, self._after_call = "", True
        name, arguments = "", body.strip()
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            name = value["name"]
            args = value.get("arguments", value.get("parameters", {}))
            arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        return Piece(call=ToolCallDelta(index, call_id(), name, arguments))


def _close(chunks: Iterable[Chunk]) -> None:
    """Close a runtime's stream (a generator stops its runtime there) once we are done."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def read_calls(chunks: Iterable[Chunk], markers: Markers | None) -> Iterator[Chunk]:
    """A runtime's chunks with the tool calls written in its answer text read out (calls
    it parsed itself, and thoughts, pass as they are); `markers` None: unchanged. Closing
    this closes `chunks`, so a cancelled job still stops its runtime."""
    if markers is None:
        yield from chunks
        return
    splitter = ToolCallSplitter(markers)
    try:
        for chunk in chunks:
            if chunk.final is not None:
                yield from (Chunk(text=p.text, tool_call=p.call) for p in splitter.flush())
                yield chunk
                continue
            if chunk.reasoning or chunk.tool_call is not None:
                yield Chunk(reasoning=chunk.reasoning, tool_call=chunk.tool_call)
            if chunk.text:
                yield from (Chunk(text=p.text, tool_call=p.call) for p in splitter.feed(chunk.text))
    finally:
        _close(chunks)


# -- calls held by a JSON constraint ---------------------------------------------------
def forced_schema(use: ToolUse) -> dict[str, Any]:
    """The JSON a runtime is held to for a named or required choice, where its constraint
    is a JSON schema (in-process vLLM, as vLLM's own server does it): a named call's
    arguments object; for `required`, an array of {"name", "arguments"} calls of the
    allowed tools (one at most without parallel calls)."""
    if use.choice == "function":
        tool = use.tool(use.function or "")
        return tool.parameters if tool is not None else {"type": "object"}
    calls = [
        {
            "type": "object",
            "properties": {"name": {"enum": [tool.name]}, "arguments": tool.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in use.allowed()
    ]
    schema: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
    if not use.parallel:
        schema["maxItems"] = 1
    return schema


def read_forced(chunks: Iterable[Chunk], use: ToolUse) -> Iterator[Chunk]:
    """A runtime's chunks under `forced_schema`: the answer text is the calls' JSON, read
    whole at the end and passed on as calls (thoughts pass as they are). JSON that does
    not read as calls still becomes a call (name "", the text as its arguments), which its
    check then fails by name. Closing this closes `chunks`."""
    text: list[str] = []
    try:
        for chunk in chunks:
            if chunk.final is not None:
                for index, (name, arguments) in enumerate(_forced_calls("".join(text), use)):
                    yield Chunk(tool_call=ToolCallDelta(index, call_id(), name, ""))
                    yield Chunk(tool_call=ToolCallDelta(index, arguments=arguments))
                yield chunk
                continue
            text.append(chunk.text)
            if chunk.reasoning:
                yield Chunk(reasoning=chunk.reasoning)
    finally:
        _close(chunks)


def _forced_calls(text: str, use: ToolUse) -> list[tuple[str, str]]:
    """(name, arguments JSON) of each call in a forced answer."""
    if use.choice == "function":
        return [(use.function or "", text.strip())]
    try:
        value = json.loads(text)
        return [(str(call["name"]), json.dumps(call["arguments"], ensure_ascii=False)) for call in value]
    except (ValueError, TypeError, KeyError):
        return [("", text)]


def arguments_object(arguments: str) -> Any:
    """A call's arguments as the object a Hugging Face chat template expects; text that is
    not JSON stays text (the template gets it as it was sent)."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
