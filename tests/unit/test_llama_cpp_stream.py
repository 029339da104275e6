"""The llama_cpp adapter's own token loop (llmpool.backends.llama_cpp_stream) against a
stand-in `Llama` whose special tokens, like the binding's, only show with special=True:
stop strings across tokens, UTF-8 split over tokens, max_tokens, end-of-generation, and
Gemma 4's one-token channel markers reaching the reasoning splitter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llmpool.backends.llama_cpp import LlamaCppAdapter
from llmpool.backends.llama_cpp_stream import Outcome, stream_text
from llmpool.config.spec import ModelSpec
from llmpool.generation import GenerationRequest

EOG = 0


class Llama:
    """Generates the given pieces in order, then the end-of-generation token."""

    def __init__(self, pieces: list[bytes], special: frozenset[int] = frozenset()) -> None:
        self.pieces = [b"", *pieces]  # token t is pieces[t]; 0 is EOG
        self.special = special
        self._sampler = None
        self.seeds: list[int] = []

    def generate(self, tokens: list[int], **kwargs: Any) -> Iterator[int]:
        yield from range(1, len(self.pieces))
        yield EOG

    def detokenize(self, tokens: list[int], special: bool = False) -> bytes:
        return b"".join(b"" if t in self.special and not special else self.pieces[t] for t in tokens)

    # what the adapter needs besides
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return [1] * len(text.split())

    def n_ctx(self) -> int:
        return 4096

    def reset(self) -> None:
        pass

    def set_seed(self, seed: int) -> None:
        self.seeds.append(seed)


def run(llm: Llama, *, stop: tuple[str, ...] = (), max_tokens: int = 100) -> tuple[list[str], Outcome]:
    outcome = Outcome()
    deltas = list(
        stream_text(
            llm,
            [1],
            max_tokens=max_tokens,
            stop=list(stop),
            sampling={},
            is_eog=lambda t: t == EOG,
            outcome=outcome,
        )
    )
    return deltas, outcome


def test_text_then_end_of_generation() -> None:
    deltas, outcome = run(Llama([b"It", b" is", b" 4."]))
    assert deltas == ["It", " is", " 4."]
    assert (outcome.finish, outcome.tokens) == ("stop", 3)


def test_max_tokens_ends_with_length() -> None:
    deltas, outcome = run(Llama([b"a", b"b", b"c", b"d"]), max_tokens=2)
    assert deltas == ["a", "b"] and (outcome.finish, outcome.tokens) == ("length", 2)


def test_a_stop_string_split_over_tokens_is_held_back_and_cut() -> None:
    deltas, outcome = run(Llama([b"Hi", b" <|im", b"_e", b"nd|> more"]), stop=["<|im_end|>"])
    assert deltas == ["Hi", " "] and outcome.finish == "stop"


def test_a_held_back_near_stop_is_released() -> None:
    deltas, _ = run(Llama([b"a <|im", b"_x"]), stop=["<|im_end|>"])
    assert "".join(deltas) == "a <|im_x" and deltas[0] == "a "


def test_a_character_split_over_tokens_is_joined() -> None:
    euro = "€".encode()
    deltas, _ = run(Llama([b"x", euro[:1], euro[1:], b"y"]))
    assert "".join(deltas) == "x€y" and all("\ufffd" not in d for d in deltas)


def test_special_tokens_are_in_the_text() -> None:
    deltas, _ = run(Llama([b"<|channel>", b"thought\nhm", b"<channel|>", b"ok"], special=frozenset({1, 3})))
    assert "".join(deltas) == "<|channel>thought\nhm<channel|>ok"


def spec(prompt_format: str) -> ModelSpec:
    return ModelSpec(
        name="m",
        backend="llama_cpp",
        model_path=None,
        prompt_format=prompt_format,
        enable_thinking=True,
        enabled=False,
        replicas=1,
        replica_max=1,
        target_inflight=1,
        modalities=("text",),
        max_queue=4,
        unload_timeout_s=30.0,
        options={"gguf_n_ctx": 4096},
    )


def generate(prompt_format: str, llm: Llama) -> tuple[str, str, Any]:
    runtime = LlamaCppAdapter(spec(prompt_format), 0)
    runtime._llm = llm
    runtime._is_eog = lambda token: token == EOG
    chunks = list(runtime.generate(GenerationRequest(input="What is 2+2?")))
    text = "".join(c.text for c in chunks)
    reasoning = "".join(c.reasoning for c in chunks)
    return text, reasoning, chunks[-1].final


def test_gemma4_channel_markers_as_special_tokens_split_into_reasoning() -> None:
    # Gemma 4's markers are single special tokens: create_completion would drop them.
    pieces = [b"<|channel>", b"thought", b"\nAdd", b" them.", b"<channel|>", b"It is 4."]
    llm = Llama(pieces, special=frozenset({1, 5}))
    text, reasoning, final = generate("gemma4_template", llm)
    assert (text, reasoning) == ("It is 4.", "Add them.")
    assert final.output_tokens == 6 and final.finish_reason == "stop"


def test_qwen3_think_block_split_across_tokens() -> None:
    llm = Llama([b"<th", b"ink>\nSum", b".\n</", b"think>\n\n", b"4"])
    assert generate("qwen3_template", llm)[:2] == ("4", "Sum.")


def test_generic_format_passes_think_text_through() -> None:
    llm = Llama([b"<think>x</think>y"])
    assert generate("generic", llm)[:2] == ("<think>x</think>y", "")


def test_every_request_gets_the_same_seed() -> None:
    llm = Llama([b"a"])
    generate("generic", llm)
    generate("generic", llm)
    assert len(llm.seeds) == 2 and llm.seeds[0] == llm.seeds[1]
