"""openai_remote through the HTTP API, against a real misbehaving upstream on 127.0.0.1
(tests/runtimes/misbehaving_upstream.py): passthrough streaming, the key, the allow_remote
gate, every upstream_* error, retries, keep-alive, concurrency and cancellation."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.http.conftest import sse_events
from tests.runtimes.misbehaving_upstream import MisbehavingUpstream, Reply, hard_deadline

KEY = "sk-http-secret-9f8e7d6c5b4a"
KEY_ENV = "LLM_POOL_TEST_REMOTE_KEY"
TOKENS = ("Hello", ",", " remote", " world", "!")
MakeClient = Callable[..., FlaskClient]


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    with hard_deadline(15):  # nothing here may hang: each test takes a few seconds at most
        yield


@pytest.fixture
def upstream() -> Iterator[MisbehavingUpstream]:
    with MisbehavingUpstream(api_key=KEY) as server:
        yield server


@pytest.fixture
def remote(
    upstream: MisbehavingUpstream, make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> MakeClient:
    """remote(**model_keys) -> a client of a pool whose model "remote" is that upstream."""
    monkeypatch.setenv(KEY_ENV, KEY)

    def make(**keys: Any) -> FlaskClient:
        model = {
            "backend": "openai_remote",
            "remote_base_url": upstream.url,
            "remote_api_key_env": KEY_ENV,
            "remote_model": "remote-model",
            "remote_timeout_s": 1,
            "enabled": True,
            **keys,
        }
        settings = {"engine": {"decoding": {"max_tokens": 16}, "models": {"remote": model}}}
        return make_app(settings).test_client()

    return make


def ask(client: FlaskClient, **body: Any) -> TestResponse:
    return client.post("/v1/responses", json={"model": "remote", "input": "hi", "allow_remote": True, **body})


def stream_events(client: FlaskClient, **body: Any) -> list[tuple[str, Any]]:
    r = ask(client, stream=True, **body)
    assert r.status_code == 200, r.get_data(as_text=True)
    return [e for e in sse_events(r.get_data(as_text=True)) if e[0] != "comment"]


def deltas(events: list[tuple[str, Any]]) -> list[str]:
    return [d["delta"] for name, d in events if name == "response.output_text.delta"]


def detail(r: TestResponse) -> dict[str, Any]:
    return r.get_json()["detail"]  # type: ignore[no-any-return]


def row(client: FlaskClient) -> dict[str, Any]:
    return client.get("/v1/admin/models/remote").get_json()  # type: ignore[no-any-return]


# -- the happy path ----------------------------------------------------------------------
def test_json_and_stream_pass_the_upstream_through(remote: MakeClient, upstream: MisbehavingUpstream) -> None:
    client = remote()
    upstream.script(Reply(tokens=TOKENS, finish_reason="length"), Reply(tokens=TOKENS))
    body = ask(client).get_json()
    assert body["output_text"] == "".join(TOKENS)
    assert body["finish_reason"] == "length"
    assert body["usage"]["output_tokens"] == len(TOKENS)
    events = stream_events(client)
    assert deltas(events) == list(TOKENS)  # one delta per upstream chunk, not re-chunked
    assert [n for n, _ in events][-2:] == ["response.metrics", "response.completed"]
    assert events[-1][1]["output_text"] == "".join(TOKENS)


def test_a_raw_prompt_goes_to_the_upstreams_completions_endpoint(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(remote_thinking="disabled")
    upstream.script(Reply(tokens=TOKENS, finish_reason="length"), Reply(tokens=TOKENS))
    body = {"model": "remote", "prompt": "Once upon", "max_tokens": 9, "allow_remote": True}
    got = client.post("/v1/completions", json=body).get_json()
    assert got["choices"][0]["text"] == "".join(TOKENS) and got["choices"][0]["finish_reason"] == "length"
    streamed = client.post("/v1/completions", json={**body, "stream": True}).get_data(as_text=True)
    chunks = [json.loads(b[6:]) for b in streamed.split("\n\n") if b.startswith("data: {")]
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == list(TOKENS)  # not re-chunked
    sent = upstream.requests
    assert [s.path for s in sent] == ["/v1/completions"] * 2
    # The prompt as it is; no chat messages, no chat-template switches.
    assert sent[0].body is not None and sent[0].body["prompt"] == "Once upon"
    assert "messages" not in sent[0].body and "chat_template_kwargs" not in sent[0].body
    assert sent[0].body["max_tokens"] == 9 and sent[0].body["model"] == "remote-model"


def test_deltas_reach_the_client_while_the_upstream_is_still_sending(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote()
    upstream.script(Reply(tokens=TOKENS, token_delay_s=0.15))
    r = client.post(
        "/v1/responses",
        json={"model": "remote", "input": "hi", "allow_remote": True, "stream": True},
        buffered=False,
    )
    chunks = iter(r.response)
    seen = b""
    while b"output_text.delta" not in seen:
        seen += next(chunks)
    assert upstream.streams_finished == 0  # the first token came before the upstream's last
    rest = b"".join(chunks)
    events = sse_events((seen + rest).decode())
    assert deltas(events) == list(TOKENS)
    # The upstream counts a stream once its handler has returned, which may be a moment
    # after the client read the last byte.
    deadline = time.monotonic() + 2
    while upstream.streams_finished == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert upstream.streams_finished == 1


def test_the_key_comes_from_the_env_var_named_at_load(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(remote_headers={"X-Tenant": "team-a"})
    assert ask(client).status_code == 200
    headers = upstream.requests[0].headers
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["X-Tenant"] == "team-a"


def test_decoding_fields_reach_the_upstream(remote: MakeClient, upstream: MisbehavingUpstream) -> None:
    client = remote()
    # The knobs Chat Completions lacks, at the values that leave them off: accepted, not sent.
    off = {"top_k": 0, "repetition_penalty": 1.0, "beam_size": 1}
    decoding = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 7, "stop": ["\n\n"], "seed": 11, **off}
    assert ask(client, instructions="Be brief.", decoding=decoding).status_code == 200
    sent = upstream.requests[0].body
    assert sent is not None
    assert {
        k: sent[k] for k in ("model", "temperature", "top_p", "max_tokens", "stop", "stream", "seed")
    } == {
        "model": "remote-model",
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 7,
        "stop": ["\n\n"],
        "stream": True,
        "seed": 11,
    }
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert not {"top_k", "repetition_penalty", "repeat_penalty", "beam_size", "n"} & set(sent)


@pytest.mark.parametrize("knob, value", [("top_k", 5), ("repetition_penalty", 1.3), ("beam_size", 2)])
def test_a_decoding_knob_the_upstream_lacks_is_refused_naming_it(
    remote: MakeClient, upstream: MisbehavingUpstream, knob: str, value: float
) -> None:
    """Chat Completions has no top_k, repetition penalty or beams: a request that sets one is
    a 400 naming it as the client did, never a request sent without it. engine.decoding's
    own top_k (40 by default) is the operator's default, not the client's: it applies where
    a runtime has the knob and does not make every request to this model fail."""
    client = remote()
    assert row(client)["capabilities"]["decoding"] == ["seed"]
    r = ask(client, decoding={knob: value})
    assert r.status_code == 400, r.get_data(as_text=True)
    assert f"decoding.{knob}" in r.get_data(as_text=True)
    assert "openai_remote" in r.get_data(as_text=True)
    if knob != "beam_size":  # Chat Completions clients send the pool's extensions top-level
        body = {"model": "remote", "messages": [{"role": "user", "content": "hi"}], knob: value}
        r = client.post("/v1/chat/completions", json=body, headers={"X-LLM-Pool-Allow-Remote": "true"})
        assert r.status_code == 400, r.get_data(as_text=True)
        error = r.get_json()["error"]
        assert error["param"] == knob and error["type"] == "invalid_request_error", error
    assert upstream.requests == []
    assert ask(client).status_code == 200  # the default top_k is no request for one


def test_remote_thinking_is_sent_as_chat_template_kwargs(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(remote_thinking="disabled")
    assert row(client)["capabilities"]["thinking_modes"] == ["default", "enabled", "disabled"]
    assert ask(client).status_code == 200
    upstream.script(Reply(reasoning=("let me think",), tokens=("42",)))
    body = ask(client, thinking="enabled").get_json()
    assert body["reasoning_text"] == "let me think" and body["output_text"] == "42"
    sent = [s.body or {} for s in upstream.requests]
    assert [s["chat_template_kwargs"] for s in sent] == [
        {"enable_thinking": False},
        {"enable_thinking": True},
    ]


def test_without_remote_thinking_nothing_is_sent_and_modes_are_refused(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote()
    assert ask(client).status_code == 200
    assert "chat_template_kwargs" not in (upstream.requests[0].body or {})
    r = ask(client, thinking="enabled")
    assert r.status_code == 400 and detail(r)["code"] == "thinking_unsupported"


# -- reasoning formats: thoughts split out of `content`, wherever the SSE chunks cut -----
THOUGHT_STREAM = "<think>\nAdd them.\n</think>\n\nIt is 4."


def reasoning_of(events: list[tuple[str, Any]]) -> str:
    return "".join(d["delta"] for name, d in events if name == "response.reasoning_text.delta")


def test_inline_think_markers_are_split_at_every_sse_cut(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(prompt_format="qwen3_template")
    text = THOUGHT_STREAM
    for cut in range(1, len(text)):
        upstream.script(Reply(tokens=(text[:cut], text[cut:])), Reply(tokens=(text[:cut], text[cut:])))
        body = ask(client).get_json()
        assert (body["output_text"], body["reasoning_text"]) == ("It is 4.", "Add them."), cut
        events = stream_events(client)
        assert ("".join(deltas(events)), reasoning_of(events)) == ("It is 4.", "Add them."), cut
        assert "think>" not in "".join(deltas(events))


def test_gemma4_markers_split_over_three_chunks_in_chat_completions(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(prompt_format="gemma4_template")
    upstream.script(Reply(tokens=("<|chan", "nel>thought\nAdd.<chan", "nel|>4")))
    r = client.post(
        "/v1/chat/completions",
        json={"model": "remote", "messages": [{"role": "user", "content": "2+2?"}], "allow_remote": True},
    )
    message = r.get_json()["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("4", "Add.")


def test_an_upstream_that_splits_itself_passes_through(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(prompt_format="qwen3_template")
    upstream.script(Reply(reasoning=("Add", " them."), tokens=("It", " is 4.")))
    body = ask(client).get_json()
    assert (body["output_text"], body["reasoning_text"]) == ("It is 4.", "Add them.")


def test_reasoning_formats_offer_thinking_modes_without_remote_thinking(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(prompt_format="qwen3_template")
    assert row(client)["capabilities"]["thinking_modes"] == ["default", "enabled", "disabled"]
    upstream.script(Reply(tokens=("4",)), Reply(tokens=("4",)), Reply(tokens=("4",)))
    for thinking in ("default", "disabled", "enabled"):
        assert ask(client, thinking=thinking).get_json()["reasoning_text"] is None
    sent = [s.body or {} for s in upstream.requests]
    assert [s.get("chat_template_kwargs") for s in sent] == [
        None,  # default: the upstream's own
        {"enable_thinking": False},
        {"enable_thinking": True},
    ]


def test_multi_turn_and_images_pass_through(remote: MakeClient, upstream: MisbehavingUpstream) -> None:
    client = remote(modalities=["text", "image"])
    image = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
    ]
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": image},
    ]
    r = client.post("/v1/responses", json={"model": "remote", "messages": messages, "allow_remote": True})
    assert r.status_code == 200, r.get_json()
    assert (upstream.requests[0].body or {})["messages"] == messages


# -- the gate, the key, the admin row -------------------------------------------------------
def test_without_allow_remote_nothing_is_queued_or_sent(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote()
    for body in (
        {"model": "remote", "input": "hi"},
        {"model": "remote", "input": "hi", "allow_remote": False},
        {"model": "remote", "input": "hi", "allow_remote": False, "stream": True},
    ):
        r = client.post("/v1/responses", json=body)
        assert r.status_code == 403, body
        assert detail(r) == {
            "code": "remote_not_allowed",
            "message": "model 'remote' runs on a remote API; set allow_remote: true",
            "model": "remote",
        }
    state = row(client)
    assert upstream.all_requests == [] and state["queue_depth"] == 0 and state["inflight"] == 0
    assert [rep["served"] for rep in state["replica_states"]] == [0]


def test_missing_key_variable_fails_the_load_and_names_it(
    remote: MakeClient, upstream: MisbehavingUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    client = remote()
    state = row(client)
    assert state["state"] == "failed"
    assert KEY_ENV in state["last_error"] and "not set" in state["last_error"]
    r = ask(client)
    assert r.status_code == 409 and detail(r)["code"] == "model_failed"
    monkeypatch.setenv(KEY_ENV, KEY)  # the operator fixes the environment and loads again
    assert client.post("/v1/admin/models/remote/load").get_json()["state"] == "loaded"
    assert ask(client).status_code == 200
    assert upstream.requests[0].headers["Authorization"] == f"Bearer {KEY}"


def test_the_key_never_shows_in_admin_rows_errors_or_logs(
    remote: MakeClient, upstream: MisbehavingUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = remote(remote_max_retries=1)
    # A provider that echoes the key back in its error message, after a retried 500.
    upstream.script(Reply(status=500, error=f"oops {KEY}"), Reply(status=401, error=f"Invalid key {KEY}"))
    r = ask(client)
    assert r.status_code == 502 and detail(r)["code"] == "upstream_authentication"
    assert "Invalid key ***" in detail(r)["message"]
    listing = client.get("/v1/admin/models").get_data(as_text=True)
    one = row(client)
    assert one["definition"]["remote_api_key_env"] == KEY_ENV  # the name, which is fine to show
    assert one["options"]["remote_api_key_env"] == KEY_ENV
    everything = [r.get_data(as_text=True), listing, json.dumps(one), caplog.text]
    assert all(KEY not in text for text in everything)
    assert "retry 1/1" in caplog.text  # the retry was logged, scrubbed


def test_header_values_never_show_in_admin_rows(remote: MakeClient, upstream: MisbehavingUpstream) -> None:
    client = remote(remote_headers={"X-Org-Secret": "org-7f3a9c", "X-Tenant": "team-a"})
    assert ask(client).status_code == 200
    assert upstream.requests[0].headers["X-Org-Secret"] == "org-7f3a9c"  # sent, not shown
    one = row(client)
    assert one["definition"]["remote_headers"] == {"X-Org-Secret": "***", "X-Tenant": "***"}
    assert one["options"]["remote_headers"] == {"X-Org-Secret": "***", "X-Tenant": "***"}
    assert "org-7f3a9c" not in client.get("/v1/admin/models").get_data(as_text=True)


def test_the_admin_row_describes_a_remote_model(remote: MakeClient) -> None:
    state = row(remote(target_inflight=3))
    assert state["backend"] == "openai_remote" and state["state"] == "loaded"
    assert state["target_inflight"] == {"configured": 3, "effective": 3, "clamped": False}
    assert state["capabilities"]["multi_turn"] is True
    assert state["vram"] == {"estimate_mib": None, "source": "unavailable"}
    assert state["replica_states"][0]["pid"] is None


# -- upstream errors -----------------------------------------------------------------------
def test_401_is_upstream_authentication_with_the_upstreams_message(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(remote_max_retries=3)
    upstream.script(Reply(status=401, error="Incorrect API key provided: sk-abc***xyz"))
    r = ask(client)
    assert r.status_code == 502
    d = detail(r)
    assert d["code"] == "upstream_authentication" and d["model"] == "remote"
    assert "answered 401: Incorrect API key provided: sk-abc***xyz" in d["message"]
    assert len(upstream.requests) == 1  # not retried


@pytest.mark.parametrize(
    ("status", "code", "http"),
    [
        (403, "upstream_authentication", 502),
        (400, "upstream_invalid_request", 502),
        (404, "upstream_invalid_request", 502),
        (413, "upstream_invalid_request", 502),
        (422, "upstream_invalid_request", 502),
        (500, "upstream_server_error", 502),
        (503, "upstream_server_error", 502),
    ],
)
def test_upstream_statuses_map_to_upstream_codes(
    remote: MakeClient, upstream: MisbehavingUpstream, status: int, code: str, http: int
) -> None:
    upstream.script(Reply(status=status, error=f"scripted {status}"))
    r = ask(remote())
    assert (r.status_code, detail(r)["code"]) == (http, code)
    assert f"scripted {status}" in detail(r)["message"]
    assert len(upstream.requests) == 1


def test_the_upstream_message_is_cut_at_500_characters(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    upstream.script(Reply(status=400, error="x" * 2000))
    message = detail(ask(remote()))["message"]
    assert "x" * 500 in message and "x" * 501 not in message


def test_429_without_retries_is_429_with_retry_after(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote()
    upstream.script(Reply(status=429, error="Rate limit reached", headers={"Retry-After": "7"}))
    r = ask(client)
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert detail(r)["code"] == "upstream_rate_limit" and "Rate limit reached" in detail(r)["message"]
    upstream.script(Reply(status=429, error="Rate limit reached"))
    r = ask(client)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert len(upstream.requests) == 2


def test_429_then_success_is_retried(remote: MakeClient, upstream: MisbehavingUpstream) -> None:
    client = remote(remote_max_retries=2)
    upstream.script(Reply(status=429, error="slow down", headers={"Retry-After": "0"}), Reply(tokens=TOKENS))
    r = ask(client)
    assert r.status_code == 200 and r.get_json()["output_text"] == "".join(TOKENS)
    assert len(upstream.requests) == 2


def test_500_is_retried_when_allowed(remote: MakeClient, upstream: MisbehavingUpstream) -> None:
    client = remote(remote_max_retries=1)
    upstream.script(Reply(status=500, error="boom"), Reply(tokens=TOKENS))
    assert ask(client).status_code == 200
    assert len(upstream.requests) == 2
    upstream.script(Reply(status=502, error="bad gateway"), Reply(status=500, error="boom again"))
    r = ask(client)
    assert r.status_code == 502 and detail(r)["code"] == "upstream_server_error"
    assert "boom again" in detail(r)["message"]
    assert len(upstream.requests) == 4  # one retry each, then give up


def test_slow_first_byte_is_upstream_timeout(remote: MakeClient, upstream: MisbehavingUpstream) -> None:
    client = remote(remote_timeout_s=0.5, remote_max_retries=2)
    upstream.script(Reply(first_byte_delay_s=10))
    t0 = time.monotonic()
    r = ask(client)
    assert time.monotonic() - t0 < 2.5
    assert r.status_code == 504 and detail(r)["code"] == "upstream_timeout"
    assert len(upstream.requests) == 1  # a timeout is not retried: the upstream may still be working


def test_stall_between_chunks_is_upstream_timeout_in_the_stream(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(remote_timeout_s=0.5)
    upstream.script(Reply(tokens=TOKENS, stall_after=2))
    t0 = time.monotonic()
    events = stream_events(client)
    assert time.monotonic() - t0 < 2.5
    assert deltas(events) == list(TOKENS[:2])
    name, data = events[-1]
    assert name == "response.failed" and data["error"]["code"] == "upstream_timeout"


def test_garbage_from_the_upstream_is_upstream_parse(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(remote_max_retries=2)
    upstream.script(Reply(garbage_after=0), Reply(tokens=TOKENS, garbage_after=2))
    r = ask(client)
    assert r.status_code == 502 and detail(r)["code"] == "upstream_parse"
    events = stream_events(client)
    assert deltas(events) == list(TOKENS[:2])
    assert events[-1][0] == "response.failed" and events[-1][1]["error"]["code"] == "upstream_parse"
    assert len(upstream.requests) == 2  # a malformed answer is not retried


def test_reset_mid_stream_fails_the_stream_and_is_not_retried(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(remote_max_retries=3)
    upstream.script(Reply(tokens=TOKENS, reset_after=2))
    events = stream_events(client)
    assert deltas(events) == list(TOKENS[:2])
    name, data = events[-1]
    assert name == "response.failed" and data["error"]["code"] == "upstream_connection"
    assert len(upstream.requests) == 1  # output had started: a retry would repeat it


def test_reset_before_any_output_is_retried(remote: MakeClient, upstream: MisbehavingUpstream) -> None:
    client = remote(remote_max_retries=1)
    upstream.script(Reply(reset_after=0), Reply(tokens=TOKENS))
    assert ask(client).get_json()["output_text"] == "".join(TOKENS)
    assert len(upstream.requests) == 2


def test_unreachable_upstream_is_upstream_connection(make_app: Callable[..., Flask]) -> None:
    with MisbehavingUpstream() as gone:
        url = gone.url
    model = {"backend": "openai_remote", "remote_base_url": url, "remote_model": "m", "enabled": True}
    client = make_app({"engine": {"models": {"remote": model}}}).test_client()
    r = ask(client)
    assert r.status_code == 502 and detail(r)["code"] == "upstream_connection"


# -- connections, concurrency, cancellation ---------------------------------------------------
def test_sequential_requests_share_one_keep_alive_connection(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(target_inflight=4)
    for _ in range(3):
        assert ask(client).status_code == 200
        assert deltas(stream_events(client)) == list(Reply().tokens)
    assert len(upstream.requests) == 6
    assert len(upstream.ports) == 1  # no new TCP connection per request


def test_target_inflight_bounds_concurrent_upstream_requests(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote(target_inflight=2)
    upstream.script(*[Reply(tokens=TOKENS, token_delay_s=0.05)] * 5)
    results: list[int] = []

    def one() -> None:
        results.append(ask(client).status_code)

    workers = [threading.Thread(target=one) for _ in range(5)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=10)
    assert results == [200] * 5
    assert upstream.max_active == 2  # the other three waited in the pool's queue
    assert len(upstream.ports) <= 2  # and reused the two pooled connections


def test_client_gone_closes_the_upstream_connection(
    remote: MakeClient, upstream: MisbehavingUpstream
) -> None:
    client = remote()
    upstream.script(Reply(tokens=tuple(f"t{i} " for i in range(300)), token_delay_s=0.01))
    r = client.post(
        "/v1/responses",
        json={"model": "remote", "input": "hi", "allow_remote": True, "stream": True},
        buffered=False,
    )
    chunks = iter(r.response)
    seen = b""
    while seen.count(b"output_text.delta") < 3:
        seen += next(chunks)
    r.close()  # the client goes away
    assert upstream.client_gone.wait(3), "the upstream never saw the disconnect"
    assert upstream.streams_finished == 0
    deadline = time.monotonic() + 2
    while row(client)["inflight"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_forced_unload_is_not_held_up_by_a_stalled_upstream(
    remote: MakeClient, upstream: MisbehavingUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmpool.executor

    monkeypatch.setattr(llmpool.executor, "STOP_GRACE_S", 0.3)
    client = remote(remote_timeout_s=60)
    upstream.script(Reply(tokens=TOKENS, stall_after=1))
    result: dict[str, Any] = {}

    def consume() -> None:
        r = ask(client, stream=True)
        result["events"] = [e for e in sse_events(r.get_data(as_text=True)) if e[0] != "comment"]

    worker = threading.Thread(target=consume)
    worker.start()
    deadline = time.monotonic() + 5
    while not upstream.active:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.1)
    t0 = time.monotonic()
    r = client.post("/v1/admin/models/remote/unload?force=true")
    assert r.status_code == 200 and r.get_json()["state"] == "unloaded"
    worker.join(timeout=5)
    assert time.monotonic() - t0 < 3  # the grace, then close() shuts the socket: not 60 s
    assert result["events"][-1][0] == "response.failed"
