"""The exllamav3 adapter against the fake `exllamav3` package (tests/fake_exllamav3).

ExLlamaV3 runs only on CUDA, so everything here but the last test drives the fake, which
follows the library's documented generator/job interface. `test_real_exllamav3_on_gpu` is
the GPU-only run against the real library.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from llmpool import gpu, prompts
from llmpool.backends.exllamav3 import CACHE_QUANTS, ExLlamaV3Adapter
from llmpool.config.loader import load_settings
from llmpool.config.spec import ModelSpec
from llmpool.errors import ConfigError, InvalidRequest, ModelLoadFailed
from llmpool.generation import Chunk, Decoding, GenerationRequest
from tests.fake_exllamav3 import installed, make_model_dir

REAL_MODEL_ENV = "LLM_POOL_EXL3_MODEL"


@pytest.fixture
def exl() -> Iterator[ModuleType]:
    with installed() as module:
        yield module


@pytest.fixture
def make_spec(write_settings: Callable[..., Path], tmp_path: Path) -> Callable[..., ModelSpec]:
    """make_spec(reply=..., **keys): a validated ModelSpec for a fake model directory."""

    def make(reply: str = "Hello from EXL3.", **keys: Any) -> ModelSpec:
        model_dir = make_model_dir(tmp_path / "exl3-model", reply)
        definition = {"backend": "exllamav3", "model_path": str(model_dir), **keys}
        write_settings({"engine": {"models": {"exl3": definition}}})
        return load_settings().models["exl3"]

    return make


def loaded(spec: ModelSpec) -> ExLlamaV3Adapter:
    adapter = ExLlamaV3Adapter(spec, 0)
    adapter.load()
    return adapter


def request(text: str = "Hi", **decoding: Any) -> GenerationRequest:
    return GenerationRequest(input=text, decoding=Decoding(**decoding))


def calls(exl: ModuleType, name: str) -> list[dict[str, Any]]:
    return [kwargs for called, kwargs in exl.fake_calls if called == name]


def prompt_ids(exl: ModuleType, spec: ModelSpec, req: GenerationRequest) -> int:
    """How many ids the fake tokenizer gives the rendered prompt (special markup + BOS)."""
    text = prompts.render(spec, req).text
    return int(exl.Tokenizer(None).encode(text, add_bos=True, encode_special_tokens=True).shape[-1])


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


# -- configuration -------------------------------------------------------------------
def test_defaults(make_spec: Callable[..., ModelSpec]) -> None:
    options = make_spec().options
    assert options["exllama_cache_size"] == 8192
    assert options["exllama_cache_quant"] is None
    assert options["exllama_tensor_parallel"] is False
    assert ExLlamaV3Adapter.max_tokens_limit(make_spec()) == 8192


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("exllama_cache_size", 1000),
        ("exllama_cache_size", 0),
        ("exllama_cache_size", "8192"),
        ("exllama_cache_quant", "k4v4"),
        ("exllama_cache_quant", "1,8"),
        ("exllama_gpu_split", [20, "x"]),
        ("exllama_gpu_split", []),
        ("exllama_tensor_parallel", "true"),
        ("exllama_tp_backend", "mpi"),
        ("exllama_max_batch_size", 0),
        ("exllama_max_rq_tokens", True),
        ("exllama_cache_sizes", 512),
    ],
)
def test_bad_keys_fail_at_start_naming_the_key(
    make_spec: Callable[..., ModelSpec], key: str, value: Any
) -> None:
    with pytest.raises(ConfigError) as info:
        make_spec(**{key: value})
    assert key in info.value.message


def test_live_override_constraints() -> None:
    rules = {c.key: c for c in ExLlamaV3Adapter.constraints}
    assert set(rules) == {"exllama_cache_size", "exllama_cache_quant"}
    assert rules["exllama_cache_size"].problem(4096) is None
    assert "multiple of 256" in (rules["exllama_cache_size"].problem(4000) or "")
    assert rules["exllama_cache_size"].problem(0) is not None
    assert rules["exllama_cache_quant"].problem("8,8") is None
    assert rules["exllama_cache_quant"].problem("4") is None
    assert rules["exllama_cache_quant"].problem("q4") is not None
    assert {"2", "8", "4,6", "8,8"} <= set(CACHE_QUANTS)


def test_capabilities_are_single_turn_text(make_spec: Callable[..., ModelSpec]) -> None:
    caps = ExLlamaV3Adapter.capabilities(make_spec())
    assert caps.modalities == ("text",)
    assert caps.multi_turn is False
    assert caps.thinking_modes == ("default",)


# -- load wiring -------------------------------------------------------------------
def test_every_key_reaches_its_constructor(exl: ModuleType, make_spec: Callable[..., ModelSpec]) -> None:
    spec = make_spec(
        exllama_cache_size=4096,
        exllama_cache_quant="4,6",
        exllama_gpu_split=[20, 23.5],
        exllama_tensor_parallel=True,
        exllama_tp_backend="nccl",
        exllama_max_batch_size=4,
        exllama_max_chunk_size=512,
        exllama_max_q_size=2,
        exllama_max_rq_tokens=1024,
    )
    adapter = loaded(spec)
    assert calls(exl, "Config.from_directory")[0]["directory"] == spec.model_path
    [cache] = calls(exl, "Cache")
    assert cache == {"max_num_tokens": 4096, "layer_type": exl.CacheLayer_quant, "k_bits": 4, "v_bits": 6}
    [load] = calls(exl, "Model.load")
    assert load["use_per_device"] == [20.0, 23.5]
    assert load["tensor_p"] is True and load["tp_backend"] == "nccl"
    assert load["progressbar"] is False
    [gen] = calls(exl, "Generator")
    assert (gen["max_batch_size"], gen["max_chunk_size"], gen["max_q_size"]) == (4, 512, 2)
    list(adapter.generate(request()))
    assert calls(exl, "Job")[0]["max_rq_tokens"] == 1024


def test_defaults_leave_the_library_defaults(exl: ModuleType, make_spec: Callable[..., ModelSpec]) -> None:
    loaded(make_spec(exllama_tp_backend="nccl"))  # tp_backend only matters with tensor parallel
    assert calls(exl, "Cache") == [{"max_num_tokens": 8192, "layer_type": exl.CacheLayer_fp16}]
    [load] = calls(exl, "Model.load")
    assert (load["use_per_device"], load["tensor_p"], load["tp_backend"]) == (None, False, "native")
    [gen] = calls(exl, "Generator")
    assert (gen["max_batch_size"], gen["max_chunk_size"], gen["max_q_size"]) == (256, 2048, 8)


def test_single_number_cache_quant_sets_both_bits(
    exl: ModuleType, make_spec: Callable[..., ModelSpec]
) -> None:
    loaded(make_spec(exllama_cache_quant="8"))
    assert calls(exl, "Cache")[0]["k_bits"] == calls(exl, "Cache")[0]["v_bits"] == 8


def test_override_of_the_cache_size_reaches_the_cache(
    exl: ModuleType, make_spec: Callable[..., ModelSpec]
) -> None:
    loaded(make_spec().with_overrides({"exllama_cache_size": 512}))
    assert calls(exl, "Cache")[0]["max_num_tokens"] == 512


def test_missing_model_directory_is_a_load_failure(
    exl: ModuleType, make_spec: Callable[..., ModelSpec], tmp_path: Path
) -> None:
    spec = make_spec()
    broken = ExLlamaV3Adapter(dataclasses.replace(spec, model_path=str(tmp_path / "nope")), 0)
    with pytest.raises(ModelLoadFailed, match="could not load"):
        broken.load()


# -- generation ----------------------------------------------------------------------
def test_streams_the_reply_as_deltas_then_final(exl: ModuleType, make_spec: Callable[..., ModelSpec]) -> None:
    spec = make_spec(reply="Hello there")
    adapter = loaded(spec)
    req = request("Hi", temperature=0.3, top_k=7, top_p=0.5, repetition_penalty=1.2)
    chunks = list(adapter.generate(req))
    assert [c.text for c in chunks[:-1]] == list("Hello there")
    final = chunks[-1].final
    assert final is not None
    assert final.finish_reason == "stop"
    assert calls(exl, "Tokenizer.encode")[0] == {"add_bos": True, "encode_special_tokens": True}
    assert final.prompt_tokens == prompt_ids(exl, spec, req)
    assert final.output_tokens == len("Hello there") + 1  # EOS counts as generated
    assert final.time_to_first_token_ms is not None and final.generate_total_ms is not None
    assert final.tokenize_ms is not None
    [sampler] = calls(exl, "ComboSampler")
    assert sampler == {"rep_p": 1.2, "temperature": 0.3, "min_p": 0.0, "top_k": 7, "top_p": 0.5}
    [job] = calls(exl, "Job")
    assert job["stop_conditions"][0] == exl.Tokenizer.eos_token_id


def test_stop_strings_end_generation_before_them(
    exl: ModuleType, make_spec: Callable[..., ModelSpec]
) -> None:
    spec = make_spec(reply="one, two, three")
    adapter = loaded(spec)
    req = request(stop=[", th"])
    chunks = list(adapter.generate(req))
    assert text_of(chunks) == "one, two"
    expected = [exl.Tokenizer.eos_token_id, *prompts.stops(prompts.render(spec, req), req)]
    assert calls(exl, "Job")[0]["stop_conditions"] == expected
    assert ", th" in expected
    assert chunks[-1].final is not None and chunks[-1].final.finish_reason == "stop"


def test_max_tokens_caps_the_output(make_spec: Callable[..., ModelSpec], exl: ModuleType) -> None:
    adapter = loaded(make_spec(reply="abcdefghij"))
    chunks = list(adapter.generate(request(max_tokens=4)))
    assert text_of(chunks) == "abcd"
    final = chunks[-1].final
    assert final is not None and (final.finish_reason, final.output_tokens) == ("length", 4)


def test_max_new_tokens_is_clamped_to_the_cache_left(
    make_spec: Callable[..., ModelSpec], exl: ModuleType
) -> None:
    spec = make_spec(reply="x" * 600, exllama_cache_size=256)
    adapter = loaded(spec)
    req = request("Hi", max_tokens=1000)
    chunks = list(adapter.generate(req))
    assert calls(exl, "Job")[0]["max_new_tokens"] == 256 - prompt_ids(exl, spec, req)
    assert chunks[-1].final is not None and chunks[-1].final.finish_reason == "length"


def test_prompt_longer_than_the_cache_is_refused(
    make_spec: Callable[..., ModelSpec], exl: ModuleType
) -> None:
    adapter = loaded(make_spec(exllama_cache_size=256))
    with pytest.raises(InvalidRequest, match="cache holds 256"):
        list(adapter.generate(request("y" * 300)))


def test_closing_the_stream_cancels_the_job(exl: ModuleType, make_spec: Callable[..., ModelSpec]) -> None:
    adapter = loaded(make_spec(reply="a long reply that is cut short"))
    stream = adapter.generate(request())
    assert next(stream).text == "a"
    stream.close()
    [gen] = calls(exl, "Generator")
    generator = gen["generator"]
    assert len(generator.cancelled) == 1
    assert generator.cancelled[0].identifier == calls(exl, "Job")[0]["identifier"]
    assert generator.num_remaining_jobs() == 0
    assert (
        text_of(list(adapter.generate(request()))) == "a long reply that is cut short"
    )  # replica still serves


def test_finished_jobs_are_not_cancelled(exl: ModuleType, make_spec: Callable[..., ModelSpec]) -> None:
    adapter = loaded(make_spec())
    list(adapter.generate(request()))
    assert calls(exl, "Generator")[0]["generator"].cancelled == []


def test_close_unloads_and_is_idempotent(exl: ModuleType, make_spec: Callable[..., ModelSpec]) -> None:
    adapter = loaded(make_spec())
    [gen] = calls(exl, "Generator")
    model = gen["generator"].model
    adapter.close()
    adapter.close()
    assert len(calls(exl, "Model.unload")) == 1
    assert model.loaded is False and model.caches[0].allocated is False
    with pytest.raises(Exception, match="not loaded"):
        list(adapter.generate(request()))


# -- the real library (GPU-only) ------------------------------------------------------
def _no_nvidia_gpu() -> str | None:
    """Why the real run cannot happen here: no NVIDIA GPU, and nothing else. On a machine
    with one, a missing torch or exllamav3 install fails the test instead of skipping it."""
    gpus, error = gpu.snapshot()
    if gpus:
        return None
    return f"GPU-only: no NVIDIA GPU on this machine ({error or 'NVML lists none'})"


@pytest.mark.skipif(_no_nvidia_gpu() is not None, reason=str(_no_nvidia_gpu()))
def test_real_exllamav3_on_gpu(write_settings: Callable[..., Path]) -> None:
    """GPU-ONLY: the real library end to end; needs an EXL3 model directory in $LLM_POOL_EXL3_MODEL."""
    model_dir = os.environ.get(REAL_MODEL_ENV)
    assert model_dir, f"set {REAL_MODEL_ENV} to an EXL3 model directory to run the GPU test"
    write_settings({"engine": {"models": {"exl3": {"backend": "exllamav3", "model_path": model_dir}}}})
    spec = load_settings().models["exl3"].with_overrides({"exllama_cache_size": 2048})
    adapter = loaded(spec)
    try:
        chunks = list(adapter.generate(request("The capital of France is", temperature=0.0, max_tokens=8)))
        final = chunks[-1].final
        assert final is not None and final.output_tokens and final.prompt_tokens
        assert text_of(chunks)
        stream = adapter.generate(request("Count to one hundred:", max_tokens=200))
        next(stream)
        stream.close()  # cancels the job in the real generator
        assert adapter._generator.num_remaining_jobs() == 0
    finally:
        adapter.close()


# -- reasoning formats -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "reply"),
    [
        ("qwen3_template", "<think>\nAdd them.\n</think>\n\nIt is 4."),
        ("gemma4_template", "<|channel>thought\nAdd them.<channel|>It is 4."),
    ],
)
def test_thoughts_streamed_a_character_a_token_go_to_reasoning(
    exl: ModuleType, make_spec: Callable[..., ModelSpec], fmt: str, reply: str
) -> None:
    adapter = loaded(make_spec(reply=reply, prompt_format=fmt, enable_thinking=True))
    chunks = list(adapter.generate(request()))
    assert text_of(chunks) == "It is 4."
    assert "".join(c.reasoning for c in chunks) == "Add them."
    assert chunks[-1].final is not None and chunks[-1].final.finish_reason == "stop"
    assert all(c.final is None for c in chunks[:-1])
