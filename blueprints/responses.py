"""Public inference API: POST /v1/responses, GET /v1/models, health probes."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from blueprints.body import json_body
from blueprints.observe import note_job, note_model
from blueprints.responses_request import to_generation_request
from blueprints.responses_shape import output_items, response_object, status_of
from blueprints.schemas import ResponsesRequestSchema
from blueprints.sse import client_socket, completed_payload, on_hangup, sse_response, stream_job
from llmpool.greenbridge import watch_hangup
from llmpool.job import Done, Failed, Job
from llmpool.pool import Pool

bp = Blueprint("responses", __name__)
# One instance each: building a schema deep-copies its fields (measurable per request).
RESPONSES_SCHEMA = ResponsesRequestSchema()


def pool() -> Pool:
    return current_app.extensions["llmpool"]


def echo_fields(body: dict[str, Any], request: Any) -> dict[str, Any]:
    """Request fields OpenAI's response object repeats that the job does not carry."""
    reasoning = body["reasoning"] or {}
    return {
        "metadata": body["metadata"] or {},
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "user": body["user"],
        "thinking": request.thinking,
    }


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
    generation = to_generation_request(body, p)
    job = p.submit(body["model"], generation, allow_remote=body["allow_remote"], pool_started=started)
    note_job(job)
    echo = echo_fields(body, generation)
    if body["stream"]:
        return sse_response(stream_job(p, job, echo))
    done = wait_for_result(p, job)
    # OpenAI's response object, with the pool's own fields on top (they agree where both
    # have a key: id, model, usage); `output[0]` stays the legacy item (responses_shape).
    payload = response_object(
        job,
        echo,
        status_of(done.finish_reason),
        output_items(job, done),
        final=done.final,
        finish_reason=done.finish_reason,
    )
    payload.update(completed_payload(job, done), metrics=job.metrics(done.final))
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
