"""In-process GGUF models through llama-cpp-python.

Two prompt paths, both ending in one raw completion over token ids (so tokenisation is
timed and counted exactly once):
- chat path (`messages`, and single-turn input for `gemma4_template`): the GGUF's own
  chat template, rendered with llama-cpp-python's Jinja2 formatter, `enable_thinking`
  passed to it;
- raw path (single-turn input for every other format, and any request when the GGUF has
  no chat template): the model's prompt format from `llmpool.prompts`.
Both texts carry special-token markup, so they are tokenised with `special=True`.

For `gemma4_template` the output goes through the format's `ReasoningSplitter`, so text
inside `<|channel>thought…<channel|>` comes back as reasoning deltas.

A `Llama` object is not thread-safe and cannot batch, so each replica serves one job at a
time (`can_batch = False`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from marshmallow import fields, validate

from llmpool import prompts
from llmpool.backends.base import Adapter, Capabilities
from llmpool.config.fields import LIVE, StrictBool, StrictInt
from llmpool.config.spec import ModelSpec
from llmpool.errors import BackendError, InvalidRequest, ModelLoadFailed
from llmpool.generation import Chunk, Final, GenerationRequest
from llmpool.prompts import gemma4

KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
FLASH_ATTN = ("on", "off", "auto")
# Formats whose single-turn input also goes through the GGUF's chat template.
GGUF_TEMPLATE_FIRST = ("gemma4_template",)
DEFAULT_N_CTX = 4096


class LlamaCppAdapter(Adapter):
    backend = "llama_cpp"
    can_batch = False

    def __init__(self, spec: ModelSpec, replica_id: int) -> None:
        super().__init__(spec, replica_id)
        self._llm: Any = None
        self._formatter: Any = None

    @classmethod
    def config_fields(cls) -> dict[str, fields.Field]:
        kv = validate.OneOf(KV_TYPES)
        return {
            "gguf_n_gpu_layers": StrictInt(load_default=-1, validate=validate.Range(min=-1)),
            "gguf_n_ctx": StrictInt(
                load_default=DEFAULT_N_CTX, validate=validate.Range(min=256), metadata=LIVE
            ),
            "gguf_flash_attn": fields.String(
                load_default="auto", validate=validate.OneOf(FLASH_ATTN), metadata=LIVE
            ),
            "gguf_type_k": fields.String(load_default=None, allow_none=True, validate=kv, metadata=LIVE),
            "gguf_type_v": fields.String(load_default=None, allow_none=True, validate=kv, metadata=LIVE),
            "gguf_n_threads": StrictInt(load_default=None, allow_none=True, validate=validate.Range(min=1)),
            "gguf_seed": StrictInt(load_default=None, allow_none=True),
            "gguf_verbose": StrictBool(load_default=False),
        }

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        # Text only: GGUF vision goes through llama_server (mmproj), not the Python binding.
        fmt = prompts.get(spec.prompt_format)
        return Capabilities(
            modalities=("text",),
            multi_turn=bool(fmt.MULTI_TURN),
            thinking_modes=tuple(fmt.THINKING_MODES),
        )

    @classmethod
    def max_tokens_limit(cls, spec: ModelSpec) -> int:
        return int(spec.options["gguf_n_ctx"])

    # -- lifecycle -------------------------------------------------------------------
    def load(self) -> None:
        import llama_cpp  # lazy: only hosts that run GGUF models need the binding

        opts = self.spec.options
        path = self.spec.model_path
        if not path:
            raise ModelLoadFailed("llama_cpp needs model_path", model=self.spec.name)
        kwargs: dict[str, Any] = {
            "model_path": path,
            "n_ctx": opts["gguf_n_ctx"],
            "n_gpu_layers": opts["gguf_n_gpu_layers"],
            # The binding takes a bool; "auto" leaves llama.cpp's own default (off here).
            "flash_attn": opts["gguf_flash_attn"] == "on",
            "verbose": opts["gguf_verbose"],
        }
        for key, arg in (("gguf_type_k", "type_k"), ("gguf_type_v", "type_v")):
            if opts.get(key):
                kwargs[arg] = getattr(llama_cpp, f"GGML_TYPE_{opts[key].upper()}")
        if opts.get("gguf_n_threads"):
            kwargs["n_threads"] = kwargs["n_threads_batch"] = opts["gguf_n_threads"]
        if opts.get("gguf_seed") is not None:
            kwargs["seed"] = opts["gguf_seed"]
        try:
            self._llm = llama_cpp.Llama(**kwargs)
        except (ValueError, OSError, RuntimeError) as exc:
            raise ModelLoadFailed(f"llama.cpp could not load {path}: {exc}", model=self.spec.name) from exc
        self._formatter = self._make_formatter()

    def _make_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None

        def token_text(token_id: int) -> str:
            if token_id < 0:
                return ""
            return bytes(self._llm.detokenize([token_id], special=True)).decode("utf-8", "replace")

        return Jinja2ChatFormatter(
            template=template,
            eos_token=token_text(self._llm.token_eos()),
            bos_token=token_text(self._llm.token_bos()),
            stop_token_ids=[self._llm.token_eos()],
        )

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

    # -- generation ------------------------------------------------------------------
    def _prompt(self, request: GenerationRequest) -> tuple[str, list[str]]:
        """(prompt text with special-token markup, stop strings incl. the request's)."""
        fmt = prompts.get(self.spec.prompt_format)
        chat = request.prompt is None and (
            request.messages is not None or self.spec.prompt_format in GGUF_TEMPLATE_FIRST
        )
        if not chat or self._formatter is None:
            rendered = prompts.render(self.spec, request)
            return rendered.text, prompts.stops(rendered, request)
        messages: list[dict[str, str]] = []
        if request.instructions:
            messages.append({"role": "system", "content": request.instructions})
        messages += [{"role": role, "content": text} for role, text in prompts.turns(request)]
        thinking = prompts.resolve_thinking(self.spec, request) == "enabled"
        out = self._formatter(messages=messages, enable_thinking=thinking)
        template_stop = out.stop if isinstance(out.stop, list) else [out.stop] if out.stop else []
        rendered = prompts.Rendered(out.prompt, (*template_stop, *fmt.STOP))
        return rendered.text, prompts.stops(rendered, request)

    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        llm = self._llm
        if llm is None:
            raise BackendError("runtime is not loaded", model=self.spec.name)
        started = time.perf_counter()
        prompt, stop = self._prompt(request)
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        tokenized = time.perf_counter()
        n_ctx = llm.n_ctx()
        if len(tokens) >= n_ctx:
            raise InvalidRequest(
                f"prompt is {len(tokens)} tokens; the context window is {n_ctx}",
                model=self.spec.name,
            )
        # Evaluate every prompt from scratch: llama-cpp-python otherwise reuses the KV cache
        # of the previous job's common prefix, and logits computed in a different batch
        # shape differ in the last bits, enough to flip a near-tie under greedy decoding
        # (the same request then gives a different answer depending on what ran before).
        llm.reset()
        d = request.decoding
        stream = llm.create_completion(
            prompt=tokens,
            max_tokens=min(d.max_tokens, n_ctx - len(tokens)),
            temperature=d.temperature,
            top_p=d.top_p,
            top_k=d.top_k,
            repeat_penalty=d.repetition_penalty,
            stop=stop,
            stream=True,
        )
        gemma = self.spec.prompt_format == "gemma4_template" and request.prompt is None  # raw: unsplit
        splitter = gemma4.ReasoningSplitter() if gemma else None
        first: float | None = None
        finish = "stop"
        pieces: list[str] = []
        try:
            for part in stream:
                choice = part["choices"][0]
                text = choice.get("text") or ""
                if text:
                    if first is None:
                        first = time.perf_counter()
                    pieces.append(text)
                    yield from _chunks(splitter, text)
                finish = choice.get("finish_reason") or finish
        finally:
            stream.close()  # a cancelled job stops llama.cpp here, at the next token
            free_sampler(llm)
        if splitter is not None:
            yield from (Chunk(text=t, reasoning=r) for t, r in splitter.flush())
        done = time.perf_counter()
        output = "".join(pieces)
        n_out = len(llm.tokenize(output.encode("utf-8"), add_bos=False, special=False)) if output else 0
        yield Chunk(
            final=Final(
                finish_reason="length" if finish == "length" else "stop",
                prompt_tokens=len(tokens),
                output_tokens=n_out,
                tokenize_ms=round((tokenized - started) * 1000, 3),
                time_to_first_token_ms=None if first is None else round((first - tokenized) * 1000, 3),
                generate_total_ms=round((done - tokenized) * 1000, 3),
            )
        )


def free_sampler(llm: Any) -> None:
    """Free the native sampler of the completion that just ended now, not at some later
    garbage collection.

    llama-cpp-python (0.3.x) makes a `LlamaSampler` per completion and keeps the last one
    in `Llama._sampler`. Each holds about 590 KB of llama.cpp memory for SmolLM2 (12 bytes
    per vocabulary entry) and sits in a reference cycle (its ExitStack's callback refers
    back to it), so a replaced one is freed only by Python's cyclic GC. It lives through
    the whole completion, long enough to be promoted to an older generation, which the
    worker's large heap collects rarely: the soak's worker carried dozens at a time, its
    RSS wandering by tens of MB (bench/README.md). `close()` frees the chain at once and
    is idempotent; with `_sampler` None the binding makes a fresh sampler for the next
    completion, as it does for the first.
    """
    sampler = getattr(llm, "_sampler", None)
    if sampler is None:
        return
    llm._sampler = None
    close = getattr(sampler, "close", None)
    if close is not None:
        close()


def _chunks(splitter: gemma4.ReasoningSplitter | None, text: str) -> Iterator[Chunk]:
    if splitter is None:
        yield Chunk(text=text)
        return
    for answer, reasoning in splitter.feed(text):
        yield Chunk(text=answer, reasoning=reasoning)
