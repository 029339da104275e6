"""POST /v1/chat/completions through the Flask test client, real SmolLM2 (SPEC §3)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from llmpool.backends import registry
from llmpool.backends.base import Capabilities
from llmpool.config.spec import ModelSpec
from llmpool.metrics import METRIC_KEYS
from tests.conftest import SMOLLM2_ID
from tests.fakes import ScriptedAdapter
from tests.http.conftest import base_settings

URL = "/v1/chat/completions"
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
GREEDY = {"model": SMOLLM2_ID, "messages": POEM, "temperature": 0, "max_tokens": 24}


def chat_events(body: str) -> list[Any]:
    """The `data:` payloads of a chat stream, decoded; `[DONE]` stays a string, comments go."""
    events: list[Any] = []
    for block in body.split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        assert block.startswith("data: ") and "\n" not in block, block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def chat(client: FlaskClient, **body: Any) -> Any:
    r = client.post(URL, json={**GREEDY, **body})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def error(r: Any) -> dict[str, Any]:
    body = r.get_json()
    assert body is not None and set(body) == {"error"}, r.get_data(as_text=True)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# -- JSON ------------------------------------------------------------------------------
def test_json_response_has_openais_shape(client: FlaskClient) -> None:
    body = chat(client)
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == SMOLLM2_ID and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in ("stop", "length")
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert "reasoning_content" not in choice["message"]  # SmolLM2 does not reason
    usage = body["usage"]
    assert usage["prompt_tokens"] > 10 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert set(body["metrics"]) == set(METRIC_KEYS)
    assert body["metrics"]["engine_output_tokens"] == usage["completion_tokens"]


def test_same_engine_path_as_responses(client: FlaskClient) -> None:
    # System messages become `instructions`: the answer and prompt are exactly /v1/responses'.
    system = [{"role": "system", "content": "You are concise."}, {"role": "system", "content": "Use rhyme."}]
    body = chat(client, messages=system + POEM)
    ours = client.post(
        "/v1/responses",
        json={
            "model": SMOLLM2_ID,
            "instructions": "You are concise.\n\nUse rhyme.",
            "messages": POEM,
            "decoding": {"temperature": 0, "max_tokens": 24},
        },
    ).get_json()
    assert body["choices"][0]["message"]["content"] == ours["output_text"]
    assert body["usage"]["prompt_tokens"] == ours["usage"]["input_tokens"]


def test_system_message_text_reaches_the_prompt(client: FlaskClient) -> None:
    def prompt_tokens(role: str, text: str) -> int:
        return int(chat(client, messages=[{"role": role, "content": text}, *POEM])["usage"]["prompt_tokens"])

    short = prompt_tokens("system", "Be brief.")
    long = prompt_tokens("system", "Be brief. You are a poet who always answers in rhyme, with feeling.")
    assert long > short + 10
    # SmolLM2's template adds its own default system prompt when there is none: ours replaced it.
    assert short != chat(client)["usage"]["prompt_tokens"]
    assert prompt_tokens("developer", "Be brief.") == short  # OpenAI's newer name for the role


def test_content_parts_are_concatenated_text(client: FlaskClient) -> None:
    parts = [{"type": "text", "text": "Write a short poem "}, {"type": "text", "text": "about the sea."}]
    as_parts = chat(client, messages=[{"role": "user", "content": parts}])
    as_string = chat(client)
    assert as_parts["choices"][0]["message"] == as_string["choices"][0]["message"]
    assert as_parts["usage"] == as_string["usage"]


def test_multi_turn_conversation(client: FlaskClient) -> None:
    messages = [
        {"role": "user", "content": "My favorite color is teal."},
        {"role": "assistant", "content": "Got it.", "refusal": None},  # an SDK's echo: dropped
        {"role": "user", "content": "What is my favorite color?"},
    ]
    body = chat(client, messages=messages)
    assert body["usage"]["prompt_tokens"] > 30
    assert "<|im_start|>" not in body["choices"][0]["message"]["content"]


def test_max_completion_tokens_wins_over_max_tokens(client: FlaskClient) -> None:
    body = chat(client, max_tokens=20, max_completion_tokens=3)
    assert body["usage"]["completion_tokens"] <= 4  # re-tokenising the text may split one
    assert body["choices"][0]["finish_reason"] == "length"
    assert chat(client, max_tokens=3)["usage"]["completion_tokens"] <= 4


def test_stop_as_a_string(client: FlaskClient) -> None:
    free = chat(client, max_tokens=40)["choices"][0]["message"]["content"]
    # Greedy decoding repeats itself exactly, so stopping on a later word of the free run
    # returns precisely the text before that word's first occurrence.
    words = [w for w in free.split() if free.index(w) > 0]
    assert words, free
    stop = words[len(words) // 2]
    [choice] = chat(client, max_tokens=40, stop=stop)["choices"]
    assert choice["message"]["content"] == free[: free.index(stop)]
    assert choice["finish_reason"] == "stop"


def test_a_seed_makes_sampling_repeatable(client: FlaskClient) -> None:
    """SmolLM2 sampling at temperature 1 over its whole vocabulary: one seed gives one answer
    every time, and different seeds do not all give the same one."""
    sampled = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 16}

    def text(seed: int) -> str:
        return str(chat(client, seed=seed, **sampled)["choices"][0]["message"]["content"])

    assert text(11) == text(11)
    assert len({text(seed) for seed in (1, 2, 3, 4)}) > 1


def test_harmless_openai_keys_change_nothing(client: FlaskClient) -> None:
    extra = {
        "user": "u1",
        "seed": None,  # a seed is refused (tests/http/test_openai_fields.py)
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "logprobs": False,
        "n": 1,
        "response_format": {"type": "text"},
        "tool_choice": "none",
        "stream": False,
        "stop": None,
    }
    assert (
        chat(client, **extra)["choices"][0]["message"]["content"]
        == chat(client)["choices"][0]["message"]["content"]
    )


# -- stream ----------------------------------------------------------------------------
def stream(client: FlaskClient, **body: Any) -> list[Any]:
    r = client.post(URL, json={**GREEDY, "stream": True, **body})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    return chat_events(r.get_data(as_text=True))


def test_stream_chunk_sequence(client: FlaskClient) -> None:
    events = stream(client)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage
    first, *middle, last = [c["choices"][0] for c in chunks]
    assert first["delta"] == {"role": "assistant", "content": ""} and first["finish_reason"] is None
    assert len(middle) >= 3 and all(set(m["delta"]) == {"content"} for m in middle)
    assert all(m["finish_reason"] is None for m in middle)
    assert last["delta"] == {} and last["finish_reason"] in ("stop", "length")
    assert set(chunks[-1]["metrics"]) == set(METRIC_KEYS)
    # Deltas as the backend produced them add up to the non-stream answer.
    text = "".join(m["delta"]["content"] for m in middle)
    assert text == chat(client)["choices"][0]["message"]["content"]


def test_stream_usage_chunk_with_include_usage(client: FlaskClient) -> None:
    events = stream(client, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert all(c["usage"] is None for c in events[:-2])  # as OpenAI sends them
    assert events[-3]["choices"][0]["finish_reason"] in ("stop", "length")


def test_failure_mid_stream_is_an_error_line_without_done(client: FlaskClient) -> None:
    body = {"model": "scripted-crash", "messages": POEM}
    events = stream(client, **body)
    assert "[DONE]" not in events
    contents = [c["choices"][0]["delta"].get("content") for c in events[:-1]]
    assert contents == ["", "t0 ", "t1 ", "t2 "]
    err = events[-1]["error"]
    assert err["code"] == "backend_error" and err["type"] == "server_error"
    assert "crashed" in err["message"]


def test_a_bug_mid_stream_ends_with_an_internal_error_line(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmpool.serving.chat_api as compat

    def broken(done: Any) -> str:
        raise KeyError("secret internals")

    monkeypatch.setattr(compat, "finish_reason", broken)
    r = client.post(URL, json={**GREEDY, "stream": True})
    events = chat_events(r.get_data(as_text=True))
    assert events[-1] == {
        "error": {
            "message": "internal server error",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    assert "secret" not in r.get_data(as_text=True)


def test_client_gone_cancels_the_job(client: FlaskClient) -> None:
    body = {"model": "scripted-slow", "messages": POEM, "max_tokens": 400, "stream": True}
    r = client.post(URL, json=body, buffered=False)
    chunks: Iterator[bytes] = iter(r.response)
    seen = b""
    while seen.count(b'"content":"t') < 3:
        seen += next(chunks)
    r.close()  # the client goes away
    [adapter] = [a for a in ScriptedAdapter.instances if a.spec.name == "scripted-slow" and not a.closed]
    deadline = time.monotonic() + 2
    while adapter.active:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert adapter.tokens_emitted < 100
    row = client.get("/v1/admin/models/scripted-slow").get_json()
    assert row["inflight"] == 0 and row["queue_depth"] == 0


# -- errors ----------------------------------------------------------------------------
def test_unknown_model_is_404(client: FlaskClient) -> None:
    r = client.post(URL, json={**GREEDY, "model": "no-such-model"})
    assert r.status_code == 404
    err = error(r)
    assert err["code"] == "unknown_model" and err["type"] == "invalid_request_error"
    assert "no-such-model" in err["message"]


def test_model_not_loaded_is_409(client: FlaskClient) -> None:
    r = client.post(URL, json={**GREEDY, "model": "scripted-idle"})
    assert r.status_code == 409 and error(r)["code"] == "model_not_loaded"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"temperature": 5}, "temperature", "invalid_value"),
        ({"temperature": "0.5"}, "temperature", "invalid_value"),
        ({"top_p": 0}, "top_p", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"stop": [1]}, "stop", "invalid_value"),
        ({"stream": "yes"}, "stream", "invalid_value"),
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": None}, "messages", "invalid_value"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages.0.role", "invalid_value"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id", "invalid_value"),
        ({"messages": [{"role": "user"}]}, "messages.0.content", "missing_required_parameter"),
        ({"model": None}, "model", "invalid_value"),
        ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x", "unknown_parameter"),
        ({"max_tokens": 5000}, "max_tokens", "validation_error"),  # the model's context limit
    ],
)
def test_bad_values_are_422_with_param(
    client: FlaskClient, body: dict[str, Any], param: str, code: str
) -> None:
    r = client.post(URL, json={**GREEDY, **body})
    assert r.status_code == 422
    err = error(r)
    assert err["param"] == param and err["code"] == code, err
    assert err["type"] == "invalid_request_error" and err["message"]


def test_missing_model_and_malformed_body_are_422(client: FlaskClient) -> None:
    r = client.post(URL, json={"messages": POEM})
    assert r.status_code == 422 and error(r)["param"] == "model"
    assert error(r)["code"] == "missing_required_parameter"
    r = client.post(URL, data=b"{not json", content_type="application/json")
    assert r.status_code == 422 and error(r)["param"] is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"logprobs": True}, "logprobs"),
        ({"messages": [*POEM, {"role": "assistant", "content": "The sea"}]}, "messages"),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, "messages"),
        # SmolLM2 here is in-process llama.cpp, which does not declare message_names
        # (llama-server's template gets a name: test_llama_server).
        ({"messages": [{"role": "user", "content": "Hi", "name": "ann"}]}, "messages.0.name"),
        ({"stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
        ({"messages": [{"role": "system", "content": "Be brief.", "name": "s"}, *POEM]}, "messages.0.name"),
    ],
)
def test_unsupported_requests_are_400(client: FlaskClient, body: dict[str, Any], param: str) -> None:
    r = client.post(URL, json={**GREEDY, **body})
    assert r.status_code == 400
    err = error(r)
    assert err["param"] == param and err["type"] == "invalid_request_error", err


def test_queue_full_is_429_with_retry_after(client: FlaskClient) -> None:
    # scripted-slow: one slot, max_queue 1. One job runs (1.5 s), one waits, the third is refused.
    slow = {"model": "scripted-slow", "messages": POEM, "max_tokens": 150}
    results: list[int] = []

    def post() -> None:
        results.append(client.post(URL, json=slow).status_code)

    workers = [threading.Thread(target=post) for _ in range(2)]
    for w in workers:
        w.start()
        time.sleep(0.3)
    r = client.post(URL, json=slow)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    err = error(r)
    assert err["code"] == "queue_full" and err["type"] == "rate_limit_error"
    for w in workers:
        w.join(timeout=30)
    assert results == [200, 200]


def test_backend_failure_is_502(client: FlaskClient) -> None:
    r = client.post(URL, json={"model": "scripted-crash", "messages": POEM})
    assert r.status_code == 502
    err = error(r)
    assert err["code"] == "backend_error" and err["type"] == "server_error"


def test_a_bug_is_a_500_without_a_trace(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import llmpool.serving.chat_api as compat

    def broken(job: Any, done: Any) -> dict[str, Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(compat, "completion", broken)
    r = client.post(URL, json=GREEDY)
    assert r.status_code == 500
    assert error(r) == {
        "message": "internal server error",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    assert "secret" not in r.get_data(as_text=True)


def test_responses_keeps_its_own_error_shape(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json={"model": "no-such-model", "input": "hi"})
    assert r.status_code == 404 and r.get_json()["detail"]["code"] == "unknown_model"


# -- remote gate and single-turn models (fake adapters) --------------------------------
class RemoteScripted(ScriptedAdapter):
    """The scripted runtime, declared remote: the pool's allow_remote gate applies."""

    backend = "scripted_remote"
    is_remote = True


