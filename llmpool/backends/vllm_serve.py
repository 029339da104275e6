"""`vllm serve` as a supervised child per replica.

Ready when `/v1/models` answers. `--max-num-seqs` is the replica's `target_inflight`; the
`vllm_speculative_*` keys become one `--speculative-config` JSON argument.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from marshmallow import fields

from llmpool.backends import vllm_keys
from llmpool.backends.base import Constraint
from llmpool.backends.managed import ManagedServerAdapter, supervision_fields
from llmpool.generation import GenerationRequest

P = "vllm_serve_"
V = vllm_keys.V

# vllm_* key -> `vllm serve` flag, for keys that carry a value.
VALUE_FLAGS = {
    "dtype": "--dtype",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "kv_cache_memory_bytes": "--kv-cache-memory-bytes",
    "kv_cache_dtype": "--kv-cache-dtype",
    "max_model_len": "--max-model-len",
    "tensor_parallel_size": "--tensor-parallel-size",
}
SWITCH_FLAGS = {"trust_remote_code": "--trust-remote-code", "enforce_eager": "--enforce-eager"}


class VllmServeAdapter(vllm_keys.VllmModelFacts, ManagedServerAdapter):
    backend = "vllm_serve"
    prefix = P
    process_name = "vllm"
    ready_path = "/v1/models"
    reserved_flags = (
        "--max-num-seqs",
        "--port",
        "--host",
        "--served-model-name",
        "--speculative-config",
        "--api-key",
    )
    constraints: ClassVar[tuple[Constraint, ...]] = vllm_keys.CONSTRAINTS

    @classmethod
    def config_fields(cls) -> dict[str, fields.Field]:
        return {
            **supervision_fields(P, start_timeout_s=900.0),
            **vllm_keys.engine_fields(),
            P + "api_key": fields.String(load_default=None, allow_none=True),
        }

    def headers(self) -> dict[str, str]:
        key = self.option("api_key")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def build_argv(self, binary: str, port: int) -> list[str]:
        opts = self.spec.options
        argv = [
            binary,
            "serve",
            str(opts[V + "model"]),
            "--host",
            self.option("host"),
            "--port",
            str(port),
            "--served-model-name",
            self.spec.name,
            "--max-num-seqs",
            str(self.spec.target_inflight),
        ]
        for key, flag in VALUE_FLAGS.items():
            if opts.get(V + key) is not None:
                argv += [flag, str(opts[V + key])]
        argv += [flag for key, flag in SWITCH_FLAGS.items() if opts.get(V + key)]
        json_args: dict[str, Any] = {
            "--limit-mm-per-prompt": opts.get(V + "limit_mm_per_prompt"),
            "--mm-processor-kwargs": vllm_keys.mm_processor_kwargs(opts),
            "--speculative-config": vllm_keys.speculative_config(opts),
        }
        for flag, value in json_args.items():
            if value:
                argv += [flag, json.dumps(value, separators=(",", ":"), sort_keys=True)]
        return argv + list(self.option("extra_args"))

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
