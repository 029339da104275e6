"""Per-model executor: one model's waiting line feeding `replicas` identical runtimes.

Threads, as the design card has it:
- the waiting line is the model's `queue.Queue` (`llmpool.waiting_line`), which outlives
  any one load: the executor of each load takes jobs from it;
- one real dispatcher thread waits for a job at the head of the line and a free slot on
  a ready replica, then takes the job out of line and hands it over;
- a runtime that blocks in C (`Adapter.blocking`) has `slots` real replica threads that
  run its jobs; a socket-bound runtime's jobs run as greenlets on the job's hub instead
  (`Home.spawn`), because its gevent sockets belong there.

Locking: `_lock` is the line's own condition (`WaitingLine.changed`), so the line, the
replica states and slots and the running set move under one lock; it is held only for
bookkeeping, never across a wait by a greenlet or a runtime call. Greenlets only ever
take it briefly (admission, cancel, place in line); every wait on it happens on real
threads (dispatcher, replicas, drain).
"""

from __future__ import annotations

import enum
import logging
import queue
import time
from dataclasses import dataclass, field
from typing import Any

from llmpool import structured
from llmpool.backends.base import Adapter
from llmpool.crashes import Recorder
from llmpool.errors import BackendError, InternalError, ModelFailed, ModelUnloading, PoolError
from llmpool.generation import Final
from llmpool.greenbridge import assert_may_block, on_hub, start_thread, yield_to_hub
from llmpool.job import Job, JobStatus
from llmpool.waiting_line import WaitingLine

log = logging.getLogger(__name__)

_STOP: Any = object()  # ends a replica thread (its own inbox; the dispatcher has a flag)
STOP_GRACE_S = 5.0  # how long drain waits for stopped socket-bound jobs (see drain)


class ReplicaState(enum.StrEnum):
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(eq=False)
class Replica:
    id: int
    runtime: Adapter
    slots: int
    state: ReplicaState = ReplicaState.READY
    inflight: int = 0
    served: int = 0
    last_error: str | None = None
    # Jobs handed to this replica's threads (in-process runtimes only).
    inbox: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)

    @property
    def free(self) -> bool:
        return self.state is ReplicaState.READY and self.inflight < self.slots

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "inflight": self.inflight,
            "served": self.served,
            "pid": self.runtime.pid(),
            "last_error": self.last_error,
        }


