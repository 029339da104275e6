"""GET /metrics, the JSON log line per request and X-Request-Id (issue 12, points 1-2).

/metrics is read back with prometheus_client's own parser, and every figure checked
against the traffic the test sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import scripted_model
from tests.http.conftest import sse_events

FAST = "scripted"
CRASH = "scripted-crash"
ONE_SLOT = "scripted-one-slot"
SECRET_PROMPT = "the secret prompt text 7f3a"


def settings(**service: Any) -> dict[str, Any]:
    return {
        "service": service,
        "engine": {
            "models": {
                FAST: scripted_model(scripted_tokens=5, scripted_delay_s=0.0),
                CRASH: scripted_model(scripted_tokens=10, scripted_fail_after=3),
                ONE_SLOT: scripted_model(scripted_tokens=200, scripted_delay_s=0.01, max_queue=1),
                "scripted-off": scripted_model(enabled=False),
            }
        },
    }


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[dict[str, Any]]:
        """Each record as the JSON formatter writes it."""
        from pythonjsonlogger.json import JsonFormatter

        formatter = JsonFormatter()
        return [json.loads(formatter.format(r)) for r in self.records]


@pytest.fixture
def access() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("llmpool.access")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


class ClosingClient(FlaskClient):
    """Reads and closes every response, as a WSGI server does: the record of a request
    is completed when its response is closed."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def build(make_app: Callable[..., Flask], config: dict[str, Any]) -> FlaskClient:
    app = make_app(config)
    app.test_client_class = ClosingClient
    return app.test_client()


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return build(make_app, settings())


