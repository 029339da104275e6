"""A supervised child runtime through the HTTP API, with the fake runtime program as the
`llama_server` binary (the real llama-server runs in tests/integration)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.http.conftest import sse_events

FAKE = str(Path(__file__).resolve().parents[1] / "runtimes" / "fake_llm_server.py")


def fake_model(*extra: str, **keys: Any) -> dict[str, Any]:
    return {
        "backend": "llama_server",
        "model_path": FAKE,  # any existing file: the fake ignores it
        "llama_server_binary": FAKE,
        "llama_server_extra_args": ["--fake-tokens", "400", "--fake-token-delay", "0.01", *extra],
        "llama_server_start_timeout_s": 20,
        "llama_server_stop_timeout_s": 2,
        "llama_server_env": {"FAKE_ENV": "from-settings"},
        "llama_server_library_path": ["/opt/fake/lib"],
        "enabled": False,
        **keys,
    }


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    settings = {
        "engine": {
            "decoding": {"max_tokens": 16},
            "models": {
                "fake": fake_model(replicas=2, replica_max=2, target_inflight=2),
                "fake-crash": fake_model("--fake-exit-after", "5"),
                "fake-broken": fake_model("--fake-exit-at-start"),
            },
        }
    }
    return make_app(settings).test_client()


def row(client: FlaskClient, name: str) -> dict[str, Any]:
    return client.get(f"/v1/admin/models/{name}").get_json()  # type: ignore[no-any-return]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def load(client: FlaskClient, name: str) -> dict[str, Any]:
    r = client.post(f"/v1/admin/models/{name}/load")
    assert r.status_code == 200, r.get_json()
    return r.get_json()  # type: ignore[no-any-return]


def test_load_serve_and_unload_a_supervised_child(client: FlaskClient) -> None:
    loaded = load(client, "fake")
    pids = [r["pid"] for r in loaded["replica_states"]]
    assert len(pids) == 2 and all(pids) and pids[0] != pids[1]
    assert all(pid_alive(p) for p in pids)
    assert loaded["target_inflight"] == {"configured": 2, "effective": 2, "clamped": False}

    body = client.post("/v1/responses", json={"model": "fake", "input": "hello there"}).get_json()
    assert body["output_text"] == "".join(f"tok{i} " for i in range(16))
    # OpenAI's usage fields (total_tokens, details) ride along since issue 14.
    assert {k: body["usage"][k] for k in ("input_tokens", "output_tokens")} == {
        "input_tokens": 2,
        "output_tokens": 16,
    }
    assert body["finish_reason"] == "length"

    stream = client.post("/v1/responses", json={"model": "fake", "input": "x", "stream": True})
    events = [e for e in sse_events(stream.get_data(as_text=True)) if e[0] != "comment"]
    deltas = [d["delta"] for name, d in events if name == "response.output_text.delta"]
    assert deltas == [f"tok{i} " for i in range(16)]  # passed through one upstream chunk each
    assert events[-1][0] == "response.completed"

    unloaded = client.post("/v1/admin/models/fake/unload").get_json()
    assert unloaded["state"] == "unloaded"
    assert not any(pid_alive(p) for p in pids)


def test_logs_endpoint_shows_the_childs_output_env_and_library_path(client: FlaskClient) -> None:
    load(client, "fake")
    logs = client.get("/v1/admin/models/fake/logs?tail=50").get_json()
    assert [r["id"] for r in logs["replicas"]] == [0, 1]
    lines = logs["replicas"][0]["lines"]
    assert any(line.startswith("listening on 127.0.0.1:") for line in lines)
    assert "FAKE_ENV=from-settings" in lines
    assert any(line.startswith("LD_LIBRARY_PATH=/opt/fake/lib") for line in lines)
    assert client.get("/v1/admin/models/fake/logs?tail=2").get_json()["replicas"][0]["lines"] == lines[-2:]
    assert client.get("/v1/admin/models/fake/logs?tail=x").status_code == 422
    client.post("/v1/admin/models/fake/unload")
    after = client.get("/v1/admin/models/fake/logs").get_json()  # kept after unload
    assert after["replicas"][0]["lines"][: len(lines)] == lines


def test_logs_since_next_returns_only_what_was_printed_after(client: FlaskClient) -> None:
    load(client, "fake")
    first = client.get("/v1/admin/models/fake/logs").get_json()
    mark = first["next"]
    assert isinstance(mark, int)
    quiet = client.get(f"/v1/admin/models/fake/logs?since={mark}").get_json()
    assert [r["lines"] for r in quiet["replicas"]] == [[], []] and quiet["next"] == mark

    streamed = client.post("/v1/responses", json={"model": "fake", "input": "hello", "stream": True})
    body = streamed.get_data(as_text=True)
    assert "response.completed" in body, body
    newer: list[str] = []
    # The child prints its last line after the answer has gone out, so poll for it; a
    # loaded 2-core CI machine once took longer than 5 s to schedule it.
    deadline = time.monotonic() + 30
    while not any("stream finished" in line for line in newer) and time.monotonic() < deadline:
        answer = client.get(f"/v1/admin/models/fake/logs?since={mark}").get_json()
        newer += [line for r in answer["replicas"] for line in r["lines"]]
        mark = answer["next"]
        time.sleep(0.02)  # a poll, not a spin that competes with the reader threads
    everything = client.get("/v1/admin/models/fake/logs?tail=100").get_json()["replicas"]
    assert any(line.startswith("request: ") and "/v1/chat/completions" in line for line in newer)
    assert "stream finished after 16 tokens" in newer, (newer, everything)
    assert len(newer) == len(set(newer)), "a line came back twice"
    assert not any(line in newer for r in first["replicas"] for line in r["lines"])


def test_a_child_that_fails_to_start_fails_the_load_with_its_output(client: FlaskClient) -> None:
    r = client.post("/v1/admin/models/fake-broken/load")
    assert r.status_code == 500
    detail = r.get_json()["detail"]
    assert detail["code"] == "model_load_failed"
    assert "model file is corrupt" in detail["message"]
    failed = row(client, "fake-broken")
    assert failed["state"] == "failed" and "model file is corrupt" in failed["last_error"]


def test_child_death_mid_stream_fails_the_job_then_the_model_and_reload_works(
    client: FlaskClient,
) -> None:
    loaded = load(client, "fake-crash")
    pid = loaded["replica_states"][0]["pid"]
    t0 = time.monotonic()
    r = client.post(
        "/v1/responses",
        json={"model": "fake-crash", "input": "x", "stream": True, "decoding": {"max_tokens": 50}},
    )
    events = [e for e in sse_events(r.get_data(as_text=True)) if e[0] != "comment"]
    assert time.monotonic() - t0 < 1.5
    assert [n for n, _ in events].count("response.output_text.delta") == 5
    assert events[-1][0] == "response.failed"
    error = events[-1][1]["error"]
    assert error["code"] == "backend_error"
    assert "exited with" in error["message"] and "simulated crash" in error["message"]
    deadline = time.monotonic() + 2
    while (state := row(client, "fake-crash"))["state"] != "failed":
        assert time.monotonic() < deadline, state
        time.sleep(0.02)
    assert "simulated crash" in state["last_error"]
    assert state["replica_states"][0]["state"] == "failed"
    assert not pid_alive(pid)
    r = client.post("/v1/responses", json={"model": "fake-crash", "input": "x"})
    assert r.status_code == 409 and r.get_json()["detail"]["code"] == "model_failed"
    again = load(client, "fake-crash")  # a failed model loads again
    assert again["state"] == "loaded" and again["replica_states"][0]["pid"] != pid


def test_kill_9_of_a_replica_mid_stream_ends_the_job_within_a_second(client: FlaskClient) -> None:
    loaded = load(client, "fake")
    pids = [r["pid"] for r in loaded["replica_states"]]
    result: dict[str, Any] = {}

    def stream() -> None:
        r = client.post(
            "/v1/responses",
            json={"model": "fake", "input": "x", "stream": True, "decoding": {"max_tokens": 400}},
        )
        result["events"] = [e for e in sse_events(r.get_data(as_text=True)) if e[0] != "comment"]
        result["ended"] = time.monotonic()

    worker = threading.Thread(target=stream)
    worker.start()
    deadline = time.monotonic() + 5
    while not (busy := [r for r in row(client, "fake")["replica_states"] if r["inflight"]]):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.1)
    victim = busy[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    worker.join(timeout=5)
    assert result["ended"] - killed < 1.0
    assert result["events"][-1][0] == "response.failed"
    assert result["events"][-1][1]["error"]["code"] == "backend_error"
    # The other replica keeps serving; the model stays loaded.
    deadline = time.monotonic() + 2
    while True:
        state = row(client, "fake")
        if any(r["state"] == "failed" for r in state["replica_states"]):
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert state["state"] == "loaded"
    survivor = next(p for p in pids if p != victim)
    for _ in range(3):
        ok = client.post("/v1/responses", json={"model": "fake", "input": "x"})
        assert ok.status_code == 200
    assert pid_alive(survivor)
    client.post("/v1/admin/models/fake/unload")
    assert not pid_alive(survivor)


def test_client_gone_closes_the_upstream_stream(client: FlaskClient) -> None:
    load(client, "fake")
    r = client.post(
        "/v1/responses",
        json={"model": "fake", "input": "x", "stream": True, "decoding": {"max_tokens": 400}},
        buffered=False,
    )
    chunks = iter(r.response)
    seen = b""
    while seen.count(b"output_text.delta") < 3:
        seen += next(chunks)
    r.close()  # the client goes away
    deadline = time.monotonic() + 2
    while True:
        lines = [
            ln
            for rep in client.get("/v1/admin/models/fake/logs").get_json()["replicas"]
            for ln in rep["lines"]
        ]
        if any(ln.startswith("client disconnected after") for ln in lines):
            break
        assert time.monotonic() < deadline, lines[-5:]
        time.sleep(0.02)
    assert row(client, "fake")["inflight"] == 0


def test_extra_args_may_not_set_parallel(make_app: Callable[..., Flask]) -> None:
    settings = {"engine": {"models": {"bad": fake_model("--parallel", "4")}}}
    client = make_app(settings).test_client()
    r = client.post("/v1/admin/models/bad/load")
    assert r.status_code == 500
    assert "--parallel" in r.get_json()["detail"]["message"]


def test_vllm_serve_child_with_api_key_and_speculative_config(make_app: Callable[..., Flask]) -> None:
    settings = {
        "engine": {
            "models": {
                "vs": {
                    "backend": "vllm_serve",
                    "vllm_model": "/models/some-model",
                    "vllm_max_model_len": 4096,
                    "vllm_speculative_method": "mtp",
                    "vllm_num_speculative_tokens": 2,
                    "vllm_serve_binary": FAKE,
                    "vllm_serve_api_key": "sk-secret-123",
                    "vllm_serve_start_timeout_s": 20,
                    "target_inflight": 3,
                }
            }
        }
    }
    client = make_app(settings).test_client()
    loaded = load(client, "vs")
    assert loaded["definition"]["vllm_serve_api_key"] == "***"
    lines = client.get("/v1/admin/models/vs/logs").get_json()["replicas"][0]["lines"]
    argv_line = next(line for line in lines if line.startswith("fake runtime"))
    assert "'serve', '/models/some-model'" in argv_line
    assert "'--max-num-seqs', '3'" in argv_line
    assert '\'--speculative-config\', \'{"method":"mtp","num_speculative_tokens":2}\'' in argv_line
    assert "sk-secret-123" not in argv_line  # the key travels in the environment only
    assert "api key set: True" in lines
    out = client.post("/v1/responses", json={"model": "vs", "input": "hi", "decoding": {"max_tokens": 4}})
    assert out.status_code == 200, out.get_json()  # the key reached the child's auth check
    assert out.get_json()["output_text"] == "tok0 tok1 tok2 tok3 "
    assert (
        client.post(
            "/v1/responses", json={"model": "vs", "input": "hi", "decoding": {"max_tokens": 5000}}
        ).status_code
        == 422
    )


def test_forced_unload_is_not_held_up_by_a_stalled_upstream(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmpool.executor

    monkeypatch.setattr(llmpool.executor, "STOP_GRACE_S", 0.5)
    client = make_app({"engine": {"models": {"stall": fake_model("--fake-stall-after", "3")}}}).test_client()
    pid = load(client, "stall")["replica_states"][0]["pid"]
    result: dict[str, Any] = {}

    def stream() -> None:
        r = client.post("/v1/responses", json={"model": "stall", "input": "x", "stream": True})
        result["events"] = [e for e in sse_events(r.get_data(as_text=True)) if e[0] != "comment"]

    worker = threading.Thread(target=stream)
    worker.start()
    deadline = time.monotonic() + 5
    while not any(
        "stalling" in ln
        for ln in client.get("/v1/admin/models/stall/logs").get_json()["replicas"][0]["lines"]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    t0 = time.monotonic()
    r = client.post("/v1/admin/models/stall/unload?force=true")
    assert r.status_code == 200 and r.get_json()["state"] == "unloaded"
    assert time.monotonic() - t0 < 5  # grace (0.5 s) + the child's stop, not the 600 s read timeout
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert result["events"][-1][0] == "response.failed"
    assert not pid_alive(pid)
