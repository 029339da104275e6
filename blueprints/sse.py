"""Server-sent events for POST /v1/responses (SPEC §3).

Order: response.created, `: queued N` comments each second while waiting, reasoning and
output deltas as the backend produces them, response.metrics, response.completed; or
response.failed when the job fails after the stream began. A client that goes away closes
this generator (GeneratorExit at the next write), which cancels the job.
"""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Iterator
from typing import Any

from llmpool.job import Delta, Done, Failed, Job, JobStatus
from llmpool.pool import Pool

QUEUED_COMMENT_INTERVAL_S = 1.0
log = logging.getLogger("llmpool.http")


def frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def completed_payload(job: Job, done: Done) -> dict[str, Any]:
    final = done.final
    return {
        "id": job.id,
        "output_text": done.output_text,
        "reasoning_text": done.reasoning_text,
        "finish_reason": done.finish_reason,
        "usage": {
            "input_tokens": final.prompt_tokens if final else None,
            "output_tokens": final.output_tokens if final else None,
        },
    }


def stream_job(pool: Pool, job: Job) -> Iterator[str]:
    """The SSE body for `job`; never raises once started (a bug becomes response.failed)."""
    try:
        yield from _events(pool, job)
    except Exception:
        log.exception("stream of %s broke", job.id)
        error = {"code": "internal_error", "message": "internal server error"}
        yield frame("response.failed", {"id": job.id, "error": error})
    finally:
        if not job.finished:
            pool.cancel(job)


def _events(pool: Pool, job: Job) -> Iterator[str]:
    yield frame("response.created", {"id": job.id, "model": job.model})
    if job.status is JobStatus.QUEUED and (place := pool.position(job)):
        yield f": queued {place}\n\n"
    while True:
        try:
            event = job.events.get(timeout=QUEUED_COMMENT_INTERVAL_S)
        except queue.Empty:
            if job.status is JobStatus.QUEUED and (place := pool.position(job)):
                yield f": queued {place}\n\n"
            else:
                yield ": working\n\n"  # long prefill: keep proxies from timing out
            continue
        if isinstance(event, Delta):
            if event.reasoning:
                yield frame("response.reasoning_text.delta", {"id": job.id, "delta": event.reasoning})
            if event.text:
                yield frame("response.output_text.delta", {"id": job.id, "delta": event.text})
        elif isinstance(event, Done):
            yield frame("response.metrics", {"id": job.id, "metrics": job.metrics(event.final)})
            yield frame("response.completed", completed_payload(job, event))
            return
        elif isinstance(event, Failed):
            error = {"code": event.error.code, "message": event.error.message}
            yield frame("response.failed", {"id": job.id, "error": error})
            return