class Executor:
    """Replica choice, running and cancellation for one load of a model."""

    def __init__(
        self, model: str, replicas: list[Replica], line: WaitingLine, recorder: Recorder | None = None
    ) -> None:
        self.model = model
        # Told when a generation enters native code (in-process runtimes only): a worker that
        # dies in there is explained by the next one (llmpool.crashes).
        self.recorder = recorder or Recorder(None)
        self.replicas = replicas
        self.line = line
        self._lock = line.changed
        self._running: set[Job] = set()
        # Whether the dispatcher takes jobs: False from `close_if_idle` or a drain on.
        self._dispatching = True
        # While drained for another model's load (`hold`): how many more jobs may start,
        # those that were in line when the hold began; None when not held.
        self._allowance: int | None = None
        self._stopped = False
        self._rr = 0
        self.last_finished: float | None = None  # monotonic end of the last job (idle clocks)
        for replica in replicas:
            if replica.runtime.blocking:
                for slot in range(replica.slots):
                    start_thread(self._replica_loop, replica, name=f"replica-{model}-{replica.id}.{slot}")
        start_thread(self._dispatch_loop, name=f"dispatch-{model}")

    # -- the requests' side (any thread or greenlet; never waits) ------------------------
    def cancel(self, job: Job) -> None:
        """The client of a running job is gone: it stops at its next chunk. (A queued job
        leaves the line instead: `WaitingLine.remove`.)"""
        with self._lock:
            if job.status is JobStatus.RUNNING and job in self._running:
                self._stop(job, None)

    # -- observation ---------------------------------------------------------------------
    @property
    def dispatching(self) -> bool:
        """Whether this load takes jobs from the line (read under the line's mutex by
        admission, `ModelEntry.refusal`)."""
        return self._dispatching

    @property
    def inflight(self) -> int:
        return sum(r.inflight for r in self.replicas)

    def idle(self) -> bool:
        """Nothing running, and nothing in line that this load would still start."""
        with self._lock:
            return self._idle()

    def _idle(self) -> bool:
        return not self._running and (self.line.length_locked() == 0 or self._allowance == 0)

    def close_if_idle(self) -> bool:
        """Stop taking jobs if nothing is running or due to start, atomically with the
        check, so that the unload which follows drops nobody: a job that arrives after
        waits in line for the next load (load on demand) or is refused (llmpool.model)."""
        with self._lock:
            if self._dispatching and self._idle():
                self._dispatching = False
                return True
            return False

    def hold(self) -> None:
        """Drained for another model's load: the jobs in line now still start, later ones
        wait in line for the next load."""
        with self._lock:
            if self._allowance is None:
                self._allowance = self.line.length_locked()

    def resume(self) -> None:
        with self._lock:
            self._allowance = None
            self._lock.notify_all()

    # -- dispatch (the dispatcher thread) -------------------------------------------------
    def _pick(self) -> Replica | None:
        """Least-busy ready replica with a free slot; round-robin among equals."""
        free = [r for r in self.replicas if r.free]
        if not free:
            return None
        least = min(r.inflight for r in free)
        n = len(self.replicas)
        for offset in range(n):
            candidate = self.replicas[(self._rr + offset) % n]
            if candidate.free and candidate.inflight == least:
                self._rr = (self.replicas.index(candidate) + 1) % n
                return candidate
        return None  # unreachable: `free` was non-empty

    def _dispatch_loop(self) -> None:
        while (taken := self._next_start()) is not None:
            self.hand_over(*taken)

    def hand_over(self, job: Job, replica: Replica) -> None:
        """Run a started job: on a replica thread, or as a greenlet on its hub."""
        if replica.runtime.blocking:
            replica.inbox.put(job)
        else:
            job.home.spawn(self._run, job, replica)
            # Spawned by the request's own greenlet (`take_now`): let the job send its
            # upstream request now, before that greenlet builds the answer or the stream's
            # opening and the server writes them (about a millisecond: first_token,
            # bench/README.md). From the dispatcher thread this does nothing.
            yield_to_hub()

    def _next_start(self) -> tuple[Job, Replica] | None:
        """Wait for a job at the head of the line and a free slot, then start the job
        there (out of line, RUNNING); None once the executor stopped."""
        with self._lock:
            while not self._stopped:
                if (taken := self._take_head()) is not None:
                    return taken
                self._lock.wait()
            return None

    def take_now(self, job: Job) -> Replica | None:
        """With the line's mutex held, by whoever just put `job` in line: start it now if
        nothing waits before it and a slot is free (the caller then `hand_over`s it),
        instead of waking the dispatcher thread to do it. That thread hop, and the one
        back to the hub, were most of a relayed stream's first-token time (bench/,
        first_token). None: it waits in line for the dispatcher, as before."""
        if self._stopped or self._allowance is not None or self.line.head() is not job:
            return None
        taken = self._take_head()
        return taken[1] if taken is not None else None

    def _take_head(self) -> tuple[Job, Replica] | None:
        """With the lock held: the job at the head of the line, started on the replica
        `_pick` chooses, if both exist and this load takes jobs."""
        job = self.line.head() if self._dispatching and self._allowance != 0 else None
        replica = self._pick() if job is not None else None
        if job is None or replica is None:
            return None
        self.line.pop_head()
        if self._allowance is not None:
            self._allowance -= 1
        replica.inflight += 1
        job.start(replica.id)
        self._running.add(job)
        return job, replica

    # -- running (replica threads, or greenlets for socket-bound runtimes) ----------------
    def _replica_loop(self, replica: Replica) -> None:
        while (job := replica.inbox.get()) is not _STOP:
            self._run(job, replica)

    def _run(self, job: Job, replica: Replica) -> None:
        final: Final | None = None
        error: PoolError | None = None
        runtime = replica.runtime
        try:
            job.times.backend_started = time.monotonic()
            if not job.stop_requested:
                final = self._generate(job, runtime)
            job.times.backend_finished = time.monotonic()
            if not job.stop_requested:  # never an invalid answer passed on as valid
                error = structured.check_answer(job, final, self.model)
        except PoolError as exc:
            error = exc
        except runtime.runtime_errors as exc:
            log.warning("runtime of '%s' failed: %s: %s", self.model, type(exc).__name__, exc)
            error = BackendError(f"{type(exc).__name__}: {exc}", model=self.model)
        except Exception:
            log.exception("bug while running a job of '%s'", self.model)
            error = InternalError("internal error", model=self.model)
        finally:
            with self._lock:
                job.finish(final, error)
                replica.inflight -= 1
                replica.served += 1
                self._running.discard(job)
                self.last_finished = time.monotonic()
                # Waiting on this lock: the dispatcher, for a job in line and a slot, and a
                # drain (which stopped dispatching), for the running jobs to end. Anyone
                # else would wake for nothing, and a wake is a thread switch per request.
                if self.line.length_locked() or not self._dispatching:
                    self._lock.notify_all()

    def _generate(self, job: Job, runtime: Adapter) -> Final | None:
        """Drive one generation, passing deltas on; ends early at a stop request (checked
        between chunks), and always closes the runtime's iterator so it frees the job."""
        if not runtime.blocking:  # sockets only: nothing native to die in
            return self._drive(job, runtime)
        with self.recorder.working(self.model, "generating"):
            return self._drive(job, runtime)

    @staticmethod
    def _drive(job: Job, runtime: Adapter) -> Final | None:
        final: Final | None = None
        budget = job.request.thinking_budget
        thoughts = 0
        # A greenlet relaying a socket steps aside after its first delta and every 64th
        # after: its consumer writes them now, not after the whole read buffer.
        steps_aside = not runtime.blocking and on_hub()
        deltas = 0
        stream = runtime.generate(job.request)
        try:
            for chunk in stream:
                if job.stop_requested:
                    break
                if chunk.final is not None:
                    final = chunk.final
                if chunk.reasoning and budget is not None:
                    thoughts += 1
                    if thoughts > budget:  # the thoughts spent their budget: cut, as max_tokens cuts
                        return Final(finish_reason="length")
                if chunk.text or chunk.reasoning:
                    job.emit_delta(chunk.text, chunk.reasoning)
                    if steps_aside:
                        deltas += 1
                        if deltas & 63 == 1:
                            yield_to_hub()
                if chunk.tool_call is not None:
                    job.emit_tool_call(chunk.tool_call)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return final

    def _stop(self, job: Job, error: PoolError | None) -> None:
        """With `_lock` held: ask a running job to stop, and wake it inside its runtime."""
        job.request_stop(error)
        replica = next(r for r in self.replicas if r.id == job.replica)
        replica.runtime.interrupt(job.request)

    # -- failures and shutdown (real threads) --------------------------------------------
    def replica_failed(self, replica_id: int, message: str) -> bool:
        """Mark a replica failed and end its running jobs with backend_error.

        Returns whether any replica is still ready. Queued jobs stay queued for the
        survivors (even if every survivor is busy now), or fail when none is left.
        """
        error = BackendError(message, model=self.model)
        with self._lock:
            replica = next(r for r in self.replicas if r.id == replica_id)
            replica.state = ReplicaState.FAILED
            replica.last_error = message
            for job in self._running:
                if job.replica == replica_id:
                    self._stop(job, error)
            survivors = any(r.state is ReplicaState.READY for r in self.replicas)
            if not survivors:
                self._dispatching = False
                for job in self.line.take_all_locked():
                    job.drop(ModelFailed(message, model=self.model))
            self._lock.notify_all()
            return survivors

    def drain(self, timeout_s: float, *, keep_queued: bool = False) -> None:
        """Stop taking jobs, let running ones finish for `timeout_s`, then stop the rest at
        their next chunk. Queued jobs fail with model_unloading, or with `keep_queued` stay
        in line for the model's next load. Returns once idle (or, for socket-bound
        runtimes, after a grace). Waits on real primitives: never on the hub."""
        assert_may_block("Executor.drain")
        unloading = ModelUnloading(f"model '{self.model}' is unloading", model=self.model)
        with self._lock:
            self._dispatching = False
            if not keep_queued:
                for job in self.line.take_all_locked():
                    job.drop(unloading)
            self._lock.notify_all()
            deadline = time.monotonic() + timeout_s
            while self._running and time.monotonic() < deadline:
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            for job in self._running:
                self._stop(job, unloading)
            self._wait_for_stopped_jobs()
            self._stopped = True
            self._lock.notify_all()
        for replica in self.replicas:
            if replica.runtime.blocking:
                for _ in range(replica.slots):
                    replica.inbox.put(_STOP)
            replica.state = ReplicaState.STOPPED

    def _wait_for_stopped_jobs(self) -> None:
        # A stopped in-process job ends at its next token, and its runtime must not be
        # closed under it: wait. A socket-bound job on a stalled upstream only sees the
        # stop at its next chunk: after a grace, return, and closing the runtime (its
        # child or connection) breaks the socket it waits on.
        grace_end = time.monotonic() + STOP_GRACE_S
        while self._running:
            if time.monotonic() >= grace_end and not any(r.runtime.blocking for r in self.replicas):
                log.warning(
                    "%s: %d job(s) still waiting on their runtime; closing it", self.model, len(self._running)
                )
                return
            self._lock.wait(0.2)
