"""Hostile input (issue 11): every body and query parameter ends in a structured 4xx.

The body framing cases (chunked bodies over the cap, malformed chunk sizes) need a real
HTTP server and live in tests/integration/test_server.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fakes import scripted_model

MODEL = "scripted"
JSON = {"Content-Type": "application/json"}
# (path, a valid body as a JSON text template with {value} where the hostile value goes)
JSON_ENDPOINTS = [
    ("/v1/responses", '{"model": "scripted", "input": {value}}'),
    ("/v1/chat/completions", '{"model": "scripted", "messages": [{"role": "user", "content": {value}}]}'),
    ("/v1/admin/models/scripted/load", '{"overrides": {"scripted_tokens": {value}}}'),
]


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    settings = {"engine": {"models": {MODEL: scripted_model(scripted_tokens=3, scripted_delay_s=0.0)}}}
    return make_app(settings).test_client()


def error_of(r: Any) -> tuple[int, Any]:
    body = r.get_json()
    assert body is not None, r.get_data(as_text=True)
    return r.status_code, body


@pytest.mark.parametrize("depth", [100, 10_000, 200_000])
@pytest.mark.parametrize(("path", "template"), JSON_ENDPOINTS)
def test_deep_nesting_is_422(client: FlaskClient, path: str, template: str, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    r = client.post(path, data=template.replace("{value}", nested), headers=JSON)
    status, body = error_of(r)
    assert status == 422, body
    text = str(body)
    assert "nested deeper than 64" in text


@pytest.mark.parametrize(("path", "template"), JSON_ENDPOINTS)
def test_a_lone_surrogate_is_422_naming_the_field(client: FlaskClient, path: str, template: str) -> None:
    r = client.post(path, data=template.replace("{value}", '"a\\ud800b"'), headers=JSON)
    status, body = error_of(r)
    assert status == 422, body
    if path.startswith("/v1/chat/"):
        assert body["error"]["param"] == "messages.0.content"
        assert "surrogate" in body["error"]["message"]
    elif path == "/v1/responses":
        assert body["detail"][0]["loc"] == ["body", "input"]
        assert "surrogate" in body["detail"][0]["msg"]
    else:
        assert body["detail"][0]["loc"] == ["body", "overrides", "scripted_tokens"]


def test_a_lone_surrogate_in_a_key_is_422(client: FlaskClient) -> None:
    r = client.post("/v1/responses", data='{"model": "scripted", "input": "x", "\\udc00": 1}', headers=JSON)
    status, body = error_of(r)
    assert status == 422 and body["detail"][0]["loc"] == ["body", "(key)"]


def test_valid_astral_text_passes(client: FlaskClient) -> None:
    # A proper surrogate *pair* in JSON is one astral character: valid, served.
    r = client.post("/v1/responses", data='{"model": "scripted", "input": "hi \\ud83d\\ude00"}', headers=JSON)
    assert r.status_code == 200, r.get_json()


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00", b"not json", b"[1, 2]", b'"a string"', b"{", b"null"])
def test_bodies_that_are_not_a_json_object_are_422(client: FlaskClient, raw: bytes) -> None:
    for path, _ in JSON_ENDPOINTS:
        status, body = error_of(client.post(path, data=raw, headers=JSON))
        assert status == 422, (path, body)


@pytest.mark.parametrize(
    "query",
    ["tail=²", "tail=-1", "tail=1.5", "tail=100001", "tail=", "tail=0x10", "tail=٣"],
)
def test_logs_tail_is_validated(client: FlaskClient, query: str) -> None:
    status, body = error_of(client.get(f"/v1/admin/models/{MODEL}/logs?{query}"))
    assert status == 422 and body["detail"][0]["loc"] == ["query", "tail"]


@pytest.mark.parametrize("query", ["since=-1", "since=x", "since=", "since=1e3", "since=9007199254740993"])
def test_logs_since_is_validated(client: FlaskClient, query: str) -> None:
    status, body = error_of(client.get(f"/v1/admin/models/{MODEL}/logs?{query}"))
    assert status == 422 and body["detail"][0]["loc"] == ["query", "since"]


def test_logs_tail_accepts_numbers(client: FlaskClient) -> None:
    for query in ("tail=0", "tail=5", "tail=100000", "", "since=0", "since=9007199254740992&tail=3"):
        r = client.get(f"/v1/admin/models/{MODEL}/logs?{query}")
        assert r.status_code == 200, r.get_json()


@pytest.mark.parametrize(("path", "name"), [("load?wait=maybe", "wait"), ("unload?force=ture", "force")])
def test_boolean_query_parameters_are_validated(client: FlaskClient, path: str, name: str) -> None:
    status, body = error_of(client.post(f"/v1/admin/models/{MODEL}/{path}"))
    assert status == 422 and body["detail"][0]["loc"] == ["query", name]


def test_openai_routes_answer_every_status_in_openais_shape(client: FlaskClient) -> None:
    r = client.get("/v1/chat/completions")
    status, body = error_of(r)
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]
    status, body = error_of(client.post("/v1/chat/nothing"))
    assert status == 404 and body["error"]["type"] == "invalid_request_error"
    status, body = error_of(client.post("/v1/chat/completions", data="{", headers=JSON))
    assert status == 422 and set(body) == {"error"}
    status, body = error_of(client.post("/v1/chat/completions", json={"model": "nope", "messages": []}))
    assert status == 422 and set(body) == {"error"}
    status, body = error_of(
        client.post(
            "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        )
    )
    assert status == 404 and body["error"]["code"] == "unknown_model"


def test_our_routes_keep_our_shape(client: FlaskClient) -> None:
    r = client.get("/v1/responses")
    status, body = error_of(r)
    assert status == 405 and body["detail"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]


def test_body_over_the_cap_is_413_in_each_shape(make_app: Callable[..., Flask]) -> None:
    settings = {
        "service": {"max_body_mb": 0.01},
        "engine": {"models": {MODEL: scripted_model(scripted_tokens=3)}},
    }
    client = make_app(settings).test_client()
    big = "x" * 20_000
    status, body = error_of(client.post("/v1/responses", json={"model": MODEL, "input": big}))
    assert status == 413 and body["detail"]["code"] == "request_too_large"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": big}]}
    status, body = error_of(client.post("/v1/chat/completions", json=chat))
    assert status == 413 and body["error"]["code"] == "request_too_large"
