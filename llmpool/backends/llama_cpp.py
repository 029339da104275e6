"""In-process GGUF models through llama-cpp-python.

Two prompt paths, both ending in one raw completion over token ids (so tokenisation is
timed and counted exactly once):
- chat path (`messages`, and single-turn input for `gemma4_template`): the GGUF's own
  chat template, rendered with llama-cpp-python's Jinja2 formatter, `enable_thinking`
  passed to it;
- raw path (single-turn input for every other format, and any request when the GGUF has
  no chat template): the model's prompt format from `llmpool.prompts`.
Both texts carry special-token markup, so they are tokenised with `special=True`.

For a reasoning format (`qwen3_template`, `gemma4_template`) the output goes through a
`ReasoningSplitter` on the format's markers, so thoughts come back as reasoning deltas,
never as answer text; a prompt that ends inside an open block (a template that opens
`<think>` itself) starts the splitter inside it. Generation runs through
`llama_cpp_stream`, which keeps special tokens in the text (Gemma 4's channel markers are
single special tokens, which `create_completion` would drop). Thinking "disabled" on the
chat path of `qwen3_template` also closes the think block in the prompt when the GGUF's
template ignores `enable_thinking`.

A `Llama` object is not thread-safe and cannot batch, so each replica serves one job at a
time (`can_batch = False`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from marshmallow import fields, validate

from llmpool import prompts
from llmpool.backends import llama_grammar
from llmpool.backends.base import Adapter, Capabilities
from llmpool.backends.llama_cpp_stream import Outcome, eog_test, stream_text
from llmpool.backends.openai_chat import chat_messages
from llmpool.config.fields import LIVE, StrictBool, StrictInt
from llmpool.config.spec import ModelSpec
from llmpool.errors import BackendError, InvalidParam, InvalidRequest, ModelLoadFailed
from llmpool.generation import Chunk, Final, GenerationRequest, content_text
from llmpool.reasoning import ReasoningSplitter
from llmpool.tool_calls import arguments_object, read_calls

KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
FLASH_ATTN = ("on", "off", "auto")
# Formats whose single-turn input also goes through the GGUF's chat template.
GGUF_TEMPLATE_FIRST = ("gemma4_template", "hermes_template")
DEFAULT_N_CTX = 4096


class LlamaCppAdapter(Adapter):
    backend = "llama_cpp"
    can_batch = False

    def __init__(self, spec: ModelSpec, replica_id: int) -> None:
        super().__init__(spec, replica_id)
        self._llm: Any = None
        self._formatter: Any = None
        self._seed = 0  # a request's seed when it names none (set at load)
        self._is_eog: Callable[[int], bool] = lambda token: False

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
        tools = prompts.tool_call_markers(spec.prompt_format) is not None
        return Capabilities(
            modalities=("text",),
            multi_turn=bool(fmt.MULTI_TURN),
            thinking_modes=tuple(fmt.THINKING_MODES),
            structured_output=True,  # a grammar from the schema (llama_grammar)
            structured_after_thinking=True,  # the grammar leaves the thoughts free
            # The GGUF's template renders the tools; the format says how calls are written,
            # and a grammar holds required and named calls.
            tool_calls=tools,
            forced_tool_calls=tools,
        )

    @classmethod
    def max_tokens_limit(cls, spec: ModelSpec) -> int:
        return int(spec.options["gguf_n_ctx"])

    # -- lifecycle -------------------------------------------------------------------
    @classmethod
    def memory_device(cls, spec: ModelSpec) -> str | None:
        return cls.gpu_or_host(spec.options["gguf_n_gpu_layers"] != 0)

    def load(self) -> None:
        import llama_cpp  # lazy: only hosts that run GGUF models need the binding

        from llmpool.native.loader import NoBackend, ensure_backends

        try:
            ensure_backends()  # a portable build's CPU variant, chosen for this machine
        except NoBackend as exc:
            raise ModelLoadFailed(str(exc), model=self.spec.name) from exc
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
        # The seed create_completion gives a fresh model's first completion (from gguf_seed,
        # else llama.cpp's default), drawn once here and given to every request without one.
        self._seed = random.Random(opts.get("gguf_seed") or llama_cpp.LLAMA_DEFAULT_SEED).randint(0, 2**32)
        try:
            self._llm = llama_cpp.Llama(**kwargs)
        except (ValueError, OSError, RuntimeError) as exc:
            raise ModelLoadFailed(f"llama.cpp could not load {path}: {exc}", model=self.spec.name) from exc
        self._formatter = self._make_formatter()
        self._is_eog = eog_test(self._llm)

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
            request.messages is not None
            or request.tools is not None
            or self.spec.prompt_format in GGUF_TEMPLATE_FIRST
        )
        if (not chat or self._formatter is None) and request.tools is not None:
            raise InvalidParam("tools", "tools need the model's own chat template; its GGUF has none")
        if not chat or self._formatter is None:
            rendered = prompts.render(self.spec, request)
            return rendered.text, prompts.stops(rendered, request)
        thinking = prompts.resolve_thinking(self.spec, request) == "enabled"
        tools = [t.openai() for t in request.tools.tools] if request.tools is not None else None
        out = self._formatter(messages=template_messages(request), enable_thinking=thinking, tools=tools)
        text = prompts.close_thinking(self.spec, request, out.prompt)
        template_stop = out.stop if isinstance(out.stop, list) else [out.stop] if out.stop else []
        rendered = prompts.Rendered(text, (*template_stop, *fmt.STOP))
        return rendered.text, prompts.stops(rendered, request)

    def _grammar(self, request: GenerationRequest, splitter: ReasoningSplitter | None) -> Any:
        """The grammar for what the request demands of the answer (a format, a required
        or named tool call), free thoughts first where it may think; None for none
        (llmpool.backends.llama_grammar)."""
        import llama_cpp

        try:
            text = llama_grammar.grammar_for(
                request.output_format,
                request.tools,
                prompts.tool_call_markers(self.spec.prompt_format),
                prompts.reasoning_markers(self.spec.prompt_format),
                thinking=prompts.resolve_thinking(self.spec, request) == "enabled",
                inside=splitter is not None and splitter.in_reasoning,
            )
        except (AssertionError, ValueError, KeyError, TypeError, NotImplementedError, RecursionError) as exc:
            # llama-cpp-python's converter on a schema it does not handle (a valid one:
            # the schema was checked on arrival); it reports some with `assert`.
            param = request.output_format.param if request.output_format is not None else "tools"
            raise InvalidParam(param, f"{param}: the schema cannot be turned into a grammar: {exc}") from exc
        if text is None:
            return None
        # llama.cpp parses the grammar only when the sampler is made, and a grammar it
        # cannot parse then kills the process (SIGSEGV in llama-cpp-python's sampler):
        # parse it here first, on the model's vocabulary, and refuse it by name.
        assert self._llm is not None
        parsed = llama_cpp.llama_sampler_init_grammar(self._llm._model.vocab, text.encode(), b"root")
        if not parsed:
            param = request.output_format.param if request.output_format is not None else "tools"
            raise InvalidParam(param, f"{param}: llama.cpp cannot turn this schema into a grammar")
        llama_cpp.llama_sampler_free(parsed)
        return llama_cpp.LlamaGrammar.from_string(text, verbose=False)

    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        # With tools, the calls the model writes in its answer are read out of the text.
        return read_calls(self._generate_text(request), prompts.request_tool_markers(self.spec, request))

    def _generate_text(self, request: GenerationRequest) -> Iterator[Chunk]:
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
        # The request's seed, else the model's (`load`): sampling is reproducible.
        llm.set_seed(d.seed if d.seed is not None else self._seed)
        outcome = Outcome()
        # A raw prompt (/v1/completions) gets the text as generated, markers included.
        splitter = prompts.request_splitter(self.spec, request, prompt)
        sampling: dict[str, Any] = {
            "temp": d.temperature,
            "top_p": d.top_p,
            "top_k": d.top_k,
            "repeat_penalty": d.repetition_penalty,
        }
        sampling["grammar"] = self._grammar(request, splitter)
        stream = stream_text(
            llm,
            tokens,
            max_tokens=min(d.max_tokens, n_ctx - len(tokens)),
            stop=stop,
            sampling=sampling,
            is_eog=self._is_eog,
            outcome=outcome,
        )
        first: float | None = None
        try:
            for text in stream:
                if first is None:
                    first = time.perf_counter()
                yield from _chunks(splitter, text)
        finally:
            stream.close()  # a cancelled job stops llama.cpp here, at the next token
            free_sampler(llm)
        if splitter is not None:
            yield from (Chunk(text=t, reasoning=r) for t, r in splitter.flush())
        done = time.perf_counter()
        yield Chunk(
            final=Final(
                finish_reason="length" if outcome.finish == "length" else "stop",
                # The chat template's own stops (end of turn) are no stop sequence.
                stop_sequence=outcome.stop if outcome.stop in d.stop else None,
                prompt_tokens=len(tokens),
                output_tokens=outcome.tokens,
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


def template_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """The conversation for the GGUF's chat template: OpenAI's messages (`chat_messages`,
    calls and tool turns' ids included) with text content, and the calls' arguments as
    objects, as Hugging Face templates expect."""
    messages = chat_messages(request)
    for message in messages:
        message["content"] = content_text(message["content"] or "")
        for call in message.get("tool_calls", ()):
            call["function"]["arguments"] = arguments_object(call["function"]["arguments"])
    return messages


def _chunks(splitter: ReasoningSplitter | None, text: str) -> Iterator[Chunk]:
    if splitter is None:
        yield Chunk(text=text)
        return
    for answer, reasoning in splitter.feed(text):
        yield Chunk(text=answer, reasoning=reasoning)
