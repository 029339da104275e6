"""The design's floor for a proxied request: what the one gunicorn gevent worker (the
operators' conf/gunicorn.conf.py) and a bare Flask app cost when they pass a chat
completion to an upstream and its answer back, unchanged, through the pool's lean HTTP
client. No schema, no scheduler, no reshaping of events: whatever the pool adds over this
is the pool's own; what this adds over the upstream direct is the fixed design's.

The proxy case (non-streamed, nginx) and the first_token case (streamed, llama-server) run
it next to the pool. The upstream is `$LLM_POOL_BENCH_FLOOR_UPSTREAM`, an OpenAI-style API
base such as `http://127.0.0.1:8080/v1`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import orjson
from flask import Flask, Response, request

from bench.common import Pool, pool_server
from llmpool.backends.http1 import Http1Origin

UPSTREAM_ENV = "LLM_POOL_BENCH_FLOOR_UPSTREAM"
TIMEOUT = (5.0, 600.0)

app = Flask(__name__)


@app.get("/readyz")
def readyz() -> Any:
    return {"status": "ok"}


@app.post("/v1/chat/completions")
def chat() -> Any:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return {"error": {"message": "a JSON object, please"}}, 400
    origin, path = _origin()
    answer = origin.request(
        "POST", path, body=orjson.dumps(body), headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    kind = answer.headers.get("content-type", "application/json")
    if not body.get("stream"):
        data = b"".join(iter(answer.read1, b""))
        answer.release_conn()
        return Response(data, status=answer.status, content_type=kind)

    def relayed() -> Iterator[bytes]:
        try:
            while data := answer.read1():
                yield data
        finally:
            answer.close()

    return Response(relayed(), status=answer.status, content_type=kind)


_ORIGIN: tuple[Http1Origin, str] | None = None


def _origin() -> tuple[Http1Origin, str]:
    """The upstream's connections and its chat path, made at the first request (the worker
    is forked after this module is imported)."""
    global _ORIGIN
    if _ORIGIN is None:
        base = urlsplit(os.environ[UPSTREAM_ENV])
        origin = Http1Origin(base.hostname or "127.0.0.1", base.port or 80, maxsize=128)
        _ORIGIN = origin, base.path.rstrip("/") + "/chat/completions"
    return _ORIGIN


@contextmanager
def floor_server(upstream_base: str, cpus: list[str] | None = None) -> Iterator[Pool]:
    """This app under the operators' gunicorn config, in front of `upstream_base`."""
    settings = {"service": {"log_level": "warning"}, "engine": {"models": {}}}
    env = {UPSTREAM_ENV: upstream_base}
    with pool_server(settings, env=env, cpus=cpus, app="bench.relay_floor:app") as floor:
        yield floor
