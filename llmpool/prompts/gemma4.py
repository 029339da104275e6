"""The `gemma4_template` prompt format: Gemma 4's turn markup, and its reasoning splitter.

Runtimes that carry the model's own chat template (llama_cpp with a GGUF template,
vllm, llama_server) use that template; this text is for raw-prompt runtimes (and for
llama_cpp when the GGUF has no template):

    <|turn>system
    <|think|>{instructions}<turn|>
    <|turn>user
    {user text}<turn|>
    <|turn>model
    {assistant text}<turn|>
    <|turn>user
    {user text}<turn|>
    <|turn>model
    (generation starts here)

Conventions, as in Gemma 4's published template:
- every turn is `<|turn>{role}\\n{text}<turn|>\\n`, roles `system`, `user`, `model`;
- thinking enabled: the system turn starts with `<|think|>` (a system turn holding only
  `<|think|>` when there are no instructions); the model then reasons inside
  `<|channel>thought\\n…<channel|>` before its answer;
- thinking disabled: no `<|think|>`, and no system turn without instructions;
- the BOS token is not in the text: the tokenizer adds it.

Stops: `<turn|>` (Gemma 4's end of turn) and `<end_of_turn>` (Gemma 3's, for checkpoints
converted with the older markup). `ReasoningSplitter` turns a stream of text deltas into
answer and reasoning pieces.
"""

from __future__ import annotations

from collections.abc import Iterator

from llmpool.generation import GenerationRequest
from llmpool.prompts import Rendered, turns

STOP: tuple[str, ...] = ("<turn|>", "<end_of_turn>")
MULTI_TURN = True
THINKING_MODES: tuple[str, ...] = ("default", "enabled", "disabled")
THINK = "<|think|>"
REASONING_OPEN = "<|channel>thought"
REASONING_CLOSE = "<channel|>"


def render(request: GenerationRequest, thinking: str = "disabled") -> Rendered:
    """The Gemma 4 prompt for `request` (single- or multi-turn)."""
    system = request.instructions or ""
    if thinking == "enabled":
        system = THINK + system
    blocks = [("system", system)] if system else []
    blocks += [("model" if role == "assistant" else role, text) for role, text in turns(request)]
    body = "".join(f"<|turn>{role}\n{text}<turn|>\n" for role, text in blocks)
    return Rendered(f"{body}<|turn>model\n", STOP)


class ReasoningSplitter:
    """Splits streamed model text into (text, reasoning) pieces.

    Text between `<|channel>thought` and `<channel|>` is reasoning (one newline right
    after the opening marker is dropped); everything else is answer text; the markers
    themselves are dropped. A marker may straddle deltas: the tail of a delta that could
    be the start of a marker is held back until the next delta (or `flush`) decides.
    Not thread-safe; one instance per generation.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._reasoning = False
        self._strip_newline = False

    def feed(self, delta: str) -> Iterator[tuple[str, str]]:
        """The (text, reasoning) pieces `delta` completes; exactly one side is non-empty."""
        self._buffer += delta
        while self._buffer:
            marker = REASONING_CLOSE if self._reasoning else REASONING_OPEN
            if self._strip_newline:
                self._strip_newline = False
                if self._buffer.startswith("\n"):
                    self._buffer = self._buffer[1:]
                    continue
            index = self._buffer.find(marker)
            if index >= 0:
                yield from self._piece(self._buffer[:index])
                self._buffer = self._buffer[index + len(marker) :]
                self._reasoning = not self._reasoning
                self._strip_newline = self._reasoning
                continue
            keep = _partial_suffix(self._buffer, marker)
            yield from self._piece(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return

    def flush(self) -> Iterator[tuple[str, str]]:
        """Whatever is held back, at the end of the stream, on the side it was on."""
        rest, self._buffer = self._buffer, ""
        yield from self._piece(rest)

    def _piece(self, text: str) -> Iterator[tuple[str, str]]:
        if text:
            yield ("", text) if self._reasoning else (text, "")


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
