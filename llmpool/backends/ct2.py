"""In-process CTranslate2 decoder models (`ctranslate2.Generator`).

The model directory is a CT2 conversion (`ct2-transformers-converter --copy_files
tokenizer.json ...`): weights plus the Hugging Face `tokenizer.json`, read with the
`tokenizers` library (never transformers). Single turn, text only: the prompt is the
model's raw prompt format (`llmpool.prompts`).

Two decoding paths:
- `beam_size` 1: token-by-token streaming through `generate_batch(asynchronous=True,
  callback=...)`, steps handed over on a `queue.SimpleQueue`. CT2's own
  `generate_tokens` is the same wrapper and streams too now that the worker leaves
  `threading` and `queue` real (under the old full patch every token arrived at the
  end), but it offers no `include_prompt_in_result=False`, which forwards the prompt in
  one pass instead of constraining the decoder to it token by token; so ours stays.
  Closing the iterator makes the callback return True, which stops CT2 at the next step.
- `beam_size` > 1: one `generate_batch` call, the whole answer in one chunk.

Deltas are decoded incrementally (see `IncrementalDecoder`) so that a character split
over several byte-level tokens is sent once, whole; stop strings are matched on the text
with a possible stop prefix held back (`StopScanner`). A `Generator` could serve several
jobs, but one replica runs one job at a time like llama_cpp (`can_batch = False`).
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

from marshmallow import fields, validate

from llmpool import prompts
from llmpool.backends.base import Adapter, Capabilities
from llmpool.config.fields import LIVE, StrictInt
from llmpool.config.spec import ModelSpec
from llmpool.errors import BackendError, InvalidRequest, ModelLoadFailed
from llmpool.generation import Chunk, Final, GenerationRequest
from llmpool.reasoning import split_chunks

DEVICES = ("cpu", "cuda", "auto")
COMPUTE_TYPES = (
    "default",
    "auto",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)
DEFAULT_MAX_LENGTH = 2048
# How often the streaming loop looks at the CT2 job while no step arrives (its end
# without a last step, or an error, is only visible on the async result).
_POLL_S = 0.05


class IncrementalDecoder:
    """Token ids in, text deltas out, never splitting a UTF-8 character.

    Decodes a short window of recent ids (not the whole output each time) and emits
    only what the new id added; while the window ends in U+FFFD (a byte-level token
    holding part of a character) nothing is emitted and the window grows. The same
    approach as vLLM's and transformers' text streamers. Not thread-safe.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # window start: ids before it are already emitted
        self._read = 0  # ids up to here are covered by emitted text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]


class StopScanner:
    """Finds stop strings in streamed text, holding back what could begin one.

    `feed(delta)` returns (text safe to send, stopped); once stopped, the text before
    the stop string has been returned and the rest is dropped. `flush()` returns what is
    still held back when generation ends without a stop.
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        if not self._stops:
            return delta, False
        text = self._pending + delta
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return text[: min(hits)], True
        hold = max((_overlap(text, s) for s in self._stops), default=0)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found (beam path)."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def sampling_kwargs(
    temperature: float, top_k: int, top_p: float, repetition_penalty: float
) -> dict[str, Any]:
    """CT2's sampling arguments; temperature 0 means greedy (top-k 1)."""
    if temperature <= 0:
        return {"sampling_topk": 1, "repetition_penalty": repetition_penalty}
    return {
        "sampling_temperature": temperature,
        "sampling_topk": max(top_k, 0),  # CT2: 0 samples from the full distribution
        "sampling_topp": top_p,
        "repetition_penalty": repetition_penalty,
    }


