"""Splitting a reasoning model's streamed text into answer and thoughts.

Reasoning models wrap their thoughts in a pair of markers: Qwen3 `<think>…</think>`,
Gemma 4 `<|channel>thought…<channel|>`. A prompt format that has such markers names them
in `REASONING` (`llmpool.prompts.reasoning_markers`); every backend that gets the model's
raw text (or an upstream's `content` that may still carry the markers) puts it through a
`ReasoningSplitter`, so thoughts reach `Chunk.reasoning` and never the answer.

Rules, for text streamed in arbitrary pieces:
- text between the open and the close marker is reasoning, everything else is answer;
  the markers themselves are never passed on, also a stray one (an open marker inside a
  block, a close marker outside one);
- newlines right after either marker, and right before the close marker, are layout
  (`<think>\\n…\\n</think>\\n\\n`): dropped, as Qwen3's own template does;
- a marker may straddle deltas: the tail of a delta that could begin a marker (or, inside
  a block, trailing newlines) is held back until the next delta or `flush` decides;
- a block still open at the end of the stream is reasoning (the model ran out of tokens
  while thinking);
- `inside=True` starts inside a block: the chat template opened it in the prompt
  ("forced open", see `opens_in_prompt`), so only the close marker appears.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from llmpool.generation import Chunk


@dataclass(frozen=True)
class Markers:
    open: str
    close: str


class ReasoningSplitter:
    """(text, reasoning) pieces from streamed deltas; exactly one side of a piece is non-empty.

    Not thread-safe; one instance per generation.
    """

    def __init__(self, markers: Markers, *, inside: bool = False) -> None:
        self.markers = markers
        self._buffer = ""
        self._reasoning = inside
        self._trim = inside  # drop the newlines that begin the block just entered
        self._newlines = ""  # a block's trailing newlines, held until we know whether it ends

    @property
    def in_reasoning(self) -> bool:
        return self._reasoning

    def feed(self, delta: str) -> Iterator[tuple[str, str]]:
        """The pieces `delta` completes (possibly none: a partial marker is held back)."""
        self._buffer += delta
        while self._buffer:
            if self._trim:
                stripped = self._buffer.lstrip("\n")
                if not stripped:
                    self._buffer = ""
                    return
                self._buffer, self._trim = stripped, False
            index, marker = self._next_marker()
            if index >= 0:
                yield from self._piece(self._buffer[:index])
                self._buffer = self._buffer[index + len(marker) :]
                self._switch(marker)
                continue
            keep = max(partial_suffix(self._buffer, m) for m in (self.markers.open, self.markers.close))
            yield from self._piece(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return

    def flush(self) -> Iterator[tuple[str, str]]:
        """Whatever is held back, at the end of the stream, on the side it was on: a
        partial marker that never completed is plain text."""
        rest = self._newlines + self._buffer if self._reasoning else self._buffer
        self._buffer = self._newlines = ""
        if rest:
            yield ("", rest) if self._reasoning else (rest, "")

    def _next_marker(self) -> tuple[int, str]:
        """The first marker in the buffer and where it starts, or (-1, "")."""
        found = [(self._buffer.find(m), m) for m in (self.markers.open, self.markers.close)]
        found = [(i, m) for i, m in found if i >= 0]
        return min(found) if found else (-1, "")

    def _switch(self, marker: str) -> None:
        if self._reasoning and marker == self.markers.close:
            self._reasoning, self._newlines, self._trim = False, "", True
        elif marker == self.markers.open:
            # Entering a block; or a stray open marker inside one (a forced-open block
            # whose model wrote `<think>` again): dropped, with its layout newline.
            self._reasoning, self._trim = True, True
        # else a stray close marker in the answer: dropped, the side stays

    def _piece(self, text: str) -> Iterator[tuple[str, str]]:
        if not self._reasoning:
            if text:
                yield (text, "")
            return
        text = self._newlines + text
        body = text.rstrip("\n")
        self._newlines = text[len(body) :]
        if body:
            yield ("", body)


def split_chunks(chunks: Iterator[Chunk], splitter: ReasoningSplitter | None) -> Iterator[Chunk]:
    """A backend's chunk stream with its text put through `splitter` (None: unchanged);
    what the splitter holds back comes out before the final chunk. Closing this closes
    `chunks` at once (a cancelled job must stop the runtime now, not at garbage collection)."""
    if splitter is None:
        yield from chunks
        return
    try:
        for chunk in chunks:
            if chunk.final is not None:
                yield from (Chunk(text=t, reasoning=r) for t, r in splitter.flush())
                yield chunk
            elif chunk.text:
                yield from (Chunk(text=t, reasoning=r) for t, r in splitter.feed(chunk.text))
                if chunk.reasoning:
                    yield Chunk(reasoning=chunk.reasoning)
            elif chunk.reasoning:
                yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def opens_in_prompt(prompt: str, markers: Markers) -> bool:
    """Whether the prompt ends inside an open block: the template wrote the open marker
    as the last thing before generation (Qwen3-Thinking's and DeepSeek-R1's
    `<think>\\n`), so the output starts with thoughts and only the close marker follows.
    Only the very end counts: a marker a user typed earlier in the prompt opens nothing."""
    return prompt.rstrip().endswith(markers.open)


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker` (what a
    streaming reader must hold back: the start of a marker, or of a stop string)."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
