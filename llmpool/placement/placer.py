"""Models that come and go by themselves: loads on demand, evictions under a memory
budget, idle unloads.

One real thread (`placer`) owns every decision; requests only leave jobs with it. A job
for a `load_on_demand` model that is not serving waits in that model's `Demand` (FIFO
across models: a load waits its turn on its device) instead of a queue. Each pass:

1. Jobs whose clients left are dropped; a demand nobody waits for any more is removed,
   and its load, if one runs, is cancelled (`ModelEntry.cancel_load`).
2. Demands are served in arrival order. A model that is loaded (and not being drained
   for a swap) gets its jobs handed to its queue. One that is not starts loading when its
   need fits its device's budget (ledger estimate; unbudgeted devices always fit). If it
   does not fit, idle models are evicted, least recently used first, never a pinned one,
   a busy one, or one loaded for less than `min_resident_s`. Until enough is evictable
   the demand waits, and so do later demands on the same device (their turn).
3. No thrash: while a demand waits, loaded models keep serving their queues, new jobs
   included. After `swap_max_wait_s` the busy ones in its way are drained (`swap_out`:
   their new jobs wait for their next load), so none starves. After
   `memory_wait_timeout_s` the waiting jobs fail with 503 insufficient_memory naming
   what holds the memory; a need beyond the whole budget fails at once.
4. Idle unloads: a loaded, unpinned model with `idle_unload_s` and nothing queued or
   running for that long since its last job is unloaded.

Loads and unloads run on their own threads (they wait on runtimes), so a slow load never
holds up a cancel or an idle unload. Greenlets call `enqueue`, `remove`, `waiting` and
`view`, which take the lock only for bookkeeping.

Every unload the pool starts by itself goes through `Executor.close_if_idle`, atomically
with the idle check: a job that arrives in between is refused by the executor and, for a
load-on-demand model, waits for the next load here rather than being dropped.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmpool.config.spec import ServiceSettings
from llmpool.errors import InsufficientMemory, ModelLoadFailed, ModelUnloading, PoolError, QueueFull
from llmpool.greenbridge import start_thread
from llmpool.job import Job, JobStatus
from llmpool.model import ModelEntry
from llmpool.states import ModelState
from llmpool.telemetry import Telemetry

log = logging.getLogger(__name__)

BUSY_POLL_S = 0.1  # while anything waits or loads: how soon a freed slot is noticed
IDLE_POLL_S = 1.0  # otherwise: the resolution of idle unloads


@dataclass(eq=False)
class Demand:
    entry: ModelEntry
    since: float  # monotonic: when its first job arrived
    jobs: list[Job] = field(default_factory=list)
    loading: bool = False
    cancelled: bool = False  # its load was told nobody waits any more
    blocked: bool = False  # the placer found it does not fit (yet): it waits for memory
    load_started: float | None = None
    reserved_mib: float = 0.0


@dataclass(frozen=True)
class Waiting:
    """Where a job that waits for its model stands (rendered by the HTTP layer)."""

    kind: str  # "loading" | "memory" | "queued" (Pool.where)
    model: str
    elapsed_s: float
    estimate_s: float | None = None  # the model's last load took this long
    place: int = 0  # memory: this model's place among the loads waiting on its device; queued: in line


class Placer:
    def __init__(
        self,
        models: Callable[[], Mapping[str, ModelEntry]],
        service: ServiceSettings,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._models = models
        self.service = service
        self.budgets: dict[str, float] = {str(k): float(v) for k, v in service.memory_budget_mib.items()}
        self.telemetry = telemetry
        self._cv = threading.Condition()
        self._demands: dict[str, Demand] = {}
        self._closed = False
        self.swaps = 0
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = start_thread(self._loop, name="placer")

    def close(self) -> None:
        """Stop deciding; fail whatever still waits (the pool is shutting down)."""
        with self._cv:
            self._closed = True
            demands, self._demands = list(self._demands.values()), {}
            self._cv.notify_all()
        for demand in demands:
            self._fail(demand, ModelUnloading("the pool is shutting down", model=demand.entry.name))

    # -- the requests' side (greenlets; brief lock) ------------------------------------
    def wants(self, entry: ModelEntry) -> bool:
        """Whether a job for `entry` must wait here rather than enter its queue."""
        if entry.swap_out:
            return True
        with self._cv:
            return entry.name in self._demands

    def enqueue(self, entry: ModelEntry, job: Job) -> None:
        """Let `job` wait for its model's load; QueueFull past the model's max_queue."""
        with self._cv:
            if self._closed:
                raise ModelUnloading("the pool is shutting down", model=entry.name)
            demand = self._demands.get(entry.name)
            if demand is None:
                demand = self._demands[entry.name] = Demand(entry, time.monotonic())
            if len(demand.jobs) >= entry.spec.max_queue:
                raise QueueFull(
                    f"queue of model '{entry.name}' is full ({entry.spec.max_queue} waiting for its load)",
                    model=entry.name,
                )
            demand.jobs.append(job)
            self._cv.notify_all()

    def remove(self, job: Job) -> bool:
        """The client left: drop `job` if it waits here (True), else False."""
        with self._cv:
            demand = self._demands.get(job.model)
            if demand is None or job not in demand.jobs:
                return False
            demand.jobs.remove(job)
            if job.status is JobStatus.QUEUED:
                job.drop(None)
            self._cv.notify_all()
            return True

    def waiting(self, job: Job) -> Waiting | None:
        with self._cv:
            demand = self._demands.get(job.model)
            if demand is None or job not in demand.jobs:
                return None
            now = time.monotonic()
            entry = demand.entry
            if not demand.blocked:
                started = demand.load_started or demand.since
                return Waiting("loading", entry.name, now - started, entry.load_seconds)
            place = 1 + sum(
                1
                for other in self._demands.values()
                if other is not demand
                and other.since < demand.since
                and not other.loading
                and other.entry.spec.memory_device == entry.spec.memory_device
            )
            return Waiting("memory", entry.name, now - demand.since, entry.load_seconds, place)

    def queued(self, model: str) -> int:
        with self._cv:
            demand = self._demands.get(model)
            return len(demand.jobs) if demand else 0

    # -- the placer thread -------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                if self._closed:
                    return
                self._cv.wait(BUSY_POLL_S if self._demands else IDLE_POLL_S)
                if self._closed:
                    return
            try:
                self._pass(time.monotonic())
            except Exception:
                log.exception("placement pass failed")

    def _pass(self, now: float) -> None:
        actions: list[Callable[[], None]] = []
        with self._cv:
            self._prune(actions)
            self._place(now, actions)
        for action in actions:
            action()
        self._idle_unloads(now)

    def _prune(self, actions: list[Callable[[], None]]) -> None:
        for name, demand in list(self._demands.items()):
            demand.jobs = [j for j in demand.jobs if j.status is JobStatus.QUEUED]
            if demand.jobs:
                continue
            if demand.loading:
                if not demand.cancelled:
                    demand.cancelled = True
                    actions.append(functools.partial(self._cancel_load, demand.entry))
                continue  # the load thread removes it when the load ends
            del self._demands[name]

    def _cancel_load(self, entry: ModelEntry) -> None:
        if entry.cancel_load():
            log.info("load of %s cancelled: every waiting client left", entry.name)

    def _place(self, now: float, actions: list[Callable[[], None]]) -> None:
        models = dict(self._models())
        waiting_on: set[str] = set()  # devices where an earlier demand waits its turn
        for demand in list(self._demands.values()):
            entry = demand.entry
            if demand.loading:
                continue
            if entry.retired:
                # A settings reload replaced the definition: wait for the new one, if any.
                successor = models.get(entry.name)
                if successor is not None and not successor.retired and successor.spec.load_on_demand:
                    demand.entry = successor
                else:
                    gone = ModelUnloading(
                        "a settings reload removed this model's load on demand", model=entry.name
                    )
                    self._drop_demand(demand, gone)
                continue
            if entry.state is ModelState.LOADED and entry.executor is not None:
                if entry.swap_out:
                    demand.blocked = True  # drained for another model: waits for its next load
                else:
                    self._hand_over(demand)
                continue
            if entry.state in (ModelState.LOADING, ModelState.UNLOADING):
                continue  # an admin load, or an eviction: its end is seen next pass
            device = entry.spec.memory_device
            budget = self.budgets.get(device) if device is not None else None
            need = entry.memory_estimate(self._default_plan(entry)).mib or 0.0
            if budget is None or device is None:
                self._start_load(demand, 0.0, now)
                continue
            if device in waiting_on:
                continue
            if need > budget:
                message = (
                    f"model '{entry.name}' needs about {need:g} MiB; the whole budget of "
                    f"device {device} is {budget:g} MiB"
                )
                self._drop_demand(demand, InsufficientMemory(message, model=entry.name))
                continue
            held = self._held(device, models)
            free = budget - sum(mib for _, mib in held)
            if need <= free:
                self._start_load(demand, need, now)
                continue
            waiting_on.add(device)
            demand.blocked = True
            victims = self._evictable(device, models, now)
            if free + sum(mib for _, mib in victims) >= need:
                for victim, mib in victims:
                    if free >= need:
                        break
                    if victim.executor is not None and victim.executor.close_if_idle():
                        free += mib
                        actions.append(functools.partial(self._evict, victim, entry.name))
                continue
            waited = now - demand.since
            if waited >= self.service.swap_max_wait_s:
                self._drain_for(entry, device, need - free, models, now)
            if waited >= self.service.memory_wait_timeout_s:
                holders = [name for name, _ in held]
                message = (
                    f"model '{entry.name}' waited {waited:.0f}s for {need:g} MiB on device {device} "
                    f"(budget {budget:g} MiB, {max(free, 0):g} free); "
                    f"held by: {', '.join(holders) or 'nobody'}"
                )
                self._drop_demand(demand, InsufficientMemory(message, model=entry.name, holders=holders))
        self._release_drains(models)

    @staticmethod
    def _default_plan(entry: ModelEntry) -> dict[str, Any]:
        return {
            "replicas": entry.spec.replicas,
            "target_inflight": entry.spec.target_inflight,
            "overrides": {},
        }

    def _held(self, device: str, models: Mapping[str, ModelEntry]) -> list[tuple[str, float]]:
        """(model, MiB) of what occupies `device`: loaded, loading and unloading models,
        and the reservations of loads on demand that have not reached LOADING yet."""
        loading = {d.entry.name: d for d in self._demands.values() if d.loading}
        held = []
        for name, entry in models.items():
            if entry.spec.memory_device != device:
                continue
            if name in loading:
                held.append((name, loading[name].reserved_mib))
            elif entry.state in (ModelState.LOADED, ModelState.LOADING, ModelState.UNLOADING):
                held.append((name, entry.memory_estimate().mib or 0.0))
        return held

    def _evictable(
        self, device: str, models: Mapping[str, ModelEntry], now: float
    ) -> list[tuple[ModelEntry, float]]:
        """Idle models on `device` that the pool may unload and bring back by itself
        (load_on_demand, not pinned), resident for min_resident_s, LRU first. A model
        with jobs waiting for it is not idle, unless it is being drained for a swap."""
        found = []
        for name, entry in models.items():
            executor = entry.executor
            if (
                entry.spec.memory_device == device
                and entry.state is ModelState.LOADED
                and executor is not None
                and self._movable(entry)
                and (name not in self._demands or entry.swap_out)
                and executor.idle()
                and entry.loaded_at is not None
                and now - entry.loaded_at >= self.service.min_resident_s
            ):
                found.append((entry, entry.last_used() or 0.0))
        found.sort(key=lambda pair: pair[1])
        return [(entry, entry.memory_estimate().mib or 0.0) for entry, _ in found]

    @staticmethod
    def _movable(entry: ModelEntry) -> bool:
        """Whether the pool may unload `entry` to make room: only a model that comes back
        by itself when asked for (load_on_demand), and never a pinned one. A model loaded
        by hand without load_on_demand counts as pinned for the budget."""
        return entry.spec.load_on_demand and not entry.spec.pinned

    def _drain_for(
        self, waiter: ModelEntry, device: str, missing: float, models: Mapping[str, ModelEntry], now: float
    ) -> None:
        """The waiter has waited long enough: stop feeding new jobs to busy models in its
        way (least recently used first) until what they hold covers what is missing."""
        busy = [
            entry
            for entry in models.values()
            if entry.spec.memory_device == device
            and entry.state is ModelState.LOADED
            and self._movable(entry)
            and entry.loaded_at is not None
            and now - entry.loaded_at >= self.service.min_resident_s
        ]
        busy.sort(key=lambda e: e.last_used() or 0.0)
        for entry in busy:
            if missing <= 0:
                break
            entry.drain_for_swap(waiter.name, self.service.swap_max_wait_s)
            missing -= entry.memory_estimate().mib or 0.0

    def _release_drains(self, models: Mapping[str, ModelEntry]) -> None:
        """A model drained for a demand that went away (served or given up) takes jobs
        again."""
        waiting_devices = {
            d.entry.spec.memory_device
            for d in self._demands.values()
            if not d.loading and d.entry.state is not ModelState.LOADED
        }
        for entry in models.values():
            if entry.swap_out and entry.spec.memory_device not in waiting_devices:
                entry.end_swap()

    # -- actions -----------------------------------------------------------------------
    def _hand_over(self, demand: Demand) -> None:
        """With the lock: the model serves; its waiting jobs join its queue in order."""
        del self._demands[demand.entry.name]
        executor = demand.entry.executor
        for job in demand.jobs:
            if job.status is not JobStatus.QUEUED:
                continue
            try:
                assert executor is not None
                executor.submit(job)
            except PoolError as exc:
                job.drop(exc)

    def _drop_demand(self, demand: Demand, error: PoolError) -> None:
        del self._demands[demand.entry.name]
        self._fail(demand, error)

    @staticmethod
    def _fail(demand: Demand, error: PoolError) -> None:
        for job in demand.jobs:
            if job.status is JobStatus.QUEUED:
                job.drop(error)

    def _start_load(self, demand: Demand, need: float, now: float) -> None:
        demand.loading = True
        demand.blocked = False
        demand.load_started = now
        demand.reserved_mib = need
        start_thread(self._load, demand, name=f"demand-load-{demand.entry.name}")

    def _load(self, demand: Demand) -> None:
        """Its own thread: bring the model up for its waiting jobs."""
        entry = demand.entry
        error: PoolError | None = None
        try:
            if entry.state is ModelState.FAILED:
                entry.unload(True)  # reap what is left of the failed runtimes
            plan = entry.check_load_request(None, None, {})
            entry.begin_load(plan)
        except PoolError as exc:
            # Another writer holds the model (an admin load or unload): look again later.
            log.info("load on demand of %s deferred: %s", entry.name, exc.message)
            with self._cv:
                demand.loading = False
                self._cv.notify_all()
            return
        try:
            entry.finish_load()
        except ModelLoadFailed as exc:
            error = exc
        except PoolError as exc:
            error = ModelLoadFailed(exc.message, model=entry.name)
        if self.telemetry is not None:
            cancelled = error is not None and entry.state is ModelState.UNLOADED
            self.telemetry.demand_load(
                entry.name, "ok" if error is None else "cancelled" if cancelled else "failed"
            )
        unwanted = False
        with self._cv:
            demand.loading = False
            wanted = bool([j for j in demand.jobs if j.status is JobStatus.QUEUED])
            if self._demands.get(entry.name) is demand:
                if error is not None and wanted:
                    self._drop_demand(demand, error)
                elif error is None and wanted and not self._closed:
                    self._hand_over(demand)
                elif not wanted:
                    del self._demands[entry.name]
                    unwanted = error is None
            self._cv.notify_all()
        if unwanted and entry.executor is not None and entry.executor.close_if_idle():
            log.info("%s loaded after every waiting client left: unloading it", entry.name)
            self._unload(entry, "cancelled")

    def _evict(self, victim: ModelEntry, for_model: str) -> None:
        log.info("evicting %s (idle, least recently used) to make room for %s", victim.name, for_model)
        with self._cv:
            self.swaps += 1
        if self.telemetry is not None:
            self.telemetry.evicted(victim.name, "memory")
        start_thread(self._unload, victim, "memory", name=f"evict-{victim.name}")

    def _unload(self, entry: ModelEntry, reason: str) -> None:
        try:
            entry.unload(force=False)
        except Exception:
            log.exception("unloading %s (%s) failed", entry.name, reason)
        with self._cv:
            self._cv.notify_all()

    def _idle_unloads(self, now: float) -> None:
        for entry in list(self._models().values()):
            ttl = entry.spec.idle_unload_s
            used = entry.last_used()
            executor = entry.executor
            if (
                ttl is None
                or entry.spec.pinned
                or entry.state is not ModelState.LOADED
                or executor is None
                or used is None
                or now - used < ttl
                or self.queued(entry.name)
            ):
                continue
            if executor.close_if_idle():
                log.info("unloading %s: idle for %.0fs (idle_unload_s %g)", entry.name, now - used, ttl)
                if self.telemetry is not None:
                    self.telemetry.evicted(entry.name, "idle")
                start_thread(self._unload, entry, "idle", name=f"idle-unload-{entry.name}")

    # -- admin view ----------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        """Per device: the budget, what is loaded, what loads in progress reserve, what is
        free; then the loads waiting and the swap count."""
        models = dict(self._models())
        now = time.monotonic()
        with self._cv:
            devices = sorted(
                set(self.budgets) | {e.spec.memory_device for e in models.values() if e.spec.memory_device}
            )
            loading = {d.entry.name: d for d in self._demands.values() if d.loading}
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
                budget = self.budgets.get(device)
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
                    "model": d.entry.name,
                    "device": d.entry.spec.memory_device,
                    "jobs": len(d.jobs),
                    "waited_s": round(now - d.since, 3),
                    "loading": d.loading,
                }
                for d in self._demands.values()
            ]
            return {"devices": rows, "waiting": waiting, "swaps": self.swaps}
