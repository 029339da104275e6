"""The `vllm_*` engine keys, shared by the in-process `vllm` and the `vllm_serve` backends."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from marshmallow import fields, validate

from llmpool.backends.base import Capabilities, Constraint
from llmpool.config.fields import StrictBool, StrictFloat, StrictInt
from llmpool.config.spec import ModelSpec

V = "vllm_"
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
MIN_KV_CACHE_BYTES = 256 * 1024 * 1024

CONSTRAINTS: tuple[Constraint, ...] = (
    Constraint(V + "max_model_len", "int", min=256),
    Constraint(V + "kv_cache_dtype", "choice", choices=KV_CACHE_DTYPES),
    Constraint(V + "kv_cache_memory_bytes", "int", min=MIN_KV_CACHE_BYTES),
    Constraint(V + "max_pixels", "int", min=1),
    Constraint(V + "speculative_method", "string"),
    Constraint(V + "speculative_model", "string"),
    Constraint(V + "speculative_moe_backend", "string"),
    Constraint(V + "speculative_attention_backend", "string"),
    Constraint(V + "num_speculative_tokens", "int", min=1, max=16),
)

# speculative option suffix -> key inside vLLM's --speculative-config / speculative_config
SPECULATIVE_KEYS = {
    "speculative_method": "method",
    "speculative_model": "model",
    "num_speculative_tokens": "num_speculative_tokens",
    "speculative_moe_backend": "moe_backend",
    "speculative_attention_backend": "attention_backend",
}


def engine_fields() -> dict[str, fields.Field]:
    def opt_str() -> fields.Field:
        return fields.String(load_default=None, allow_none=True)

    return {
        V + "model": fields.String(required=True, validate=validate.Length(min=1)),
        V + "dtype": opt_str(),
        V + "gpu_memory_utilization": StrictFloat(
            load_default=None, allow_none=True, validate=validate.Range(0, 1, min_inclusive=False)
        ),
        V + "kv_cache_memory_bytes": StrictInt(
            load_default=None, allow_none=True, validate=validate.Range(min=MIN_KV_CACHE_BYTES)
        ),
        V + "kv_cache_dtype": fields.String(
            load_default=None, allow_none=True, validate=validate.OneOf(KV_CACHE_DTYPES)
        ),
        V + "max_model_len": StrictInt(load_default=None, allow_none=True, validate=validate.Range(min=256)),
        V + "tensor_parallel_size": StrictInt(
            load_default=None, allow_none=True, validate=validate.Range(min=1)
        ),
        V + "trust_remote_code": StrictBool(load_default=False),
        V + "enforce_eager": StrictBool(load_default=False),
        V + "limit_mm_per_prompt": fields.Dict(
            keys=fields.String(), values=StrictInt(), load_default=None, allow_none=True
        ),
        V + "mm_processor_kwargs": fields.Dict(keys=fields.String(), load_default=None, allow_none=True),
        V + "max_pixels": StrictInt(load_default=None, allow_none=True, validate=validate.Range(min=1)),
        V + "speculative_method": opt_str(),
        V + "speculative_model": opt_str(),
        V + "speculative_moe_backend": opt_str(),
        V + "speculative_attention_backend": opt_str(),
        V + "num_speculative_tokens": StrictInt(
            load_default=None, allow_none=True, validate=validate.Range(1, 16)
        ),
    }


def speculative_config(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """vLLM's speculative_config from the vllm_speculative_* keys; None when none is set."""
    config = {
        target: options[V + key]
        for key, target in SPECULATIVE_KEYS.items()
        if options.get(V + key) is not None
    }
    return config or None


def mm_processor_kwargs(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The processor kwargs, with `vllm_max_pixels` (a live override) folded in."""
    kwargs = dict(options.get(V + "mm_processor_kwargs") or {})
    if options.get(V + "max_pixels") is not None:
        kwargs["max_pixels"] = options[V + "max_pixels"]
    return kwargs or None


class VllmModelFacts:
    """What both vLLM backends (in-process and `vllm serve`) derive the same way from the
    vllm_* keys. A mixin: put it before the adapter base class."""

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        return Capabilities(modalities=spec.modalities, multi_turn=True, thinking_modes=("default",))

    @classmethod
    def max_tokens_limit(cls, spec: ModelSpec) -> int | None:
        limit = spec.options.get(V + "max_model_len")
        return int(limit) if limit is not None else None

    @classmethod
    def artifact_size_bytes(cls, spec: ModelSpec) -> int | None:
        # The weights live at vllm_model: a local directory, or a hub id (nothing on disk).
        located = dataclasses.replace(spec, model_path=spec.options.get(V + "model"))
        return super().artifact_size_bytes(located)  # type: ignore[misc]
