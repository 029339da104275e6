"""In-process EXL3 models through ExLlamaV3's dynamic generator/job API.

Load (GPU-only; verified against turboderp-org/exllamav3 `exllamav3/model_init.py`,
`cache/cache.py`, `model/model.py`, `generator/generator.py`, `generator/job.py`):
`Config.from_directory(path)` -> `Model.from_config(config)` -> `Cache(model,
max_num_tokens=..., layer_type=CacheLayer_fp16 | CacheLayer_quant, k_bits=, v_bits=)`
(created *before* `model.load` so the split accounts for the cache) -> `model.load(
use_per_device=[GB, ...], tensor_p=..., tp_backend=..., progressbar=False)` ->
`Tokenizer.from_config(config)` -> `Generator(model=, cache=, tokenizer=, max_batch_size=,
max_chunk_size=, max_q_size=)`.

Keys: `exllama_cache_size` (tokens, a multiple of the 256-token page, default 8192; also
the largest `max_tokens`), `exllama_cache_quant` (null = fp16 cache, else the library's
`--cache_quant` spelling: `"K"` or `"K,V"` bits, each 2..8, e.g. `"4"`, `"8,8"`, `"4,6"`),
`exllama_gpu_split` (GB per GPU -> `use_per_device`), `exllama_tensor_parallel`
(-> `tensor_p`), `exllama_tp_backend` (`native`/`nccl`, only with tensor parallel),
`exllama_max_batch_size|max_chunk_size|max_q_size` (-> `Generator`), `exllama_max_rq_tokens`
(-> `Job(max_rq_tokens=)`, the library takes it per job, not per generator).

Generation: the prompt format's raw text (it carries special-token markup such as ChatML's,
hence `tokenizer.encode(add_bos=True, encode_special_tokens=True)`), one `Job`
(stop conditions: the tokenizer's EOS id plus the stop strings; a `ComboSampler` from
the decoding settings; the library has no beam search, so `beam_size` > 1 is refused),
`generator.enqueue`, then `generator.iterate()` until this job's result has `eos`. The
streamed `"text"` never contains a stop string (the library holds text back until a
partial match resolves). Closing the iterator cancels the job in the generator.

One Generator could batch, but the executor calls `generate()` from several OS threads
and `iterate()` is not thread-safe; a shared iterate loop is not worth it for a single-turn
backend, so each replica serves one job at a time (`can_batch = False`).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from typing import Any

from marshmallow import fields, validate

from llmpool import prompts
from llmpool.backends.base import Adapter, Capabilities
from llmpool.config.fields import LIVE, MultipleOf, StrictBool, StrictFloat, StrictInt
from llmpool.config.spec import ModelSpec
from llmpool.errors import BackendError, InvalidRequest, ModelLoadFailed
from llmpool.generation import Chunk, Final, GenerationRequest
from llmpool.reasoning import split_chunks

PAGE_SIZE = 256  # exllamav3.constants.PAGE_SIZE: the cache is allocated in pages
DEFAULT_CACHE_SIZE = 8192
_BITS = range(2, 9)  # CacheLayer_quant asserts 2 <= bits <= 8
CACHE_QUANTS: tuple[str, ...] = (
    *(str(b) for b in _BITS),
    *(f"{k},{v}" for k in _BITS for v in _BITS),
)
TP_BACKENDS = ("native", "nccl")
GENERATOR_KEYS = {
    "exllama_max_batch_size": "max_batch_size",
    "exllama_max_chunk_size": "max_chunk_size",
    "exllama_max_q_size": "max_q_size",
}


def cache_bits(quant: str) -> tuple[int, int]:
    """(k_bits, v_bits) of an `exllama_cache_quant` value, as model_init parses it."""
    bits = [int(b) for b in quant.split(",")]
    return (bits[0], bits[0]) if len(bits) == 1 else (bits[0], bits[1])


class ExLlamaV3Adapter(Adapter):
    backend = "exllamav3"
    can_batch = False

    def __init__(self, spec: ModelSpec, replica_id: int) -> None:
        super().__init__(spec, replica_id)
        self._exl: Any = None  # the exllamav3 module, kept for Job/ComboSampler
        self._model: Any = None
        self._cache: Any = None
        self._tokenizer: Any = None
        self._generator: Any = None
        self._serial = 0

    @classmethod
    def config_fields(cls) -> dict[str, fields.Field]:
        positive = validate.Range(min=1)
        return {
            "exllama_cache_size": StrictInt(
                load_default=DEFAULT_CACHE_SIZE,
                validate=[validate.Range(min=PAGE_SIZE), MultipleOf(PAGE_SIZE)],
                metadata=LIVE,
            ),
            "exllama_cache_quant": fields.String(
                load_default=None, allow_none=True, validate=validate.OneOf(CACHE_QUANTS), metadata=LIVE
            ),
            "exllama_gpu_split": fields.List(
                StrictFloat(validate=validate.Range(min=0)),
                load_default=None,
                allow_none=True,
                validate=validate.Length(min=1),
            ),
            "exllama_tensor_parallel": StrictBool(load_default=False),
            "exllama_tp_backend": fields.String(
                load_default=None, allow_none=True, validate=validate.OneOf(TP_BACKENDS)
            ),
            **{
                key: StrictInt(load_default=None, allow_none=True, validate=positive)
                for key in (*GENERATOR_KEYS, "exllama_max_rq_tokens")
            },
        }

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        try:
            modes: tuple[str, ...] = tuple(prompts.get(spec.prompt_format).THINKING_MODES)
        except KeyError:  # a format still being added: offer only the default
            modes = ("default",)
        knobs = ("top_k", "repetition_penalty")  # no per-request seed here: refused
        return Capabilities(modalities=("text",), multi_turn=False, thinking_modes=modes, decoding=knobs)

    @classmethod
    def max_tokens_limit(cls, spec: ModelSpec) -> int:
        return int(spec.options["exllama_cache_size"])

    # -- lifecycle -------------------------------------------------------------------
    @classmethod
    def memory_device(cls, spec: ModelSpec) -> str | None:
        return "0"  # GPU-only runtime

    def load(self) -> None:
        """Build config, model, cache, tokenizer and generator. Blocks; GPU-only."""
        # Lazy, and through importlib so mypy needs no stubs or ignores for the GPU-only library.
        exl = importlib.import_module("exllamav3")

        path = self.spec.model_path
        if not path:
            raise ModelLoadFailed("exllamav3 needs model_path", model=self.spec.name)
        opts = self.spec.options
        try:
            config = exl.Config.from_directory(path)
            self._model = exl.Model.from_config(config)
            self._cache = self._make_cache(exl, self._model)
            self._model.load(**self._load_kwargs())
            self._tokenizer = exl.Tokenizer.from_config(config)
            gen_kwargs = {arg: opts[key] for key, arg in GENERATOR_KEYS.items() if opts.get(key) is not None}
            self._generator = exl.Generator(
                model=self._model, cache=self._cache, tokenizer=self._tokenizer, **gen_kwargs
            )
        # The library reports bad settings with asserts (cache pages, bits, split).
        except (AssertionError, ValueError, OSError, RuntimeError) as exc:
            self.close()
            raise ModelLoadFailed(f"exllamav3 could not load {path}: {exc}", model=self.spec.name) from exc
        self._exl = exl

    def _make_cache(self, exl: Any, model: Any) -> Any:
        size = self.spec.options["exllama_cache_size"]
        quant = self.spec.options.get("exllama_cache_quant")
        if not quant:
            return exl.Cache(model, max_num_tokens=size, layer_type=exl.CacheLayer_fp16)
        k_bits, v_bits = cache_bits(quant)
        return exl.Cache(
            model, max_num_tokens=size, layer_type=exl.CacheLayer_quant, k_bits=k_bits, v_bits=v_bits
        )

    def _load_kwargs(self) -> dict[str, Any]:
        opts = self.spec.options
        kwargs: dict[str, Any] = {"progressbar": False}
        if opts.get("exllama_gpu_split"):
            kwargs["use_per_device"] = [float(gb) for gb in opts["exllama_gpu_split"]]
        if opts.get("exllama_tensor_parallel"):
            kwargs["tensor_p"] = True
            if opts.get("exllama_tp_backend"):
                kwargs["tp_backend"] = opts["exllama_tp_backend"]
        return kwargs

    def close(self) -> None:
        """Drop queued work, unload weights and cache tensors, free the CUDA cache."""
        generator, model = self._generator, self._model
        self._generator = self._model = self._cache = self._tokenizer = self._exl = None
        if generator is not None:
            generator.clear_queue()
        if model is not None:
            model.unload()  # also frees the tensors of every attached cache
        _empty_cuda_cache()

    # -- generation ------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        generator, tokenizer, exl = self._generator, self._tokenizer, self._exl
        if generator is None:
            raise BackendError("runtime is not loaded", model=self.spec.name)
        started = time.perf_counter()
        rendered = prompts.render(self.spec, request)
        input_ids = tokenizer.encode(rendered.text, add_bos=True, encode_special_tokens=True)
        n_prompt = int(input_ids.shape[-1])
        tokenized = time.perf_counter()
        cache_size = int(self.spec.options["exllama_cache_size"])
        if n_prompt >= cache_size:
            raise InvalidRequest(
                f"prompt is {n_prompt} tokens; the cache holds {cache_size}", model=self.spec.name
            )
        stop = prompts.stops(rendered, request)
        job = exl.Job(**self._job_kwargs(exl, request, input_ids, stop, cache_size - n_prompt))
        # A reasoning format (qwen3_template, gemma4_template): thoughts out of the answer.
        splitter = prompts.request_splitter(self.spec, request, rendered.text)
        yield from split_chunks(self._stream(generator, job, n_prompt, started, tokenized), splitter)

    def _job_kwargs(
        self, exl: Any, request: GenerationRequest, input_ids: Any, stop: list[str], room: int
    ) -> dict[str, Any]:
        d = request.decoding
        eos = self._tokenizer.eos_token_id
        self._serial += 1
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "max_new_tokens": min(d.max_tokens, room),
            "stop_conditions": [*([eos] if eos is not None else []), *stop],
            "sampler": exl.ComboSampler(
                rep_p=d.repetition_penalty, temperature=d.temperature, top_k=d.top_k, top_p=d.top_p
            ),
            "identifier": (self.replica_id, self._serial),
        }
        if self.spec.options.get("exllama_max_rq_tokens") is not None:
            kwargs["max_rq_tokens"] = self.spec.options["exllama_max_rq_tokens"]
        return kwargs

    def _stream(
        self, generator: Any, job: Any, n_prompt: int, started: float, tokenized: float
    ) -> Iterator[Chunk]:
        """Drive `iterate()` and yield this job's text; cancel the job unless it ended."""
        first: float | None = None
        end: dict[str, Any] | None = None
        generator.enqueue(job)
        try:
            while end is None:
                results = generator.iterate()
                for result in results:
                    if result.get("identifier") != job.identifier or result.get("stage") != "streaming":
                        continue
                    text = result.get("text") or ""
                    if text:
                        first = first or time.perf_counter()
                        yield Chunk(text=text)
                    if result.get("eos"):
                        end = result
                if end is None and not generator.num_remaining_jobs():
                    raise BackendError("exllamav3 dropped the job without finishing it", model=self.spec.name)
        finally:
            if end is None:  # closed (client gone, unload) or failed: free its cache pages
                generator.cancel(job)
        done = time.perf_counter()
        yield Chunk(
            final=Final(
                finish_reason="length" if end.get("eos_reason") == "max_new_tokens" else "stop",
                prompt_tokens=n_prompt,
                output_tokens=end.get("new_tokens"),
                tokenize_ms=round((tokenized - started) * 1000, 3),
                time_to_first_token_ms=None if first is None else round((first - tokenized) * 1000, 3),
                generate_total_ms=round((done - tokenized) * 1000, 3),
            )
        )


def _empty_cuda_cache() -> None:
    """Return freed blocks to the driver so the next load (and NVML) sees them."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
