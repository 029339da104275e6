"""vllm (in-process): keys, engine arguments, prompt mapping, and our async→thread bridge.

vLLM itself is not installed in this venv; tests/vllm_inprocess runs the real engine.
The fake engine here stands in for vLLM's documented `AsyncLLM` surface (an async
`generate` yielding cumulative `RequestOutput`s, an async `abort`) to test *our* bridge.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llmpool.backends import registry, vllm_keys
from llmpool.backends.vllm import (
    LoopThread,
    VllmAdapter,
    build_engine_kwargs,
    open_image,
    sampling_kwargs,
    stream_outputs,
    template_messages,
)
from llmpool.config.loader import load_settings
from llmpool.config.spec import ModelSpec
from llmpool.errors import BackendError, ConfigError, InvalidRequest, ModelLoadFailed
from llmpool.generation import Decoding, GenerationRequest, Message

PNG = b"\x89PNG\r\n\x1a\nfake"
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def spec_of(write_settings: Callable[..., Path], **keys: Any) -> ModelSpec:
    definition = {"backend": "vllm", "vllm_model": "/models/m", **keys}
    write_settings({"engine": {"models": {"v": definition}}})
    return load_settings().models["v"]


# -- configuration -----------------------------------------------------------------------
def test_registered_with_the_shared_keys_and_constraints(write_settings: Callable[..., Path]) -> None:
    assert registry.get("vllm") is VllmAdapter
    assert VllmAdapter.blocking and VllmAdapter.can_batch
    from llmpool.backends.vllm_serve import VllmServeAdapter

    assert VllmAdapter.constraints == VllmServeAdapter.constraints  # one table for both
    assert VllmAdapter.constraints
    assert set(VllmAdapter.config_fields()) == set(vllm_keys.engine_fields())
    spec = spec_of(write_settings, vllm_max_model_len=2048, modalities=["text", "image"])
    caps = VllmAdapter.capabilities(spec)
    assert caps.modalities == ("text", "image") and caps.multi_turn and caps.thinking_modes == ("default",)
    assert VllmAdapter.max_tokens_limit(spec) == 2048
    assert VllmAdapter.max_tokens_limit(spec_of(write_settings)) is None


@pytest.mark.parametrize(
    ("keys", "where"),
    [
        ({"vllm_kv_cache_dtype": "int4"}, "vllm_kv_cache_dtype"),
        ({"vllm_max_model_len": 100}, "vllm_max_model_len"),
        ({"vllm_enforce_eager": "true"}, "vllm_enforce_eager"),
        ({"vllm_serve_api_key": "x"}, "vllm_serve_api_key"),  # vllm_serve's, not ours
        ({"vllm_model": None}, "vllm_model"),
    ],
)
def test_bad_keys_are_rejected_at_start_up(
    write_settings: Callable[..., Path], keys: dict[str, Any], where: str
) -> None:
    with pytest.raises(ConfigError, match=f"engine.models.v.{where}"):
        spec_of(write_settings, **keys)


def test_artifact_size_is_that_of_the_vllm_model_dir(
    write_settings: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model.safetensors").write_bytes(b"x" * 1000)
    assert VllmAdapter.artifact_size_bytes(spec_of(write_settings, vllm_model=str(tmp_path / "w"))) == 1000
    assert VllmAdapter.artifact_size_bytes(spec_of(write_settings, vllm_model="org/hub-id")) is None


# -- engine arguments ----------------------------------------------------------------------
def test_minimal_engine_kwargs(write_settings: Callable[..., Path]) -> None:
    assert build_engine_kwargs(spec_of(write_settings, target_inflight=3)) == {
        "model": "/models/m",
        "served_model_name": "v",
        "max_num_seqs": 3,
        "trust_remote_code": False,
        "enforce_eager": False,
    }


def test_every_key_maps_to_its_engine_arg(write_settings: Callable[..., Path]) -> None:
    spec = spec_of(
        write_settings,
        vllm_dtype="bfloat16",
        vllm_gpu_memory_utilization=0.5,
        vllm_kv_cache_memory_bytes=2147483648,
        vllm_kv_cache_dtype="fp8",
        vllm_max_model_len=8192,
        vllm_tensor_parallel_size=2,
        vllm_trust_remote_code=True,
        vllm_enforce_eager=True,
        vllm_limit_mm_per_prompt={"image": 2},
        vllm_mm_processor_kwargs={"min_pixels": 100},
        vllm_max_pixels=4014080,
        vllm_speculative_method="mtp",
        vllm_speculative_model="google/assistant",
        vllm_speculative_moe_backend="triton",
        vllm_speculative_attention_backend="triton_attn",
        vllm_num_speculative_tokens=4,
    ).with_overrides({"vllm_max_model_len": 4096})
    assert build_engine_kwargs(spec) == {
        "model": "/models/m",
        "served_model_name": "v",
        "max_num_seqs": 1,
        "trust_remote_code": True,
        "enforce_eager": True,
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.5,
        "kv_cache_memory_bytes": 2147483648,
        "kv_cache_dtype": "fp8",
        "max_model_len": 4096,  # the live override wins
        "tensor_parallel_size": 2,
        "limit_mm_per_prompt": {"image": 2},
        "mm_processor_kwargs": {"min_pixels": 100, "max_pixels": 4014080},
        "speculative_config": {
            "method": "mtp",
            "model": "google/assistant",
            "moe_backend": "triton",
            "attention_backend": "triton_attn",
            "num_speculative_tokens": 4,
        },
    }


def test_load_without_vllm_fails_cleanly_and_sets_the_sampler_default(
    write_settings: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_USE_FLASHINFER_SAMPLER", raising=False)
    adapter = VllmAdapter(spec_of(write_settings), 0)
    with pytest.raises(ModelLoadFailed, match="vllm is not installed"):
        adapter.load()
    assert os.environ["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    monkeypatch.setenv("VLLM_USE_FLASHINFER_SAMPLER", "1")
    with pytest.raises(ModelLoadFailed):
        adapter.load()
    assert os.environ["VLLM_USE_FLASHINFER_SAMPLER"] == "1"  # the operator's choice stays
    adapter.close()  # unloaded: a no-op
    with pytest.raises(BackendError, match="not loaded"):
        next(iter(adapter.generate(GenerationRequest(input="x"))))


# -- prompt and sampling -------------------------------------------------------------------
def test_messages_for_the_chat_template() -> None:
    request = GenerationRequest(
        instructions="be brief",
        messages=(
            Message("user", "hi"),
            Message("assistant", [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]),
            Message(
                "user",
                [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": DATA_URL}},
                ],
            ),
        ),
    )
    messages, images = template_messages(request)
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, {"type": "image"}]},
    ]
    assert images == [PNG]
    assert template_messages(GenerationRequest(input="one")) == ([{"role": "user", "content": "one"}], [])


@pytest.mark.parametrize(
    "url", ["https://example.com/a.png", "data:image/png,raw", "data:image/png;base64,@@"]
)
def test_images_must_be_base64_data_urls(url: str) -> None:
    request = GenerationRequest(input=[{"type": "image_url", "image_url": {"url": url}}])
    with pytest.raises(InvalidRequest):
        template_messages(request)


class FakeTokenizer:
    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        assert kwargs == {"add_generation_prompt": True, "tokenize": False}
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"


def real_image(fmt: str = "PNG", mode: str = "RGB", size: tuple[int, int] = (5, 3)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGB"), ("PNG", "RGBA"), ("JPEG", "L"), ("GIF", "P")])
def test_open_image_decodes_the_whole_image(fmt: str, mode: str) -> None:
    image = open_image(real_image(fmt, mode))
    assert image.size == (5, 3) and image.mode == mode
    assert image.im is not None  # loaded: the engine gets pixels, not a lazy file


def truncated_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.linear_gradient("L").save(buffer, format="PNG")  # 256x256, some kB
    return buffer.getvalue()[: buffer.tell() // 2]


@pytest.mark.parametrize("data", [PNG, b"", truncated_png()], ids=["junk", "empty", "truncated"])
def test_bytes_that_are_not_an_image_are_an_invalid_request(data: bytes) -> None:
    # Before the fix these reached the engine (or PIL on the replica thread) and came
    # back as a 502 backend error.
    with pytest.raises(InvalidRequest, match="not an image"):
        open_image(data)


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def test_prompt_of_an_image_model_carries_the_images_in_order(write_settings: Callable[..., Path]) -> None:
    adapter = VllmAdapter(spec_of(write_settings, modalities=["text", "image"]), 0)
    adapter._tokenizer = FakeTokenizer()
    first, second = real_image(size=(4, 4)), real_image("JPEG", size=(7, 2))
    urls = ["data:image/png;base64," + base64.b64encode(b).decode() for b in (first, second)]
    request = GenerationRequest(
        messages=(
            Message("user", [image_part(urls[0])]),
            Message("assistant", "ok"),
            Message("user", [{"type": "text", "text": "and"}, image_part(urls[1])]),
        )
    )
    prompt = adapter.prompt(request)
    assert [image.size for image in prompt["multi_modal_data"]["image"]] == [(4, 4), (7, 2)]
    bad = "data:image/png;base64," + base64.b64encode(PNG).decode()
    with pytest.raises(InvalidRequest, match="not an image"):
        adapter.prompt(GenerationRequest(input=[image_part(bad)]))


def test_prompt_renders_the_template_and_refuses_images_to_a_text_model(
    write_settings: Callable[..., Path],
) -> None:
    adapter = VllmAdapter(spec_of(write_settings), 0)
    adapter._tokenizer = FakeTokenizer()
    assert adapter.prompt(GenerationRequest(input="hi", instructions="sys")) == {
        "prompt": "system:sys|user:hi|assistant:"
    }
    with pytest.raises(InvalidRequest, match="images"):
        adapter.prompt(GenerationRequest(input=[{"type": "image_url", "image_url": {"url": DATA_URL}}]))


def test_sampling_kwargs(write_settings: Callable[..., Path]) -> None:
    spec = spec_of(write_settings)
    d = Decoding(temperature=0.0, top_p=0.9, top_k=0, repetition_penalty=1.1, max_tokens=5000, stop=("x",))
    assert sampling_kwargs(GenerationRequest(input="x", decoding=d), 2048) == {
        "temperature": 0.0,
        "top_p": 0.9,
        "top_k": 0,
        "repetition_penalty": 1.1,
        "max_tokens": 2048,
        "stop": ["x"],
        "seed": None,
    }
    assert sampling_kwargs(GenerationRequest(input="x"), None)["stop"] is None
    assert sampling_kwargs(GenerationRequest(input="x", decoding=Decoding(seed=5)), None)["seed"] == 5
    # engine.decoding's beam_size is a default for runtimes with beams: not applied here,
    # and no reason to refuse every request; a request's own beam_size 2 is refused by name.
    beams = Decoding(beam_size=4)
    assert sampling_kwargs(GenerationRequest(input="x", decoding=beams), None) == sampling_kwargs(
        GenerationRequest(input="x"), None
    )
    assert beams.requested({"beam_size": 2}).unhonoured(VllmAdapter.capabilities(spec).decoding) == (
        "beam_size",
        "beam_size",
    )


# -- the bridge: an asyncio loop on its own OS thread ------------------------------------
@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class Output:
    prompt_token_ids: list[int]
    outputs: list[Completion]


@dataclass
class FakeEngine:
    """vLLM's AsyncLLM surface: cumulative outputs, one per token, `delay` apart."""

    pieces: list[str]
    delay: float = 0.0
    fail_after: int | None = None
    error: type[Exception] = RuntimeError
    aborted: list[str] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    loop_threads: set[int] = field(default_factory=set)

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Output]:
        self.active.add(request_id)
        self.loop_threads.add(threading.get_ident())
        try:
            text = ""
            for i, piece in enumerate(self.pieces):
                if self.fail_after is not None and i == self.fail_after:
                    raise self.error("engine died")
                await asyncio.sleep(self.delay)
                text += piece
                last = i == len(self.pieces) - 1
                yield Output([1, 2, 3], [Completion(text, list(range(i + 1)), "length" if last else None)])
        finally:
            self.active.discard(request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


@pytest.fixture
def loop() -> Any:
    thread = LoopThread()
    yield thread
    thread.stop(timeout=5)
    assert thread.loop.is_closed()


def test_stream_yields_deltas_then_final(loop: LoopThread) -> None:
    engine = FakeEngine(["The", " capital", "", " is", " Paris"])
    chunks = list(
        stream_outputs(loop, engine, {"prompt": "p"}, None, time.perf_counter(), time.perf_counter())
    )
    assert [c.text for c in chunks[:-1]] == ["The", " capital", " is", " Paris"]
    final = chunks[-1].final
    assert final is not None
    assert (final.finish_reason, final.prompt_tokens, final.output_tokens) == ("length", 3, 5)
    assert final.time_to_first_token_ms is not None and final.generate_total_ms is not None
    assert engine.loop_threads and threading.get_ident() not in engine.loop_threads
    assert not engine.aborted


def test_a_stop_put_in_from_another_thread_ends_a_stream_waiting_on_the_engine(loop: LoopThread) -> None:
    # A long prefill: the first output is 30 s away. The executor's stop must not wait
    # for it (VllmAdapter.interrupt puts the stop into the stream's queue).
    engine = FakeEngine(["a"], delay=30)
    outputs: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    threading.Timer(0.05, outputs.put, args=(("stop", None),)).start()
    began = time.monotonic()
    chunks = list(stream_outputs(loop, engine, {}, None, 0.0, 0.0, outputs))
    assert time.monotonic() - began < 2
    assert [c.text for c in chunks if c.text] == []
    assert len(engine.aborted) == 1  # and the engine was told


def test_closing_the_stream_aborts_the_request(loop: LoopThread) -> None:
    engine = FakeEngine(["a"] * 1000, delay=0.005)
    stream = stream_outputs(loop, engine, {}, None, 0.0, 0.0)
    assert next(stream).text == "a"
    stream.close()
    assert len(engine.aborted) == 1
    deadline = time.monotonic() + 2
    while engine.active:  # the pump was cancelled: the generator is closed
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_an_engine_error_becomes_a_backend_error(loop: LoopThread) -> None:
    stream = stream_outputs(loop, FakeEngine(["a", "b", "c"], fail_after=2), {}, None, 0.0, 0.0)
    assert [next(stream).text, next(stream).text] == ["a", "b"]
    with pytest.raises(BackendError, match="engine died"):
        next(stream)


class ClientError(Exception):
    """Stands in for vLLM's VLLMClientError (a request the engine refuses)."""


def test_a_request_the_engine_refuses_is_an_invalid_request(loop: LoopThread) -> None:
    # vLLM validates in generate(), before any output: a prompt longer than the model's
    # context, more images than limit_mm_per_prompt. The client's fault: 400, not 502.
    engine = FakeEngine(["a"], fail_after=0, error=ClientError)
    with pytest.raises(InvalidRequest, match="refused the request: engine died"):
        next(stream_outputs(loop, engine, {}, None, 0.0, 0.0, None, (ClientError,)))
    with pytest.raises(BackendError):  # not one of the client errors named
        next(stream_outputs(loop, FakeEngine(["a"], fail_after=0), {}, None, 0.0, 0.0, None, (ClientError,)))


LOOP_UNDER_THE_PATCH = r"""
from conf.worker import patch_selectively

patch_selectively()

import asyncio
import gevent
from llmpool.backends.vllm import LoopThread
from llmpool.greenbridge import call_blocking

thread = call_blocking(LoopThread)  # on a hub threadpool worker, as a load with wait=true


async def answer():
    await asyncio.sleep(0.01)
    return 42


assert call_blocking(thread.call, answer(), 5) == 42
gevent.get_hub().threadpool.kill()  # that worker exits and gevent destroys its hub
gevent.sleep(0.2)
call_blocking(thread.stop, 5)  # unload (or worker exit), on another thread
print("closed" if thread.loop.is_closed() else "open")
"""


def test_the_loop_outlives_the_thread_that_made_it_under_the_worker_patch() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-c", LOOP_UNDER_THE_PATCH], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr  # was: ValueError: operation on destroyed loop
    assert proc.stdout.split() == ["closed"], proc.stdout + proc.stderr


def test_loop_call_returns_results_and_raises_errors(loop: LoopThread) -> None:
    async def ok() -> int:
        return 42

    async def bad() -> None:
        raise ValueError("nope")

    async def slow() -> None:
        await asyncio.sleep(5)

    assert loop.call(ok()) == 42
    with pytest.raises(ValueError, match="nope"):
        loop.call(bad())
    with pytest.raises(TimeoutError):
        loop.call(slow(), timeout=0.05)


# -- reasoning formats ---------------------------------------------------------------------
class ThinkingTokenizer:
    """A template that opens `<think>` in the prompt unless enable_thinking is false (like
    Qwen3-Thinking), or ignores the switch altogether (`honours=False`)."""

    def __init__(self, honours: bool = True) -> None:
        self.honours = honours
        self.kwargs: list[dict[str, Any]] = []

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        self.kwargs.append(kwargs)
        if self.honours and kwargs.get("enable_thinking") is False:
            return "user:hi|assistant:<think>\n\n</think>\n\n"
        return "user:hi|assistant:<think>\n"


def test_reasoning_formats_offer_thinking_and_pass_the_switch_to_the_template(
    write_settings: Callable[..., Path],
) -> None:
    spec = spec_of(write_settings, prompt_format="qwen3_template", enable_thinking=True)
    assert VllmAdapter.capabilities(spec).thinking_modes == ("default", "enabled", "disabled")
    assert VllmAdapter.capabilities(spec_of(write_settings)).thinking_modes == ("default",)
    adapter = VllmAdapter(spec, 0)
    adapter._tokenizer = tokenizer = ThinkingTokenizer()
    assert adapter.prompt(GenerationRequest(input="hi"))["prompt"].endswith("<think>\n")
    off = adapter.prompt(GenerationRequest(input="hi", thinking="disabled"))["prompt"]
    assert off.endswith("<think>\n\n</think>\n\n")
    assert [k.get("enable_thinking") for k in tokenizer.kwargs] == [True, False]
    # A template without the switch: the pool closes the block Qwen3's way.
    adapter._tokenizer = ThinkingTokenizer(honours=False)
    assert adapter.prompt(GenerationRequest(input="hi", thinking="disabled"))["prompt"] == (
        "user:hi|assistant:<think>\n\n</think>\n\n"
    )


def test_stream_splits_thoughts_from_a_forced_open_prompt(loop: LoopThread) -> None:
    from llmpool.prompts import qwen3
    from llmpool.reasoning import ReasoningSplitter

    engine = FakeEngine(["Add", " them.\n</", "think>\n", "\nIt is", " 4."])
    splitter = ReasoningSplitter(qwen3.REASONING, inside=True)
    now = time.perf_counter()
    chunks = list(stream_outputs(loop, engine, {"prompt": "p"}, None, now, now, None, (), splitter))
    assert "".join(c.text for c in chunks) == "It is 4."
    assert "".join(c.reasoning for c in chunks) == "Add them."
    final = chunks[-1].final
    assert final is not None and final.output_tokens == 5
