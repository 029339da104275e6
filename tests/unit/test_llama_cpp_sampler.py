"""The llama_cpp adapter frees each completion's native sampler when the completion ends
(llmpool.backends.llama_cpp.free_sampler says why), against a stand-in for `llama_cpp.Llama`
that keeps its samplers the way llama-cpp-python 0.3.x does (`Llama.generate` makes one)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llmpool.backends.llama_cpp import LlamaCppAdapter, free_sampler
from llmpool.config.spec import ModelSpec
from llmpool.generation import GenerationRequest


class Sampler:
    def __init__(self) -> None:
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


class Llama:
    """Each completion makes a sampler and leaves it in `_sampler`, as the binding does."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self._sampler: Sampler | None = None
        self.samplers: list[Sampler] = []

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return list(range(len(text.split())))

    def n_ctx(self) -> int:
        return 2048

    def reset(self) -> None:
        pass

    def set_seed(self, seed: int) -> None:
        pass

    def generate(self, tokens: list[int], **kwargs: Any) -> Iterator[int]:
        self._sampler = Sampler()
        self.samplers.append(self._sampler)
        yield from range(len(self.words))
        yield EOS

    def detokenize(self, tokens: list[int], special: bool = False) -> bytes:
        return "".join(self.words[t] for t in tokens).encode()


EOS = -1


def adapter(llm: Llama) -> LlamaCppAdapter:
    spec = ModelSpec(
        name="m",
        backend="llama_cpp",
        model_path=None,
        prompt_format="generic",
        enable_thinking=False,
        enabled=False,
        replicas=1,
        replica_max=1,
        target_inflight=1,
        modalities=("text",),
        max_queue=4,
        unload_timeout_s=30.0,
        options={"gguf_n_ctx": 2048},
    )
    runtime = LlamaCppAdapter(spec, 0)
    runtime._llm = llm
    runtime._is_eog = lambda token: token == EOS
    return runtime


def test_each_completion_frees_its_sampler_when_it_ends() -> None:
    llm = Llama(["It", " is", " 4."])
    runtime = adapter(llm)
    for _ in range(3):
        chunks = list(runtime.generate(GenerationRequest(input="What is 2+2?")))
        assert "".join(c.text for c in chunks) == "It is 4."
        assert llm._sampler is None
    assert [s.closes for s in llm.samplers] == [1, 1, 1]


def test_a_completion_stopped_early_frees_its_sampler_too() -> None:
    llm = Llama(["a", "b", "c"])
    stream = adapter(llm).generate(GenerationRequest(input="x"))
    assert next(stream).text == "a"
    stream.close()  # what the executor does when a job is cancelled
    assert llm._sampler is None
    assert [s.closes for s in llm.samplers] == [1]


def test_free_sampler_without_a_sampler_does_nothing() -> None:
    llm = Llama([])
    free_sampler(llm)
    free_sampler(object())  # a binding without `_sampler` at all
    assert llm._sampler is None
