"""The ct2 backend for real on the CPU: a CTranslate2 int8 conversion of SmolLM2.

`make test` makes the conversion once (tests/runtimes/make_ct2_model.sh, cached in
.cache/smollm2-ct2) and passes its path in LLM_POOL_TEST_CT2_MODEL. First through the
Flask test client, then one real gunicorn+gevent server proving that generation runs on
a real OS thread and streams token by token.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from blueprints import create_app
from llmpool.config.loader import load_settings
from llmpool.pool import Pool
from tests.http.conftest import sse_events
from tests.integration.conftest import start_server, stop_server

MODEL = "smollm2-ct2"
CAPITAL = {
    "model": MODEL,
    "input": "What is the capital of France?",
    "decoding": {"temperature": 0.0, "max_tokens": 32},
}
STORY = {
    "model": MODEL,
    "input": "Write a long story about a dragon who learns to cook.",
    "decoding": {"temperature": 0.8, "max_tokens": 1500},
}


@pytest.fixture(scope="module")
def ct2_model() -> str:
    path = os.environ.get("LLM_POOL_TEST_CT2_MODEL", "")
    assert path and os.path.isfile(os.path.join(path, "model.bin")), (
        f"CT2 SmolLM2 conversion missing (LLM_POOL_TEST_CT2_MODEL={path!r}): run `make test`, "
        "which builds it with tests/runtimes/make_ct2_model.sh"
    )
    return path


def settings(model_dir: str, **keys: Any) -> dict[str, Any]:
    return {
        "service": {"log_level": "warning"},
        "engine": {
            "models": {
                MODEL: {
                    "backend": "ct2",
                    "model_path": model_dir,
                    "ct2_intra_threads": 1,
                    "enabled": True,
                    **keys,
                }
            }
        },
    }


@pytest.fixture
def make_client(write_settings: Callable[..., Path], ct2_model: str) -> Iterator[Callable[..., FlaskClient]]:
    pools: list[Pool] = []

    def make(**keys: Any) -> FlaskClient:
        write_settings(settings(ct2_model, **keys))
        pool = Pool(load_settings())
        pool.start()
        pools.append(pool)
        app: Flask = create_app(pool.settings, pool=pool, start_models=False)
        return app.test_client()

    yield make
    for pool in pools:
        pool.shutdown()


@pytest.fixture
def client(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client()


def test_loaded_with_its_capabilities(client: FlaskClient) -> None:
    row = client.get(f"/v1/admin/models/{MODEL}").get_json()
    assert row["state"] == "loaded"
    assert row["target_inflight"]["effective"] == 1


def test_json_answer(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json=CAPITAL)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert "Paris" in body["output_text"]
    assert body["finish_reason"] == "stop"
    assert body["usage"]["input_tokens"] > 5 and 0 < body["usage"]["output_tokens"] <= 32
    m = body["metrics"]
    for key in ("engine_tokenize_ms", "gpu_time_to_first_token_ms", "gpu_generate_total_ms"):
        assert m[key] is not None, key


def test_sse_deltas_add_up_to_the_completed_text(client: FlaskClient) -> None:
    body = {**STORY, "decoding": {"temperature": 0.0, "max_tokens": 48}, "stream": True}
    events = sse_events(client.post("/v1/responses", json=body).get_data(as_text=True))
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    completed = events[-1][1]
    assert events[-1][0] == "response.completed"
    assert len(deltas) >= 5
    assert "".join(deltas) == completed["output_text"]
    assert completed["finish_reason"] == "length"
    assert completed["usage"]["output_tokens"] == 48


def test_beam_search_answers_in_one_piece(client: FlaskClient) -> None:
    body = {**CAPITAL, "decoding": {"beam_size": 2, "max_tokens": 32}, "stream": True}
    events = sse_events(client.post("/v1/responses", json=body).get_data(as_text=True))
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert len(deltas) == 1 and "Paris" in deltas[0]
    assert events[-1][1]["output_text"] == deltas[0]


def test_a_seed_is_refused_naming_it(client: FlaskClient) -> None:
    """CTranslate2 seeds one process-wide generator, not a request: `decoding.seed` is a 400."""
    r = client.post("/v1/responses", json={**CAPITAL, "decoding": {"seed": 5}})
    assert r.status_code == 400 and "decoding.seed" in r.get_data(as_text=True), r.get_data(as_text=True)


def test_stop_string_is_honoured(client: FlaskClient) -> None:
    full = client.post("/v1/responses", json=CAPITAL).get_json()["output_text"]
    cut = full.index("Paris")
    body = {**CAPITAL, "decoding": {**CAPITAL["decoding"], "stop": ["Paris"]}}
    for stream in (False, True):
        r = client.post("/v1/responses", json={**body, "stream": stream})
        text = (
            sse_events(r.get_data(as_text=True))[-1][1]["output_text"]
            if stream
            else r.get_json()["output_text"]
        )
        assert text == full[:cut]


def test_closing_the_stream_frees_the_slot(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json={**STORY, "stream": True}, buffered=False)
    chunks: Iterator[bytes] = iter(r.response)
    seen = b""
    while seen.count(b"response.output_text.delta") < 3:
        seen += next(chunks)
    assert b"response.completed" not in seen
    r.close()  # the client goes away mid-generation (1500 tokens would take ~40 s)
    deadline = time.monotonic() + 5
    while client.get(f"/v1/admin/models/{MODEL}").get_json()["inflight"]:
        assert time.monotonic() < deadline, "the cancelled job still holds the replica"
        time.sleep(0.05)
    started = time.monotonic()
    assert "Paris" in client.post("/v1/responses", json=CAPITAL).get_json()["output_text"]
    assert time.monotonic() - started < 10


@pytest.mark.integration
def test_a_raw_prompt_is_generated_from_as_it_is(client: FlaskClient) -> None:
    """/v1/completions: the prompt reaches CTranslate2 with no prompt format around it."""
    prompt = "The capital of France is"
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0}
    got = client.post("/v1/completions", json=body).get_json()
    text = got["choices"][0]["text"]
    assert text.strip() and got["object"] == "text_completion"
    templated = client.post(
        "/v1/responses", json={"model": MODEL, "input": prompt, "decoding": {"max_tokens": 1}}
    )
    assert got["usage"]["prompt_tokens"] <= 8 < templated.get_json()["usage"]["input_tokens"]
    streamed = client.post("/v1/completions", json={**body, "stream": True}).get_data(as_text=True)
    chunks = [json.loads(b[6:]) for b in streamed.split("\n\n") if b.startswith("data: {")]
    assert streamed.rstrip().endswith("data: [DONE]")
    assert "".join(c["choices"][0]["text"] for c in chunks) == text


def test_gunicorn_streams_on_a_real_thread(tmp_path: Path, ct2_model: str) -> None:
    """The hub stays free during a CT2 generation, and tokens arrive as they are made.

    Regression: under gevent's full patch, `threading` and `queue` were greenlet versions
    and every token arrived at the end; the worker now leaves them real.
    """
    server = start_server(tmp_path, settings(ct2_model))
    try:
        arrivals: list[float] = []
        started = time.monotonic()

        def stream() -> None:
            body = {**STORY, "decoding": {"temperature": 0.8, "max_tokens": 120}, "stream": True}
            with requests.post(f"{server.url}/v1/responses", json=body, stream=True, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith(b"event: response.output_text.delta"):
                        arrivals.append(time.monotonic() - started)

        worker = threading.Thread(target=stream)
        worker.start()
        while not arrivals:
            time.sleep(0.01)
        lags = []
        while worker.is_alive():
            t0 = time.monotonic()
            assert requests.get(f"{server.url}/v1/models", timeout=5).status_code == 200
            lags.append(time.monotonic() - t0)
            time.sleep(0.05)
        worker.join()
        assert len(lags) >= 5 and max(lags) < 0.5, lags
        # Streamed, not delivered at the end: deltas spread over the generation.
        assert len(arrivals) >= 20
        assert arrivals[-1] - arrivals[0] > 0.5, arrivals
    finally:
        assert stop_server(server) == 0
