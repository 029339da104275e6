"""Live load overrides are derived from the settings fields (issue 12 point 6): for every
backend, each override rule accepts exactly what the same key's settings field accepts."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import ValidationError

from llmpool.backends import registry
from llmpool.backends.base import Constraint


def samples(c: Constraint) -> list[Any]:
    if c.type == "choice":
        return [*(c.choices or ()), "not-a-choice", 3]
    if c.type == "string":
        return ["x", "ngram", 7, None]
    low = c.min if c.min is not None else 0
    high = c.max if c.max is not None else low + 10_000
    values: list[Any] = [low - 1, low, high, high + 1, (low + high) / 2, "7", True]
    if c.multiple_of:
        values += [low + c.multiple_of, low + c.multiple_of + 1]
    if c.type == "int":
        values = [int(v) if isinstance(v, float) and c.type == "int" and v == int(v) else v for v in values]
    return values


def field_accepts(field: Any, value: Any) -> bool:
    try:
        return field.deserialize(value) is not None
    except ValidationError:
        return False


CASES = [
    (name, c)
    for name in registry.names()
    for c in registry.get(name).constraints  # type: ignore[union-attr]
]


@pytest.mark.parametrize(("backend", "constraint"), CASES, ids=[f"{b}:{c.key}" for b, c in CASES])
def test_each_override_rule_is_its_settings_rule(backend: str, constraint: Constraint) -> None:
    field = registry.get(backend).config_fields()[constraint.key]  # type: ignore[union-attr]
    for value in samples(constraint):
        assert (constraint.problem(value) is None) == field_accepts(field, value), (constraint.key, value)


def test_the_known_overrides_are_there() -> None:
    keys = {name: {c.key for c in registry.get(name).constraints} for name in registry.names()}  # type: ignore[union-attr]
    assert keys["llama_cpp"] == {"gguf_n_ctx", "gguf_flash_attn", "gguf_type_k", "gguf_type_v"}
    assert keys["ct2"] == {"device", "compute_type", "ct2_max_length"}
    assert keys["exllamav3"] == {"exllama_cache_size", "exllama_cache_quant"}
    assert (
        "llama_server_n_ctx" in keys["llama_server"]
        and "llama_server_spec_draft_p_min" in keys["llama_server"]
    )
    assert keys["vllm"] == keys["vllm_serve"] and keys["vllm"]
    assert keys["openai_remote"] == set()
