"""In-process vLLM (`AsyncLLMEngine`, in vLLM 0.x V1 an alias of `AsyncLLM`).

vLLM's engine is asyncio code. It gets its own event loop on a dedicated real thread
(`LoopThread`), never the gevent hub and never a greenlet; every call into it is a
coroutine handed over with `asyncio.run_coroutine_threadsafe`, and results come back
through a `queue.SimpleQueue` (real: the worker patches sockets, DNS, ssl and time only,
see greenbridge), which the replica thread consuming `generate()` blocks on.

`generate()` is a blocking iterator consumed on a replica thread by the executor: it
starts one "pump" coroutine on the loop that forwards each `RequestOutput` into its queue
and turns them into text deltas. Closing it early aborts the request in the engine. The
engine batches, so one replica serves `target_inflight` jobs at once (`max_num_seqs`).

vLLM is imported on the loading thread, after the worker's selective patch, and its
engine core is started with `VLLM_WORKER_MULTIPROC_METHOD=spawn` unless set otherwise: a
forked engine process would inherit a copy of the live gevent hub and every thread's
state. An engine core that dies fails the model (`on_failure`), and every stream running
on it ends with `backend_error`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import io
import os
import queue
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from marshmallow import fields

from llmpool import prompts
from llmpool.backends import vllm_keys
from llmpool.backends.base import Adapter, Capabilities
from llmpool.backends.event_loop import LoopThread
from llmpool.backends.openai_chat import chat_messages
from llmpool.config.spec import ModelSpec
from llmpool.errors import BackendError, InvalidRequest, ModelLoadFailed
from llmpool.generation import Chunk, Final, GenerationRequest, OutputFormat
from llmpool.media import decode_data_url
from llmpool.reasoning import ReasoningSplitter
from llmpool.tool_calls import arguments_object, forced_schema, read_calls, read_forced

# How long an abort (a cancelled job) or a shutdown may take before we move on.
_ABORT_WAIT_S = 5.0
_SHUTDOWN_WAIT_S = 60.0
ENGINE_WATCH_S = 0.5  # how often the loop looks for a dead engine core
_STOP = "stop"


def build_engine_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """`AsyncEngineArgs(**kwargs)` for this model: the pool's own arguments (`max_num_seqs`
    is the replica's `target_inflight`, the engine's batch size) and those of the vllm_*
    keys that are set (`vllm_keys.KEYS`)."""
    args = [*vllm_keys.pool_args(spec), *vllm_keys.engine_args(spec.options)]
    return {arg.name: arg.value for arg in args}


def _kv_usage_logger(adapter: VllmAdapter) -> Any:
    """A vLLM stat logger factory that keeps the scheduler's KV-cache use on `adapter`
    (for the inference gateway's gauge). vLLM keeps its own loggers beside it."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class KvUsage(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, *_: Any, **__: Any) -> None:
            if scheduler_stats is not None:
                adapter._kv_usage = float(scheduler_stats.kv_cache_usage)

        def log_engine_initialized(self) -> None:
            pass

    return KvUsage


def open_image(data: bytes) -> Any:
    """The decoded image (PIL, a dependency of vLLM itself); InvalidRequest for bytes that
    are not an image PIL can read, here rather than later inside the engine."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # open() reads the header only; a truncated file fails here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"image data URL is not an image PIL can read: {exc}") from exc
    return image


def template_messages(request: GenerationRequest) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Messages for the chat template, and the images' bytes in prompt order.

    Text-only content becomes a plain string (what every text model's template expects);
    content with images becomes Hugging Face's multimodal parts, `{"type": "image"}`
    marking where each image goes and `{"type": "text", "text": ...}` for the text.
    """
    images: list[bytes] = []
    out: list[dict[str, Any]] = []
    for message in chat_messages(request):
        for call in message.get("tool_calls", ()):  # Hugging Face templates take objects
            call["function"]["arguments"] = arguments_object(call["function"]["arguments"])
        content = message["content"]
        if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
            parts: list[dict[str, Any]] = []
            for part in content:
                if part.get("type") == "image_url":
                    images.append(decode_data_url(str(part["image_url"]["url"])))
                    parts.append({"type": "image"})
                elif part.get("type") == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
            out.append({**message, "content": parts})
        elif isinstance(content, list):
            text = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
            out.append({**message, "content": text})
        else:
            out.append({**message, "content": content if content is not None else ""})
    return out, images


def sampling_kwargs(request: GenerationRequest, max_model_len: int | None) -> dict[str, Any]:
    """`SamplingParams(**kwargs)`; temperature 0 is greedy in vLLM. No beams: admission
    refuses a request's beam_size (not in `capabilities().decoding`), not a default."""
    d = request.decoding
    max_tokens = d.max_tokens if max_model_len is None else min(d.max_tokens, max_model_len)
    return {
        "temperature": d.temperature,
        "top_p": d.top_p,
        "top_k": d.top_k,  # vLLM: 0 disables top-k, like ours
        "repetition_penalty": d.repetition_penalty,
        "max_tokens": max_tokens,
        "stop": list(d.stop) or None,
        "seed": d.seed,  # None: vLLM's own generator
    }


def structured_outputs(fmt: OutputFormat) -> Any:
    """vLLM's structured-output parameters for `fmt` (its guided decoding backend builds
    the grammar; the pool checks the answer afterwards all the same)."""
    from vllm.sampling_params import StructuredOutputsParams

    if fmt.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=fmt.json_schema())


