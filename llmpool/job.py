"""A job: one request's journey through a model's queue and onto a replica.

The scheduler produces events into the job; the HTTP layer consumes them. Both sides are
cooperative threads (greenlets under gevent), so a `queue.Queue` is the right channel
here; only the runtime itself runs on a real OS thread (see greenbridge).
"""

from __future__ import annotations

import enum
import queue
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from llmpool.errors import PoolError
from llmpool.generation import Final, GenerationRequest
from llmpool.metrics import JobTimes, build_metrics


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Delta:
    text: str = ""
    reasoning: str = ""


@dataclass(frozen=True)
class Done:
    output_text: str
    reasoning_text: str | None
    finish_reason: str
    final: Final | None


@dataclass(frozen=True)
class Failed:
    error: PoolError


Event = Delta | Done | Failed


@dataclass(eq=False)  # identity semantics: jobs live in sets and are removed from queues
class Job:
    model: str
    request: GenerationRequest
    times: JobTimes
    id: str = field(default_factory=lambda: "resp_" + uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
    status: JobStatus = JobStatus.QUEUED
    replica: int | None = None
    events: queue.Queue[Event] = field(default_factory=queue.Queue)
    # Set by the executor while the job runs: stops the runtime at the next token.
    stopper: Any = None
    cancel_requested: bool = False
    # What the consumer is told when a cancel stops the job; None: nobody is listening.
    cancel_error: PoolError | None = None
    _text: list[str] = field(default_factory=list)
    _reasoning: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)

    def emit_delta(self, text: str, reasoning: str) -> None:
        if text:
            self._text.append(text)
        if reasoning:
            self._reasoning.append(reasoning)
        self.events.put(Delta(text=text, reasoning=reasoning))

    def complete(self, final: Final | None) -> None:
        self.status = JobStatus.DONE
        self.times.finished = time.monotonic()
        reasoning = "".join(self._reasoning) or None
        finish = final.finish_reason if final else "stop"
        self.events.put(Done("".join(self._text), reasoning, finish, final))

    def fail(self, error: PoolError) -> None:
        self.status = JobStatus.FAILED
        self.times.finished = time.monotonic()
        self.events.put(Failed(error))

    def metrics(self, final: Final | None) -> dict[str, float | int | None]:
        return build_metrics(self.times, final, self.replica, time.monotonic())
