"""Anthropic's Messages API (issue 21): POST /v1/messages and /v1/messages/count_tokens,
driven by the official `anthropic` SDK in-process (its HTTP client on a WSGI transport)
and by raw requests where the exact wire shape is the point.

The models are scripted (tests/fakes.py): a text answer, a streamed tool call, thoughts
before the answer, a text cut by a stop sequence. Real runtimes behind the real server are
in tests/integration/test_anthropic.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest
from flask import Flask
from flask.testing import FlaskClient

from llmpool.generation import GenerationRequest
from tests.fakes import ScriptedAdapter, scripted_model
from tests.http.conftest import anthropic_sdk, sse_events

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def quick(**options: Any) -> dict[str, Any]:
    return scripted_model(scripted_delay_s=0.0, **options)


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    models = {
        "plain": quick(scripted_tokens=4, modalities=["text", "image"]),
        "caller": quick(scripted_tools=True, scripted_call=call),
        "talker": quick(scripted_tools=True),
        "thinker": quick(
            scripted_thinks=True, scripted_reasoning=3, scripted_tokens=2, scripted_max_tokens=8000
        ),
        "overthinker": quick(
            scripted_thinks=True, scripted_reasoning=1500, scripted_tokens=2, scripted_max_tokens=8000
        ),
        "stopper": quick(scripted_text="hello STOP world"),
        "json": quick(scripted_structured=True, scripted_text='{"name": "Ada", "age": 36}'),
        "bad-json": quick(scripted_structured=True, scripted_text='{"name": "Ada"}'),
        "crasher": quick(scripted_tokens=6, scripted_fail_after=3),
    }
    return make_app({"engine": {"models": models}}).test_client()


@pytest.fixture
def sdk(client: FlaskClient) -> Iterator[anthropic.Anthropic]:
    with anthropic_sdk(client.application) as c:
        yield c


def post(client: FlaskClient, **body: Any) -> Any:
    return client.post("/v1/messages", json={"max_tokens": 64, "messages": ASK, **body})


def events_of(r: Any) -> list[tuple[str, Any]]:
    """The stream's events, without the pipeline's comment lines (SSE clients skip them)."""
    return [(name, data) for name, data in sse_events(r.get_data(as_text=True)) if name != "comment"]


def last_request(model: str) -> GenerationRequest:
    adapter = next(a for a in reversed(ScriptedAdapter.instances) if a.spec.name == model)
    assert adapter.last_request is not None
    return adapter.last_request


def test_a_message_comes_back_in_anthropics_shape(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(model="plain", max_tokens=64, messages=ASK)
    assert message.type == "message" and message.role == "assistant" and message.model == "plain"
    assert message.id.startswith("msg_")
    [block] = message.content
    assert block.type == "text" and block.text == "t0 t1 t2 t3 "
    # The scripted runtime ends at its token count: what max_tokens would do.
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.input_tokens == 3 and message.usage.output_tokens == 4


def test_system_sampling_and_turns_reach_the_runtime(sdk: anthropic.Anthropic) -> None:
    sdk.messages.create(
        model="plain",
        max_tokens=7,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        # This SDK no longer sends sampling fields (older ones, and raw clients, do).
        extra_body={"temperature": 0.2, "top_p": 0.5, "top_k": 3},
        stop_sequences=["END"],
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
            {"role": "user", "content": [{"type": "text", "text": "Again"}]},
        ],
    )
    request = last_request("plain")
    assert request.instructions == "Be brief.\n\nBe kind."
    d = request.decoding
    assert (d.max_tokens, d.temperature, d.top_p, d.top_k, d.stop) == (7, 0.2, 0.5, 3, ("END",))
    assert request.messages is not None
    assert [(m.role, m.content) for m in request.messages] == [
        ("user", "Hi"),
        ("assistant", "Hello."),
        ("user", [{"type": "text", "text": "Again"}]),
    ]


def test_an_image_block_becomes_an_image_part(client: FlaskClient) -> None:
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
    source = {"type": "base64", "media_type": "image/png", "data": pixel}
    content = [{"type": "image", "source": source}, {"type": "text", "text": "What is it?"}]
    r = post(client, model="plain", messages=[{"role": "user", "content": content}])
    assert r.status_code == 200, r.get_json()
    request = last_request("plain")
    [turn] = request.messages or ()
    assert isinstance(turn.content, list)
    assert turn.content[0] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{pixel}", "detail": "auto"},
    }


def test_the_stream_is_anthropics_event_sequence(client: FlaskClient) -> None:
    r = post(client, model="plain", stream=True)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    events = events_of(r)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names[1:-2] == ["content_block_start"] + ["content_block_delta"] * 4 + ["content_block_stop"]
    for name, data in events:
        assert data["type"] == name  # every event repeats its name as `type`
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["id"].startswith("msg_")
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert "".join(d["text"] for d in deltas) == "t0 t1 t2 t3 " and {d["type"] for d in deltas} == {
        "text_delta"
    }
    end = events[-2][1]
    assert end["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert end["usage"]["output_tokens"] == 4 and end["usage"]["input_tokens"] == 3


def test_the_sdk_stream_helper_reads_the_stream(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model="plain", max_tokens=64, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == "t0 t1 t2 t3 " and message.content[0].text == text
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 4


def test_a_tool_call_is_a_tool_use_block(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(model="caller", max_tokens=64, messages=ASK, tools=[WEATHER])
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    assert block.id


def test_a_streamed_tool_call_is_input_json_deltas(client: FlaskClient, sdk: anthropic.Anthropic) -> None:
    r = post(client, model="caller", tools=[WEATHER], stream=True)
    events = events_of(r)
    [start] = [d for n, d in events if n == "content_block_start"]
    assert start["content_block"] == {
        "type": "tool_use",
        "id": "call_scripted",
        "name": "get_weather",
        "input": {},
    }
    pieces = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert {p["type"] for p in pieces} == {"input_json_delta"}
    assert json.loads("".join(p["partial_json"] for p in pieces)) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    # The SDK's stream helper puts the input together.
    with sdk.messages.stream(model="caller", max_tokens=64, messages=ASK, tools=[WEATHER]) as stream:
        message = stream.get_final_message()
    assert message.content[0].input == {"city": "Paris"}


def test_tool_choice_maps_onto_the_pools_choices(client: FlaskClient) -> None:
    for choice, expected in (
        ({"type": "auto"}, ("auto", None, True)),
        ({"type": "any", "disable_parallel_tool_use": True}, ("required", None, False)),
        ({"type": "tool", "name": "get_weather"}, ("function", "get_weather", True)),
    ):
        r = post(client, model="caller", tools=[WEATHER], tool_choice=choice)
        assert r.status_code == 200, r.get_json()
        use = last_request("caller").tools
        assert use is not None and (use.choice, use.function, use.parallel) == expected
        assert use.tools[0].parameters == WEATHER["input_schema"]
    r = post(client, model="caller", tools=[WEATHER], tool_choice={"type": "none"})
    assert r.status_code == 200 and last_request("caller").tools is None
    assert r.get_json()["content"][0]["type"] == "text"


def test_a_required_call_that_never_comes_is_a_502_in_anthropics_shape(client: FlaskClient) -> None:
    r = post(client, model="talker", tools=[WEATHER], tool_choice={"type": "any"})
    assert r.status_code == 502
    body = r.get_json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["error"]["code"] == "output_schema_violation"


def test_a_tool_result_round_trip(sdk: anthropic.Anthropic) -> None:
    first = sdk.messages.create(model="caller", max_tokens=64, messages=ASK, tools=[WEATHER])
    call = first.content[0]
    assert call.type == "tool_use"
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": call.id,
                    "content": [{"type": "text", "text": "18 C"}],
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    sdk.messages.create(model="caller", max_tokens=64, messages=history, tools=[WEATHER])
    turns = last_request("caller").messages or ()
    assert [t.role for t in turns] == ["user", "assistant", "tool", "user"]
    assert turns[1].tool_calls[0].name == "get_weather"
    assert json.loads(turns[1].tool_calls[0].arguments) == {"city": "Paris"}
    assert turns[2].content == "18 C" and turns[2].tool_call_id == call.id
    assert turns[3].content == [{"type": "text", "text": "And tomorrow?"}]


def test_an_error_result_says_so_to_the_model(client: FlaskClient) -> None:
    calls = [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "X"}}]
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such city", "is_error": True}
    history = [*ASK, {"role": "assistant", "content": calls}, {"role": "user", "content": [result]}]
    assert post(client, model="caller", tools=[WEATHER], messages=history).status_code == 200
    turns = last_request("caller").messages or ()
    assert turns[-1].role == "tool" and turns[-1].content == "Error: no such city"


def test_thoughts_are_thinking_blocks_before_the_text(client: FlaskClient, sdk: anthropic.Anthropic) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    message = sdk.messages.create(model="thinker", max_tokens=2000, messages=ASK, thinking=thinking)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "r0 r1 r2 "
    assert last_request("thinker").thinking == "enabled"
    r = post(client, model="thinker", max_tokens=2000, thinking=thinking, stream=True)
    events = events_of(r)
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["thinking", "text"]
    kinds = [(d["index"], d["delta"]["type"]) for n, d in events if n == "content_block_delta"]
    assert kinds == [(0, "thinking_delta")] * 3 + [(1, "text_delta")] * 2
    stops = [d["index"] for n, d in events if n == "content_block_stop"]
    assert stops == [0, 1]


def test_thinking_disabled_adaptive_and_omitted(client: FlaskClient) -> None:
    r = post(client, model="thinker", thinking={"type": "disabled"})
    assert [b["type"] for b in r.get_json()["content"]] == ["text"]
    assert last_request("thinker").thinking == "disabled"
    post(client, model="thinker", thinking={"type": "adaptive"})
    assert last_request("thinker").thinking == "default"
    omitted = {"type": "enabled", "budget_tokens": 1024, "display": "omitted"}
    r = post(client, model="thinker", max_tokens=2000, thinking=omitted)
    assert r.get_json()["content"][0] == {"type": "thinking", "thinking": "", "signature": ""}
    r = post(client, model="thinker", max_tokens=2000, thinking=omitted, stream=True)
    deltas = [d["delta"]["type"] for n, d in events_of(r) if n == "content_block_delta"]
    assert deltas == ["text_delta"] * 2


def test_the_thinking_budget_bounds_the_thoughts(client: FlaskClient) -> None:
    r = post(
        client, model="overthinker", max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 1024}
    )
    body = r.get_json()
    assert r.status_code == 200, body
    [block] = body["content"]  # cut while thinking: no answer text
    assert block["type"] == "thinking" and block["thinking"].split() == [f"r{i}" for i in range(1024)]
    assert body["stop_reason"] == "max_tokens"
    r = post(
        client, model="overthinker", max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000}
    )
    assert r.get_json()["stop_reason"] == "max_tokens"  # the scripted runtime's own length
    assert [b["type"] for b in r.get_json()["content"]] == ["thinking", "text"]


def test_a_stop_sequence_is_named(client: FlaskClient) -> None:
    r = post(client, model="stopper", stop_sequences=["STOP"])
    body = r.get_json()
    assert body["content"] == [{"type": "text", "text": "hello "}]
    assert body["stop_reason"] == "stop_sequence" and body["stop_sequence"] == "STOP"
    r = post(client, model="stopper")
    assert r.get_json()["stop_reason"] == "end_turn" and r.get_json()["stop_sequence"] is None
    r = post(client, model="stopper", stop_sequences=["STOP"], stream=True)
    events = events_of(r)
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "STOP"}


def test_output_config_format_is_checked(client: FlaskClient, sdk: anthropic.Anthropic) -> None:
    fmt = {"format": {"type": "json_schema", "schema": PERSON}}
    r = post(client, model="json", output_config=fmt)
    assert r.status_code == 200 and json.loads(r.get_json()["content"][0]["text"]) == {
        "name": "Ada",
        "age": 36,
    }
    request = last_request("json")
    assert request.output_format is not None and request.output_format.schema == PERSON
    r = post(client, model="bad-json", output_config=fmt)
    assert r.status_code == 502 and r.get_json()["error"]["code"] == "output_schema_violation"
    assert "output_config.format" in r.get_json()["error"]["message"]
    r = post(client, model="plain", output_config=fmt)  # a model without structured output
    assert r.status_code == 400 and r.get_json()["error"]["type"] == "invalid_request_error"


def test_count_tokens_is_the_runtimes_prompt_length(client: FlaskClient, sdk: anthropic.Anthropic) -> None:
    count = sdk.messages.count_tokens(model="caller", messages=ASK, tools=[WEATHER], system="Be brief.")
    assert count.input_tokens == 3  # what the scripted runtime says of every prompt
    request = last_request("caller")
    assert request.count_only and request.decoding.max_tokens == 1
    assert request.instructions == "Be brief." and request.tools is not None
    # A count is no answer: a required call that does not come fails nothing.
    r = client.post(
        "/v1/messages/count_tokens",
        json={"model": "talker", "messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "any"}},
    )
    assert r.status_code == 200 and r.get_json() == {"input_tokens": 3}
    r = client.post("/v1/messages/count_tokens", json={"model": "plain", "messages": ASK, "max_tokens": 5})
    assert r.status_code == 422 and r.get_json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"max_tokens": None}, "max_tokens", 422),
        ({"messages": []}, "messages", 422),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "type", 422),
        ({"unknown": 1}, "unknown", 422),
        ({"thinking": {"type": "enabled"}}, "budget_tokens", 422),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "budget_tokens", 422),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 2048}, "max_tokens": 2048},
            "thinking.budget_tokens",
            400,
        ),
        ({"messages": [*ASK, {"role": "assistant", "content": "The weather is"}]}, "prefill", 400),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages.0.content.0",
            400,
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "image", "source": {"type": "url", "url": "x"}}],
                    },
                    *ASK,
                ]
            },
            "messages.0.content.0",
            400,
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0", 400),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice", 400),
        ({"tools": [{**WEATHER, "input_schema": {"type": 5}}]}, "tools.0.input_schema", 400),
        ({"output_config": {"effort": "high"}}, "output_config.effort", 400),
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "MCP servers", 400),
        ({"speed": "fast"}, "speed", 400),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(
    client: FlaskClient, body: dict[str, Any], param: str, status: int
) -> None:
    r = post(client, model="caller", **body)
    assert r.status_code == status, r.get_json()
    error = r.get_json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert param in error["error"]["message"], error


def test_errors_before_and_after_the_stream_starts(client: FlaskClient, sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.create(model="nope", max_tokens=8, messages=ASK)
    assert missing.value.body["error"]["type"] == "not_found_error"
    r = post(client, model="thinker", thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2000)
    assert r.status_code == 200
    r = post(client, model="plain", thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2000)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "thinking_unsupported"
    r = post(client, model="crasher", stream=True)
    events = events_of(r)
    assert events[-1][0] == "error" and events[-1][1]["type"] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"
    with (
        pytest.raises(anthropic.APIStatusError),
        sdk.messages.stream(model="crasher", max_tokens=8, messages=ASK) as stream,
    ):
        stream.get_final_message()
