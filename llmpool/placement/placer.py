"""Models that come and go by themselves: loads on demand, evictions under a memory
budget, idle unloads. The rules are `policy.py`; this is the thread that applies them.

One real thread (`placer`) carries out every decision; requests only leave jobs with it.
A job for a `load_on_demand` model that is not serving waits in that model's `Demand`
(FIFO across models: a load waits its turn on its device) instead of a queue. Each pass
drops the jobs whose clients left (a demand nobody waits for any more is removed, and its
load, if one runs, cancelled: `ModelEntry.cancel_load`), takes a snapshot, asks the
policy, and applies what it returns; then the same for idle unloads.

Loads and unloads run on their own threads (they wait on runtimes), so a slow load never
holds up a cancel or an idle unload. Greenlets call `enqueue`, `remove`, `waiting` and
`view`, which take the lock only for bookkeeping. Every unload the pool starts by itself
goes through `Executor.close_if_idle`, atomically with the idle check: a job that arrives
in between is refused by the executor and, for a load-on-demand model, waits for the next
load here rather than being dropped.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from llmpool.config.spec import ServiceSettings
from llmpool.errors import InsufficientMemory, ModelLoadFailed, ModelUnloading, PoolError, QueueFull
from llmpool.greenbridge import start_thread
from llmpool.job import Job, JobStatus
from llmpool.model import ModelEntry
from llmpool.placement import policy
from llmpool.placement.demand import Demand, Waiting
from llmpool.placement.view import memory_view
from llmpool.states import ModelState
from llmpool.telemetry import Telemetry

log = logging.getLogger(__name__)

BUSY_POLL_S = 0.1  # while anything waits or loads: how soon a freed slot is noticed
IDLE_POLL_S = 1.0  # otherwise: the resolution of idle unloads


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
        later: list[Callable[[], None]] = []
        with self._cv:
            self._prune(later)
            models = dict(self._models())
            # One snapshot a pass (it reads every model's estimates): the idle unloads use
            # it too; a model handed jobs in this pass was still waited for in it, and
            # `close_if_idle` re-checks idleness atomically anyway.
            snapshot = self._snapshot(models, now)
            for action in policy.decide(snapshot):
                self._apply(action, models, now, later)
        for run in later:
            run()
        self._idle_unloads(policy.idle_unloads(snapshot), models)

    def _prune(self, later: list[Callable[[], None]]) -> None:
        for name, demand in list(self._demands.items()):
            demand.jobs = [j for j in demand.jobs if j.status is JobStatus.QUEUED]
            if demand.jobs:
                continue
            if demand.loading:
                if not demand.cancelled:
                    demand.cancelled = True
                    later.append(functools.partial(self._cancel_load, demand.entry))
                continue  # the load thread removes it when the load ends
            del self._demands[name]

    def _cancel_load(self, entry: ModelEntry) -> None:
        if entry.cancel_load():
            log.info("load of %s cancelled: every waiting client left", entry.name)

    def _snapshot(self, models: Mapping[str, ModelEntry], now: float) -> policy.Snapshot:
        """What the policy decides on (with the lock: the demands do not move meanwhile)."""
        return policy.Snapshot(
            budgets=self.budgets,
            models={name: _facts(entry, now) for name, entry in models.items()},
            demands=[
                policy.DemandFacts(
                    model=d.entry.name,
                    waited_s=now - d.since,
                    loading=d.loading,
                    reserved_mib=d.reserved_mib,
                    jobs=len(d.jobs),
                    retired=d.entry.retired,
                )
                for d in self._demands.values()
            ],
            swap_max_wait_s=self.service.swap_max_wait_s,
            memory_wait_timeout_s=self.service.memory_wait_timeout_s,
            min_resident_s=self.service.min_resident_s,
        )

    def _apply(
        self,
        action: policy.Action,
        models: Mapping[str, ModelEntry],
        now: float,
        later: list[Callable[[], None]],
    ) -> None:
        """Carry out one decision, with the lock; what waits on a runtime goes to `later`."""
        match action:
            case policy.HandOver(model):
                self._hand_over(self._demands[model])
            case policy.Block(model):
                self._demands[model].blocked = True
            case policy.StartLoad(model, reserve_mib):
                self._start_load(self._demands[model], reserve_mib, now)
            case policy.Evict(victim, for_model):
                entry = models[victim]
                # Atomic with the idle check: a job that arrived since the snapshot keeps it.
                if entry.executor is not None and entry.executor.close_if_idle():
                    later.append(functools.partial(self._evict, entry, for_model))
            case policy.Drain(model, waiter):
                models[model].drain_for_swap(waiter, self.service.swap_max_wait_s)
            case policy.Release(model):
                models[model].end_swap()
            case policy.Rebind(model):
                self._demands[model].entry = models[model]
            case policy.Drop(model, reason, message, holders):
                error: PoolError = (
                    ModelUnloading(message, model=model)
                    if reason == "removed"
                    else InsufficientMemory(message, model=model, holders=list(holders) or None)
                )
                self._drop_demand(self._demands[model], error)

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
            plan = entry.check_load_request(None, None, {})
            begun = entry.begin_load(plan)  # a failed model's leftovers are reaped first
        except PoolError as exc:
            # Another writer holds the model (an admin load or unload): look again later.
            log.info("load on demand of %s deferred: %s", entry.name, exc.message)
            begun = False
        if not begun:  # up or coming up already (an admin load): the next pass sees it
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

    def _idle_unloads(self, due: list[policy.IdleUnload], models: Mapping[str, ModelEntry]) -> None:
        for idle in due:
            entry = models[idle.model]
            if entry.executor is not None and entry.executor.close_if_idle():
                message = "unloading %s: idle for %.0fs (idle_unload_s %g)"
                log.info(message, entry.name, idle.idle_s, idle.ttl_s)
                if self.telemetry is not None:
                    self.telemetry.evicted(entry.name, "idle")
                start_thread(self._unload, entry, "idle", name=f"idle-unload-{entry.name}")

    # -- admin view ----------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        """GET /v1/admin/memory (llmpool.placement.view)."""
        models = dict(self._models())
        with self._cv:
            demands = list(self._demands.values())
            return memory_view(self.budgets, models, demands, self.swaps, time.monotonic())


def _facts(entry: ModelEntry, now: float) -> policy.ModelFacts:
    """One model as the policy sees it."""
    executor = entry.executor
    used = entry.last_used()
    spec = entry.spec
    default_plan = {"replicas": spec.replicas, "target_inflight": spec.target_inflight, "overrides": {}}
    return policy.ModelFacts(
        name=entry.name,
        device=spec.memory_device,
        state=entry.state,
        serving=entry.state is ModelState.LOADED and executor is not None,
        load_on_demand=spec.load_on_demand,
        pinned=spec.pinned,
        swap_out=entry.swap_out,
        retired=entry.retired,
        idle=executor is not None and executor.idle(),
        resident_s=None if entry.loaded_at is None else now - entry.loaded_at,
        last_used=used or 0.0,
        held_mib=entry.memory_estimate().mib or 0.0,
        need_mib=(entry.memory_estimate(default_plan).mib or 0.0) if spec.memory_device else 0.0,
        idle_unload_s=spec.idle_unload_s,
        idle_for_s=None if used is None else now - used,
    )
