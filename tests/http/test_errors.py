"""Every error a client can provoke is structured (SPEC §4); never an unstructured 500."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import SMOLLM2_ID


def detail(r: Any) -> Any:
    body = r.get_json()
    assert body is not None, r.get_data(as_text=True)
    return body["detail"]


@pytest.mark.parametrize(
    ("body", "loc", "type_"),
    [
        ({"model": SMOLLM2_ID, "input": "hi", "colour": "red"}, ["body", "colour"], "extra_forbidden"),
        ({"input": "hi"}, ["body", "model"], "missing"),
        ({"model": SMOLLM2_ID}, ["body", "input"], "value_error"),
        (
            {"model": SMOLLM2_ID, "input": "hi", "messages": [{"role": "user", "content": "x"}]},
            ["body", "input"],
            "value_error",
        ),
        ({"model": SMOLLM2_ID, "messages": []}, ["body", "messages"], "value_error"),
        (
            {"model": SMOLLM2_ID, "messages": [{"role": "assistant", "content": "x"}]},
            ["body", "messages"],
            "value_error",
        ),
        (
            {"model": SMOLLM2_ID, "messages": [{"role": "system", "content": "x"}]},
            ["body", "messages", 0, "role"],
            "value_error",
        ),
        ({"model": SMOLLM2_ID, "input": "hi", "stream": "true"}, ["body", "stream"], "value_error"),
        (
            {"model": SMOLLM2_ID, "input": "hi", "decoding": {"temperature": 3}},
            ["body", "decoding", "temperature"],
            "value_error",
        ),
        (
            {"model": SMOLLM2_ID, "input": "hi", "decoding": {"beam_size": 0}},
            ["body", "decoding", "beam_size"],
            "value_error",
        ),
        (
            {"model": SMOLLM2_ID, "input": "hi", "decoding": {"top_p": 0}},
            ["body", "decoding", "top_p"],
            "value_error",
        ),
        (
            {"model": SMOLLM2_ID, "input": "hi", "decoding": {"stop": ["x"] * 17}},
            ["body", "decoding", "stop"],
            "value_error",
        ),
        (
            {"model": SMOLLM2_ID, "input": "hi", "decoding": {"min_p": 0.05}},
            ["body", "decoding", "min_p"],
            "extra_forbidden",
        ),
        (
            {"model": SMOLLM2_ID, "input": [{"type": "audio", "data": "x"}]},
            ["body", "input", 0, "type"],
            "value_error",
        ),
        (
            {"model": SMOLLM2_ID, "input": [{"type": "image_url", "image_url": {}}]},
            ["body", "input", 0, "image_url", "url"],
            "missing",
        ),
        ({"model": SMOLLM2_ID, "input": "hi", "thinking": "maybe"}, ["body", "thinking"], "value_error"),
    ],
)
def test_schema_errors_are_422_with_loc_msg_type(
    client: FlaskClient, body: dict[str, Any], loc: list[Any], type_: str
) -> None:
    r = client.post("/v1/responses", json=body)
    assert r.status_code == 422
    items = detail(r)
    assert {"loc": loc, "type": type_} in [{"loc": i["loc"], "type": i["type"]} for i in items], items
    assert all(isinstance(i["msg"], str) and i["msg"] for i in items)


def test_max_tokens_above_the_models_context_is_422(client: FlaskClient) -> None:
    r = client.post(
        "/v1/responses", json={"model": SMOLLM2_ID, "input": "hi", "decoding": {"max_tokens": 5000}}
    )
    assert r.status_code == 422
    assert detail(r)[0]["loc"] == ["body", "decoding", "max_tokens"]
    assert "1024" in detail(r)[0]["msg"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b""])
def test_malformed_bodies_are_422(client: FlaskClient, raw: bytes) -> None:
    r = client.post("/v1/responses", data=raw, content_type="application/json")
    assert r.status_code == 422
    assert detail(r)[0]["loc"] == ["body"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "no-such-model", "input": "hi"}, 404, "unknown_model"),
        ({"model": "scripted-idle", "input": "hi"}, 409, "model_not_loaded"),
        (
            {
                "model": SMOLLM2_ID,
                "input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
            },
            400,
            "modality_unsupported",
        ),
        ({"model": SMOLLM2_ID, "input": "hi", "thinking": "enabled"}, 400, "thinking_unsupported"),
    ],
)
def test_admission_errors(client: FlaskClient, body: dict[str, Any], status: int, code: str) -> None:
    r = client.post("/v1/responses", json=body)
    assert r.status_code == status
    d = detail(r)
    assert d["code"] == code and d["message"]
    assert d["model"] == body["model"]


def test_a_decoding_knob_the_runtime_lacks_is_a_400_naming_it(client: FlaskClient) -> None:
    """llama.cpp has no beam search: beam_size 2 is refused, naming the field as sent and the
    backend, not run as beam_size 1 (SPEC §11). beam_size 1 is no request for beams."""
    r = client.post("/v1/responses", json={"model": SMOLLM2_ID, "input": "hi", "decoding": {"beam_size": 2}})
    assert r.status_code == 400, r.get_data(as_text=True)
    d = detail(r)
    assert d["code"] == "unsupported_value" and d["message"].startswith("decoding.beam_size: "), d
    assert "llama_cpp" in d["message"], d
    cards = {card["id"]: card for card in client.get("/v1/models").get_json()["data"]}
    assert cards[SMOLLM2_ID]["capabilities"]["decoding"] == ["top_k", "repetition_penalty", "seed"]
    ok = {"model": SMOLLM2_ID, "input": "hi", "decoding": {"beam_size": 1, "max_tokens": 2}}
    assert client.post("/v1/responses", json=ok).status_code == 200


@pytest.mark.parametrize("name", ["source_lang_code", "target_lang_code"])
def test_language_codes_for_a_model_that_does_not_translate_are_a_400(client: FlaskClient, name: str) -> None:
    """Only a TranslateGemma format reads them; SmolLM2 would answer untranslated."""
    r = client.post("/v1/responses", json={"model": SMOLLM2_ID, "input": "hi", name: "fr"})
    assert r.status_code == 400, r.get_data(as_text=True)
    d = detail(r)
    assert d["code"] == "unsupported_value" and d["message"].startswith(f"{name}: "), d
    assert (
        client.post("/v1/responses", json={"model": SMOLLM2_ID, "input": "hi", name: None}).status_code == 200
    )


SLOW = {"model": "scripted-slow", "input": "x", "decoding": {"max_tokens": 400}}


def test_queue_full_is_429_with_retry_after(client: FlaskClient) -> None:
    # scripted-slow: one slot, max_queue 1. One job runs, one waits, the third is refused.
    results: list[int] = []

    def stream() -> None:
        results.append(client.post("/v1/responses", json=SLOW).status_code)

    workers = [threading.Thread(target=stream) for _ in range(2)]
    for w in workers:
        w.start()
        time.sleep(0.3)
    r = client.post("/v1/responses", json=SLOW)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"
    assert detail(r)["code"] == "queue_full"
    for w in workers:
        w.join(timeout=30)
    assert results == [200, 200]  # the admitted ones were not disturbed


def test_unknown_route_and_method_are_structured(client: FlaskClient) -> None:
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and detail(r)["code"] == "not_found"
    r = client.get("/v1/responses")
    assert r.status_code == 405 and detail(r)["code"] == "method_not_allowed"


def test_body_over_max_body_mb_is_413(make_app: Any) -> None:
    from tests.http.conftest import base_settings

    settings = base_settings()
    settings["service"] = {"max_body_mb": 0.01}
    client = make_app(settings).test_client()
    r = client.post("/v1/responses", json={"model": SMOLLM2_ID, "input": "x" * 20_000})
    assert r.status_code == 413
    assert detail(r)["code"] == "request_too_large"


def test_a_bug_is_a_500_without_a_trace_in_the_body(app: Flask) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    r = app.test_client().get("/boom")
    assert r.status_code == 500
    assert detail(r) == {"code": "internal_error", "message": "internal server error", "model": None}
    assert "secret" not in r.get_data(as_text=True)
