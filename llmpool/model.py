"""One configured model: its state machine, its replicas while loaded, its admin row.

One writer per model: `load` and `unload` hold `_write_lock` for the whole operation, so
two admin calls can never interleave on one model. Both wait (on runtimes, children and
real locks), so they run on real threads, never on the hub (`Pool` sees to that). State
changes go through `_set_state` only, which validates the edge, logs it and wakes anybody
waiting on the model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from typing import Any

from llmpool import gpu, model_view
from llmpool.backends.base import Adapter, Capabilities
from llmpool.config.spec import ModelSpec
from llmpool.crashes import CrashWatch
from llmpool.errors import InvalidLoadRequest, ModelLoadFailed, ModelLoading, ModelUnloading, PoolError
from llmpool.executor import Executor, Replica
from llmpool.greenbridge import assert_may_block
from llmpool.load_plan import load_plan
from llmpool.placement.ledger import Estimate, Ledger, load_key
from llmpool.placement.measure import LoadProbe
from llmpool.states import ModelState, check_transition
from llmpool.telemetry import Telemetry

log = logging.getLogger(__name__)


class ModelEntry:
    def __init__(
        self,
        spec: ModelSpec,
        adapter_cls: type[Adapter],
        telemetry: Telemetry | None = None,
        ledger: Ledger | None = None,
        crashes: CrashWatch | None = None,
    ) -> None:
        self.spec = spec
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
        # Last measured VRAM per override (json key), kept across unloads.
        self._measured_mib: dict[str, float] = {}
        # Placement (llmpool.placement): when the current load finished (monotonic), whether
        # the placer is draining it to make room (new jobs then wait for its next load),
        # and a cancel of a load on demand that nobody waits for any more.
        self.loaded_at: float | None = None
        self.swap_out = False
        self._load_cancelled = False
        self._loading: list[Adapter] = []
        self._artifact_bytes: dict[str, int | None] = {}  # weights on disk, per ledger key

    # -- facts -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def load_override(self) -> dict[str, Any] | None:
        return self._load_override

    @load_override.setter
    def load_override(self, plan: dict[str, Any] | None) -> None:
        # Admission reads the active spec and capabilities on every request: derive them
        # here, when the plan changes (load and unload), not per request.
        self._load_override = plan
        applied = plan or {}
        self._active_spec = dataclasses.replace(
            self.spec.with_overrides(applied.get("overrides") or {}),
            replicas=applied.get("replicas", self.spec.replicas),
            target_inflight=applied.get("target_inflight", self.spec.target_inflight),
        )
        self._capabilities = self.adapter_cls.capabilities(self._active_spec)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def active_spec(self) -> ModelSpec:
        """The definition as loaded: the load plan's replicas, slots and overrides applied."""
        return self._active_spec

    def effective_inflight(self, configured: int) -> int:
        return configured if self.adapter_cls.can_batch else 1

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
        """The placer needs this model's memory for `waiter`: new jobs wait for its next
        load (`swap_out`) while the running ones finish."""
        if not self.swap_out:
            log.info("draining %s: %s waited %.0fs for memory", self.name, waiter, waited_s)
            self.swap_out = True

    def end_swap(self) -> None:
        """The demand that drained this model went away: it takes jobs again."""
        self.swap_out = False

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
                self._unload_held(force=True)  # reap what is left of the failed runtimes
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

    def finish_load(self) -> None:
        """Bring up every replica (all or nothing) and start the executor.

        Must follow `begin_load`; releases the writer lock. Raises ModelLoadFailed.
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
            self.executor = Executor(self.name, replicas, spec.max_queue, self.crashes.recorder)
            after = gpu.used_mib()
            if before is not None and after is not None:
                self._measured_mib[self._override_key()] = round(max(0.0, after - before), 1)
            self._record_memory(probe, runtimes)
            self.load_seconds = round(time.monotonic() - started, 3)
            self.loaded_at = time.monotonic()
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
            self._load_cancelled = False
            self._write_lock.release()

    def cancel_load(self) -> bool:
        """Nobody waits for this load any more (any thread; never blocks): stop it before
        the runtime is up where the backend allows (True), else let it finish (False)."""
        if self.state is not ModelState.LOADING:
            return False
        self._load_cancelled = True
        loading = list(self._loading)
        # No runtime made yet: the flag stops the load before the first one starts.
        return not loading or any([runtime.cancel_load() for runtime in loading])

    # -- memory ----------------------------------------------------------------------
    def load_key(self, plan: dict[str, Any] | None = None) -> str:
        if plan is None:
            plan = self.load_override or {
                "replicas": self.spec.replicas,
                "target_inflight": self.spec.target_inflight,
            }
        return load_key(dict(self.spec.definition), plan)

    def memory_estimate(self, plan: dict[str, Any] | None = None) -> Estimate:
        """What a load (`plan`; default: the current one, else the configured one) needs
        on the model's device, from the ledger."""
        if self.ledger is None or self.spec.memory_device is None:
            return Estimate(None, "unknown")
        replicas = (plan or self.load_override or {}).get("replicas", self.spec.replicas)
        key = self.load_key(plan)
        if key not in self._artifact_bytes:  # asked on every placement pass and admin row
            spec = self.active_spec if plan is None else self.spec
            self._artifact_bytes[key] = self.adapter_cls.artifact_size_bytes(spec)
        return self.ledger.estimate(self.name, key, self._artifact_bytes[key], replicas)

    def _record_memory(self, probe: LoadProbe, runtimes: list[Adapter]) -> None:
        if self.ledger is None:
            return
        own = [r.footprint_mib() for r in runtimes]
        if own and all(mib is not None for mib in own):
            self.ledger.record(self.name, self.load_key(), sum(mib or 0.0 for mib in own), "runtime")
            return
        pids = [pid for r in runtimes if (pid := r.pid()) is not None]
        measured = probe.measure(pids)
        if measured is not None:
            self.ledger.record(self.name, self.load_key(), *measured)

    def _override_key(self) -> str:
        return json.dumps((self.load_override or {}).get("overrides") or {}, sort_keys=True)

    def measured_mib(self) -> float | None:
        """GPU memory the last load with the current overrides took (NVML), if measured."""
        return self._measured_mib.get(self._override_key())

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
    def unload(self, force: bool, *, refuse_while_loading: bool = False) -> None:
        """Drain (or cancel at once with `force`), close every runtime, end UNLOADED.
        Waits for another writer to finish first; with `refuse_while_loading` (the admin
        command) a load in progress is a 409 instead, decided as the writer is found."""
        assert_may_block("ModelEntry.unload")
        if not self._write_lock.acquire(blocking=False):
            if refuse_while_loading and self.state is ModelState.LOADING:
                raise ModelLoading(f"model '{self.name}' is still loading", model=self.name)
            self._write_lock.acquire()
        try:
            self._unload_held(force)
        finally:
            self._write_lock.release()

    def _unload_held(self, force: bool) -> None:
        if self.state is ModelState.UNLOADED:
            return
        self._set_state(ModelState.UNLOADING)
        # The executor stays reachable while draining: a client that leaves mid-drain
        # must still be able to cancel its job (Pool.cancel looks it up here).
        executor = self.executor
        if executor is not None:
            executor.drain(0.0 if force else self.spec.unload_timeout_s)
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
