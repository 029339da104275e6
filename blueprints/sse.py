"""Server-sent events over a job's event stream.

Shared by every streaming endpoint: `job_events` walks a job's events and fills the
silences with SSE comment lines (`: queued N` each second while queued, `: working` during
a long prefill), and `cancel_on_close` turns a body generator into one that never raises
once started and cancels the job when the client goes away (GeneratorExit at the next
write closes it).

POST /v1/responses framing (SPEC §3, §10), in order: response.created and
response.in_progress, comments while waiting, for each output item its
response.output_item.added and response.content_part.added before its first delta, the
reasoning and output deltas as the backend produces them, the items' closing events
(response.*_text.done, response.content_part.done, response.output_item.done),
response.metrics, response.completed; or response.failed when the job fails after the
stream began. Every data object carries OpenAI's `type` and `sequence_number` besides the
pool's own fields (`blueprints.responses_shape.ResponseEvents`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, request

from blueprints.responses_shape import ResponseEvents, usage
from llmpool.errors import ClientGone
from llmpool.greenbridge import ChannelTimeout, watch_hangup
from llmpool.job import Delta, Done, Event, Failed, Job, JobStatus
from llmpool.pool import Pool

QUEUED_COMMENT_INTERVAL_S = 1.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
log = logging.getLogger("llmpool.http")


def sse_response(body: Iterator[str]) -> Response:
    return Response(body, mimetype="text/event-stream", headers=SSE_HEADERS)


def data_line(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\n{data_line(data)}"


def job_events(pool: Pool, job: Job) -> Iterator[Event | str]:
    """The job's events in order, ending after its Done or Failed.

    Between events that are more than a second apart it yields a ready-to-write SSE
    comment line (a `str`): the queue position while the job waits, else `: working`, so
    proxies do not time out and the client sees where it stands. Blocks only the calling
    greenlet/thread.
    """
    if job.status is JobStatus.QUEUED and (note := waiting_comment(pool, job)):
        yield note
    while True:
        try:
            event = job.events.get(timeout=QUEUED_COMMENT_INTERVAL_S)
        except ChannelTimeout:
            if job.status is JobStatus.QUEUED and (note := waiting_comment(pool, job)):
                yield note
            else:
                yield ": working\n\n"  # long prefill: keep proxies from timing out
            continue
        yield event
        if isinstance(event, Done | Failed):
            return


def waiting_comment(pool: Pool, job: Job) -> str | None:
    """The comment line for a queued job: its model's load in progress (with how long the
    last load took, as an estimate), its place among loads waiting for memory, or its
    place in the model's queue; None when it has none (it is about to start)."""
    waiting = pool.waiting(job)
    if waiting is None:
        place = pool.position(job)
        return f": queued {place}\n\n" if place else None
    estimate = f" (last load took {waiting.estimate_s:.1f}s)" if waiting.estimate_s is not None else ""
    if waiting.kind == "loading":
        return f": loading {waiting.model} {waiting.elapsed_s:.1f}s{estimate}\n\n"
    return f": waiting for memory {waiting.model} {waiting.elapsed_s:.1f}s, place {waiting.place}\n\n"


def client_socket() -> int | None:
    """The request's client socket under gunicorn (None elsewhere, e.g. the test client).
    Read in the view: a streamed body runs after the request context is gone."""
    sock = request.environ.get("gunicorn.socket")
    try:
        return int(sock.fileno()) if sock is not None else None
    except (OSError, ValueError):
        return None


def on_hangup(job: Job) -> Callable[[], None]:
    """What a hang-up does to a job's waiter: wakes it with ClientGone (on the hub)."""

    def hung_up() -> None:
        job.events.put(Failed(ClientGone("the client closed the connection", model=job.model)))

    return hung_up


def cancel_on_close(
    pool: Pool, job: Job, body: Iterator[str], on_bug: Callable[[], str], fileno: int | None
) -> Iterator[str]:
    """`body`, except that a bug inside it ends the stream with `on_bug()` (logged, never
    raised: the status line is long gone), and that the client leaving cancels the job:
    noticed at once through a read watcher on `fileno` while the job is quiet (queued, or
    in a long prefill), else at the next write (GeneratorExit)."""
    stop_watching = watch_hangup(fileno, on_hangup(job))
    try:
        yield from body
    except Exception:
        log.exception("stream of %s broke", job.id)
        yield on_bug()
    finally:
        stop_watching()
        if not job.finished:
            pool.cancel(job)


def completed_payload(job: Job, done: Done) -> dict[str, Any]:
    """The pool's own top-level fields of a finished response (JSON and stream)."""
    return {
        "id": job.id,
        "output_text": done.output_text,
        "reasoning_text": done.reasoning_text,
        "finish_reason": done.finish_reason,
        "usage": usage(done.final),
    }


def stream_job(pool: Pool, job: Job, echo: dict[str, Any] | None = None) -> Iterator[str]:
    """The /v1/responses SSE body for `job`; never raises once started. `echo`: request
    fields the response objects repeat (`blueprints.responses_shape.response_object`)."""
    events = ResponseEvents(job, echo or {})

    def bug() -> str:
        return frame(*events.failed("internal_error", "internal server error"))

    return cancel_on_close(pool, job, _events(pool, job, events), bug, client_socket())


def _events(pool: Pool, job: Job, events: ResponseEvents) -> Iterator[str]:
    for opened in events.open():
        yield frame(*opened)
    for event in job_events(pool, job):
        if isinstance(event, str):
            yield event
        elif isinstance(event, Delta):
            for delta in events.delta(event):
                yield frame(*delta)
        elif isinstance(event, Done):
            closing, output = events.close(event)
            for closed in closing:
                yield frame(*closed)
            yield frame(*events.event("response.metrics", id=job.id, metrics=job.metrics(event.final)))
            yield frame(*events.completed(event, output, completed_payload(job, event)))
        elif isinstance(event, Failed):
            yield frame(*events.failed(event.error.code, event.error.message))
