"""Tool calls on Chat Completions (issue 21): `tools`, `tool_choice`, `parallel_tool_calls`,
histories with assistant calls and tool results; replies with `message.tool_calls` and
`finish_reason: "tool_calls"`, streams with `delta.tool_calls` as OpenAI sends them; every
call checked against its tool's schema before it is returned.

The calls here come from the scripted runtime (tests/fakes.py, `scripted_call`), which
streams a call as runtimes do. Real runtimes are in tests/integration/test_tool_calls.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fakes import scripted_model
from tests.http.conftest import openai_sdk, sse_events

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


def calling(call: dict[str, Any] | None) -> dict[str, Any]:
    options = {"scripted_tools": True, "scripted_delay_s": 0.0}
    if call is not None:
        options["scripted_call"] = json.dumps(call)
    return scripted_model(**options)


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    models = {
        "caller": calling({"name": "get_weather", "arguments": {"city": "Paris"}}),
        "wrong-args": calling({"name": "get_weather", "arguments": {"town": "Paris"}}),
        "wrong-tool": calling({"name": "launch", "arguments": {}}),
        "talker": calling(None),
        "plain": scripted_model(scripted_delay_s=0.0),
    }
    return make_app({"engine": {"models": models}}).test_client()


def chat(client: FlaskClient, model: str, **extra: Any) -> Any:
    body = {"model": model, "messages": ASK, "tools": [WEATHER, TIME], **extra}
    return client.post("/v1/chat/completions", json=body)


def chunks(r: Any) -> list[Any]:
    blocks = [b for b in r.get_data(as_text=True).split("\n\n") if b.strip() and not b.startswith(":")]
    return [
        b.removeprefix("data: ") if b == "data: [DONE]" else json.loads(b.removeprefix("data: "))
        for b in blocks
    ]


def test_a_call_comes_back_as_openai_tool_calls(client: FlaskClient) -> None:
    r = chat(client, "caller")
    assert r.status_code == 200, r.get_json()
    [choice] = r.get_json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_a_streamed_call_has_openais_delta_shape(client: FlaskClient) -> None:
    r = chat(client, "caller", stream=True)
    events = chunks(r)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
    pieces = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    first, rest = pieces[0], pieces[1:]
    assert first["index"] == 0 and first["id"] == "call_scripted" and first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert rest and all(set(p) == {"index", "function"} and set(p["function"]) == {"arguments"} for p in rest)
    assert json.loads("".join(p["function"]["arguments"] for p in rest)) == {"city": "Paris"}
    assert not any(d.get("content") for d in deltas)  # nothing of the call as text
    finishes = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]]
    assert finishes[-1] == "tool_calls"


def test_a_call_against_its_tools_schema_is_a_502(client: FlaskClient) -> None:
    r = chat(client, "wrong-args")
    assert r.status_code == 502
    err = r.get_json()["error"]
    assert err["code"] == "output_schema_violation"
    assert (
        "call 0 ('get_weather') arguments" in err["message"]
        and "'city' is a required property" in err["message"]
    )
    r = chat(client, "wrong-args", stream=True)
    assert chunks(r)[-1]["error"]["code"] == "output_schema_violation"  # and no [DONE]


def test_a_call_of_a_tool_not_offered_is_a_502(client: FlaskClient) -> None:
    r = chat(client, "wrong-tool")
    assert r.status_code == 502 and "names 'launch', not an allowed tool" in r.get_json()["error"]["message"]
    named = {"type": "function", "function": {"name": "get_time"}}
    r = chat(client, "caller", tool_choice=named)
    assert r.status_code == 502 and "names 'get_weather'" in r.get_json()["error"]["message"]


def test_a_required_call_that_never_comes_is_a_502(client: FlaskClient) -> None:
    assert chat(client, "talker").status_code == 200  # auto: text is an answer
    r = chat(client, "talker", tool_choice="required")
    assert r.status_code == 502 and "tool_choice asked for a call" in r.get_json()["error"]["message"]


def test_tool_choice_none_answers_in_text(client: FlaskClient) -> None:
    r = chat(client, "caller", tool_choice="none")
    assert r.status_code == 200
    message = r.get_json()["choices"][0]["message"]
    assert "tool_calls" not in message and message["content"]


def test_a_history_with_calls_and_their_results_is_taken(client: FlaskClient) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]
    r = chat(client, "talker", messages=history)
    assert r.status_code == 200, r.get_json()
    pool = client.application.extensions["llmpool"]
    assert pool.models["talker"].capabilities.tool_calls
    # A result that names its call's function (LangChain's way) says nothing the pool does
    # not render already; any other name there would be dropped, so it is refused.
    history[-1]["name"] = "get_weather"
    assert chat(client, "talker", messages=history).status_code == 200
    history[-1]["name"] = "get_time"
    r = chat(client, "talker", messages=history)
    assert r.status_code == 400 and r.get_json()["error"]["param"] == f"messages.{len(history) - 1}.name"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [], "tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools.1.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools.0.function.parameters",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}, *ASK]},
            "messages.0.tool_calls",
        ),
        ({"functions": [{"name": "f"}]}, "functions"),
    ],
)
def test_a_bad_tool_request_is_refused_naming_the_field(
    client: FlaskClient, extra: dict[str, Any], param: str
) -> None:
    r = chat(client, "caller", **extra)
    assert r.status_code in (400, 422), r.get_json()
    assert r.get_json()["error"]["param"] == param, r.get_json()


def test_a_model_that_cannot_call_tools_refuses_naming_the_field(client: FlaskClient) -> None:
    r = chat(client, "plain")
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["param"] == "tools" and "backend 'scripted'" in err["message"]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [CALL]}]
    history.append({"role": "tool", "tool_call_id": "call_1", "content": "18 C"})
    r = chat(client, "plain", messages=history, tool_choice="none")
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "messages"
    cards = {c["id"]: c["capabilities"] for c in client.get("/v1/models").get_json()["data"]}
    assert cards["caller"]["tool_calls"] is True and cards["plain"]["tool_calls"] is False


# -- the Responses API (and the pool's own /v1/responses) -------------------------------
FLAT_WEATHER = {"type": "function", **WEATHER["function"]}


@pytest.fixture
def sdk(client: FlaskClient) -> Iterator[openai.OpenAI]:
    with openai_sdk(client.application) as c:
        yield c


def test_the_sdk_reads_a_call_as_a_function_call_item(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(model="caller", input="Weather in Paris?", tools=[FLAT_WEATHER])  # type: ignore[list-item]
    [item] = response.output
    assert item.type == "function_call" and item.name == "get_weather" and item.call_id == "call_scripted"
    assert json.loads(item.arguments) == {"city": "Paris"} and item.status == "completed"
    assert response.tool_choice == "auto" and [t.name for t in response.tools] == ["get_weather"]  # type: ignore[union-attr]


def test_a_streamed_call_has_the_function_call_event_sequence(
    sdk: openai.OpenAI, client: FlaskClient
) -> None:
    body = {"model": "caller", "input": "Weather in Paris?", "tools": [FLAT_WEATHER], "stream": True}
    events = [
        e
        for e in sse_events(client.post("/v1/responses", json=body).get_data(as_text=True))
        if e[0] != "comment"
    ]
    names = [name for name, _ in events]
    assert names[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    added = events[2][1]["item"]
    assert added["type"] == "function_call" and added["name"] == "get_weather" and added["arguments"] == ""
    deltas = [data["delta"] for name, data in events if name == "response.function_call_arguments.delta"]
    [done] = [data for name, data in events if name == "response.function_call_arguments.done"]
    assert json.loads("".join(deltas)) == {"city": "Paris"} == json.loads(done["arguments"])
    assert names[-4:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.metrics",  # the pool's own, before the end
        "response.completed",
    ]
    assert "response.output_text.delta" not in names
    with sdk.responses.stream(model="caller", input="Weather?", tools=[FLAT_WEATHER]) as stream:  # type: ignore[list-item]
        final = stream.get_final_response()
    [item] = final.output
    assert item.type == "function_call" and json.loads(item.arguments) == {"city": "Paris"}


def test_a_call_and_its_output_come_back_as_input_items(sdk: openai.OpenAI, client: FlaskClient) -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "18 C, sunny"},
    ]
    response = sdk.responses.create(model="talker", input=history, tools=[FLAT_WEATHER])  # type: ignore[arg-type, list-item]
    assert response.output_text
    r = client.post("/v1/responses", json={"model": "plain", "input": history})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "messages"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"tools": [FLAT_WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tools": [FLAT_WEATHER], "max_tool_calls": 2}, "max_tool_calls"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input.0.call_id"),
    ],
)
def test_a_bad_responses_tool_request_names_the_field(
    client: FlaskClient, extra: dict[str, Any], param: str
) -> None:
    r = client.post("/v1/responses", json={"model": "caller", "input": "x", **extra})
    assert r.status_code in (400, 422), r.get_json()
    assert r.get_json()["error"]["param"] == param, r.get_json()


def test_a_constraint_that_would_bind_the_thoughts_is_refused_by_name(make_app: Callable[..., Flask]) -> None:
    """A runtime whose constraint starts at the first token (structured_after_thinking
    false) refuses a held call, and a schema, while the model may think."""
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    model = scripted_model(
        scripted_tools=True,
        scripted_call=call,
        scripted_thinks=True,
        prompt_format="qwen3_template",
        scripted_delay_s=0.0,
    )
    client = make_app({"engine": {"models": {"m": model}}}).test_client()
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        body = {"model": "m", "messages": ASK, "tools": [WEATHER], "tool_choice": choice}
        r = client.post("/v1/responses", json={**_as_responses(body), "thinking": "enabled"})
        assert r.status_code == 400 and r.get_json()["error"]["param"] == "thinking", r.get_json()
        assert "would bind the thoughts" in r.get_json()["error"]["message"]
        r = client.post("/v1/responses", json={**_as_responses(body), "thinking": "disabled"})
        assert r.status_code == 200, r.get_json()
    body = {"model": "m", "messages": ASK, "tools": [WEATHER], "thinking": "enabled"}
    assert client.post("/v1/responses", json=_as_responses(body)).status_code == 200  # auto: free


def _as_responses(body: dict[str, Any]) -> dict[str, Any]:
    """A chat body's tools and choice in the Responses API's flat shape."""
    out = {k: v for k, v in body.items() if k not in ("messages", "tools", "tool_choice")}
    out["input"] = body["messages"]
    out["tools"] = [{"type": "function", **tool["function"]} for tool in body["tools"]]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        out["tool_choice"] = {"type": "function", "name": choice["function"]["name"]}
    elif choice is not None:
        out["tool_choice"] = choice
    return out
