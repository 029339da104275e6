"""The Flask side of the serving pipeline (`llmpool.serving`): a route of an inference API
is `serve(api, body)`, the body already loaded by the route's declared schema
(`blueprints.contract`). Here: the request log's notes, the allow_remote header, the
client's socket, and the answer: a JSON body for the route's response schema to dump, or
an SSE response. Everything else is the pipeline's."""

from __future__ import annotations

import time
from typing import Any

from flask import Response, g, request

from blueprints.context import pipeline
from blueprints.observe import note_job, note_model
from llmpool.serving.api import Api

ALLOW_REMOTE_HEADER = "X-LLM-Pool-Allow-Remote"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Documented beside each route's JSON answer (its `@bp.response`): the same status, streamed.
# Each event of the stream as an SSE parser yields it (schemathesis validates every event
# against this): `data` always, `event` on /v1/responses; comment lines are no events.
SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}
EVENT_STREAM = {"schema": SSE_EVENT, "content_type": "text/event-stream", "success": True}


def serve(api: Api, body: dict[str, Any]) -> Response | dict[str, Any]:
    started = g.get("started", time.monotonic())
    note_model(body["model"])
    remote_header = request.headers.get(ALLOW_REMOTE_HEADER, "").lower() == "true"
    call = pipeline().submit(api, body, remote_header=remote_header, started=started)
    note_job(call.job)
    if call.streaming:
        stream = pipeline().stream(call, client_socket())
        return Response(stream, mimetype="text/event-stream", headers=SSE_HEADERS)
    return pipeline().answer(call, client_socket())  # written as JSON by contract.Blueprint


def client_socket() -> int | None:
    """The request's client socket under gunicorn (None elsewhere, e.g. the test client).
    Read in the view: a streamed body runs after the request context is gone."""
    sock = request.environ.get("gunicorn.socket")
    try:
        return int(sock.fileno()) if sock is not None else None
    except (OSError, ValueError):
        return None
