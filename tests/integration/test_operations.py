"""Operations against the real gunicorn server and the real SmolLM2 (issue 12).

/metrics after real traffic (read with prometheus_client's parser; the real runtime
reports timings, so the latency histograms fill), and the JSON line per request in the
server's own output, without the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SMOLLM2_ID
from tests.integration.conftest import Server, integration_settings, sse_events, start_server, stop_server

pytestmark = pytest.mark.integration

PROMPT = "Count slowly from one to five, please; marker 91c2."


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str) -> Iterator[Server]:
    settings = integration_settings()
    settings["service"]["log_level"] = "info"
    settings["engine"]["models"][SMOLLM2_ID].update(replicas=1, replica_max=1)
    srv = start_server(tmp_path_factory.mktemp("operations"), settings)
    yield srv
    stop_server(srv)


def samples(server: Server) -> dict[tuple[str, tuple[Any, ...]], float]:
    r = requests.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200
    out: dict[tuple[str, tuple[Any, ...]], float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_after_real_traffic(server: Server) -> None:
    body = {"model": SMOLLM2_ID, "input": PROMPT, "decoding": {"max_tokens": 8}}
    tokens = 0
    for _ in range(2):
        r = requests.post(server.url + "/v1/responses", json=body, timeout=60)
        assert r.status_code == 200
        tokens += r.json()["usage"]["output_tokens"]
    events = sse_events(server.url, body)
    tokens += events[-1][1]["usage"]["output_tokens"]
    m = samples(server)
    ok = (("code", "ok"), ("endpoint", "/v1/responses"), ("model", SMOLLM2_ID), ("status", "200"))
    assert m[("llmpool_requests_total", ok)] == 3
    model = (("model", SMOLLM2_ID),)
    assert m[("llmpool_generated_tokens_total", model)] == tokens
    assert m[("llmpool_time_to_first_token_seconds_count", model)] == 3
    assert m[("llmpool_time_to_first_token_seconds_sum", model)] > 0
    assert m[("llmpool_tokens_per_second_count", model)] == 3
    assert m[("llmpool_pool_overhead_seconds_count", model)] == 3
    assert m[("llmpool_model_loads_total", (("model", SMOLLM2_ID), ("result", "ok")))] == 1
    assert m[("llmpool_model_state", (("model", SMOLLM2_ID), ("state", "loaded")))] == 1
    assert m[("llmpool:num_requests_waiting", ())] == 0


def test_one_json_line_per_request_in_the_server_log(server: Server) -> None:
    r = requests.post(
        server.url + "/v1/responses",
        json={"model": SMOLLM2_ID, "input": PROMPT, "decoding": {"max_tokens": 4}},
        headers={"X-Request-Id": "ops-test-0001"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["X-Request-Id"] == "ops-test-0001"
    lines = [json.loads(ln) for ln in server.log().splitlines() if ln.startswith("{")]
    mine = [ln for ln in lines if ln.get("request_id") == "ops-test-0001"]
    assert len(mine) == 1, lines[-3:]
    line = mine[0]
    assert line["code"] == "ok" and line["status"] == 200 and line["model"] == SMOLLM2_ID
    assert line["metrics"]["engine_output_tokens"] == r.json()["usage"]["output_tokens"]
    assert "marker 91c2" not in server.log()
