"""The exllamav3 backend through the Flask app, with the fake `exllamav3` installed.

Admission (single turn only), JSON and SSE responses, and live load overrides checked
against the adapter's constraints before they reach the (fake) cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fake_exllamav3 import installed, make_model_dir
from tests.http.conftest import sse_events

MODEL = "exl3-fake"
REPLY = "Bonjour, le monde."


@pytest.fixture
def exl() -> Iterator[ModuleType]:
    with installed() as module:
        yield module


@pytest.fixture
def client(exl: ModuleType, make_app: Callable[..., Flask], tmp_path: Path) -> FlaskClient:
    model_dir = make_model_dir(tmp_path / "exl3", REPLY)
    definition: dict[str, Any] = {
        "backend": "exllamav3",
        "model_path": str(model_dir),
        "enabled": True,
        "exllama_cache_size": 1024,
    }
    settings = {"engine": {"decoding": {"temperature": 0.0, "max_tokens": 64}, "models": {MODEL: definition}}}
    return make_app(settings).test_client()


def cache_calls(exl: ModuleType) -> list[dict[str, Any]]:
    return [kwargs for name, kwargs in exl.fake_calls if name == "Cache"]


def test_json_response(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json={"model": MODEL, "input": "Say hello"})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["output_text"] == REPLY and body["finish_reason"] == "stop"
    assert body["usage"]["output_tokens"] == len(REPLY) + 1  # the EOS token counts
    assert body["usage"]["input_tokens"] > 0
    assert body["metrics"]["gpu_time_to_first_token_ms"] is not None


def test_max_tokens_is_length(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json={"model": MODEL, "input": "x", "decoding": {"max_tokens": 3}})
    assert (r.get_json()["output_text"], r.get_json()["finish_reason"]) == (REPLY[:3], "length")


def test_messages_are_refused_single_turn_only(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    assert r.get_json()["detail"]["code"] == "multi_turn_unsupported"


def test_sse_streams_the_backend_deltas(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json={"model": MODEL, "input": "x", "stream": True})
    events = sse_events(r.get_data(as_text=True))
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert deltas == list(REPLY)  # one delta per token, as the generator produced them
    assert events[-1][0] == "response.completed" and events[-1][1]["output_text"] == REPLY


def test_row_shows_capabilities_and_constraints(client: FlaskClient) -> None:
    rows = {row["name"]: row for row in client.get("/v1/admin/models").get_json()["models"]}
    row = rows[MODEL]
    assert row["capabilities"]["multi_turn"] is False and row["capabilities"]["modalities"] == ["text"]
    constraints = {c["key"]: c for c in row["load_constraints"]}
    assert constraints["exllama_cache_size"]["multiple_of"] == 256
    assert constraints["exllama_cache_size"]["default"] == 1024
    assert "8,8" in constraints["exllama_cache_quant"]["choices"]
    assert row["target_inflight"]["effective"] == 1


def test_load_overrides_are_checked_then_reach_the_cache(client: FlaskClient, exl: ModuleType) -> None:
    assert client.post(f"/v1/admin/models/{MODEL}/unload").status_code == 200
    for overrides in (
        {"exllama_cache_size": 1000},
        {"exllama_cache_quant": "k4v4"},
        {"exllama_gpu_split": [1]},
    ):
        r = client.post(f"/v1/admin/models/{MODEL}/load", json={"overrides": overrides})
        assert r.status_code == 400, overrides
        assert r.get_json()["detail"]["code"] == "invalid_load_request"
    overrides = {"exllama_cache_size": 2048, "exllama_cache_quant": "8,8"}
    r = client.post(f"/v1/admin/models/{MODEL}/load", json={"overrides": overrides})
    assert r.status_code == 200, r.get_json()
    assert cache_calls(exl)[-1] == {
        "max_num_tokens": 2048,
        "layer_type": exl.CacheLayer_quant,
        "k_bits": 8,
        "v_bits": 8,
    }
    assert (
        client.post("/v1/responses", json={"model": MODEL, "input": "x"}).get_json()["output_text"] == REPLY
    )


def test_a_raw_prompt_is_tokenised_as_it_is(client: FlaskClient) -> None:
    """/v1/completions: no prompt format around it (the fake makes one id per character,
    plus BOS), and the runtime's text back."""
    prompt = "Translate: hello ->"
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["choices"][0]["text"] == REPLY
    assert body["usage"]["prompt_tokens"] == len(prompt) + 1
    formatted = client.post("/v1/responses", json={"model": MODEL, "input": prompt}).get_json()
    assert formatted["usage"]["input_tokens"] > len(prompt) + 1  # the format's markup around it
