"""GET /v1/admin/memory: per device the budget, what is loaded, what loads in progress
reserve and what is free; then the loads waiting and the swap count. Read with the
placer's lock held (`Placer.view`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmpool.model import ModelEntry
from llmpool.placement.waiting import Pending
from llmpool.states import ModelState


def memory_view(
    budgets: Mapping[str, float],
    models: Mapping[str, ModelEntry],
    pending: Sequence[Pending],
    swaps: int,
    now: float,
) -> dict[str, Any]:
    devices = sorted(set(budgets) | {e.spec.memory_device for e in models.values() if e.spec.memory_device})
    loading = {p.name: p for p in pending if p.loading}
    rows = []
    for device in devices:
        loaded: list[dict[str, Any]] = []
        reserved: list[dict[str, Any]] = []
        for name, entry in models.items():
            if entry.spec.memory_device != device:
                continue
            if name in loading:
                reserved.append({"model": name, "mib": loading[name].reserved_mib})
            elif entry.state is ModelState.LOADING:
                reserved.append({"model": name, "mib": entry.memory_estimate().mib})
            elif entry.state in (ModelState.LOADED, ModelState.UNLOADING):
                loaded.append(
                    {
                        "model": name,
                        "state": entry.state.value,
                        "pinned": entry.spec.pinned,
                        **entry.memory_estimate().row(),
                    }
                )
        budget = budgets.get(device)
        used = sum(r["estimate_mib"] or 0.0 for r in loaded)
        held = sum(r["mib"] or 0.0 for r in reserved)
        rows.append(
            {
                "device": device,
                "budget_mib": budget,
                "loaded": loaded,
                "reserved": reserved,
                "used_mib": round(used, 1),
                "reserved_mib": round(held, 1),
                "free_mib": None if budget is None else round(budget - used - held, 1),
            }
        )
    waiting = [
        {
            "model": p.name,
            "device": p.entry.spec.memory_device,
            "jobs": p.jobs,
            "waited_s": round(now - p.since, 3),
            "loading": p.loading,
        }
        for p in pending
    ]
    return {"devices": rows, "waiting": waiting, "swaps": swaps}
