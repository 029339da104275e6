"""vllm_keys: every key in the one table reaches both the in-process engine and `vllm serve`.

test_vllm.py and test_vllm_serve_args.py pin each side's exact output; this checks that the
two sides agree, key by key, so a row added to the table cannot reach only one of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmpool.backends import vllm_keys
from llmpool.backends.base import constraint_of
from llmpool.backends.vllm import build_engine_kwargs
from llmpool.backends.vllm_serve import VllmServeAdapter
from llmpool.config.loader import load_settings
from llmpool.config.spec import ModelSpec

# A valid value for each key, other than its default. A new key needs one here.
SAMPLES: dict[str, Any] = {
    "model": "/models/other",
    "dtype": "bfloat16",
    "gpu_memory_utilization": 0.5,
    "kv_cache_memory_bytes": 2147483648,
    "kv_cache_dtype": "fp8",
    "max_model_len": 4096,
    "tensor_parallel_size": 2,
    "trust_remote_code": True,
    "enforce_eager": True,
    "limit_mm_per_prompt": {"image": 2},
    "mm_processor_kwargs": {"min_pixels": 100},
    "max_pixels": 1000,
    "speculative_method": "mtp",
    "speculative_model": "org/draft",
    "speculative_moe_backend": "triton",
    "speculative_attention_backend": "triton_attn",
    "num_speculative_tokens": 2,
}


def spec_of(write_settings: Callable[..., Path], **keys: Any) -> ModelSpec:
    definition = {"backend": "vllm_serve", "vllm_model": "/models/m", **keys}
    write_settings({"engine": {"models": {"vs": definition}}})
    return load_settings().models["vs"]


def argv_of(spec: ModelSpec) -> list[str]:
    return VllmServeAdapter(spec, 0).build_argv("vllm", 1)


@pytest.mark.parametrize("key", [key.name for key in vllm_keys.KEYS])
def test_every_key_reaches_the_engine_and_the_serve_command_alike(
    write_settings: Callable[..., Path], key: str
) -> None:
    plain = spec_of(write_settings)
    changed = spec_of(write_settings, **{vllm_keys.V + key: SAMPLES[key]})
    before, after = build_engine_kwargs(plain), build_engine_kwargs(changed)
    moved = [arg for arg in before.keys() | after.keys() if before.get(arg) != after.get(arg)]
    assert len(moved) == 1, moved  # the key sets exactly one engine argument
    arg, value = moved[0], after[moved[0]]
    argv, argv_before = argv_of(changed), argv_of(plain)
    if arg == "model":  # `vllm serve MODEL`
        assert argv[2] == value and argv_before[2] != value
        return
    # vLLM names each `vllm serve` flag after its engine argument.
    flag = "--" + arg.replace("_", "-")
    assert flag not in argv_before and argv.count(flag) == 1
    if isinstance(value, bool):
        assert value is True  # a switch: the flag alone
    elif isinstance(value, dict):
        assert json.loads(argv[argv.index(flag) + 1]) == value
    else:
        assert argv[argv.index(flag) + 1] == str(value)


def test_live_overrides_are_the_live_keys_with_their_settings_bounds() -> None:
    from llmpool.backends.vllm_serve import VllmServeAdapter

    by_key = {c.key: c for c in VllmServeAdapter.constraints}
    assert set(by_key) == {vllm_keys.V + key.name for key in vllm_keys.KEYS if key.live}
    # The bounds come from the settings field: 1..16, both ends included.
    tokens = by_key["vllm_num_speculative_tokens"]
    assert [tokens.problem(n) is None for n in (0, 1, 16, 17)] == [False, True, True, False]


@pytest.mark.parametrize(
    "key",
    [
        "gpu_memory_utilization",  # an exclusive bound, which a Constraint cannot state
        "limit_mm_per_prompt",  # a dict
        "trust_remote_code",  # a bool
    ],
)
def test_a_key_whose_rule_a_live_override_cannot_state_cannot_be_live(key: str) -> None:
    row = next(row for row in vllm_keys.KEYS if row.name == key)
    with pytest.raises(TypeError):
        constraint_of(vllm_keys.V + row.name, row.field)
