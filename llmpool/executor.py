"""Per-model executor: one waiting line feeding `replicas` identical runtimes.

Threads, as the design card has it:
- the waiting line is a `queue.Queue` (`WaitingLine`, built on the class's own subclass
  hooks so that a job can leave it from the middle);
- one real dispatcher thread takes the next job from the line, waits for a free slot on
  a ready replica, and hands the job over;
- a runtime that blocks in C (`Adapter.blocking`) has `slots` real replica threads that
  run its jobs; a socket-bound runtime's jobs run as greenlets on the job's hub instead
  (`Home.spawn`), because its gevent sockets belong there.

Locking: `_lock` (a real Condition) guards replica states, slots, the running set and
the job in the dispatcher's hand; it is held only for bookkeeping, never across a wait
by a greenlet or a runtime call. The line has its own mutex, always taken after `_lock`
when both are needed. Greenlets only ever take these locks briefly (submit, cancel,
position); every wait on them happens on real threads (dispatcher, replicas, drain).
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from llmpool.backends.base import Adapter
from llmpool.crashes import Recorder
from llmpool.errors import BackendError, InternalError, ModelFailed, ModelUnloading, PoolError, QueueFull
from llmpool.generation import Final
from llmpool.greenbridge import assert_may_block, start_thread
from llmpool.job import Job, JobStatus

log = logging.getLogger(__name__)

_STOP: Any = object()
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


class WaitingLine(queue.Queue[Any]):
    """The queued jobs in arrival order: a `queue.Queue` whose storage (through the
    `_init/_qsize/_put/_get` hooks its subclasses override, like `PriorityQueue`) is an
    insertion-ordered dict, so a job can also leave from the middle (`remove`).

    Every queued SSE stream asks for its place about once a second; counting the jobs
    ahead on each ask made 1000 waiting clients cost O(n^2) a second. Places are computed
    in one pass, and only again after the line changed.
    """

    def _init(self, maxsize: int) -> None:
        self._jobs: dict[Any, None] = {}
        self._places: dict[Any, int] | None = None

    def _qsize(self) -> int:
        return len(self._jobs)

    def _put(self, item: Any) -> None:
        self._jobs[item] = None
        self._places = None

    def _get(self) -> Any:
        item = next(iter(self._jobs))
        del self._jobs[item]
        self._places = None
        return item

    def remove(self, job: Job) -> bool:
        """Take `job` out of line; False when it is not in it (any more)."""
        with self.mutex:
            if job not in self._jobs:
                return False
            del self._jobs[job]
            self._places = None
            self.not_full.notify()
            return True

    def take_all(self) -> list[Job]:
        with self.mutex:
            jobs, self._jobs, self._places = list(self._jobs), {}, None
            return [j for j in jobs if j is not _STOP]

    def place(self, job: Job) -> int:
        """1-based place in line, 0 when not in it."""
        with self.mutex:
            if self._places is None:
                self._places = {queued: i for i, queued in enumerate(self._jobs, 1)}
            return self._places.get(job, 0)


class Executor:
    """Queue, replica choice and cancellation for one loaded model."""

    def __init__(
        self, model: str, replicas: list[Replica], max_queue: int, recorder: Recorder | None = None
    ) -> None:
        self.model = model
        # Told when a generation enters native code (in-process runtimes only): a worker that
        # dies in there is explained by the next one (llmpool.crashes).
        self.recorder = recorder or Recorder(None)
        self.replicas = replicas
        self.max_queue = max_queue
        self._line = WaitingLine()  # unbounded: the bound is checked in submit, with _next
        self._lock = threading.Condition()
        self._next: Job | None = None  # taken from the line, waiting for a free slot
        self._running: set[Job] = set()
        self._admitting = True
        self._stopped = False
        self._rr = 0
        self.last_finished: float | None = None  # monotonic end of the last job (idle clocks)
        for replica in replicas:
            if replica.runtime.blocking:
                for slot in range(replica.slots):
                    start_thread(self._replica_loop, replica, name=f"replica-{model}-{replica.id}.{slot}")
        start_thread(self._dispatch_loop, name=f"dispatch-{model}")

    # -- admission (any thread or greenlet; never waits) --------------------------------
    def submit(self, job: Job) -> None:
        """Put `job` in line; raises QueueFull (429) or ModelUnloading."""
        with self._lock:
            if not self._admitting:
                raise ModelUnloading(f"model '{self.model}' is unloading", model=self.model)
            if self.queue_depth >= self.max_queue:
                raise QueueFull(
                    f"queue of model '{self.model}' is full ({self.max_queue} waiting)",
                    model=self.model,
                )
            self._line.put_nowait(job)

    def position(self, job: Job) -> int:
        """1-based place of a queued job in line, 0 once it left the line."""
        with self._lock:
            if job is self._next and job.status is JobStatus.QUEUED:
                return 1
            place = self._line.place(job)
            return place + self._holding if place else 0

    def cancel(self, job: Job) -> None:
        """The client is gone: a queued job leaves the line at once (nothing keeps a
        reference to it or its prompt); a running one stops at its next chunk."""
        with self._lock:
            if self._line.remove(job) or job is self._next:
                job.drop(None)
                self._lock.notify_all()  # the dispatcher may hold it
            elif job.status is JobStatus.RUNNING:
                self._stop(job, None)

    # -- observation -------------------------------------------------------------------
    @property
    def _holding(self) -> int:
        """1 while the dispatcher holds a queued job waiting for a slot (a cancelled one
        it has not yet let go of no longer counts)."""
        return int(self._next is not None and self._next.status is JobStatus.QUEUED)

    @property
    def queue_depth(self) -> int:
        return self._line.qsize() + self._holding

    @property
    def inflight(self) -> int:
        return sum(r.inflight for r in self.replicas)

    def idle(self) -> bool:
        return self.queue_depth == 0 and not self._running

    def close_if_idle(self) -> bool:
        """Stop admitting if nothing is queued or running, atomically with the check, so
        that the unload which follows drops nobody (a job arriving now gets
        model_unloading, which a load-on-demand model turns into a wait for its reload)."""
        with self._lock:
            if self._admitting and self.idle():
                self._admitting = False
                return True
            return False

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
        while True:
            job = self._line.get()
            if job is _STOP:
                return
            with self._lock:
                self._next = job
                replica = self._wait_for_slot(job)
                self._next = None
            if replica is None:
                continue
            if replica.runtime.blocking:
                replica.inbox.put(job)
            else:
                job.home.spawn(self._run, job, replica)

    def _wait_for_slot(self, job: Job) -> Replica | None:
        """With `_lock` held: start `job` on a free slot, waiting for one while any replica
        is ready; None when the job left meanwhile or can never run."""
        while True:
            if job.status is not JobStatus.QUEUED:
                return None  # cancelled by its client, or failed by drain
            replica = self._pick()
            if replica is not None:
                replica.inflight += 1
                job.start(replica.id)
                self._running.add(job)
                return replica
            if not any(r.state is ReplicaState.READY for r in self.replicas):
                job.drop(ModelFailed(f"no replica of '{self.model}' is alive", model=self.model))
                return None
            self._lock.wait()

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
        stream = runtime.generate(job.request)
        try:
            for chunk in stream:
                if job.stop_requested:
                    break
                if chunk.final is not None:
                    final = chunk.final
                if chunk.text or chunk.reasoning:
                    job.emit_delta(chunk.text, chunk.reasoning)
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
                for job in self._line.take_all():
                    job.drop(ModelFailed(message, model=self.model))
            self._lock.notify_all()  # the dispatcher fails the job in its hand, if any
            return survivors

    def drain(self, timeout_s: float) -> None:
        """Stop admitting, fail queued jobs, let running ones finish for `timeout_s`,
        then stop the rest at their next chunk. Returns once idle (or, for socket-bound
        runtimes, after a grace). Waits on real primitives: never on the hub."""
        assert_may_block("Executor.drain")
        unloading = ModelUnloading(f"model '{self.model}' is unloading", model=self.model)
        with self._lock:
            self._admitting = False
            for job in self._line.take_all():
                job.drop(unloading)
            if self._next is not None and self._next.status is JobStatus.QUEUED:
                self._next.drop(unloading)
            self._lock.notify_all()
            deadline = time.monotonic() + timeout_s
            while self._running and time.monotonic() < deadline:
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            for job in self._running:
                self._stop(job, unloading)
            self._wait_for_stopped_jobs()
            self._stopped = True
            self._lock.notify_all()
        self._line.put(_STOP)
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