class VllmAdapter(vllm_keys.VllmModelFacts, Adapter):
    backend = "vllm"
    blocking = True
    can_batch = True

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        # Tools where the pool reads the format's calls out of the text (the model's own
        # template shows them); a named or required call is held by a JSON constraint.
        tools = prompts.tool_call_markers(spec.prompt_format) is not None
        return dataclasses.replace(super().capabilities(spec), tool_calls=tools, forced_tool_calls=tools)

    def __init__(self, spec: ModelSpec, replica_id: int) -> None:
        super().__init__(spec, replica_id)
        self._loop: LoopThread | None = None
        self._engine: Any = None
        self._tokenizer: Any = None
        self._sampling_params: Any = None
        self._client_errors: tuple[type[BaseException], ...] = ()
        # The engine's last reported KV-cache use (0-1), set on the loop thread by
        # `_kv_usage_logger`; a float assignment, read without a lock at metrics scrapes.
        self._kv_usage: float | None = None
        # The output queue of each generation in flight, by id of its request: `interrupt`
        # wakes a generation still waiting for its first (or next) output.
        self._in_flight: dict[int, queue.SimpleQueue[tuple[str, Any]]] = {}

    @classmethod
    def config_fields(cls) -> dict[str, fields.Field]:
        return vllm_keys.engine_fields()

    # -- lifecycle -------------------------------------------------------------------
    def load(self) -> None:
        # A forked engine core would inherit the worker's hub and threads (docstring).
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        # FlashInfer's sampler JIT-compiles on first use and needs a CUDA toolchain.
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
        except ImportError as exc:
            raise ModelLoadFailed(f"vllm is not installed: {exc}", model=self.spec.name) from exc
        try:  # what vLLM raises for a request it refuses (too long, too many images, ...)
            from vllm.exceptions import VLLMClientError

            self._client_errors = (VLLMClientError,)
        except ImportError:  # older releases raised ValueError for those
            self._client_errors = (ValueError,)
        engine_args = AsyncEngineArgs(**build_engine_kwargs(self.spec))
        self._loop = LoopThread()

        async def build() -> Any:
            # Created on the loop so that its background output task lives there.
            return AsyncLLMEngine.from_engine_args(engine_args, stat_loggers=[_kv_usage_logger(self)])

        try:
            self._engine = self._loop.call(build())
            tokenizer = self._engine.get_tokenizer()
            if asyncio.iscoroutine(tokenizer):
                tokenizer = self._loop.call(tokenizer)
        except (ValueError, RuntimeError, OSError, TimeoutError) as exc:
            self.close()
            raise ModelLoadFailed(f"vLLM could not load: {exc}", model=self.spec.name) from exc
        self._tokenizer = tokenizer
        self._sampling_params = SamplingParams
        self._loop.submit(self._watch_engine(self._engine))

    async def _watch_engine(self, engine: Any) -> None:
        """Report an engine core that died (`errored`), once, even with no stream running:
        the model turns `failed` instead of waiting for the next request to find out."""
        while self._engine is engine:
            if getattr(engine, "errored", False):
                if self.on_failure is not None:
                    cause = getattr(engine, "dead_error", None) or "the engine core died"
                    self.on_failure(f"vLLM engine of {self.spec.name} died: {cause}")
                return
            await asyncio.sleep(ENGINE_WATCH_S)

    def kv_cache_usage(self) -> float | None:
        return self._kv_usage

    def close(self) -> None:
        engine, self._engine = self._engine, None
        loop, self._loop = self._loop, None
        self._tokenizer = None
        if engine is not None and loop is not None:

            async def shutdown() -> None:
                engine.shutdown()

            try:
                loop.call(shutdown(), timeout=_SHUTDOWN_WAIT_S)
            except (RuntimeError, TimeoutError, OSError):
                pass  # the engine process is gone or stuck; we still drop our side
        if loop is not None:
            loop.stop(timeout=_SHUTDOWN_WAIT_S)
        engine = None  # our last reference, before collecting
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- generation ------------------------------------------------------------------
    def prompt(self, request: GenerationRequest) -> Any:
        """The engine's prompt: chat-template text, plus images when there are any; a raw
        `request.prompt` as it is (vLLM's tokenizer adds BOS to a text prompt)."""
        if request.prompt is not None:
            return {"prompt": request.prompt}
        messages, images = template_messages(request)
        if images and "image" not in self.spec.modalities:
            raise InvalidRequest("this model does not take images", model=self.spec.name)
        # A reasoning format: thinking on or off through the template's own switch
        # (`prompts.template_kwargs`), and Qwen3's empty block if it has none.
        kwargs: dict[str, Any] = {**prompts.template_kwargs(self.spec, request)}
        if request.tools is not None:  # the model's own template shows them
            kwargs["tools"] = [tool.openai() for tool in request.tools.tools]
        text = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **kwargs
        )
        text = prompts.close_thinking(self.spec, request, text)
        if not images:
            return {"prompt": text}
        return {"prompt": text, "multi_modal_data": {"image": [open_image(b) for b in images]}}

    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        engine, loop = self._engine, self._loop
        if engine is None or loop is None:
            raise BackendError("runtime is not loaded", model=self.spec.name)
        started = time.perf_counter()
        prompt = self.prompt(request)
        kwargs = sampling_kwargs(request, self.max_tokens_limit(self.spec))
        held = request.held_tools
        if held is not None:  # held as JSON, read back as calls (read_forced)
            kwargs["structured_outputs"] = structured_outputs(
                OutputFormat("json_schema", "tools", forced_schema(held))
            )
        elif request.output_format is not None:
            kwargs["structured_outputs"] = structured_outputs(request.output_format)
        params = self._sampling_params(**kwargs)
        prepared = time.perf_counter()
        outputs: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._in_flight[id(request)] = outputs
        # Thoughts out of the text (a prompt that opened the block starts inside it).
        splitter = prompts.request_splitter(self.spec, request, prompt["prompt"])
        chunks = stream_outputs(
            loop, engine, prompt, params, prepared, started, outputs, self._client_errors, splitter
        )
        try:
            if held is not None:
                yield from read_forced(chunks, held)
            else:  # with tools, the calls the model writes in its answer are read out of the text
                yield from read_calls(chunks, prompts.request_tool_markers(self.spec, request))
        finally:
            self._in_flight.pop(id(request), None)

    def interrupt(self, request: GenerationRequest) -> None:
        outputs = self._in_flight.get(id(request))
        if outputs is not None:
            outputs.put((_STOP, None))


