"""One configured model: its state machine, its replicas while loaded, its admin row.

One writer per model: `load` and `unload` hold `_write_lock` for the whole operation, so
two admin calls can never interleave on one model. Both wait (on runtimes, children and
real locks), so they run on real threads, never on the hub (`Pool` sees to that). State
changes go through `_set_state` only, which validates the edge, logs it and wakes anybody
waiting on the model.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

from llmpool import gpu, model_view
from llmpool.backends.base import Adapter
from llmpool.config.spec import ModelSpec
from llmpool.crashes import CrashWatch
from llmpool.errors import (
    InvalidLoadRequest,
    ModelFailed,
    ModelLoadFailed,
    ModelLoading,
    ModelNotLoaded,
    ModelUnloading,
    PoolError,
)
from llmpool.executor import Executor, Replica
from llmpool.greenbridge import assert_may_block
from llmpool.job import Job
from llmpool.load_plan import load_plan
from llmpool.model_plan import PlannedModel
from llmpool.placement.ledger import Ledger
from llmpool.placement.measure import LoadProbe
from llmpool.states import ModelState, check_transition
from llmpool.telemetry import Telemetry
from llmpool.waiting_line import WaitingLine

log = logging.getLogger(__name__)

_NOT_SERVING = {
    ModelState.UNLOADED: ModelNotLoaded,
    ModelState.LOADING: ModelLoading,
    ModelState.LOADED: ModelUnloading,  # loaded, but its executor stopped taking jobs
    ModelState.UNLOADING: ModelUnloading,
    ModelState.FAILED: ModelFailed,
}


class ModelEntry(PlannedModel):
    def __init__(
        self,
        spec: ModelSpec,
        adapter_cls: type[Adapter],
        telemetry: Telemetry | None = None,
        ledger: Ledger | None = None,
        crashes: CrashWatch | None = None,
        line: WaitingLine | None = None,
    ) -> None:
        self.spec = spec
        # The model's one waiting line, loaded or not; a settings reload that redefines
        # the model hands it to the new entry, jobs and all.
        self.line = line or WaitingLine(spec.name)
        self.ledger = ledger
        self.crashes = crashes or CrashWatch(None)
        self.adapter_cls = adapter_cls
        self.telemetry = telemetry
        self.state = ModelState.UNLOADED
        self.last_error: str | None = None
        self.executor: Executor | None = None
        self.load_override: dict[str, Any] | None = None
        self.load_seconds: float | None = None
        # The runtimes of the current or last load, kept after unload for their logs.
        self.last_runtimes: list[Adapter] = []
        self._write_lock = threading.Lock()
        # Set (under the write lock) when a settings reload replaced this definition: the
        # entry is no longer in the pool and must never start a runtime.
        self.retired = False
        self._changed = threading.Condition()
        self._measured_mib: dict[str, float] = {}  # llmpool.model_plan
        # Placement (llmpool.placement): when the current load finished (monotonic), whether
        # the placer is draining it to make room (new jobs then wait in line for its next
        # load), and a cancel of a load on demand that nobody waits for any more.
        self.loaded_at: float | None = None
        self.swap_out = False
        self._load_cancelled = False
        self._loading: list[Adapter] = []
        self._artifact_bytes: dict[str, int | None] = {}  # llmpool.model_plan

    # -- facts -----------------------------------------------------------------------
    @property
    def takes_jobs(self) -> bool:
        """Loaded, with an executor that takes jobs from the line (one closed for an
        unload that has not begun, or with every replica dead, does not)."""
        executor = self.executor
        return self.state is ModelState.LOADED and executor is not None and executor.dispatching

    @property
    def serving(self) -> bool:
        """Takes jobs, and is not being drained for another model's load."""
        return self.takes_jobs and not self.swap_out

    def waiting(self) -> tuple[int, int]:
        """(queued for a slot, waiting for a load): the line's length, counted as the one
        or the other by whether the model serves."""
        n = self.line.qsize()
        return (n, 0) if self.serving else (0, n)

    # -- admission ---------------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        """Put `job` in the model's line: QueueFull past max_queue; a model that does not
        load on demand takes jobs only while it serves (else the error its state calls
        for). A model that loads on demand takes them in any state: they wait for its load."""
        # The executor starts the job at once if it can (`Executor.take_now` decides
        # under the line's mutex); else its dispatcher will.
        executor = self.executor
        take_now = executor.take_now if executor is not None else None
        replica = self.line.offer(job, self.spec.max_queue, self.refusal, take_now)
        if executor is not None and replica is not None:
            executor.hand_over(job, replica)

    def refusal(self) -> PoolError | None:
        """Why a job may not join the line now, if it may not."""
        # Called by `enqueue` under the line's mutex: a drain that stops the executor takes
        # it too, so a job is either refused here or in line before the drain decides
        # about queued jobs.
        if self.spec.load_on_demand or self.takes_jobs:
            return None
        error = _NOT_SERVING.get(self.state, ModelNotLoaded)
        return error(f"model '{self.name}' is {self.state.value}", model=self.name)

    # -- state machine ---------------------------------------------------------------
    def _set_state(self, new: ModelState, error: str | None = None) -> None:
        with self._changed:  # the edge is checked and taken under one lock
            check_transition(self.state, new)
            log.info("model %s: %s -> %s", self.name, self.state.value, new.value)
            self.state = new
            if error is not None or new is ModelState.LOADING:
                self.last_error = error
            self._changed.notify_all()

    def wait_settled(self, timeout: float) -> ModelState:
        """Wait until the model is no longer loading or unloading (or the timeout)."""
        assert_may_block("ModelEntry.wait_settled")
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.state in (ModelState.LOADING, ModelState.UNLOADING):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self.state

    def mark_crashed(self, message: str) -> None:
        """The previous worker died inside this model's runtime (llmpool.crashes): FAILED
        with `message`, before anything loads it again."""
        with self._write_lock:
            if self.state in (ModelState.UNLOADED, ModelState.FAILED):
                self._set_state(ModelState.FAILED, error=message)

    # -- the writer, seen from outside -------------------------------------------------
    def try_hold(self) -> bool:
        """Become this model's writer if nobody is (never waits): True if so. The holder
        must `release()`; meanwhile no load or unload of the model can begin."""
        return self._write_lock.acquire(blocking=False)

    def release(self) -> None:
        self._write_lock.release()

    def retire(self) -> None:
        """A settings reload replaced this definition (caller holds it via `try_hold`):
        the entry is out of the pool and never starts a runtime again."""
        self.retired = True

    def drain_for_swap(self, waiter: str, waited_s: float) -> None:
        """The placer needs this model's memory for `waiter`: the jobs in line now still
        run, later ones wait in line for its next load (`swap_out`)."""
        executor = self.executor
        if not self.swap_out and executor is not None:
            log.info("draining %s: %s waited %.0fs for memory", self.name, waiter, waited_s)
            self.swap_out = True
            executor.hold()

    def end_swap(self) -> None:
        """The demand that drained this model went away: it takes jobs again."""
        executor = self.executor
        self.swap_out = False
        if executor is not None:
            executor.resume()

    # -- load ------------------------------------------------------------------------
    def check_load_request(
        self, replicas: int | None, target_inflight: int | None, overrides: dict[str, Any]
    ) -> dict[str, Any]:
        """Validate a load body against the constraints (llmpool.load_plan); no state."""
        return load_plan(self.spec, self.adapter_cls, replicas, target_inflight, overrides)

    def begin_load(self, plan: dict[str, Any], *, has_body: bool = False) -> bool:
        """The load command, decided as this model's writer, never from a state read
        before: True once the model is LOADING with `plan` (the caller then runs
        `finish_load`, which releases the writer); False when it already serves or loads
        and nothing asks to change that. A failed model's leftovers are reaped first (so
        this may wait on runtimes: a real thread). Raises while it unloads, while another
        writer holds it, once retired, or for a body (`has_body`) sent to a model that is
        up already."""
        if not self._write_lock.acquire(blocking=False):
            # Only a writer moves the state into or out of LOADING and UNLOADING, so the
            # state it holds now names what that writer does.
            if self.state is ModelState.LOADING:
                return self._up_already(has_body)
            if self.state is ModelState.UNLOADING:
                raise ModelUnloading(f"model '{self.name}' is unloading", model=self.name)
            raise InvalidLoadRequest("another load or unload of this model is in progress", model=self.name)
        try:
            if self.retired:
                message = "a settings reload replaced this model's definition; retry"
                raise InvalidLoadRequest(message, model=self.name)
            if self.state is ModelState.LOADED:
                up = self._up_already(has_body)
                self._write_lock.release()
                return up
            if self.state is ModelState.FAILED:
                # Reap what is left of the failed runtimes; the line waits for this load.
                self._unload_held(force=True, keep_queued=True)
            self.load_override = plan
            self._set_state(ModelState.LOADING)
            return True
        except BaseException:
            self._write_lock.release()
            raise

    def _up_already(self, has_body: bool) -> bool:
        if has_body:
            raise InvalidLoadRequest(
                f"model '{self.name}' is {self.state.value}; unload it before loading with new settings",
                model=self.name,
            )
        return False

    def finish_load(self) -> bool:
        """Bring up every replica (all or nothing) and start the executor.

        Must follow `begin_load`; releases the writer lock. Raises ModelLoadFailed.
        Returns False when a cancel was asked (`cancel_load`) that the runtime could not
        act on: the model is up, but whoever asked for it had left.
        """
        assert_may_block("ModelEntry.finish_load")
        plan = self.load_override or {}
        spec = self.active_spec
        runtimes: list[Adapter] = []
        started = time.monotonic()
        before = gpu.used_mib()
        probe = LoadProbe(spec.memory_device)
        self._loading = runtimes
        try:
            for replica_id in range(plan["replicas"]):
                if self._load_cancelled:
                    raise ModelLoadFailed("load cancelled: nobody waits for it", model=self.name)
                runtime = self.adapter_cls(spec, replica_id)
                runtime.on_failure = functools.partial(self._replica_failed, replica_id)
                runtimes.append(runtime)
                self.last_runtimes = runtimes  # logs of a failed start stay readable
                if runtime.blocking:  # in-process: a fault in here kills the worker
                    with self.crashes.recorder.working(self.name, "loading"):
                        runtime.load()
                else:
                    runtime.load()
            slots = self.effective_inflight(plan["target_inflight"])
            replicas = [Replica(id=r.replica_id, runtime=r, slots=slots) for r in runtimes]
            self._record_memory(before, probe, runtimes)
            self.load_seconds = round(time.monotonic() - started, 3)
            self.loaded_at = time.monotonic()
            # Last: its dispatcher starts on the line at once (jobs waiting for this load).
            self.executor = Executor(self.name, replicas, self.line, self.crashes.recorder)
            self._set_state(ModelState.LOADED)
            if self.telemetry is not None:
                self.telemetry.load_finished(self.name, True, self.load_seconds)
        except Exception as exc:
            if self.telemetry is not None:
                self.telemetry.load_finished(self.name, False, time.monotonic() - started)
            for runtime in runtimes:
                self._close_quietly(runtime)
            error = (
                exc
                if isinstance(exc, PoolError)
                else ModelLoadFailed(f"{type(exc).__name__}: {exc}", model=self.name)
            )
            if not isinstance(exc, PoolError):
                log.exception("loading %s failed", self.name)
            self.load_override = None
            if self._load_cancelled:
                self._set_state(ModelState.UNLOADED)  # nobody asked for it any more: not a failure
            else:
                self._set_state(ModelState.FAILED, error=error.message)
            raise ModelLoadFailed(error.message, model=self.name) from exc
        finally:
            self._loading = []
            cancelled, self._load_cancelled = self._load_cancelled, False
            self._write_lock.release()
        return not cancelled

    def cancel_load(self) -> bool:
        """Nobody waits for this load any more (any thread; never blocks): stop it before
        the runtime is up where the backend allows (True), else let it finish (False)."""
        if self.state is not ModelState.LOADING or self._load_cancelled:
            return False  # nothing to cancel, or told already
        self._load_cancelled = True
        loading = list(self._loading)
        # No runtime made yet: the flag stops the load before the first one starts.
        return not loading or any([runtime.cancel_load() for runtime in loading])

    def last_used(self) -> float | None:
        """Monotonic time of the end of the last job, else of the load (None: not loaded)."""
        if self.loaded_at is None:
            return None
        executor = self.executor
        finished = executor.last_finished if executor is not None else None
        return max(self.loaded_at, finished or 0.0)

    def _replica_failed(self, replica_id: int, message: str) -> None:
        """A runtime died on its own (called from the supervisor's watcher)."""
        executor = self.executor
        if self.state is not ModelState.LOADED or executor is None:
            return  # a load in progress reports the failure itself; an unload expects it
        if self.telemetry is not None:
            self.telemetry.runtime_died(self.name)
        if executor.replica_failed(replica_id, message):
            return  # other replicas still serve
        with self._changed:
            if self.state is ModelState.LOADED:
                self._set_state(ModelState.FAILED, error=message)

    # -- unload ----------------------------------------------------------------------
    def unload(self, force: bool, *, refuse_while_loading: bool = False, keep_queued: bool = False) -> None:
        """Drain (or cancel at once with `force`), close every runtime, end UNLOADED.
        Queued jobs fail with model_unloading, unless `keep_queued` (the pool's own unloads
        of a model that loads on demand): then they wait in line for its next load.
        Waits for another writer to finish first; with `refuse_while_loading` (the admin
        command) a load in progress is a 409 instead, decided as the writer is found."""
        assert_may_block("ModelEntry.unload")
        if not self._write_lock.acquire(blocking=False):
            if refuse_while_loading and self.state is ModelState.LOADING:
                raise ModelLoading(f"model '{self.name}' is still loading", model=self.name)
            self._write_lock.acquire()
        try:
            self._unload_held(force, keep_queued=keep_queued and self.spec.load_on_demand)
        finally:
            self._write_lock.release()

    def _unload_held(self, force: bool, *, keep_queued: bool = False) -> None:
        if self.state is ModelState.UNLOADED:
            return
        self._set_state(ModelState.UNLOADING)
        # The executor stays reachable while draining: a client that leaves mid-drain
        # must still be able to cancel its job (Pool.cancel looks it up here).
        executor = self.executor
        if executor is not None:
            executor.drain(0.0 if force else self.spec.unload_timeout_s, keep_queued=keep_queued)
            for replica in executor.replicas:
                self._close_quietly(replica.runtime)
        self.executor = None
        self.load_override = None
        self.loaded_at = None
        self.swap_out = False
        self._set_state(ModelState.UNLOADED)

    def _close_quietly(self, runtime: Adapter) -> None:
        try:
            runtime.close()
        except Exception:
            log.exception("closing a runtime of %s failed", self.name)

    # -- admin view (llmpool.model_view) ----------------------------------------------
    def logs(self, tail: int, since: int = 0) -> dict[str, Any]:
        return model_view.logs(self, tail, since)

    def vram(self) -> dict[str, Any]:
        return model_view.vram(self)

    def row(self) -> dict[str, Any]:
        return model_view.row(self)
