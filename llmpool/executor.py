"""Per-model executor: one bounded FIFO queue feeding `replicas` identical runtimes.

Threading contract: every method is called from cooperative threads (greenlets under
gevent, plain threads otherwise) and guarded by one `threading.Condition`. The runtime's
blocking generation runs on a real OS thread through `greenbridge.ThreadedIterator`; the
slot it holds is released only after that thread has finished, so a runtime is never
driven by more jobs than it has slots.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from llmpool.backends.base import Adapter
from llmpool.errors import BackendError, ModelFailed, ModelUnloading, PoolError, QueueFull
from llmpool.generation import Final
from llmpool.greenbridge import drive, spawn
from llmpool.job import Failed, Job, JobStatus

log = logging.getLogger(__name__)

_STOP = object()
STOP_GRACE_S = 5.0  # how long drain waits for stopped socket-bound jobs (see drain)


class ReplicaState(enum.StrEnum):
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class Replica:
    id: int
    runtime: Adapter
    slots: int
    state: ReplicaState = ReplicaState.READY
    inflight: int = 0
    served: int = 0
    last_error: str | None = None

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


class WaitingLine:
    """The live queued jobs in arrival order, and their 1-based places in line.

    Every queued SSE stream asks for its place about once a second; counting the jobs
    ahead on each ask made 1000 waiting clients cost O(n^2) a second on the hub. Places
    are computed in one pass, and only again after the line changed.
    """

    def __init__(self) -> None:
        self._jobs: dict[Job, None] = {}  # insertion order is arrival order
        self._places: dict[Job, int] | None = None

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: Job) -> None:
        self._jobs[job] = None
        self._places = None

    def discard(self, job: Job) -> bool:
        """Take `job` out of line; False when it was not in it (any more)."""
        if job not in self._jobs:
            return False
        del self._jobs[job]
        self._places = None
        return True

    def take_all(self) -> list[Job]:
        jobs, self._jobs, self._places = list(self._jobs), {}, None
        return jobs

    def place(self, job: Job) -> int:
        if self._places is None:
            self._places = {queued: i for i, queued in enumerate(self._jobs, 1)}
        return self._places.get(job, 0)


class Executor:
    """Queue, replica choice and cancellation for one loaded model."""

    def __init__(self, model: str, replicas: list[Replica], max_queue: int) -> None:
        self.model = model
        self.replicas = replicas
        self.max_queue = max_queue
        # The FIFO the dispatcher takes from. A job cancelled while queued leaves it at once
        # (see cancel), so clients that connect and drop cannot grow it past max_queue;
        # the bound, the depth and places in line are kept on `_line`.
        self._queue: queue.Queue[Any] = queue.Queue()
        self._line = WaitingLine()
        self._cond = threading.Condition()
        self._running: set[Job] = set()
        self._admitting = True
        self._stopped = False
        self._rr = 0
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name=f"dispatch-{model}", daemon=True)
        self._dispatcher.start()

    # -- admission -------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Enqueue `job`; raises QueueFull (429) or ModelUnloading, never blocks."""
        with self._cond:
            if not self._admitting:
                raise ModelUnloading(f"model '{self.model}' is unloading", model=self.model)
            if len(self._line) >= self.max_queue:
                raise QueueFull(
                    f"queue of model '{self.model}' is full ({self.max_queue} waiting)",
                    model=self.model,
                )
            self._line.add(job)
            self._queue.put(job)

    def position(self, job: Job) -> int:
        """1-based place of a queued job in line, 0 once it left the queue."""
        with self._cond:
            return self._line.place(job)

    def cancel(self, job: Job, error: PoolError | None = None) -> None:
        """Drop a queued job, or stop a running one at its next token.

        `error` is what the job's consumer sees; None means the client is gone and
        nobody listens.
        """
        with self._cond:
            queued = self._line.discard(job)
        if queued:
            self._drop_from_fifo(job)
            job.status = JobStatus.CANCELLED
            if error is not None:
                job.fail(error)
            return
        if job.status is JobStatus.RUNNING:
            job.cancel_error = error
            job.cancel_requested = True
            if job.stopper is not None:
                job.stopper.stop()

    def _drop_from_fifo(self, job: Job) -> None:
        # queue.Queue has no remove(); its deque and mutex are what its own methods use.
        with self._queue.mutex:
            try:
                self._queue.queue.remove(job)
            except ValueError:
                pass  # the dispatcher took it a moment ago and will skip it

    # -- observation -----------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._line)

    @property
    def inflight(self) -> int:
        return sum(r.inflight for r in self.replicas)

    def idle(self) -> bool:
        return self.queue_depth == 0 and not self._running

    # -- dispatch --------------------------------------------------------------------
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
            with self._cond:
                while not self._stopped and not any(r.free for r in self.replicas):
                    if not any(r.state is ReplicaState.READY for r in self.replicas):
                        break  # no replica will ever free up: fail jobs as they come
                    self._cond.wait()
                if self._stopped:
                    return
            job = self._queue.get()
            if job is _STOP:
                return
            with self._cond:
                if not self._line.discard(job):
                    continue  # failed while queued (no replica left, unload)
                replica = self._pick()
                if replica is None:
                    job.fail(ModelFailed(f"no replica of '{self.model}' is alive", model=self.model))
                    continue
                replica.inflight += 1
                job.status = JobStatus.RUNNING
                job.replica = replica.id
                job.times.started = time.monotonic()
                self._running.add(job)
            spawn(self._run, job, replica)

    def _run(self, job: Job, replica: Replica) -> None:
        final: Final | None = None
        try:
            job.times.backend_started = time.monotonic()
            stream = drive(lambda: replica.runtime.generate(job.request), replica.runtime.blocking)
            job.stopper = stream
            if job.cancel_requested:
                stream.stop()
            for chunk in stream:
                if chunk.final is not None:
                    final = chunk.final
                if chunk.text or chunk.reasoning:
                    job.emit_delta(chunk.text, chunk.reasoning)
            job.times.backend_finished = time.monotonic()
            if job.cancel_requested:
                job.status = JobStatus.CANCELLED
                job.times.finished = time.monotonic()
                if job.cancel_error is not None:
                    job.events.put(Failed(job.cancel_error))
            else:
                job.complete(final)
        except PoolError as exc:
            job.fail(exc)
        except Exception as exc:
            log.exception("backend of '%s' raised", self.model)
            job.fail(BackendError(f"{type(exc).__name__}: {exc}", model=self.model))
        finally:
            with self._cond:
                replica.inflight -= 1
                replica.served += 1
                self._running.discard(job)
                self._cond.notify_all()

    def replica_failed(self, replica_id: int, message: str) -> bool:
        """Mark a replica failed and end its running jobs with backend_error.

        Returns whether any replica is still ready. Queued jobs stay queued for the
        survivors, or are failed by the dispatcher when none is left.
        """
        error = BackendError(message, model=self.model)
        with self._cond:
            replica = next(r for r in self.replicas if r.id == replica_id)
            replica.state = ReplicaState.FAILED
            replica.last_error = message
            for job in self._running:
                if job.replica == replica_id:
                    job.cancel_error = error
                    job.cancel_requested = True
                    if job.stopper is not None:
                        job.stopper.stop()
            survivors = any(r.state is ReplicaState.READY for r in self.replicas)
            if not survivors:
                for job in self._line.take_all():
                    job.status = JobStatus.CANCELLED
                    job.fail(ModelFailed(message, model=self.model))
            self._cond.notify_all()
            return survivors

    # -- shutdown --------------------------------------------------------------------
    def drain(self, timeout_s: float) -> None:
        """Stop admitting, fail queued jobs, let running ones finish for `timeout_s`,
        then stop the rest at their next token. Blocks (cooperatively) until idle."""
        unloading = ModelUnloading(f"model '{self.model}' is unloading", model=self.model)
        with self._cond:
            self._admitting = False
            queued = self._line.take_all()
        for job in queued:
            job.status = JobStatus.CANCELLED
            job.fail(unloading)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._running and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            for job in list(self._running):
                job.cancel_error = unloading
                job.cancel_requested = True
                if job.stopper is not None:
                    job.stopper.stop()
            # A stopped in-process job ends at its next token, and its runtime must not be
            # closed under it: wait. A socket-bound job on a stalled upstream only sees the
            # stop at its next chunk: after a grace, return, and closing the runtime (its
            # child or connection) breaks the socket it waits on.
            grace_end = time.monotonic() + STOP_GRACE_S
            while self._running:
                if time.monotonic() >= grace_end and not any(r.runtime.blocking for r in self.replicas):
                    log.warning(
                        "%s: %d job(s) still waiting on their runtime; closing it",
                        self.model,
                        len(self._running),
                    )
                    break
                self._cond.wait(0.2)
            self._stopped = True
            self._cond.notify_all()
        self._queue.put(_STOP)
        for replica in self.replicas:
            replica.state = ReplicaState.STOPPED
