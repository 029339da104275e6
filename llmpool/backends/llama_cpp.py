"""In-process GGUF models through llama-cpp-python.

Two prompt paths, both ending in one raw completion over token ids (so tokenisation is
timed and counted exactly once):
- chat path (`messages`, and single-turn input for the template formats): the GGUF's own
  chat template, rendered with llama-cpp-python's Jinja2 formatter;
- raw path (single-turn input with `prompt_format: generic`): the generic prompt text.

A `Llama` object is not thread-safe and cannot batch, so each replica serves one job at a
time (`can_batch = False`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, ClassVar

from marshmallow import fields, validate

from llmpool import prompts
from llmpool.backends.base import Adapter, Capabilities, Constraint
from llmpool.config.fields import StrictBool, StrictInt
from llmpool.config.spec import ModelSpec
from llmpool.errors import BackendError, InvalidRequest, ModelLoadFailed
from llmpool.generation import Chunk, Final, GenerationRequest, content_text

KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
FLASH_ATTN = ("on", "off", "auto")
TEMPLATE_FORMATS = ("mistral_template", "qwen3_template", "gemma4_template")
CHAT_FORMATS = ("generic", *TEMPLATE_FORMATS)
DEFAULT_N_CTX = 4096


class LlamaCppAdapter(Adapter):
    backend = "llama_cpp"
    can_batch = False
    constraints: ClassVar[tuple[Constraint, ...]] = (
        Constraint("gguf_n_ctx", "int", min=256),
        Constraint("gguf_flash_attn", "choice", choices=FLASH_ATTN),
        Constraint("gguf_type_k", "choice", choices=KV_TYPES),
        Constraint("gguf_type_v", "choice", choices=KV_TYPES),
    )

    def __init__(self, spec: ModelSpec, replica_id: int) -> None:
        super().__init__(spec, replica_id)
        self._llm: Any = None
        self._formatter: Any = None

    @classmethod
    def config_fields(cls) -> dict[str, fields.Field]:
        kv = validate.OneOf(KV_TYPES)
        return {
            "gguf_n_gpu_layers": StrictInt(load_default=-1, validate=validate.Range(min=-1)),
            "gguf_n_ctx": StrictInt(load_default=DEFAULT_N_CTX, validate=validate.Range(min=256)),
            "gguf_flash_attn": fields.String(load_default="auto", validate=validate.OneOf(FLASH_ATTN)),
            "gguf_type_k": fields.String(load_default=None, allow_none=True, validate=kv),
            "gguf_type_v": fields.String(load_default=None, allow_none=True, validate=kv),
            "gguf_n_threads": StrictInt(load_default=None, allow_none=True, validate=validate.Range(min=1)),
            "gguf_seed": StrictInt(load_default=None, allow_none=True),
            "gguf_verbose": StrictBool(load_default=False),
        }

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        # Text only: GGUF vision goes through llama_server (mmproj), not the Python binding.
        return Capabilities(
            modalities=("text",),
            multi_turn=spec.prompt_format in CHAT_FORMATS,
            thinking_modes=("default",),
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
    def _prompt(self, request: GenerationRequest) -> tuple[str, list[str], bool]:
        """(prompt text, stop strings, whether the text carries special tokens)."""
        if request.messages is None and self.spec.prompt_format == "generic":
            rendered = prompts.render(self.spec, request)
            return rendered.text, list(rendered.stop), False
        if self._formatter is None:
            raise InvalidRequest(
                "this GGUF has no chat template; send single-turn input with prompt_format generic",
                model=self.spec.name,
            )
        messages: list[dict[str, str]] = []
        if request.instructions:
            messages.append({"role": "system", "content": request.instructions})
        if request.messages is not None:
            messages += [{"role": m.role, "content": content_text(m.content)} for m in request.messages]
        else:
            messages.append({"role": "user", "content": content_text(request.input or "")})
        rendered = self._formatter(messages=messages)
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return rendered.prompt, stop, True

    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        llm = self._llm
        if llm is None:
            raise BackendError("runtime is not loaded", model=self.spec.name)
        started = time.perf_counter()
        prompt, stop, special = self._prompt(request)
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=special)
        tokenized = time.perf_counter()
        n_ctx = llm.n_ctx()
        if len(tokens) >= n_ctx:
            raise InvalidRequest(
                f"prompt is {len(tokens)} tokens; the context window is {n_ctx}",
                model=self.spec.name,
            )
        d = request.decoding
        stream = llm.create_completion(
            prompt=tokens,
            max_tokens=min(d.max_tokens, n_ctx - len(tokens)),
            temperature=d.temperature,
            top_p=d.top_p,
            top_k=d.top_k,
            repeat_penalty=d.repetition_penalty,
            stop=[*stop, *d.stop],
            stream=True,
        )
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
                    yield Chunk(text=text)
                finish = choice.get("finish_reason") or finish
        finally:
            stream.close()  # a cancelled job stops llama.cpp here, at the next token
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