def stream_outputs(
    loop: LoopThread,
    engine: Any,
    prompt: Any,
    params: Any,
    prepared: float,
    started: float,
    outputs: queue.SimpleQueue[tuple[str, Any]] | None = None,
    client_errors: tuple[type[BaseException], ...] = (),
    splitter: ReasoningSplitter | None = None,
) -> Iterator[Chunk]:
    """Text deltas of one engine request, then the final chunk; blocks this OS thread.

    `engine` needs vLLM's `generate(prompt, params, request_id)` async generator of
    cumulative `RequestOutput`s and `abort(request_id)`. Closing the iterator before the
    end aborts the request and waits (briefly) for the engine to acknowledge it; so does
    a `(_STOP, None)` put into `outputs` from another thread (`VllmAdapter.interrupt`).
    An error of a `client_errors` type (the engine refused the request) is InvalidRequest;
    any other is BackendError. With a `splitter`, the text is split into answer and
    reasoning deltas.
    """
    request_id = uuid.uuid4().hex
    outputs = outputs if outputs is not None else queue.SimpleQueue()

    async def pump() -> None:
        try:
            async for output in engine.generate(prompt, params, request_id):
                outputs.put(("out", output))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            outputs.put(("err", exc))
            raise
        outputs.put(("end", None))

    pumping = loop.submit(pump())
    finished = False
    sent = ""
    first: float | None = None
    last: Any = None
    try:
        while True:
            kind, value = outputs.get()
            if kind == _STOP:
                return  # not finished: the request is aborted in `finally`
            if kind == "err" and isinstance(value, client_errors):
                raise InvalidRequest(f"vLLM refused the request: {value}") from value
            if kind == "err":
                raise BackendError(f"vLLM failed: {value}") from value
            if kind == "end":
                break
            last = value
            text = value.outputs[0].text
            if len(text) > len(sent):
                first = first or time.perf_counter()
                delta, sent = text[len(sent) :], text
                if splitter is None:
                    yield Chunk(text=delta)
                else:
                    yield from (Chunk(text=t, reasoning=r) for t, r in splitter.feed(delta))
        finished = True
    finally:
        if not finished:
            try:
                loop.call(engine.abort(request_id), timeout=_ABORT_WAIT_S)
            except (RuntimeError, TimeoutError, KeyError):
                pass  # already finished or the engine is going away
            pumping.cancel()
    if splitter is not None:
        yield from (Chunk(text=t, reasoning=r) for t, r in splitter.flush())
    done = time.perf_counter()
    completion = last.outputs[0] if last is not None else None
    length = completion is not None and completion.finish_reason == "length"
    yield Chunk(
        final=Final(
            finish_reason="length" if length else "stop",
            stop_sequence=_stop_string(completion, params),
            prompt_tokens=len(last.prompt_token_ids) if last is not None and last.prompt_token_ids else None,
            output_tokens=len(completion.token_ids) if completion is not None else 0,
            tokenize_ms=round((prepared - started) * 1000, 3),
            time_to_first_token_ms=None if first is None else round((first - prepared) * 1000, 3),
            generate_total_ms=round((done - prepared) * 1000, 3),
        )
    )


def _stop_string(completion: Any, params: Any) -> str | None:
    """The request's stop string that ended `completion` (vLLM's `stop_reason` is that
    string, a stop token's id, or None)."""
    reason = getattr(completion, "stop_reason", None)
    return reason if isinstance(reason, str) and reason in (getattr(params, "stop", None) or ()) else None