def scrape(
    client: FlaskClient, headers: dict[str, str] | None = None
) -> dict[tuple[str, tuple[Any, ...]], float]:
    r = client.get("/metrics", headers=headers or {})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.content_type.startswith("text/plain")
    samples: dict[tuple[str, tuple[Any, ...]], float] = {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple[Any, ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_was_sent(client: FlaskClient) -> None:
    outputs = 0
    for _ in range(3):
        r = client.post("/v1/responses", json={"model": FAST, "input": "hi"})
        assert r.status_code == 200
        outputs += r.get_json()["usage"]["output_tokens"]
    r = client.post(
        "/v1/chat/completions", json={"model": FAST, "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 200
    outputs += r.get_json()["usage"]["completion_tokens"]
    assert client.post("/v1/responses", json={"model": "nope", "input": "hi"}).status_code == 404
    assert client.post("/v1/responses", json={"model": FAST}).status_code == 422
    stream = client.post("/v1/responses", json={"model": CRASH, "input": "hi", "stream": True})
    assert sse_events(stream.get_data(as_text=True))[-1][0] == "response.failed"

    m = scrape(client)
    ok = {"endpoint": "/v1/responses", "model": FAST, "status": "200", "code": "ok"}
    assert value(m, "llmpool_requests_total", **ok) == 3
    chat = {"endpoint": "/v1/chat/completions", "model": FAST, "status": "200", "code": "ok"}
    assert value(m, "llmpool_requests_total", **chat) == 1
    # An unknown model is counted without its made-up name.
    unknown = {"endpoint": "/v1/responses", "model": "", "status": "404", "code": "unknown_model"}
    assert value(m, "llmpool_requests_total", **unknown) == 1
    invalid = {"endpoint": "/v1/responses", "model": "", "status": "422", "code": "validation_error"}
    assert value(m, "llmpool_requests_total", **invalid) == 1
    # A stream that failed after its 200 is counted with its failure.
    failed = {"endpoint": "/v1/responses", "model": CRASH, "status": "200", "code": "backend_error"}
    assert value(m, "llmpool_requests_total", **failed) == 1
    assert value(m, "llmpool_generated_tokens_total", model=FAST) == outputs == 4 * 5
    assert value(m, "llmpool_request_duration_seconds_count", endpoint="/v1/responses", model=FAST) == 3
    assert value(m, "llmpool_prompt_tokens_total", model=FAST) == 4 * 3
    # The scripted runtime reports no timings: nothing is observed (no made-up zeros);
    # tests/integration/test_operations.py sees them from the real runtime.
    assert value(m, "llmpool_time_to_first_token_seconds_count", model=FAST) == 0
    assert value(m, "llmpool_tokens_per_second_count", model=FAST) == 0
    assert value(m, "llmpool_pool_overhead_seconds_count", model=FAST) == 4
    # State, read at scrape time.
    assert value(m, "llmpool_model_state", model=FAST, state="loaded") == 1
    assert value(m, "llmpool_model_state", model=FAST, state="failed") == 0
    assert value(m, "llmpool_model_state", model="scripted-off", state="unloaded") == 1
    assert value(m, "llmpool_replica_state", model=FAST, replica="0", state="ready") == 1
    assert value(m, "llmpool_model_loads_total", model=FAST, result="ok") == 1
    assert value(m, "llmpool_model_load_duration_seconds_count", model=FAST) == 1
    assert value(m, "llmpool_queue_depth", model=FAST) == 0
    assert value(m, "llmpool:num_requests_waiting") == 0
    assert value(m, "llmpool:num_requests_running") == 0


def test_gauges_and_rejections_under_load(client: FlaskClient) -> None:
    import threading

    results: list[int] = []

    def call() -> None:
        r = client.post("/v1/responses", json={"model": ONE_SLOT, "input": "hi"})
        results.append(r.status_code)

    running = threading.Thread(target=call)
    running.start()
    m: dict[tuple[str, tuple[Any, ...]], float] = {}
    for _ in range(200):  # until the first job runs
        m = scrape(client)
        if value(m, "llmpool:num_requests_running") == 1:
            break
        threading.Event().wait(0.01)
    assert value(m, "llmpool_inflight", model=ONE_SLOT) == 1
    queued = threading.Thread(target=call)
    queued.start()
    for _ in range(200):
        m = scrape(client)
        if value(m, "llmpool:num_requests_waiting") == 1:
            break
        threading.Event().wait(0.01)
    assert value(m, "llmpool_queue_depth", model=ONE_SLOT) == 1
    r = client.post("/v1/responses", json={"model": ONE_SLOT, "input": "hi"})
    assert r.status_code == 429
    running.join(30)
    queued.join(30)
    assert sorted(results) == [200, 200]
    m = scrape(client)
    assert value(m, "llmpool_queue_full_rejections_total", model=ONE_SLOT) == 1
    full = {"endpoint": "/v1/responses", "model": ONE_SLOT, "status": "429", "code": "queue_full"}
    assert value(m, "llmpool_requests_total", **full) == 1


def test_made_up_model_names_do_not_grow_the_registry(client: FlaskClient) -> None:
    for i in range(50):
        client.post("/v1/responses", json={"model": f"made-up-{i}", "input": "hi"})
    text = client.get("/metrics").get_data(as_text=True)
    assert "made-up" not in text


def test_metrics_need_the_admin_token_when_one_is_set(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBS_ADMIN", "tok-123456")
    client = build(make_app, settings(admin_token_env="OBS_ADMIN"))
    assert client.get("/metrics").status_code == 401
    scrape(client, {"Authorization": "Bearer tok-123456"})


def test_one_json_line_per_request_without_prompt_text(client: FlaskClient, access: Lines) -> None:
    r = client.post(
        "/v1/responses", json={"model": FAST, "input": SECRET_PROMPT}, headers={"X-Request-Id": "abc-123"}
    )
    assert r.status_code == 200 and r.headers["X-Request-Id"] == "abc-123"
    output = r.get_json()["output_text"]
    (line,) = access.lines()
    assert line["request_id"] == "abc-123"
    assert line["endpoint"] == "/v1/responses" and line["method"] == "POST"
    assert line["model"] == FAST and line["status"] == 200 and line["code"] == "ok"
    assert line["job_id"] == r.get_json()["id"]
    assert line["metrics"]["engine_output_tokens"] == 5
    assert line["duration_ms"] > 0
    text = json.dumps(access.lines())
    assert SECRET_PROMPT not in text and output not in text


def test_log_prompts_adds_the_text(make_app: Callable[..., Flask], access: Lines) -> None:
    client = build(make_app, settings(log_prompts=True))
    r = client.post("/v1/responses", json={"model": FAST, "input": SECRET_PROMPT})
    (line,) = access.lines()
    assert line["prompt"]["input"] == SECRET_PROMPT
    assert line["output"] == r.get_json()["output_text"]


def test_streams_are_logged_when_they_end_with_their_outcome(client: FlaskClient, access: Lines) -> None:
    r = client.post("/v1/responses", json={"model": CRASH, "input": "hi", "stream": True})
    assert sse_events(r.get_data(as_text=True))[-1][0] == "response.failed"
    (line,) = access.lines()
    assert line["status"] == 200 and line["code"] == "backend_error"


def test_request_ids_are_made_when_missing_or_insane(client: FlaskClient, access: Lines) -> None:
    for given in (None, "", "x" * 200, "bad id with spaces", 'quote"s', "tab\there"):
        headers = {"X-Request-Id": given} if given is not None else {}
        r = client.get("/v1/models", headers=headers)
        made = r.headers["X-Request-Id"]
        assert len(made) == 32 and made != given
    r = client.post("/v1/responses", json={"model": "nope", "input": "x"}, headers={"X-Request-Id": "kept.1"})
    assert r.status_code == 404 and r.headers["X-Request-Id"] == "kept.1"
    assert access.lines()[-1]["code"] == "unknown_model"
