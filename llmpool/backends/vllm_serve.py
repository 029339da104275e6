"""`vllm serve` as a supervised child per replica.

Ready when `/v1/models` answers. `--max-num-seqs` is the replica's `target_inflight`; the
`vllm_speculative_*` keys become one `--speculative-config` JSON argument.

Reasoning formats: vLLM splits the thoughts out itself (`--reasoning-parser`, from
`vllm_serve_reasoning_parser`, by default the format's own parser, `REASONING_PARSERS`);
it sees the prompt's tokens, so it knows when the template opened the block there. Each
request switches thinking with `chat_template_kwargs.enable_thinking`, which vLLM's
parser reads too. "none" runs no parser: the pool's splitter then takes the markers out
of `content` (a block the template opened in the prompt it cannot see, though).

Tools: `--enable-auto-tool-choice` with the format's tool-call parser (`TOOL_PARSERS`,
or `vllm_serve_tool_parser`); a model without one refuses tools (`capabilities`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from marshmallow import fields

from llmpool.backends import vllm_keys
from llmpool.backends.base import Capabilities
from llmpool.backends.managed import ManagedServerAdapter, supervision_fields
from llmpool.config.spec import ModelSpec
from llmpool.generation import GenerationRequest

P = "vllm_serve_"
# vLLM's reasoning parser for each reasoning format the pool knows.
REASONING_PARSERS = {"qwen3_template": "qwen3", "gemma4_template": "gemma4"}
REASONING_PARSER_FLAG = "--reasoning-parser"
# vLLM's tool-call parser for each format whose calls the pool knows (the Hermes tags).
TOOL_PARSERS = {"hermes_template": "hermes", "qwen3_template": "hermes"}
TOOL_PARSER_FLAG = "--tool-call-parser"
AUTO_TOOL_CHOICE = "--enable-auto-tool-choice"


class VllmServeAdapter(vllm_keys.VllmModelFacts, ManagedServerAdapter):
    backend = "vllm_serve"
    prefix = P
    process_name = "vllm"
    # vLLM's own gauge (0-1): `kv_cache_usage_perc` since the V1 engine, before it
    # `gpu_cache_usage_perc`.
    kv_metrics = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    ready_path = "/v1/models"
    reserved_flags = (
        "--port",
        "--host",
        "--api-key",
        *(vllm_keys.flag(arg) for arg in vllm_keys.POOL_ARGS),
        vllm_keys.flag(vllm_keys.SPECULATIVE_CONFIG),
    )

    @classmethod
    def config_fields(cls) -> dict[str, fields.Field]:
        return {
            **supervision_fields(P, start_timeout_s=900.0),
            **vllm_keys.engine_fields(),
            P + "api_key": fields.String(load_default=None, allow_none=True),
            P + "reasoning_parser": fields.String(load_default=None, allow_none=True),
            P + "tool_parser": fields.String(load_default=None, allow_none=True),
        }

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        # Tools only where vLLM parses the calls: a parser for the format, or the operator's.
        parsed = tool_parser(spec) is not None  # vLLM holds required and named calls itself
        return dataclasses.replace(super().capabilities(spec), tool_calls=parsed, forced_tool_calls=parsed)

    def headers(self) -> dict[str, str]:
        key = self.option("api_key")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def build_argv(self, binary: str, port: int) -> list[str]:
        args = vllm_keys.engine_args(self.spec.options)
        model = [word for arg in args if arg.form is vllm_keys.Form.POSITIONAL for word in arg.argv()]
        argv = [binary, "serve", *model, "--host", self.option("host"), "--port", str(port)]
        for arg in [*vllm_keys.pool_args(self.spec), *args]:
            if arg.form is not vllm_keys.Form.POSITIONAL:
                argv += arg.argv()
        return argv + self.reasoning_args() + self.tool_args() + list(self.option("extra_args"))

    def tool_args(self) -> list[str]:
        """vLLM's auto tool choice with the format's parser (`vllm_serve_tool_parser`),
        unless it says "none" or the operator's extra args name a parser already."""
        extra = [a.split("=", 1)[0] for a in self.option("extra_args")]
        parser = tool_parser(self.spec)
        if parser is None:
            return []
        auto = [] if AUTO_TOOL_CHOICE in extra else [AUTO_TOOL_CHOICE]
        return auto if TOOL_PARSER_FLAG in extra else [*auto, TOOL_PARSER_FLAG, parser]

    def reasoning_args(self) -> list[str]:
        """`--reasoning-parser NAME` for a reasoning format, unless the key says "none" or
        the operator's extra args carry the flag already."""
        extra = [a.split("=", 1)[0] for a in self.option("extra_args")]
        parser = self.option("reasoning_parser") or REASONING_PARSERS.get(self.spec.prompt_format)
        if not parser or parser == "none" or REASONING_PARSER_FLAG in extra:
            return []
        return [REASONING_PARSER_FLAG, parser]

    def child_env(self) -> dict[str, str]:
        # The key goes through the environment (VLLM_API_KEY), never onto the command
        # line, where `ps` and our own start-up log line would show it.
        env = super().child_env()
        if self.option("api_key"):
            env["VLLM_API_KEY"] = self.option("api_key")
        return env

    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        # vLLM takes its extra sampling parameters at the top level of the request.
        return {**super().payload(request), "repetition_penalty": request.decoding.repetition_penalty}


def tool_parser(spec: ModelSpec) -> str | None:
    """The tool-call parser vLLM runs for `spec`: the key, else the format's, else one the
    operator's extra args name; None for none (the model then refuses tools)."""
    chosen = spec.options.get(P + "tool_parser") or TOOL_PARSERS.get(spec.prompt_format)
    if chosen == "none":
        return None
    if chosen is None:
        extra = [str(a) for a in spec.options.get(P + "extra_args") or ()]
        named = [extra[i + 1] for i, a in enumerate(extra[:-1]) if a == TOOL_PARSER_FLAG]
        named += [a.split("=", 1)[1] for a in extra if a.startswith(TOOL_PARSER_FLAG + "=")]
        return named[0] if named else None
    return str(chosen)
