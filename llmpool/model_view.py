"""What the admin API shows of one model (`ModelEntry.row`, `vram`, `logs`): read-only
views of a `ModelEntry`, kept apart from the lifecycle that model.py owns."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from llmpool import gpu
from llmpool.secrets import redact
from llmpool.supervisor import next_line_seq

if TYPE_CHECKING:
    from llmpool.model import ModelEntry


def logs(entry: ModelEntry, tail: int, since: int = 0) -> dict[str, Any]:
    """What each runtime of the current or last load printed: per replica the last `tail`
    lines numbered `since` or later; `next` is the `since` of a later call that wants
    only what was printed after this one (see supervisor.next_line_seq)."""
    before = next_line_seq()  # first: every line numbered below it is buffered
    replicas = [
        {"id": r.replica_id, "pid": r.pid(), "lines": r.logs(tail, since, before)}
        for r in entry.last_runtimes
    ]
    return {"name": entry.name, "replicas": replicas, "next": before}


def vram(entry: ModelEntry) -> dict[str, Any]:
    executor = entry.executor
    pids = [p for r in (executor.replicas if executor else []) if (p := r.runtime.pid())]
    if pids and (mib := gpu.process_used_mib(pids)) is not None:
        return {"estimate_mib": mib, "source": "measured"}
    if (mib := entry.measured_mib()) is not None:
        return {"estimate_mib": mib, "source": "measured"}
    size = entry.adapter_cls.artifact_size_bytes(entry.active_spec)
    if size is not None:
        return {"estimate_mib": round(size / (1024 * 1024), 1), "source": "artifact_size"}
    return {"estimate_mib": None, "source": "unavailable"}


def idle_s(entry: ModelEntry) -> float | None:
    """Seconds since the last job ended (or the load), while loaded with nothing queued
    or running; None otherwise."""
    used, executor = entry.last_used(), entry.executor
    if used is None or executor is None or not executor.idle():
        return None
    return round(time.monotonic() - used, 3)


def last_used_unix(entry: ModelEntry) -> float | None:
    used = entry.last_used()
    return None if used is None else round(time.time() - (time.monotonic() - used), 3)


def row(entry: ModelEntry) -> dict[str, Any]:
    ex = entry.executor
    spec = entry.spec
    plan = entry.load_override or {}
    configured = plan.get("target_inflight", spec.target_inflight)
    effective = entry.effective_inflight(configured)
    return {
        "name": entry.name,
        "backend": spec.backend,
        "enabled": spec.enabled,
        "state": entry.state.value,
        "last_error": entry.last_error,
        "replicas": len(ex.replicas) if ex else 0,
        "replica_max": spec.replica_max,
        "target_inflight": {
            "configured": configured,
            "effective": effective,
            "clamped": effective != configured,
        },
        "queue_depth": entry.waiting()[0],
        "inflight": ex.inflight if ex else 0,
        "replica_states": [r.row() for r in ex.replicas] if ex else [],
        "capabilities": entry.capabilities.row(),
        "load_constraints": [c.row(spec.options.get(c.key)) for c in entry.adapter_cls.constraints],
        "load_override": entry.load_override,
        "load_seconds": entry.load_seconds,
        "vram": vram(entry),
        "memory": {"device": spec.memory_device, **entry.memory_estimate().row()},
        "load_on_demand": spec.load_on_demand,
        "idle_unload_s": spec.idle_unload_s,
        "pinned": spec.pinned,
        "worker_crashes": entry.crashes.row(entry.name),
        "last_used": last_used_unix(entry),
        "idle_s": idle_s(entry),
        "max_tokens_limit": entry.adapter_cls.max_tokens_limit(entry.active_spec),
        "definition": redact(dict(spec.definition)),
        "options": redact(dict(entry.active_spec.options)),
    }
