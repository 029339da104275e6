"""The serving pipeline: every API's request goes the same way.

    Api.to_request(body) -> Pool.submit -> Job -> answer (JSON) | stream (SSE text)

What it owns, once for every API:
- admission through `Pool.submit`, with the `allow_remote` gate read one way (the body's
  `allow_remote: true` or the `X-LLM-Pool-Allow-Remote: true` header);
- the wait for a JSON answer, and the stream, both on the calling greenlet only;
- a client that hangs up: a read watcher on its socket wakes the waiter with ClientGone at
  once (queued: out of line; running: stopped at the next token), and a stream that is
  closed (GeneratorExit at the next write) cancels its job too;
- the comments of a quiet stream: where the job is (`: queued N`, `: loading M 3.1s`,
  `: waiting for memory ...`, asked with one `Pool.where`), else `: working`;
- a bug while streaming: logged, and the stream ends with the API's error (the status
  line is long gone), never an exception into the server.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from llmpool.errors import ClientGone
from llmpool.greenbridge import ChannelTimeout, watch_hangup
from llmpool.job import Delta, Done, Event, Failed, Job, JobStatus
from llmpool.pool import Pool
from llmpool.serving.api import Api, Call, Encoder
from llmpool.serving.sse import comment

QUIET_COMMENT_INTERVAL_S = 1.0
log = logging.getLogger("llmpool.http")


class Pipeline:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def submit(
        self, api: Api, body: dict[str, Any], *, remote_header: bool = False, started: float | None = None
    ) -> Call:
        """Map `body` and admit it; every refusal happens here, before the job is queued."""
        request = api.to_request(body, self.pool)
        allow_remote = bool(body["allow_remote"]) or remote_header
        job = self.pool.submit(body["model"], request, allow_remote=allow_remote, pool_started=started)
        return Call(api, body, request, job)

    def answer(self, call: Call, fileno: int | None) -> dict[str, Any]:
        """The JSON answer; raises the job's error. `fileno`: the client's socket, watched."""
        return call.api.answer(call, self.wait(call.job, fileno))

    def wait(self, job: Job, fileno: int | None) -> Done:
        """Suspend the caller until `job` ends: its Done, or its error raised. If the wait
        ends any other way (a hang-up, the worker stopping the request), the job is
        cancelled."""
        with self._watched(job, fileno):
            while True:
                event = job.events.get()
                if isinstance(event, Done):
                    return event
                if isinstance(event, Failed):
                    raise event.error

    @contextlib.contextmanager
    def _watched(self, job: Job, fileno: int | None) -> Iterator[None]:
        """While inside: the client hanging up wakes the job's waiter with ClientGone (a
        read watcher on its socket, on the hub); on the way out, a job that has not
        ended is cancelled, however the inside ended."""
        stop_watching = watch_hangup(fileno, _hung_up(job))
        try:
            yield
        finally:
            stop_watching()
            if not job.finished:
                self.pool.cancel(job)

    def stream(self, call: Call, fileno: int | None) -> Iterator[str]:
        """The stream's text; never raises once started, cancels the job if the client goes."""
        encoder = call.api.encoder(call)
        return self._guarded(call.job, self._encode(call.job, encoder), encoder, fileno)

    def _guarded(self, job: Job, body: Iterator[str], encoder: Encoder, fileno: int | None) -> Iterator[str]:
        with self._watched(job, fileno):
            try:
                yield from body
            except Exception:
                log.exception("stream of %s broke", job.id)
                yield encoder.broken()

    def _encode(self, job: Job, encoder: Encoder) -> Iterator[str]:
        """The stream's text, one piece per burst of events: every event that is ready
        when the greenlet wakes is encoded and written at once, so a fast upstream costs
        one socket write per wake-up instead of one per token (bench/README.md, relay)."""
        if opening := "".join(encoder.open()):
            yield opening
        for burst in self.bursts(job):
            text: list[str] = []
            for event in burst:
                if isinstance(event, Delta):
                    text.extend(encoder.delta(event))
                elif isinstance(event, str):
                    text.append(event)
                elif isinstance(event, Done):
                    text.extend(encoder.done(event))
                else:
                    text.append(encoder.failed(event.error))
            if text:
                yield "".join(text)

    def bursts(self, job: Job) -> Iterator[list[Event | str]]:
        """The job's events in order, as lists of those ready at once, ending with its
        Done or Failed; between events more than a second apart, a comment line (a
        `str`) saying where the job is."""
        if job.status is JobStatus.QUEUED and (note := self.where_comment(job)):
            yield [note]
        events = job.events
        while True:
            try:
                burst: list[Event | str] = [events.get(timeout=QUIET_COMMENT_INTERVAL_S)]
            except ChannelTimeout:
                if job.status is JobStatus.QUEUED and (note := self.where_comment(job)):
                    yield [note]
                else:
                    yield [comment("working")]  # a long prefill: keep proxies from timing out
                continue
            burst.extend(events.take_ready())
            for end, event in enumerate(burst):
                if isinstance(event, Done | Failed):
                    yield burst[: end + 1]  # nothing is put after the end
                    return
            yield burst

    def where_comment(self, job: Job) -> str | None:
        """A queued job's place as a comment line: its model's load in progress (with how
        long the last load took, as an estimate), its place among loads waiting for
        memory, or its place in the model's queue; None when it is about to start."""
        where = self.pool.where(job)
        if where is None:
            return None
        if where.kind == "queued":
            return comment(f"queued {where.place}")
        estimate = f" (last load took {where.estimate_s:.1f}s)" if where.estimate_s is not None else ""
        if where.kind == "loading":
            return comment(f"loading {where.model} {where.elapsed_s:.1f}s{estimate}")
        return comment(f"waiting for memory {where.model} {where.elapsed_s:.1f}s, place {where.place}")


def _hung_up(job: Job) -> Callable[[], None]:
    """What a hang-up does to a job's waiter: wakes it with ClientGone (on the hub)."""

    def hung_up() -> None:
        job.events.put(Failed(ClientGone("the client closed the connection", model=job.model)))

    return hung_up
