"""OpenAI's Chat Completions and Completions fields: each honoured, harmless, or refused
with the field named; an unknown key is a 422 naming it, never dropped (a client that sends
`seed` or `min_p` must not believe it took effect)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from llmpool.generation import GenerationRequest
from tests.fakes import ScriptedAdapter, scripted_model
from tests.http.conftest import base_settings

CHAT = {"model": "thinker", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETE = {"model": "thinker", "prompt": "Once upon", "max_tokens": 4}


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    settings = base_settings()
    settings["engine"]["models"] = {"thinker": scripted_model(scripted_tokens=2, scripted_thinks=True)}
    return make_app(settings).test_client()


def error(r: Any) -> dict[str, Any]:
    body = r.get_json()
    assert body is not None and "error" in body, r.get_data(as_text=True)
    return body["error"]  # type: ignore[no-any-return]


def last_request() -> GenerationRequest:
    adapter = next(a for a in reversed(ScriptedAdapter.instances) if a.spec.name == "thinker")
    assert adapter.last_request is not None
    return adapter.last_request


def last_thinking() -> str:
    return last_request().thinking


# What vllm-router writes into every body it forwards (tests/integration/test_router.py).
ROUTER = {
    "ignore_eos": False,
    "no_stop_trim": False,
    "skip_special_tokens": True,
    "return_hidden_states": False,
}
HARMLESS = {
    **ROUTER,
    "user": "u1",
    "frequency_penalty": 0,
    "presence_penalty": 0.0,
    "logit_bias": {},
    "seed": None,
    "n": 1,
}
CHAT_HARMLESS = {
    **HARMLESS,
    "continue_final_message": False,
    "separate_reasoning": True,
    "stream_reasoning": True,
    "include_reasoning": True,
    "metadata": {"team": "a"},
    "safety_identifier": "s",
    "prompt_cache_key": "k",
    "service_tier": "auto",
    "store": False,
    "modalities": ["text"],
    "verbosity": "medium",
    "top_logprobs": 0,
    "logprobs": False,
    "function_call": "none",
    "audio": None,
    "prediction": None,
    "web_search_options": None,
}


def test_harmless_fields_and_values_that_ask_for_nothing_are_taken(client: FlaskClient) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, **CHAT_HARMLESS})
    assert r.status_code == 200, r.get_data(as_text=True)
    r = client.post("/v1/completions", json={**COMPLETE, **HARMLESS})
    assert r.status_code == 200, r.get_data(as_text=True)


REFUSED = [
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"presence_penalty": -1}, "presence_penalty"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"ignore_eos": True}, "ignore_eos"),
    ({"skip_special_tokens": False}, "skip_special_tokens"),
]
CHAT_REFUSED = [
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"store": True}, "store"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"verbosity": "low"}, "verbosity"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"function_call": "auto"}, "function_call"),
    ({"continue_final_message": True}, "continue_final_message"),
    ({"include_reasoning": False}, "include_reasoning"),
]


@pytest.mark.parametrize(("extra", "param"), REFUSED + CHAT_REFUSED)
def test_a_field_the_pool_cannot_honour_is_a_400_naming_it(
    client: FlaskClient, extra: dict[str, Any], param: str
) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, **extra})
    assert r.status_code == 400, r.get_data(as_text=True)
    assert error(r)["param"] == param and error(r)["type"] == "invalid_request_error", error(r)
    if (extra, param) in REFUSED:
        r = client.post("/v1/completions", json={**COMPLETE, **extra})
        assert r.status_code == 400, r.get_data(as_text=True)
        assert error(r)["param"] == param, error(r)


@pytest.mark.parametrize("key", ["min_p", "ignore_eos", "chat_template_kwargs", "mirostat"])
def test_an_unknown_key_is_a_422_naming_it(client: FlaskClient, key: str) -> None:
    for url, body in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETE)):
        r = client.post(url, json={**body, key: 1})
        assert r.status_code == 422, r.get_data(as_text=True)
        assert error(r)["param"] == key, error(r)


@pytest.mark.parametrize(
    ("effort", "thinking"),
    [(None, "default"), ("minimal", "disabled"), ("none", "disabled"), ("high", "enabled")],
)
def test_reasoning_effort_maps_onto_thinking(client: FlaskClient, effort: str | None, thinking: str) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": effort})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert last_thinking() == thinking


def test_reasoning_effort_on_a_model_without_thinking_is_refused(make_app: Callable[..., Flask]) -> None:
    settings = base_settings()
    settings["engine"]["models"] = {"plain": scripted_model(scripted_tokens=2)}
    client = make_app(settings).test_client()
    body = {**CHAT, "model": "plain", "reasoning_effort": "high"}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and error(r)["code"] == "thinking_unsupported", error(r)
    r = client.post("/v1/chat/completions", json={**body, "reasoning_effort": "turbo"})
    assert r.status_code == 422 and error(r)["param"] == "reasoning_effort", error(r)


def test_a_seed_reaches_the_runtime(client: FlaskClient) -> None:
    for url, body in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETE)):
        assert client.post(url, json={**body, "seed": 7}).status_code == 200
        assert last_request().decoding.seed == 7
        assert client.post(url, json=body).status_code == 200
        assert last_request().decoding.seed is None
    r = client.post("/v1/chat/completions", json={**CHAT, "seed": -1})
    assert r.status_code == 422 and error(r)["param"] == "seed", error(r)