class Ct2Adapter(Adapter):
    backend = "ct2"
    can_batch = False

    def __init__(self, spec: ModelSpec, replica_id: int) -> None:
        super().__init__(spec, replica_id)
        self._generator: Any = None
        self._tokenizer: Any = None
        self._end_tokens: list[str] = []

    @classmethod
    def config_fields(cls) -> dict[str, fields.Field]:
        threads = validate.Range(min=0)
        return {
            "device": fields.String(load_default="cpu", validate=validate.OneOf(DEVICES), metadata=LIVE),
            "compute_type": fields.String(
                load_default="int8", validate=validate.OneOf(COMPUTE_TYPES), metadata=LIVE
            ),
            "ct2_device_index": StrictInt(load_default=0, validate=validate.Range(min=0)),
            # 0 lets CTranslate2 choose (its defaults: 1 and the core count).
            "ct2_inter_threads": StrictInt(load_default=1, validate=validate.Range(min=1)),
            "ct2_intra_threads": StrictInt(load_default=0, validate=threads),
            "ct2_max_length": StrictInt(
                load_default=DEFAULT_MAX_LENGTH, validate=validate.Range(min=16), metadata=LIVE
            ),
        }

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        try:
            modes = tuple(prompts.get(spec.prompt_format).THINKING_MODES)
        except (KeyError, AttributeError):
            modes = ("default",)
        knobs = ("beam_size", "top_k", "repetition_penalty")  # its seed is process-wide: none
        return Capabilities(modalities=("text",), multi_turn=False, thinking_modes=modes, decoding=knobs)

    @classmethod
    def max_tokens_limit(cls, spec: ModelSpec) -> int:
        return int(spec.options["ct2_max_length"])

    # -- lifecycle -------------------------------------------------------------------
    @classmethod
    def memory_device(cls, spec: ModelSpec) -> str | None:
        offloads = spec.options["device"] in ("cuda", "auto")
        return cls.gpu_or_host(offloads, spec.options["ct2_device_index"])

    def load(self) -> None:
        import ctranslate2  # lazy: only hosts that run CT2 models need it
        import tokenizers

        opts = self.spec.options
        path = self.spec.model_path
        if not path or not os.path.isdir(path):
            raise ModelLoadFailed(
                f"ct2 needs model_path to be a CT2 model directory, got {path!r}", model=self.spec.name
            )
        tokenizer_path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tokenizer_path):
            raise ModelLoadFailed(
                f"{tokenizer_path} is missing (convert with --copy_files tokenizer.json)",
                model=self.spec.name,
            )
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(tokenizer_path)
            self._generator = ctranslate2.Generator(
                path,
                device=opts["device"],
                device_index=opts["ct2_device_index"],
                compute_type=opts["compute_type"],
                inter_threads=opts["ct2_inter_threads"],
                intra_threads=opts["ct2_intra_threads"],
            )
        except (ValueError, OSError, RuntimeError) as exc:
            self._tokenizer = None
            raise ModelLoadFailed(f"CTranslate2 could not load {path}: {exc}", model=self.spec.name) from exc
        self._end_tokens = end_tokens(path, self._tokenizer)

    def close(self) -> None:
        generator, self._generator = self._generator, None
        self._tokenizer = None
        if generator is not None:
            generator.unload_model()

    # -- generation ------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        generator, tokenizer = self._generator, self._tokenizer
        if generator is None or tokenizer is None:
            raise BackendError("runtime is not loaded", model=self.spec.name)
        if request.messages is not None:
            raise InvalidRequest("ct2 models take single-turn input", model=self.spec.name)
        started = time.perf_counter()
        rendered = prompts.render(self.spec, request)
        stop = prompts.stops(rendered, request)
        tokens: list[str] = tokenizer.encode(rendered.text).tokens
        tokenized = time.perf_counter()
        d = request.decoding
        kwargs: dict[str, Any] = {
            "max_length": min(d.max_tokens, int(self.spec.options["ct2_max_length"])),
            "end_token": self._end_tokens or None,
            **sampling_kwargs(d.temperature, d.top_k, d.top_p, d.repetition_penalty),
        }
        if d.beam_size > 1:
            chunks = self._beam(generator, tokens, stop, kwargs, d.beam_size, started, tokenized)
        else:
            chunks = self._stream(generator, tokens, stop, kwargs, started, tokenized)
        # A reasoning format (qwen3_template): thoughts out of the answer.
        yield from split_chunks(chunks, prompts.request_splitter(self.spec, request, rendered.text))

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def _stream(
        self,
        generator: Any,
        tokens: list[str],
        stop: list[str],
        kwargs: dict[str, Any],
        started: float,
        tokenized: float,
    ) -> Iterator[Chunk]:
        decoder = IncrementalDecoder(self._decode)
        scanner = StopScanner(stop)
        first: float | None = None
        stopped = hit_end = False
        n_out = 0
        for step in stream_steps(generator, tokens, kwargs):
            if step.token in self._end_tokens:
                hit_end = True
                break
            n_out += 1
            text, stopped = scanner.feed(decoder.push(step.token_id))
            if text:
                if first is None:
                    first = time.perf_counter()
                yield Chunk(text=text)
            if stopped:
                break
        if not stopped:
            tail = scanner.flush()
            if tail:
                first = first or time.perf_counter()
                yield Chunk(text=tail)
        done = time.perf_counter()
        length = not stopped and not hit_end and n_out >= kwargs["max_length"]
        yield Chunk(final=self._final(length, len(tokens), n_out, started, tokenized, first, done))

    def _beam(
        self,
        generator: Any,
        tokens: list[str],
        stop: list[str],
        kwargs: dict[str, Any],
        beam_size: int,
        started: float,
        tokenized: float,
    ) -> Iterator[Chunk]:
        # Beam search only knows its best hypothesis at the end: one piece, not streamed.
        for key in ("sampling_temperature", "sampling_topk", "sampling_topp"):
            kwargs.pop(key, None)
        try:
            result = generator.generate_batch(
                [tokens], beam_size=beam_size, include_prompt_in_result=False, **kwargs
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"CTranslate2 failed: {exc}", model=self.spec.name) from exc
        ids = list(result[0].sequences_ids[0])
        done = time.perf_counter()
        text, stopped = cut_at_stop(self._decode(ids), stop)
        if text:
            yield Chunk(text=text)
        # CT2 drops the end token from the result, so a full-length result means "length".
        length = not stopped and len(ids) >= kwargs["max_length"]
        yield Chunk(final=self._final(length, len(tokens), len(ids), started, tokenized, done, done))

    @staticmethod
    def _final(
        length: bool,
        n_in: int,
        n_out: int,
        started: float,
        tokenized: float,
        first: float | None,
        done: float,
    ) -> Final:
        return Final(
            finish_reason="length" if length else "stop",
            prompt_tokens=n_in,
            output_tokens=n_out,
            tokenize_ms=round((tokenized - started) * 1000, 3),
            time_to_first_token_ms=None if first is None else round((first - tokenized) * 1000, 3),
            generate_total_ms=round((done - tokenized) * 1000, 3),
        )


