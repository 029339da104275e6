"""The Flask side of the serving pipeline (`llmpool.serving`): a route of an inference API
is `serve(api, schema)`. Here: the body parsed by the API's schema, the request log's
notes, the allow_remote header, the client's socket, and the answer written as JSON or as
an SSE response. Everything else is the pipeline's."""

from __future__ import annotations

import time

from flask import Response, jsonify, request
from marshmallow import Schema

from blueprints.body import json_body
from blueprints.context import pipeline
from blueprints.observe import note_job, note_model
from llmpool.serving.api import Api

ALLOW_REMOTE_HEADER = "X-LLM-Pool-Allow-Remote"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def serve(api: Api, schema: Schema) -> Response:
    started = time.monotonic()
    body = schema.load(json_body())
    note_model(body["model"])
    remote_header = request.headers.get(ALLOW_REMOTE_HEADER, "").lower() == "true"
    call = pipeline().submit(api, body, remote_header=remote_header, started=started)
    note_job(call.job)
    if call.streaming:
        stream = pipeline().stream(call, client_socket())
        return Response(stream, mimetype="text/event-stream", headers=SSE_HEADERS)
    return jsonify(pipeline().answer(call, client_socket()))


def client_socket() -> int | None:
    """The request's client socket under gunicorn (None elsewhere, e.g. the test client).
    Read in the view: a streamed body runs after the request context is gone."""
    sock = request.environ.get("gunicorn.socket")
    try:
        return int(sock.fileno()) if sock is not None else None
    except (OSError, ValueError):
        return None
