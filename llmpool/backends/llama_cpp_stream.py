"""Streamed text of one llama-cpp-python generation, special tokens included.

`Llama.create_completion` detokenizes without special tokens, so a marker that is one
special token in the vocabulary (Gemma 4's `<|channel>`, `<channel|>`) never shows in the
text and a reasoning model's thoughts could not be told from its answer. This loop drives
`Llama.generate` (the same sampler chain `create_completion` builds) and detokenizes each
token with `special=True`; what `create_completion` did around it is done here too:
end-of-generation tokens stop, `max_tokens` bounds, stop strings end the text (a tail
that could be the start of one is held back until the next token decides), and a UTF-8
character split over tokens is joined before it is passed on.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from llmpool.reasoning import partial_suffix


@dataclass
class Outcome:
    """Filled in while `stream_text` runs: why it ended, and how many tokens it sampled."""

    finish: str = "length"
    tokens: int = 0
    stop: str | None = None  # the stop string that ended the text, if one did


def stream_text(
    llm: Any,
    prompt_tokens: list[int],
    *,
    max_tokens: int,
    stop: list[str],
    sampling: dict[str, Any],
    is_eog: Callable[[int], bool],
    outcome: Outcome,
) -> Generator[str, None, None]:
    """Text deltas of the completion of `prompt_tokens` (the context must be reset).

    `sampling`: `Llama.generate`'s keyword arguments (top_k, top_p, temp, repeat_penalty).
    `is_eog`: whether a token ends generation (`eog_test`). Closing the iterator stops
    generation at the next token.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    stops = [s for s in stop if s]
    held = ""
    if max_tokens <= 0:
        return
    for token in llm.generate(prompt_tokens, **sampling):
        if is_eog(token):
            outcome.finish = "stop"
            break
        outcome.tokens += 1
        held += decoder.decode(bytes(llm.detokenize([token], special=True)))
        cut = _first_stop(held, stops)
        if cut is not None:
            if held[: cut[0]]:
                yield held[: cut[0]]
            outcome.finish, outcome.stop = "stop", cut[1]
            return
        keep = max((partial_suffix(held, s) for s in stops), default=0)
        if len(held) > keep:
            yield held[: len(held) - keep]
            held = held[len(held) - keep :]
        if outcome.tokens >= max_tokens:
            break
    held += decoder.decode(b"", final=True)
    if held:
        yield held


def _first_stop(text: str, stops: list[str]) -> tuple[int, str] | None:
    """Where the earliest stop string in `text` begins, and which one it is, if any."""
    found = [(i, s) for s, i in ((s, text.find(s)) for s in stops) if i >= 0]
    return min(found) if found else None


def eog_test(llm: Any) -> Callable[[int], bool]:
    """llama.cpp's end-of-generation test for `llm`'s vocabulary (EOS, and end-of-turn
    tokens such as `<|im_end|>` and `<end_of_turn>`), as `create_completion` uses it."""
    import llama_cpp  # lazy, as in the adapter

    vocab = llm._model.vocab  # the binding keeps it there; its own completion reads it so

    def is_eog(token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(vocab, token))

    return is_eog
