"""Structured output (issue 21): `response_format` on Chat Completions and `text.format` on
the Responses API (the pool's own `/v1/responses`), refused by name where the model's
runtime cannot constrain its answer, and every answer checked against its schema before
it is returned.

The answers here come from the scripted runtime (tests/fakes.py, `scripted_text`): what a
runtime that was asked for a schema sends back, valid or not. The real runtimes, which
constrain generation, are in tests/integration/test_structured_output.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import SMOLLM2_ID
from tests.fakes import scripted_model
from tests.http.conftest import base_settings, sse_events

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
CHAT_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
TEXT_FORMAT = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
HI = [{"role": "user", "content": "a person"}]


def answering(text: str) -> dict[str, Any]:
    return scripted_model(scripted_structured=True, scripted_text=text, scripted_delay_s=0.0)


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    models = {
        "valid": answering('{"name": "Ava", "age": 25}'),
        "wrong": answering('{"name": "Ava", "age": "old"}'),
        "prose": answering("Sure! Here is a person."),
        "array": answering("[1, 2]"),
        "plain": scripted_model(scripted_delay_s=0.0),
    }
    return make_app({"engine": {"models": models}}).test_client()


def chat(client: FlaskClient, model: str, **extra: Any) -> Any:
    return client.post(
        "/v1/chat/completions", json={"model": model, "messages": HI, "response_format": CHAT_FORMAT, **extra}
    )


def respond(client: FlaskClient, model: str, **extra: Any) -> Any:
    return client.post("/v1/responses", json={"model": model, "input": "a person", **extra})


# -- answers that satisfy the schema -----------------------------------------------------
def test_a_chat_answer_that_matches_its_schema_is_returned_as_it_is(client: FlaskClient) -> None:
    r = chat(client, "valid")
    assert r.status_code == 200, r.get_json()
    assert json.loads(r.get_json()["choices"][0]["message"]["content"]) == {"name": "Ava", "age": 25}


def test_a_responses_answer_echoes_the_format_it_was_held_to(client: FlaskClient) -> None:
    r = respond(client, "valid", text={"format": TEXT_FORMAT})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert json.loads(body["output_text"]) == {"name": "Ava", "age": 25}
    assert body["text"]["format"] == TEXT_FORMAT
    assert [item["type"] for item in body["output"]] == ["message"]  # OpenAI's items only
    assert respond(client, "valid", text={"format": {"type": "json_object"}}).get_json()["text"] == {
        "format": {"type": "json_object"}
    }
    assert respond(client, "valid").get_json()["text"] == {"format": {"type": "text"}}


def test_json_object_takes_any_object_and_nothing_else(client: FlaskClient) -> None:
    assert chat(client, "wrong", response_format={"type": "json_object"}).status_code == 200
    r = chat(client, "array", response_format={"type": "json_object"})
    assert r.status_code == 502 and r.get_json()["error"]["code"] == "output_schema_violation"


# -- answers that do not -----------------------------------------------------------------
def test_an_answer_against_its_schema_is_a_502_naming_where(client: FlaskClient) -> None:
    r = chat(client, "wrong")
    assert r.status_code == 502
    err = r.get_json()["error"]
    assert err["code"] == "output_schema_violation" and err["type"] == "server_error"
    assert "at age" in err["message"] and "'old' is not of type 'integer'" in err["message"]
    assert "Ava" not in json.dumps(err).replace("'old'", "")  # the answer itself is not echoed


def test_an_answer_that_is_not_json_is_a_502_on_every_api(client: FlaskClient) -> None:
    r = chat(client, "prose")
    assert r.status_code == 502 and "the answer is not JSON" in r.get_json()["error"]["message"]
    r = respond(client, "prose", text={"format": TEXT_FORMAT})
    assert r.status_code == 502 and r.get_json()["detail"]["code"] == "output_schema_violation"
    assert "text.format: the answer is not JSON" in r.get_json()["detail"]["message"]


def test_a_stream_whose_answer_breaks_the_schema_ends_in_an_error_not_done(client: FlaskClient) -> None:
    r = chat(client, "wrong", stream=True)
    body = r.get_data(as_text=True)
    assert "[DONE]" not in body
    last = json.loads(body.strip().split("\n\n")[-1].removeprefix("data: "))
    assert last["error"]["code"] == "output_schema_violation"
    r = respond(client, "wrong", text={"format": TEXT_FORMAT}, stream=True)
    events = sse_events(r.get_data(as_text=True))
    names = [name for name, _ in events]
    assert "response.completed" not in names and names[-1] in ("error", "response.failed"), names


# -- refusals ----------------------------------------------------------------------------
def test_a_model_that_cannot_constrain_its_answer_refuses_naming_field_and_backend(
    client: FlaskClient,
) -> None:
    r = chat(client, "plain")
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["param"] == "response_format" and "backend 'scripted'" in err["message"]
    r = respond(client, "plain", text={"format": {"type": "json_object"}})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "text.format"
    assert "model 'plain' (backend 'scripted')" in r.get_json()["detail"]["message"]


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "p"}}, "response_format.json_schema.schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "nonsense"}}},
            "response_format.json_schema.schema",
        ),
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_object", "extra": 1}, "response_format.extra"),
    ],
)
def test_a_broken_format_is_refused_naming_the_field(
    client: FlaskClient, response_format: dict[str, Any], param: str
) -> None:
    r = chat(client, "valid", response_format=response_format)
    assert r.status_code in (400, 422), r.get_json()
    assert r.get_json()["error"]["param"] == param, r.get_json()


def test_a_broken_text_format_schema_is_refused_naming_the_field(client: FlaskClient) -> None:
    bad = {**TEXT_FORMAT, "schema": {"type": "object", "properties": {"x": {"minLength": "one"}}}}
    r = respond(client, "valid", text={"format": bad})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "text.format.schema"
    r = respond(client, "valid", text={"format": {"type": "json_schema", "name": "p"}})
    assert r.status_code == 422 and "text.format.schema" in json.dumps(r.get_json())


def test_models_say_whether_they_do_structured_output(client: FlaskClient) -> None:
    cards = {c["id"]: c for c in client.get("/v1/models").get_json()["data"]}
    assert cards["valid"]["capabilities"]["structured_output"] is True
    assert cards["plain"]["capabilities"]["structured_output"] is False
    row = client.get("/v1/admin/models/plain").get_json()
    assert row["capabilities"]["structured_output"] is False


# -- through the real in-process runtime (SmolLM2 on llama_cpp) ----------------------------
@pytest.fixture
def smol(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(base_settings()).test_client()


def test_llama_cpps_grammar_makes_the_answer_fit(smol: FlaskClient) -> None:
    body = {
        "model": SMOLLM2_ID,
        "messages": HI,
        "response_format": CHAT_FORMAT,
        "max_tokens": 48,
        "temperature": 0,
    }
    r = smol.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.get_json()
    person = json.loads(r.get_json()["choices"][0]["message"]["content"])
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^(?=a)b$"},  # llama-cpp-python's converter asserts on it
        {"$ref": "#/$defs/missing"},
        {"type": "object", "properties": {"self": {"$ref": "#"}}},
    ],
)
def test_a_schema_llama_cpp_cannot_hold_is_a_400_not_a_dead_worker(
    smol: FlaskClient, schema: dict[str, Any]
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    r = smol.post("/v1/chat/completions", json={"model": SMOLLM2_ID, "messages": HI, "response_format": fmt})
    assert r.status_code == 400, r.get_json()
    err = r.get_json()["error"]
    assert err["param"] == "response_format" and "grammar" in err["message"]
    assert (
        smol.post(
            "/v1/chat/completions", json={"model": SMOLLM2_ID, "messages": HI, "max_tokens": 4}
        ).status_code
        == 200
    )


def test_a_grammar_llama_cpp_cannot_parse_is_refused_before_it_reaches_the_sampler(
    smol: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # llama.cpp kills the process on a grammar it cannot parse (SIGSEGV): the pool parses
    # each one first. Here the converter is made to write one.
    from llmpool.backends import llama_grammar

    monkeypatch.setattr(llama_grammar, "grammar_for", lambda *a, **k: "root ::= [")
    r = smol.post(
        "/v1/chat/completions", json={"model": SMOLLM2_ID, "messages": HI, "response_format": CHAT_FORMAT}
    )
    assert (
        r.status_code == 400 and "cannot turn this schema into a grammar" in r.get_json()["error"]["message"]
    )
