"""One record per HTTP request: its id, a JSON log line and the Prometheus figures.

`X-Request-Id` is taken from the client when it is a sane token (so a proxy's id follows
the request through), else made here; it is returned on every response. The record is
closed when the server closes the response, so a stream is logged once it has ended
(or its client left) with the outcome of its job, not with the 200 it started with.

Log lines go to the `llmpool.access` logger, one JSON object each (python-json-logger),
without prompt or output text unless `service.log_prompts` is true.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from typing import Any

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

from llmpool.generation import GenerationRequest, content_text
from llmpool.job import Job
from llmpool.pool import Pool

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
access_log = logging.getLogger("llmpool.access")


def request_id() -> str:
    return str(g.get("request_id") or "")


def note_model(model: str | None) -> None:
    g.model = model


def note_job(job: Job) -> None:
    g.job = job


def note_error(code: str) -> None:
    """The error code of a refused request (called by the error renderer)."""
    g.error_code = code


def setup_access_log(level: str) -> None:
    """The JSON handler, once per process (create_app may run many times in tests)."""
    if any(getattr(h, "llmpool_access", False) for h in access_log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(timestamp=True))
    handler.llmpool_access = True  # type: ignore[attr-defined]
    access_log.addHandler(handler)
    access_log.propagate = False
    access_log.setLevel(logging.INFO if level in ("debug", "info") else logging.WARNING)


def install(app: Flask, pool: Pool, log_prompts: bool) -> None:
    @app.before_request
    def _begin() -> None:
        g.started = time.monotonic()
        given = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = given if _SANE_ID.match(given) else secrets.token_hex(16)

    @app.after_request
    def _end(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = request_id()
        record = _Record(pool, log_prompts, response.status_code)
        response.call_on_close(record.close)
        return response


class _Record:
    """What is known when the response starts; completed when it closes."""

    def __init__(self, pool: Pool, log_prompts: bool, status: int) -> None:
        self.pool = pool
        self.log_prompts = log_prompts
        self.status = status
        self.started = g.get("started", time.monotonic())
        self.request_id = request_id()
        self.method = request.method
        self.path = request.path
        rule = request.url_rule
        # The route's pattern, never the raw path: a bounded label set.
        self.endpoint = rule.rule if rule is not None else "(unmatched)"
        self.job: Job | None = g.get("job")
        self.model: str | None = self.job.model if self.job else g.get("model")
        self.code: str = g.get("error_code") or ("ok" if status < 400 else "error")
        self.remote = request.remote_addr

    def close(self) -> None:
        duration = time.monotonic() - self.started
        job = self.job
        code = job.outcome if job is not None and self.code == "ok" else self.code
        metrics = job.metrics(job.final) if job is not None else None
        self.pool.telemetry.request_finished(self.endpoint, self.model, self.status, code, duration, metrics)
        line: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "endpoint": self.endpoint,
            "model": self.model,
            "job_id": job.id if job else None,
            "status": self.status,
            "code": code,
            "duration_ms": round(duration * 1000.0, 3),
            "client": self.remote,
            "metrics": metrics,
        }
        if self.log_prompts and job is not None:
            line["prompt"] = prompt_text(job.request)
            line["output"] = job.output_text
        access_log.info("request", extra=line)


def prompt_text(req: GenerationRequest) -> dict[str, Any]:
    """The request's text for `log_prompts`; an image is named, never inlined."""

    def text(content: Any) -> str:
        if isinstance(content, str) or all(item.get("type") == "text" for item in content):
            return content_text(content)
        parts = [str(item.get("text", "")) if item.get("type") == "text" else "[image]" for item in content]
        return " ".join(parts)

    out: dict[str, Any] = {"instructions": req.instructions}
    if req.messages is not None:
        out["messages"] = [{"role": m.role, "content": text(m.content)} for m in req.messages]
    elif req.input is not None:
        out["input"] = text(req.input)
    elif req.prompt is not None:
        out["prompt"] = req.prompt
    return out
