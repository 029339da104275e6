"""What an admin load asks for (replicas, slots, overrides), checked against the model's
definition and its backend's load constraints before anything changes."""

from __future__ import annotations

from typing import Any

from llmpool.backends.base import Adapter
from llmpool.config.spec import ModelSpec
from llmpool.errors import InvalidLoadRequest


def load_plan(
    spec: ModelSpec,
    adapter_cls: type[Adapter],
    replicas: int | None,
    target_inflight: int | None,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """The load plan, defaults filled in; InvalidLoadRequest naming every problem."""
    problems = []
    allowed = {c.key: c for c in adapter_cls.constraints}
    for key, value in overrides.items():
        constraint = allowed.get(key)
        if constraint is None:
            problems.append(f"unknown override '{key}' (allowed: {sorted(allowed) or 'none'})")
        elif (problem := constraint.problem(value)) is not None:
            problems.append(problem)
    if replicas is not None and not 1 <= replicas <= spec.replica_max:
        problems.append(f"replicas must be between 1 and replica_max ({spec.replica_max})")
    if target_inflight is not None and target_inflight < 1:
        problems.append("target_inflight must be >= 1")
    if problems:
        raise InvalidLoadRequest("; ".join(problems), model=spec.name)
    return {
        "replicas": replicas or spec.replicas,
        "target_inflight": target_inflight or spec.target_inflight,
        "overrides": dict(overrides),
    }