def stream_steps(generator: Any, tokens: list[str], kwargs: dict[str, Any]) -> Iterator[Any]:
    """CT2 generation steps as they are decoded; blocks this OS thread between steps.

    The callback runs on a CT2 worker thread and returns True to stop the job, which it
    does once this iterator is closed (a cancelled job) or left. Leaving always waits
    for the CT2 job to end, so the generator is idle when the caller moves on.
    Raises `RuntimeError` from CT2 (e.g. out of memory).
    """
    steps: queue.SimpleQueue[Any] = queue.SimpleQueue()
    closed = False

    def on_step(step: Any) -> bool:
        steps.put(step)
        return closed

    (job,) = generator.generate_batch(
        [tokens], asynchronous=True, beam_size=1, include_prompt_in_result=False, callback=on_step, **kwargs
    )
    try:
        while True:
            try:
                step = steps.get(timeout=_POLL_S)
            except queue.Empty:
                if job.done() and steps.empty():
                    break
                continue
            yield step
            if step.is_last:
                break
    finally:
        closed = True
        job.result()  # waits for CT2 to stop; raises its error if it failed


def end_tokens(model_dir: str, tokenizer: Any) -> list[str]:
    """The tokens that end generation: the CT2 config's EOS plus generation_config's."""
    found: list[str] = []
    config_path = os.path.join(model_dir, "config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            eos = json.load(f).get("eos_token")
        if isinstance(eos, str):
            found.append(eos)
    gen_path = os.path.join(model_dir, "generation_config.json")
    if os.path.isfile(gen_path):
        with open(gen_path, encoding="utf-8") as f:
            ids = json.load(f).get("eos_token_id")
        for token_id in ids if isinstance(ids, list) else [ids] if isinstance(ids, int) else []:
            token = tokenizer.id_to_token(token_id)
            if token:
                found.append(token)
    return list(dict.fromkeys(found))