class SingleTurnScripted(ScriptedAdapter):
    backend = "scripted_single"

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        return Capabilities(modalities=("text",), multi_turn=False, thinking_modes=("default",))


FAKES = (RemoteScripted, SingleTurnScripted)


@pytest.fixture
def fake_client(make_app: Callable[..., Flask]) -> Iterator[FlaskClient]:
    for cls in FAKES:
        registry.register(cls)
    try:
        settings = base_settings()
        settings["engine"]["models"] = {
            "remote": {"backend": "scripted_remote", "enabled": True},
            "single": {"backend": "scripted_single", "enabled": True},
        }
        yield make_app(settings).test_client()
    finally:
        for cls in FAKES:
            registry.unregister(cls.backend)


def test_remote_model_needs_allow_remote(fake_client: FlaskClient) -> None:
    body = {"model": "remote", "messages": POEM}
    r = fake_client.post(URL, json=body)
    assert r.status_code == 403
    assert error(r)["code"] == "remote_not_allowed" and error(r)["type"] == "permission_error"
    r = fake_client.post(URL, json=body, headers={"X-LLM-Pool-Allow-Remote": "false"})
    assert r.status_code == 403
    r = fake_client.post(URL, json=body, headers={"X-LLM-Pool-Allow-Remote": "true"})
    assert r.status_code == 200 and r.get_json()["choices"][0]["message"]["content"] == "t0 t1 t2 t3 t4 "
    assert fake_client.post(URL, json={**body, "allow_remote": True}).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": "remote", "input": "hi"}),
        ("/v1/chat/completions", {"model": "remote", "messages": POEM}),
        ("/v1/completions", {"model": "remote", "prompt": "hi"}),
    ],
)
def test_every_api_reads_allow_remote_the_same_way(
    fake_client: FlaskClient, path: str, body: dict[str, Any]
) -> None:
    """One gate (llmpool.serving.pipeline): the body field or the header, on every API."""
    assert fake_client.post(path, json=body).status_code == 403
    assert fake_client.post(path, json=body, headers={"X-LLM-Pool-Allow-Remote": "no"}).status_code == 403
    assert fake_client.post(path, json={**body, "allow_remote": False}).status_code == 403
    assert fake_client.post(path, json=body, headers={"X-LLM-Pool-Allow-Remote": "true"}).status_code == 200
    assert fake_client.post(path, json={**body, "allow_remote": True}).status_code == 200


def test_single_turn_model_serves_one_user_message(fake_client: FlaskClient) -> None:
    system = {"role": "system", "content": "Be brief."}
    r = fake_client.post(URL, json={"model": "single", "messages": [system, *POEM]})
    assert r.status_code == 200, r.get_json()
    conversation = [*POEM, {"role": "assistant", "content": "x"}, *POEM]
    r = fake_client.post(URL, json={"model": "single", "messages": conversation})
    assert r.status_code == 400 and error(r)["code"] == "multi_turn_unsupported"
