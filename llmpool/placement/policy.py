"""The placement policy: a pure function from a snapshot of the pool to actions.

`decide(snapshot)` holds every rule of loads on demand, evictions and swaps, and
`idle_unloads(snapshot)` the idle timeout; neither reads a clock, takes a lock or touches
a model, so they are tested with plain values (tests/unit/test_placement_policy.py). The
placer thread (`placer.py`) takes the snapshot, calls them, and carries out what they
return. The rules, in order, for each demand (models waiting for a load, oldest first):

1. A model that serves takes its waiting jobs (`HandOver`), unless it is being drained
   for another model's load (then its new jobs wait for its next load: `Block`).
2. A model that is loading or unloading is left alone: its end is seen next pass.
3. On a device without a budget a load starts at once. With a budget: a need beyond the
   whole budget fails its jobs (`Drop`, 503 insufficient_memory); a need that fits what
   is free starts (`StartLoad`, reserving the need); else idle models are evicted, least
   recently used first (`Evict`), when enough of them can be; else the demand waits for
   memory and so do later demands on that device (their turn). After `swap_max_wait_s`
   busy models in its way are drained (`Drain`); after `memory_wait_timeout_s` it fails.
4. Models drained for demands that went away take jobs again (`Release`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmpool.states import ModelState


@dataclass(frozen=True)
class ModelFacts:
    name: str
    device: str | None
    state: ModelState
    serving: bool  # loaded, with an executor that takes jobs
    load_on_demand: bool
    pinned: bool
    swap_out: bool  # being drained for another model's load
    idle: bool  # nothing queued or running
    resident_s: float | None  # since the load finished (None: not loaded)
    last_used: float  # monotonic end of the last job or the load, 0 if never
    held_mib: float  # what it holds now (its current load's estimate)
    need_mib: float  # what a load on demand of it needs (the configured plan)
    idle_unload_s: float | None = None
    idle_for_s: float | None = None  # since its last job, while loaded

    @property
    def movable(self) -> bool:
        """Whether the pool may unload it to make room: only a model that comes back by
        itself (load_on_demand), never a pinned one; one loaded by hand counts as pinned."""
        return self.load_on_demand and not self.pinned


@dataclass(frozen=True)
class DemandFacts:
    model: str
    waited_s: float
    loading: bool
    reserved_mib: float = 0.0
    jobs: int = 1


@dataclass(frozen=True)
class Snapshot:
    budgets: Mapping[str, float]
    models: Mapping[str, ModelFacts]
    demands: Sequence[DemandFacts]  # in arrival order
    swap_max_wait_s: float
    memory_wait_timeout_s: float
    min_resident_s: float


# -- actions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class HandOver:
    model: str


@dataclass(frozen=True)
class Block:
    model: str


@dataclass(frozen=True)
class StartLoad:
    model: str
    reserve_mib: float


@dataclass(frozen=True)
class Evict:
    victim: str
    for_model: str


@dataclass(frozen=True)
class Drain:
    model: str
    waiter: str


@dataclass(frozen=True)
class Release:
    model: str


@dataclass(frozen=True)
class Drop:
    model: str
    reason: str  # "too_big" | "timeout"
    message: str
    holders: tuple[str, ...] = ()


Action = HandOver | Block | StartLoad | Evict | Drain | Release | Drop


@dataclass(frozen=True)
class IdleUnload:
    model: str
    idle_s: float
    ttl_s: float


def decide(s: Snapshot) -> list[Action]:
    actions: list[Action] = []
    reserved = {d.model: d.reserved_mib for d in s.demands if d.loading}
    waiting_on: set[str] = set()  # devices where an earlier demand waits its turn
    settled: set[str] = set()  # demands handed over, started or dropped in this pass
    for demand in s.demands:
        if demand.loading:
            continue
        model = s.models.get(demand.model)
        if model is None:
            continue  # removed by a settings reload (which failed its line)
        if model.serving:
            if model.swap_out:
                actions.append(Block(model.name))  # drained for another: waits for its next load
            else:
                actions.append(HandOver(model.name))
                settled.add(demand.model)
            continue
        if model.state in (ModelState.LOADING, ModelState.UNLOADING):
            continue  # an admin load, or an eviction: its end is seen next pass
        device, need = model.device, model.need_mib
        budget = s.budgets.get(device) if device is not None else None
        if budget is None or device is None:
            actions.append(StartLoad(model.name, 0.0))
            settled.add(demand.model)
            continue
        if device in waiting_on:
            continue
        if need > budget:
            message = (
                f"model '{model.name}' needs about {need:g} MiB; the whole budget of "
                f"device {device} is {budget:g} MiB"
            )
            actions.append(Drop(model.name, "too_big", message))
            settled.add(demand.model)
            continue
        held = _held(device, s.models, reserved)
        free = budget - sum(mib for _, mib in held)
        if need <= free:
            actions.append(StartLoad(model.name, need))
            reserved[model.name] = need
            settled.add(demand.model)
            continue
        waiting_on.add(device)
        actions.append(Block(model.name))
        victims = _evictable(device, s)
        if free + sum(v.held_mib for v in victims) >= need:
            for victim in victims:
                if free >= need:
                    break
                free += victim.held_mib
                actions.append(Evict(victim.name, model.name))
            continue
        if demand.waited_s >= s.swap_max_wait_s:
            actions += _drains(model, device, need - free, s)
        if demand.waited_s >= s.memory_wait_timeout_s:
            holders = tuple(name for name, _ in held)
            message = (
                f"model '{model.name}' waited {demand.waited_s:.0f}s for {need:g} MiB on device "
                f"{device} (budget {budget:g} MiB, {max(free, 0):g} free); "
                f"held by: {', '.join(holders) or 'nobody'}"
            )
            actions.append(Drop(model.name, "timeout", message, holders))
            settled.add(demand.model)
    return actions + _releases(s, settled)


def _held(
    device: str, models: Mapping[str, ModelFacts], reserved: Mapping[str, float]
) -> list[tuple[str, float]]:
    """(model, MiB) of what occupies `device`: loaded, loading and unloading models, and
    the reservations of loads on demand that have not reached LOADING yet."""
    held = []
    for name, model in models.items():
        if model.device != device:
            continue
        if name in reserved:
            held.append((name, reserved[name]))
        elif model.state in (ModelState.LOADED, ModelState.LOADING, ModelState.UNLOADING):
            held.append((name, model.held_mib))
    return held


def _resident(model: ModelFacts, s: Snapshot) -> bool:
    return model.resident_s is not None and model.resident_s >= s.min_resident_s


def _evictable(device: str, s: Snapshot) -> list[ModelFacts]:
    """Idle models on `device` the pool may unload and bring back by itself, resident for
    min_resident_s, least recently used first. A model with jobs waiting for it is not
    idle, unless it is being drained for a swap."""
    waited_for = {d.model for d in s.demands}
    found = [
        m
        for m in s.models.values()
        if m.device == device
        and m.serving
        and m.movable
        and (m.name not in waited_for or m.swap_out)
        and m.idle
        and _resident(m, s)
    ]
    return sorted(found, key=lambda m: m.last_used)


def _drains(waiter: ModelFacts, device: str, missing: float, s: Snapshot) -> list[Action]:
    """The waiter has waited long enough: stop feeding new jobs to busy models in its way
    (least recently used first) until what they hold covers what is missing."""
    busy = [
        m
        for m in s.models.values()
        if m.device == device and m.state is ModelState.LOADED and m.movable and _resident(m, s)
    ]
    drains: list[Action] = []
    for model in sorted(busy, key=lambda m: m.last_used):
        if missing <= 0:
            break
        drains.append(Drain(model.name, waiter.name))
        missing -= model.held_mib
    return drains


def _releases(s: Snapshot, settled: set[str]) -> list[Action]:
    """Models drained for a demand that went away (served or given up) take jobs again."""
    waiting_devices = {
        model.device
        for d in s.demands
        if not d.loading
        and d.model not in settled
        and (model := s.models.get(d.model)) is not None
        and model.state is not ModelState.LOADED
    }
    return [Release(m.name) for m in s.models.values() if m.swap_out and m.device not in waiting_devices]


def idle_unloads(s: Snapshot) -> list[IdleUnload]:
    """Loaded, unpinned models with `idle_unload_s` and nothing queued, running or
    waiting for them for that long since their last job."""
    waited_for = {d.model for d in s.demands if d.jobs}
    return [
        IdleUnload(m.name, m.idle_for_s, m.idle_unload_s)
        for m in s.models.values()
        if m.idle_unload_s is not None
        and not m.pinned
        and m.state is ModelState.LOADED
        and m.serving
        and m.idle_for_s is not None
        and m.idle_for_s >= m.idle_unload_s
        and m.name not in waited_for
    ]
