"""A job: one request's journey through a model's queue and onto a replica.

The scheduler (the executor, on real threads or hub greenlets) produces events into the
job's `Channel`; the HTTP layer consumes them on the request's greenlet. The channel is
made where the job is made, on the request's side, which fixes how the consumer waits.

Status has one writer: the executor, under its lock. Every change goes through `_move`,
which checks the edge against `_NEXT`: a terminal status is never overwritten.

    QUEUED -> RUNNING | FAILED | CANCELLED
    RUNNING -> DONE | FAILED | CANCELLED

FAILED means the consumer was told why (a `Failed` event); CANCELLED means nobody was
listening (the client left) and no event is sent.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field

from llmpool.errors import PoolError
from llmpool.generation import Final, GenerationRequest, ToolCall, ToolCallDelta
from llmpool.greenbridge import Channel, Home
from llmpool.metrics import JobTimes, build_metrics


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


_NEXT: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED}),
}


class IllegalJobTransition(RuntimeError):
    """A scheduler bug: a status change the table does not allow."""


@dataclass(slots=True)  # not frozen: made per token, and frozen's __init__ costs 3x
class Delta:
    """A piece of the answer, as the job's consumer gets it; never changed once made."""

    text: str = ""
    reasoning: str = ""
    tool_call: ToolCallDelta | None = None


@dataclass(frozen=True)
class Done:
    output_text: str
    reasoning_text: str | None
    finish_reason: str  # "stop" | "length" | "tool_calls"
    final: Final | None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Failed:
    error: PoolError


Event = Delta | Done | Failed


@dataclass(eq=False)  # identity semantics: jobs live in sets and in the waiting line
class Job:
    model: str
    request: GenerationRequest
    times: JobTimes
    id: str = field(default_factory=lambda: "resp_" + secrets.token_hex(16))
    created: int = field(default_factory=lambda: int(time.time()))
    status: JobStatus = JobStatus.QUEUED
    replica: int | None = None
    events: Channel[Event] = field(default_factory=Channel)
    # Where the request's greenlet lives: socket-bound runtimes run the job there.
    home: Home = field(default_factory=Home)
    # Set once, by the first stop request: the running job ends at its next chunk, and
    # its consumer is told `stop_error` (None: nobody is listening).
    stop_requested: bool = False
    stop_error: PoolError | None = None
    # How it ended, for the request's log line and metrics (set with the final status).
    error: PoolError | None = None
    final: Final | None = None
    _text: list[str] = field(default_factory=list)
    _reasoning: list[str] = field(default_factory=list)
    _calls: dict[int, list[str]] = field(default_factory=dict)  # index -> [id, name, arguments...]

    @property
    def finished(self) -> bool:
        return self.status not in _NEXT

    def _move(self, new: JobStatus) -> None:
        if new not in _NEXT.get(self.status, ()):
            raise IllegalJobTransition(f"job {self.id}: {self.status.value} -> {new.value}")
        self.status = new
        if new is not JobStatus.RUNNING:
            self.times.finished = time.monotonic()

    # -- the executor's side (under its lock) ----------------------------------------
    def start(self, replica: int) -> None:
        self._move(JobStatus.RUNNING)
        self.replica = replica
        self.times.started = time.monotonic()

    def request_stop(self, error: PoolError | None) -> None:
        """Ask a running job to end at its next chunk; the first reason given wins."""
        if not self.stop_requested:
            self.stop_error = error
            self.stop_requested = True

    def drop(self, error: PoolError | None) -> None:
        """End a job that never ran (or was stopped): tell the consumer `error`, if any."""
        if error is None:
            self._move(JobStatus.CANCELLED)
        else:
            self._move(JobStatus.FAILED)
            self.error = error
            self.events.put(Failed(error))

    def finish(self, final: Final | None, error: PoolError | None) -> None:
        """End a running job: stopped, failed, or done, in that order of precedence."""
        if self.stop_requested:
            self.drop(self.stop_error)
        elif error is not None:
            self.drop(error)
        else:
            self._move(JobStatus.DONE)
            self.final = final
            reasoning = "".join(self._reasoning) or None
            calls = self.tool_calls
            finish = "tool_calls" if calls else final.finish_reason if final else "stop"
            self.events.put(Done("".join(self._text), reasoning, finish, final, calls))

    # -- the runner's side -----------------------------------------------------------
    def emit_delta(self, text: str, reasoning: str) -> None:
        if text:
            self._text.append(text)
        if reasoning:
            self._reasoning.append(reasoning)
        self.events.put(Delta(text=text, reasoning=reasoning))

    @property
    def output_text(self) -> str:
        return "".join(self._text)

    def emit_tool_call(self, delta: ToolCallDelta) -> None:
        call = self._calls.setdefault(delta.index, ["", ""])
        if delta.id:
            call[0] = delta.id
        if delta.name:
            call[1] = delta.name
        call.append(delta.arguments)
        self.events.put(Delta(tool_call=delta))

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(call[0], call[1], "".join(call[2:])) for _, call in sorted(self._calls.items()))

    @property
    def outcome(self) -> str:
        """`ok`, the error code it failed with, or `cancelled` (also while a stop it was
        asked for is still on its way)."""
        if self.status is JobStatus.DONE:
            return "ok"
        if self.status is JobStatus.FAILED and self.error is not None:
            return self.error.code
        return "cancelled"

    def metrics(self, final: Final | None) -> dict[str, float | int | None]:
        return build_metrics(self.times, final, self.replica, time.monotonic())
