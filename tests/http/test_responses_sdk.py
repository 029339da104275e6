"""POST /v1/responses as the official `openai` SDK reads it (SPEC §10, issue 14).

The SDK runs in-process against the Flask app (its HTTP client on a WSGI transport), so
what is asserted is what the SDK's own parsing makes of our JSON and events: its
`output_text` property, its stream helper's accumulated response, the exception class it
raises for a status or a failed stream. The raw shapes are asserted too, since the pool's
own clients read them (output[0], event names, `id`/`delta`, sequence numbers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import SMOLLM2_ID
from tests.fakes import scripted_model
from tests.http.conftest import base_settings, openai_sdk, sse_events

GREEDY = {"temperature": 0.0, "top_k": 1, "max_tokens": 12}
QUESTION = "Name three colors of the rainbow."


def settings() -> dict[str, Any]:
    out = base_settings()
    out["engine"]["models"]["scripted-thinker"] = scripted_model(
        scripted_tokens=4, scripted_reasoning=3, modalities=["text", "image"]
    )
    out["engine"]["models"]["scripted-silent"] = scripted_model(scripted_tokens=2, scripted_answer=False)
    return out


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(settings())


@pytest.fixture
def sdk(app: Flask) -> Iterator[openai.OpenAI]:
    with openai_sdk(app) as c:
        yield c


def raw_events(r: Any) -> list[tuple[str, Any]]:
    return [e for e in sse_events(r.get_data(as_text=True)) if e[0] != "comment"]


def post(client: FlaskClient, **body: Any) -> Any:
    return client.post("/v1/responses", json=body)


# -- non-streamed --------------------------------------------------------------------
def test_sdk_output_text_is_the_pools_output_text(sdk: openai.OpenAI, client: FlaskClient) -> None:
    got = sdk.responses.create(model=SMOLLM2_ID, input=QUESTION, max_output_tokens=12, temperature=0)
    raw = post(
        client, model=SMOLLM2_ID, input=QUESTION, decoding={"max_tokens": 12, "temperature": 0}
    ).get_json()
    assert got.output_text.strip() and got.output_text == raw["output_text"]
    assert got.id.startswith("resp_") and got.object == "response" and got.model == SMOLLM2_ID
    assert got.status in ("completed", "incomplete")
    assert got.usage is not None and got.usage.output_tokens == raw["usage"]["output_tokens"]
    assert got.usage.total_tokens == got.usage.input_tokens + got.usage.output_tokens


def test_json_keeps_the_pools_fields_and_appends_openai_items(client: FlaskClient) -> None:
    body = post(client, model="scripted-thinker", input="x").get_json()
    # The pool's own fields, where they always were.
    assert body["output"][0] == {"type": "output_text", "text": "t0 t1 t2 t3 "}
    assert body["output_text"] == "t0 t1 t2 t3 " and body["reasoning_text"] == "r0 r1 r2 "
    assert body["finish_reason"] == "length" and set(body["metrics"]) >= {"pool_total_wall_ms"}
    assert body["usage"]["input_tokens"] == 3 and body["usage"]["output_tokens"] == 4
    # Then OpenAI's: the reasoning item before the assistant message.
    reasoning, message = body["output"][1:]
    hexid = body["id"].removeprefix("resp_")
    assert reasoning == {
        "type": "reasoning",
        "id": "rs_" + hexid,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "r0 r1 r2 "}],
        "status": "incomplete",
    }
    assert message == {
        "type": "message",
        "id": "msg_" + hexid,
        "role": "assistant",
        "status": "incomplete",  # scripted answers end by length: OpenAI's max_output_tokens
        "content": [{"type": "output_text", "text": "t0 t1 t2 t3 ", "annotations": [], "logprobs": []}],
    }
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["created_at"] == body["created"] and body["object"] == "response"


def test_sdk_reads_reasoning_items(sdk: openai.OpenAI) -> None:
    got = sdk.responses.create(model="scripted-thinker", input="x")
    assert got.output_text == "t0 t1 t2 t3 "
    [reasoning] = [item for item in got.output if item.type == "reasoning"]
    assert reasoning.content is not None and reasoning.content[0].text == "r0 r1 r2 "


def test_a_model_that_does_not_reason_has_no_reasoning_item(client: FlaskClient) -> None:
    body = post(client, model="scripted-crash", input="x", max_output_tokens=2).get_json()
    assert [item["type"] for item in body["output"]] == ["output_text", "message"]
    assert body["reasoning_text"] is None


# -- streamed ------------------------------------------------------------------------
def test_raw_stream_numbers_every_event_and_keeps_the_pools_fields(client: FlaskClient) -> None:
    events = raw_events(post(client, model="scripted-thinker", input="x", stream=True))
    names = [name for name, _ in events]
    assert all(data["type"] == name for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.reasoning_text.delta"] * 3,
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.metrics",
        "response.completed",
    ]
    created, completed = events[0][1], events[-1][1]
    job_id = created["id"]
    assert created["model"] == "scripted-thinker"
    assert created["response"]["id"] == job_id and created["response"]["status"] == "in_progress"
    assert created["response"]["output"] == []
    reasoning = [d for n, d in events if n == "response.reasoning_text.delta"]
    text = [d for n, d in events if n == "response.output_text.delta"]
    # The pool's fields, and OpenAI's indices: reasoning item 0, message item 1.
    assert all(d["id"] == job_id for d in reasoning + text)
    assert {(d["item_id"], d["output_index"], d["content_index"]) for d in reasoning} == {
        ("rs_" + job_id.removeprefix("resp_"), 0, 0)
    }
    assert {(d["item_id"], d["output_index"], d["content_index"]) for d in text} == {
        ("msg_" + job_id.removeprefix("resp_"), 1, 0)
    }
    assert "".join(d["delta"] for d in text) == completed["output_text"] == "t0 t1 t2 t3 "
    assert "".join(d["delta"] for d in reasoning) == completed["reasoning_text"] == "r0 r1 r2 "
    assert completed["finish_reason"] == "length" and completed["usage"]["output_tokens"] == 4
    final = completed["response"]
    assert final["id"] == job_id and final["status"] == "incomplete"
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][1]["content"][0]["text"] == "t0 t1 t2 t3 "
    added = [d for n, d in events if n == "response.output_item.added"]
    done = [d for n, d in events if n == "response.output_item.done"]
    assert [d["item"]["status"] for d in added] == ["in_progress"] * 2
    assert [d["item"] for d in done] == final["output"]


def test_a_silent_answer_still_has_its_message_item(client: FlaskClient) -> None:
    events = raw_events(post(client, model="scripted-silent", input="x", stream=True))
    assert "response.output_text.delta" not in [name for name, _ in events]
    final = events[-1][1]["response"]
    assert [item["type"] for item in final["output"]] == ["message"]
    assert final["output"][0]["content"] == [
        {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    ]


def test_sdk_stream_events_are_typed_and_ordered(sdk: openai.OpenAI) -> None:
    events = list(sdk.responses.create(model=SMOLLM2_ID, input=QUESTION, max_output_tokens=12, stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-2:] == ["response.metrics", "response.completed"]
    deltas = [e for e in events if isinstance(e, openai.types.responses.ResponseTextDeltaEvent)]
    assert len(deltas) >= 3
    completed = events[-1]
    assert isinstance(completed, openai.types.responses.ResponseCompletedEvent)
    assert "".join(d.delta for d in deltas) == completed.response.output_text
    assert {(d.item_id, d.output_index, d.content_index) for d in deltas} == {
        (completed.response.output[0].id, 0, 0)
    }


def test_sdk_stream_helper_returns_the_final_response(sdk: openai.OpenAI, client: FlaskClient) -> None:
    raw = post(client, model=SMOLLM2_ID, input=QUESTION, decoding={"max_tokens": 12}).get_json()
    with sdk.responses.stream(model=SMOLLM2_ID, input=QUESTION, max_output_tokens=12) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) == raw["output_text"]
    assert final.id.startswith("resp_") and final.usage is not None


def test_sdk_stream_helper_with_reasoning(sdk: openai.OpenAI) -> None:
    with sdk.responses.stream(model="scripted-thinker", input="x") as stream:
        final = stream.get_final_response()
    assert final.output_text == "t0 t1 t2 t3 "
    assert [item.type for item in final.output] == ["reasoning", "message"]


# -- errors --------------------------------------------------------------------------
def test_unknown_model_is_the_sdks_not_found(sdk: openai.OpenAI, client: FlaskClient) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.responses.create(model="nope", input="x")
    assert caught.value.status_code == 404 and caught.value.code == "unknown_model"
    body = post(client, model="nope", input="x").get_json()
    assert body["detail"] == {
        "code": "unknown_model",
        "message": "model 'nope' is not configured",
        "model": "nope",
    }
    assert body["error"] == {
        "message": "model 'nope' is not configured",
        "type": "invalid_request_error",
        "param": None,
        "code": "unknown_model",
    }


def test_a_refused_field_is_the_sdks_bad_request(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model=SMOLLM2_ID, input="x", store=True)
    assert caught.value.param == "store" and caught.value.code == "unsupported_value"


def test_a_schema_error_is_the_sdks_unprocessable_entity(sdk: openai.OpenAI, client: FlaskClient) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk.responses.create(model=SMOLLM2_ID, input="x", temperature=3)
    assert caught.value.param == "temperature"
    body = post(client, model=SMOLLM2_ID, input="x", temperature=3).get_json()
    assert body["detail"][0]["loc"] == ["body", "temperature"]


def test_a_failure_inside_a_stream_raises_in_the_sdk(sdk: openai.OpenAI, client: FlaskClient) -> None:
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="scripted runtime crashed"):
        for event in sdk.responses.create(model="scripted-crash", input="x", stream=True):
            seen.append(event.type)
    assert seen.count("response.output_text.delta") == 3
    events = raw_events(post(client, model="scripted-crash", input="x", stream=True))
    name, failed = events[-1]
    assert name == "response.failed" == failed["type"]
    assert failed["sequence_number"] == len(events) - 1
    assert failed["error"]["code"] == "backend_error"  # the pool's field, and what the SDK raises on
    assert failed["response"]["status"] == "failed" and failed["response"]["error"] == failed["error"]


# -- request fields ------------------------------------------------------------------
def test_top_level_sampling_fields_go_into_decoding(client: FlaskClient) -> None:
    body = post(client, model="scripted-thinker", input="x", max_output_tokens=2, temperature=0.3, top_p=0.5)
    got = body.get_json()
    assert got["output_text"] == "t0 t1 "  # the scripted model stops at max_tokens
    assert (got["max_output_tokens"], got["temperature"], got["top_p"]) == (2, 0.3, 0.5)
    # The same value both ways is fine; two different ones are refused, naming the field.
    same = post(client, model="scripted-thinker", input="x", max_output_tokens=2, decoding={"max_tokens": 2})
    assert same.status_code == 200
    clash = post(client, model="scripted-thinker", input="x", max_output_tokens=2, decoding={"max_tokens": 3})
    assert clash.status_code == 400
    assert clash.get_json()["error"]["param"] == "max_output_tokens"
    assert clash.get_json()["detail"]["code"] == "invalid_value"


def test_max_output_tokens_is_checked_against_the_model(client: FlaskClient) -> None:
    r = post(client, model=SMOLLM2_ID, input="x", max_output_tokens=5000)
    assert r.status_code == 422 and r.get_json()["detail"][0]["loc"] == ["body", "decoding", "max_tokens"]


def test_input_items_map_onto_input_instructions_and_messages(client: FlaskClient) -> None:
    def text(**body: Any) -> str:
        r = post(client, model=SMOLLM2_ID, decoding={"max_tokens": 12}, **body)
        assert r.status_code == 200, r.get_json()
        return str(r.get_json()["output_text"])

    system = "Answer in one short sentence."
    # One user message is `input`, exactly as the plain string.
    assert text(input=[{"role": "user", "content": QUESTION}]) == text(input=QUESTION)
    # System/developer items are the instructions, typed parts are their text.
    items = [
        {"type": "message", "role": "developer", "content": system},
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
    ]
    assert text(input=items) == text(input=QUESTION, instructions=system)
    # Several turns are the conversation (a replayed assistant message included).
    turns = [
        {"role": "user", "content": "Hi!"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
        {"role": "user", "content": QUESTION},
    ]
    native = [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": QUESTION},
    ]
    assert text(input=turns) == text(messages=native)


def test_input_items_must_end_with_the_user(client: FlaskClient) -> None:
    r = post(
        client,
        model=SMOLLM2_ID,
        input=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    )
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "input"


def test_input_image_reaches_the_model_and_a_text_model_refuses_it(client: FlaskClient) -> None:
    from tests.media_server import PNG_DATA_URL

    parts = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": PNG_DATA_URL},
    ]
    ok = post(client, model="scripted-thinker", input=[{"role": "user", "content": parts}])
    assert ok.status_code == 200
    refused = post(client, model=SMOLLM2_ID, input=[{"role": "user", "content": parts}])
    assert refused.status_code == 400 and refused.get_json()["detail"]["code"] == "modality_unsupported"


@pytest.fixture
def thinking_app(make_app: Callable[..., Flask]) -> Flask:
    out = settings()
    model = dict(out["engine"]["models"][SMOLLM2_ID], prompt_format="qwen3_template")
    out["engine"]["models"] = {"qwen3-format": model, SMOLLM2_ID: out["engine"]["models"][SMOLLM2_ID]}
    return make_app(out)


@pytest.mark.parametrize(
    ("effort", "thinking"),
    [
        ("none", "disabled"),
        ("minimal", "disabled"),
        ("low", "enabled"),
        ("medium", "enabled"),
        ("high", "enabled"),
    ],
)
def test_reasoning_effort_maps_onto_thinking(thinking_app: Flask, effort: str, thinking: str) -> None:
    client = thinking_app.test_client()
    body = {"model": "qwen3-format", "input": "x", "reasoning": {"effort": effort}, "max_output_tokens": 2}
    got = client.post("/v1/responses", json=body).get_json()
    assert got["thinking"] == thinking and got["reasoning"]["effort"] == effort
    agreeing = client.post("/v1/responses", json={**body, "thinking": thinking})
    assert agreeing.status_code == 200
    other = "enabled" if thinking == "disabled" else "disabled"
    clash = client.post("/v1/responses", json={**body, "thinking": other})
    assert clash.status_code == 400 and clash.get_json()["error"]["param"] == "reasoning.effort"


def test_reasoning_effort_on_a_model_without_thinking_modes(client: FlaskClient) -> None:
    r = post(client, model=SMOLLM2_ID, input="x", reasoning={"effort": "high"})
    assert r.status_code == 400 and r.get_json()["detail"]["code"] == "thinking_unsupported"


REFUSED = [
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "name": "f"}}, "tool_choice"),
    ({"store": True}, "store"),
    ({"background": True}, "background"),
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, "text.format"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"truncation": "auto"}, "truncation"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"reasoning": {"summary": "detailed"}}, "reasoning.summary"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"max_tool_calls": 1}, "max_tool_calls"),
    ({"stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
        "input[0].content[0].type",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
        "input[0].content[0].image_url",
    ),
]


@pytest.mark.parametrize(("extra", "param"), REFUSED)
def test_what_the_pool_cannot_honour_is_a_400_naming_it(
    client: FlaskClient, extra: dict[str, Any], param: str
) -> None:
    r = post(client, **{"model": "scripted-thinker", "input": "x", **extra})
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert body["error"]["param"] == param and body["detail"]["code"] == "unsupported_value"
    assert body["error"]["type"] == "invalid_request_error"


def test_harmless_sdk_fields_are_accepted(client: FlaskClient) -> None:
    r = post(
        client,
        model="scripted-thinker",
        input="x",
        metadata={"k": "v"},
        user="u",
        safety_identifier="s",
        prompt_cache_key="p",
        parallel_tool_calls=True,
        store=False,
        tools=[],
        tool_choice="auto",
        text={"format": {"type": "text"}, "verbosity": "medium"},
        include=[],
        truncation="disabled",
        reasoning={"summary": "auto"},
        stream_options={"include_obfuscation": False},
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["metadata"] == {"k": "v"}


def test_unknown_fields_stay_a_422(client: FlaskClient) -> None:
    r = post(client, model="scripted-thinker", input="x", colour="red")
    assert r.status_code == 422 and r.get_json()["detail"][0]["type"] == "extra_forbidden"
    r = post(client, model="scripted-thinker", input="x", stream_options={"include_usage": True})
    assert r.status_code == 422 and r.get_json()["error"]["param"] == "stream_options.include_usage"
