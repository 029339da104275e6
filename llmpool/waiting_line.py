"""One model's waiting line: the jobs not started yet, in arrival order.

There is one line per model for the model's whole life, loaded or not (`ModelEntry.line`).
While the model serves, its executor's dispatcher takes jobs from the head; while it is
unloaded, a load on demand is simply a non-empty line that the placer sees. So admission,
`max_queue`, places in line and the cancel of a queued job are written once, here.

It is a `queue.Queue` whose storage (through the `_init/_qsize/_put/_get` hooks its
subclasses override, like `PriorityQueue`) is an insertion-ordered dict, so a job can also
leave from the middle. `changed` is a condition on the queue's own mutex: the executor
uses it as its lock, so the line, the replicas' slots and the running jobs move together
under one lock and the dispatcher waits for "a job and a slot" on one condition.

Every queued SSE stream asks for its place about once a second; counting the jobs ahead
on each ask made 1000 waiting clients cost O(n^2) a second. Places are computed in one
pass, and only again after the line changed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from llmpool.errors import PoolError, QueueFull
from llmpool.job import Job

R = TypeVar("R")


class WaitingLine(queue.Queue[Any]):
    def __init__(self, model: str) -> None:
        super().__init__()  # unbounded: `offer` applies the model's max_queue with its message
        self.model = model
        self.changed = threading.Condition(self.mutex)
        self.closed: PoolError | None = None  # set once: removed from the settings, or shutdown

    # -- queue.Queue storage hooks (called with the mutex held) -------------------------
    def _init(self, maxsize: int) -> None:
        self._jobs: dict[Job, None] = {}
        self._places: dict[Job, int] | None = None

    def _qsize(self) -> int:
        return len(self._jobs)

    def _put(self, item: Job) -> None:
        self._jobs[item] = None
        self._places = None

    def _get(self) -> Job:
        item = next(iter(self._jobs))
        del self._jobs[item]
        self._places = None
        return item

    # -- admission (any thread or greenlet; never waits but for the mutex) ----------------
    def offer(
        self,
        job: Job,
        max_queue: int,
        refusal: Callable[[], PoolError | None],
        take_now: Callable[[Job], R | None] | None = None,
    ) -> R | None:
        """Put `job` at the end of the line. Raises what `refusal()` returns (called under
        the mutex, so it is atomic with whoever changes what it reads under it: the drain
        of an unload), the reason the line closed, or QueueFull past `max_queue`.

        `take_now(job)`, under the mutex, may take the job straight out of line again
        (its executor starts it at once); what it returns is returned, and nobody
        waiting on the line is woken, since the line is as it was."""
        with self.mutex:
            error = self.closed or refusal()
            if error is not None:
                raise error
            if len(self._jobs) >= max_queue:
                raise QueueFull(
                    f"queue of model '{self.model}' is full ({max_queue} waiting)", model=self.model
                )
            self._put(job)
            if take_now is not None and (taken := take_now(job)) is not None:
                return taken
            self.changed.notify_all()
            return None

    def close(self, error: PoolError) -> list[Job]:
        """Refuse every later job with `error`; returns the queued ones, taken out of line
        (the caller fails them)."""
        with self.mutex:
            self.closed = error
            self.changed.notify_all()
            return self.take_all_locked()

    # -- leaving the line ------------------------------------------------------------------
    def remove(self, job: Job) -> bool:
        """Take `job` out of line; False when it is not in it (any more)."""
        with self.mutex:
            if job not in self._jobs:
                return False
            del self._jobs[job]
            self._places = None
            self.changed.notify_all()
            return True

    def take_all(self) -> list[Job]:
        with self.mutex:
            return self.take_all_locked()

    # -- the executor's side (the mutex held by the caller, through `changed`) ------------
    def take_all_locked(self) -> list[Job]:
        jobs, self._jobs, self._places = list(self._jobs), {}, None
        return jobs

    def length_locked(self) -> int:
        return len(self._jobs)

    def head(self) -> Job | None:
        return next(iter(self._jobs), None)

    def pop_head(self) -> Job:
        return self._get()

    # -- observation -----------------------------------------------------------------------
    def place(self, job: Job) -> int:
        """1-based place in line, 0 when not in it."""
        with self.mutex:
            if self._places is None:
                self._places = {queued: i for i, queued in enumerate(self._jobs, 1)}
            return self._places.get(job, 0)

    def oldest(self) -> float | None:
        """When the job at the head was enqueued (monotonic), None when the line is empty."""
        with self.mutex:
            first = self.head()
            return None if first is None else first.times.enqueued
