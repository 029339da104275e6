"""Public inference API: POST /v1/responses, GET /v1/models, health probes."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from blueprints.body import json_body
from blueprints.observe import note_job, note_model
from blueprints.schemas import ResponsesRequestSchema
from blueprints.sse import client_socket, completed_payload, on_hangup, sse_response, stream_job
from llmpool.generation import GenerationRequest, Message
from llmpool.greenbridge import watch_hangup
from llmpool.job import Done, Failed, Job
from llmpool.pool import Pool

bp = Blueprint("responses", __name__)
# One instance each: building a schema deep-copies its fields (measurable per request).
RESPONSES_SCHEMA = ResponsesRequestSchema()


def pool() -> Pool:
    return current_app.extensions["llmpool"]


def to_generation_request(body: dict[str, Any], p: Pool) -> GenerationRequest:
    messages = body["messages"]
    return GenerationRequest(
        input=body["input"],
        messages=None if messages is None else tuple(Message(m["role"], m["content"]) for m in messages),
        instructions=body["instructions"],
        source_lang_code=body["source_lang_code"],
        target_lang_code=body["target_lang_code"],
        thinking=body["thinking"],
        decoding=p.settings.decoding.merged(body["decoding"]),
    )


def wait_for_result(p: Pool, job: Job) -> Done:
    """Suspend this greenlet until `job` ends: its Done, or its error raised.

    A client that hangs up meanwhile cancels its job at once (queued: out of line;
    running: stopped at the next token) instead of holding a slot until max_tokens: a
    read watcher on its socket wakes this wait. If the wait is interrupted (the worker is
    stopping the request), the job is cancelled too.
    """
    stop_watching = watch_hangup(client_socket(), on_hangup(job))
    try:
        while True:
            event = job.events.get()
            if isinstance(event, Done):
                return event
            if isinstance(event, Failed):
                raise event.error
    finally:
        stop_watching()
        if not job.finished:
            p.cancel(job)


@bp.post("/v1/responses")
def create_response() -> Response:
    started = time.monotonic()
    body = RESPONSES_SCHEMA.load(json_body())
    note_model(body["model"])
    p = pool()
    job = p.submit(
        body["model"],
        to_generation_request(body, p),
        allow_remote=body["allow_remote"],
        pool_started=started,
    )
    note_job(job)
    if body["stream"]:
        return sse_response(stream_job(p, job))
    done = wait_for_result(p, job)
    payload = completed_payload(job, done)
    payload.update(
        object="response",
        created=job.created,
        model=job.model,
        output=[{"type": "output_text", "text": done.output_text}],
        metrics=job.metrics(done.final),
    )
    return jsonify(payload)


@bp.get("/v1/models")
def list_models() -> Response:
    p = pool()
    ids = p.loaded_ids()
    # OpenAI's list also names the models a request would load (load_on_demand), marked
    # `loaded: false` (loaded entries keep their old shape); `models` stays the loaded ones.
    loadable = sorted(n for n, e in p.models.items() if e.spec.load_on_demand and n not in ids)
    data: list[dict[str, Any]] = [{"id": i, "object": "model", "owned_by": "llm-pool"} for i in ids]
    data += [{"id": i, "object": "model", "owned_by": "llm-pool", "loaded": False} for i in loadable]
    return jsonify({"object": "list", "data": data, "models": ids})


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    p = pool()
    states = {name: entry.state.value for name, entry in p.models.items()}
    response = jsonify({"ready": p.ready, "models": states})
    response.status_code = 200 if p.ready else 503
    return response
