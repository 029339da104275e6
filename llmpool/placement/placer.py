"""Models that come and go by themselves: loads on demand, evictions under a memory
budget, idle unloads. The rules are `policy.py`; this is the thread that applies them.

One real thread (`placer`) carries out every decision. A job for a `load_on_demand`
model waits in that model's own line (`ModelEntry.line`) whatever the model's state; a
non-empty line on a model that does not serve is a load on demand. Each pass looks at the
lines (a model whose line emptied while its load runs has that load cancelled:
`ModelEntry.cancel_load`), takes a snapshot, asks the policy, and applies what it returns;
then the same for idle unloads. Loads are FIFO across models: a load waits its turn on its
device, ordered by when the job at the head of its line arrived.

Loads and unloads run on their own threads (they wait on runtimes), so a slow load never
holds up a cancel or an idle unload. Greenlets call `wake`, `waiting` and `view`, which
take the lock only for bookkeeping. Every unload the pool starts by itself goes through
`Executor.close_if_idle`, atomically with the idle check, and keeps the line: a job that
arrives in between waits in line for the next load.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from llmpool.config.spec import ServiceSettings
from llmpool.errors import InsufficientMemory, ModelLoadFailed, PoolError
from llmpool.greenbridge import start_thread
from llmpool.model import ModelEntry
from llmpool.placement import policy
from llmpool.placement.view import memory_view
from llmpool.placement.waiting import Pending, Waiting
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
        self._pending: dict[str, Pending] = {}  # in arrival order of their first job
        self._closed = False
        self.swaps = 0
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        with self._cv:
            if self._thread is None and not self._closed:
                self._thread = start_thread(self._loop, name="placer")

    def close(self) -> None:
        """Stop deciding (the pool is shutting down; it fails what waits in the lines)."""
        with self._cv:
            self._closed = True
            self._pending = {}
            self._cv.notify_all()

    # -- the requests' side (greenlets; brief lock) ------------------------------------
    def wake(self) -> None:
        """A job joined the line of a model that does not serve: look now."""
        self.start()
        with self._cv:
            self._cv.notify_all()

    def waiting(self, entry: ModelEntry) -> Waiting:
        """Where the jobs in the line of `entry`, which does not serve, stand: its load
        runs or is about to ("loading"), or it waits for memory ("memory", with its place
        among the loads waiting on its device)."""
        now = time.monotonic()
        with self._cv:
            pending = self._pending.get(entry.name)
            if pending is None:  # the next pass takes it up
                return Waiting("loading", entry.name, 0.0, entry.load_seconds)
            if not pending.blocked:
                started = pending.load_started or pending.since
                return Waiting("loading", entry.name, now - started, entry.load_seconds)
            device = entry.spec.memory_device
            place = 1 + sum(
                1
                for other in self._pending.values()
                if other is not pending
                and other.since < pending.since
                and not other.loading
                and other.entry.spec.memory_device == device
            )
            return Waiting("memory", entry.name, now - pending.since, entry.load_seconds, place)

    # -- the placer thread -------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                if self._closed:
                    return
                self._cv.wait(BUSY_POLL_S if self._pending else IDLE_POLL_S)
                if self._closed:
                    return
            try:
                self._pass(time.monotonic())
            except Exception:
                log.exception("placement pass failed")

    def _pass(self, now: float) -> None:
        later: list[Callable[[], None]] = []
        with self._cv:
            models = dict(self._models())
            self._track(models, now, later)
            # One snapshot a pass (it reads every model's estimates): the idle unloads use
            # it too; `close_if_idle` re-checks idleness atomically anyway.
            snapshot = self._snapshot(models, now)
            for action in policy.decide(snapshot):
                self._apply(action, models, now, later)
        for run in later:
            run()
        self._idle_unloads(policy.idle_unloads(snapshot), models)

    def _track(self, models: Mapping[str, ModelEntry], now: float, later: list[Callable[[], None]]) -> None:
        """With the lock: a model with jobs in line that does not serve is pending (in
        the order its head job arrived); one whose line emptied is not, and a load that
        runs for nobody any more is cancelled."""
        for name, pending in list(self._pending.items()):
            entry = models.get(name)
            if pending.loading:
                if pending.entry.line.qsize() == 0:
                    later.append(functools.partial(self._cancel_load, pending.entry))
                continue  # the load thread ends it
            if entry is None or entry.line.qsize() == 0 or entry.serving:
                del self._pending[name]
            else:
                pending.entry = entry  # a settings reload may have redefined it
        fresh = []
        for name, entry in models.items():
            if name not in self._pending and not entry.serving:
                head = entry.line.oldest()
                if head is not None:
                    fresh.append((head, name, entry))
        for head, name, entry in sorted(fresh, key=lambda f: f[0]):
            self._pending[name] = Pending(entry, head)

    @staticmethod
    def _cancel_load(entry: ModelEntry) -> None:
        if entry.cancel_load():
            log.info("load of %s cancelled: every waiting client left", entry.name)

    def _snapshot(self, models: Mapping[str, ModelEntry], now: float) -> policy.Snapshot:
        """What the policy decides on (with the lock: the pending loads do not move)."""
        ordered = sorted(self._pending.values(), key=lambda p: p.since)
        return policy.Snapshot(
            budgets=self.budgets,
            models={name: _facts(entry, now) for name, entry in models.items()},
            demands=[
                policy.DemandFacts(
                    model=p.name,
                    waited_s=now - p.since,
                    loading=p.loading,
                    reserved_mib=p.reserved_mib,
                    jobs=p.jobs,
                )
                for p in ordered
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
                del self._pending[model]  # it serves: its dispatcher takes the line
            case policy.Block(model):
                self._pending[model].blocked = True
            case policy.StartLoad(model, reserve_mib):
                self._start_load(self._pending[model], reserve_mib, now)
            case policy.Evict(victim, for_model):
                entry = models[victim]
                # Atomic with the idle check: a job that arrived since the snapshot keeps it.
                if entry.executor is not None and entry.executor.close_if_idle():
                    later.append(functools.partial(self._evict, entry, for_model))
            case policy.Drain(model, waiter):
                models[model].drain_for_swap(waiter, self.service.swap_max_wait_s)
            case policy.Release(model):
                models[model].end_swap()
            case policy.Drop(model, _, message, holders):
                error = InsufficientMemory(message, model=model, holders=list(holders) or None)
                _fail_line(self._pending.pop(model).entry, error)

    # -- actions -----------------------------------------------------------------------
    def _start_load(self, pending: Pending, need: float, now: float) -> None:
        pending.loading = True
        pending.blocked = False
        pending.load_started = now
        pending.reserved_mib = need
        start_thread(self._load, pending, name=f"demand-load-{pending.name}")

    def _load(self, pending: Pending) -> None:
        """Its own thread: bring the model up for the jobs in its line."""
        entry = pending.entry
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
                pending.loading = False
                self._cv.notify_all()
            return
        unwanted = False
        try:
            unwanted = not entry.finish_load()
        except ModelLoadFailed as exc:
            error = exc
        except PoolError as exc:
            error = ModelLoadFailed(exc.message, model=entry.name)
        cancelled = error is not None and entry.state is ModelState.UNLOADED
        if self.telemetry is not None:
            outcome = "ok" if error is None else "cancelled" if cancelled else "failed"
            self.telemetry.demand_load(entry.name, outcome)
        with self._cv:
            pending.loading = False
            wanted = entry.line.qsize() > 0
            if self._pending.get(entry.name) is pending and (error is None or not cancelled or not wanted):
                # Served (its dispatcher takes the line), failed, or wanted by nobody; a
                # load cancelled while new jobs arrived stays pending and starts again.
                del self._pending[entry.name]
                if error is not None and not cancelled:
                    _fail_line(entry, error)
            self._cv.notify_all()
        # Loaded after its clients left: unload it, unless jobs came meanwhile (the idle
        # check). Not decided by the line alone: its dispatcher may have served it already.
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
            entry.unload(force=False, keep_queued=True)  # who arrives meanwhile waits for the next load
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
            pending = sorted(self._pending.values(), key=lambda p: p.since)
            return memory_view(self.budgets, models, pending, self.swaps, time.monotonic())


def _facts(entry: ModelEntry, now: float) -> policy.ModelFacts:
    """One model as the policy sees it."""
    executor = entry.executor
    used = entry.last_used()
    spec = entry.spec
    default_plan = {"replicas": spec.replicas, "target_inflight": spec.target_inflight, "overrides": {}}
    takes_jobs = entry.takes_jobs
    state = entry.state
    if state is ModelState.LOADED and not takes_jobs:
        # Closed for an unload that has not begun yet (or every replica died): in
        # transition, like UNLOADING; the policy waits for it to end.
        state = ModelState.UNLOADING
    return policy.ModelFacts(
        name=entry.name,
        device=spec.memory_device,
        state=state,
        serving=takes_jobs,
        load_on_demand=spec.load_on_demand,
        pinned=spec.pinned,
        swap_out=entry.swap_out,
        idle=executor is not None and executor.idle(),
        resident_s=None if entry.loaded_at is None else now - entry.loaded_at,
        last_used=used or 0.0,
        held_mib=entry.memory_estimate().mib or 0.0,
        need_mib=(entry.memory_estimate(default_plan).mib or 0.0) if spec.memory_device else 0.0,
        idle_unload_s=spec.idle_unload_s,
        idle_for_s=None if used is None else now - used,
    )


def _fail_line(entry: ModelEntry, error: PoolError) -> None:
    """The load the jobs in `entry`'s line waited for will not come: they fail with `error`."""
    for job in entry.line.take_all():
        job.drop(error)
