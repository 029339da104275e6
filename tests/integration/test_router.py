"""Two real pools behind vLLM's router (`vllm-router==0.1.17`, installed by make into its
own env; LLM_POOL_VLLM_ROUTER names its binary), on loopback (issue 22).

Each pool has its own port and state directory and serves SmolLM2 (llama_cpp, one slot)
as `shared`, plus a model only it serves (`alpha` on A, `beta` on B). The router runs
with the flags the README gives (`ROUTER_FLAGS`): power_of_two on each pool's
GET /get_load, polled every second, health checks every second, retries and a circuit
breaker that turn a pool that stops into a short blip.

- Load-aware: with A busy (one long stream running, one queued), new requests go to B,
  and the router's GET /get_loads says what each pool's own /get_load says.
- Chat Completions and /v1/responses, JSON and streamed, through the router.
- Models on some pools only: the plain router does not route by model and does not retry
  a 404, so a model one pool lacks is a 404 whenever the router picks the other pool. The
  layout the README ships is one router per group of pools that serve the same models
  (the router here is that, for `shared`); the router's IGW mode (`--enable-igw`, each
  pool registered with its models) routes Chat Completions by model, tested here too.
- One pool stops: the router keeps serving through the other (last, as it stops B).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import SMOLLM2_REF
from tests.integration.conftest import Server, free_port, start_server, stop_server, wait_ready

pytestmark = pytest.mark.integration

# What the README tells operators to run (less the addresses).
ROUTER_FLAGS = [
    "--policy", "power_of_two",
    "--worker-startup-check-interval", "1",  # also the /get_load poll interval
    "--worker-startup-timeout-secs", "120",
    "--health-check-endpoint", "/health",
    "--health-check-interval-secs", "1",
    "--health-check-timeout-secs", "1",
    "--health-failure-threshold", "2",
    "--health-success-threshold", "1",
    "--retry-max-retries", "3",
    "--retry-initial-backoff-ms", "20",
    "--retry-max-backoff-ms", "200",
    "--cb-failure-threshold", "3",
    "--cb-success-threshold", "1",
    "--cb-timeout-duration-secs", "5",
]  # fmt: skip


def model(**keys: Any) -> dict[str, Any]:
    base = {"backend": "llama_cpp", "model_path": SMOLLM2_REF, "gguf_n_ctx": 2048, "gguf_n_threads": 1}
    return {**base, "target_inflight": 1, "enabled": True, **keys}


def pool_settings(only: str) -> dict[str, Any]:
    return {
        "service": {"log_level": "warning"},
        "engine": {
            "decoding": {"temperature": 0, "max_tokens": 8},
            "models": {"shared": model(), only: model()},
        },
    }


def router_binary() -> str:
    binary = os.environ.get("LLM_POOL_VLLM_ROUTER") or ""
    assert Path(binary).is_file(), "set LLM_POOL_VLLM_ROUTER to vllm-router's binary (make test installs it)"
    return binary


class Router:
    def __init__(self, tmp: Path, workers: list[str], *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"router-{self.port}.log"
        argv = [router_binary(), "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--prometheus-port", str(free_port())]
        argv += (["--worker-urls", *workers] if workers else []) + ROUTER_FLAGS + list(extra)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_ready(self.url + "/health", self.process, "vllm-router", self.log_path, 60)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    a = start_server(tmp_path_factory.mktemp("pool-a"), pool_settings("alpha"), timeout_s=120)
    try:
        b = start_server(tmp_path_factory.mktemp("pool-b"), pool_settings("beta"), timeout_s=120)
    except BaseException:
        stop_server(a)
        raise
    yield a, b
    for pool in (a, b):
        if pool.process.poll() is None:
            stop_server(pool)


@pytest.fixture(scope="module")
def router(pools: tuple[Server, Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    r = Router(tmp_path_factory.mktemp("router"), [p.url for p in pools])
    yield r
    r.stop()


def served(pool: Server) -> int:
    """Chat completions the pool answered 200 (its own metrics; the router's health checks
    and load polls are requests too, on other endpoints)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{pool.url}/metrics", timeout=10).text
    return int(
        sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "llmpool_requests_total"
            and s.labels.get("status") == "200"
            and s.labels.get("endpoint") == "/v1/chat/completions"
        )
    )


def load(pool: Server) -> int:
    value: int = requests.get(f"{pool.url}/get_load", timeout=5).json()["load"]
    return value


def gauges(pool: Server) -> int:
    """waiting + running, as the pool's /metrics has them."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{pool.url}/metrics", timeout=10).text
    names = ("llmpool:num_requests_waiting", "llmpool:num_requests_running")
    return int(
        sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name in names)
    )


def chat(url: str, model: str = "shared", **extra: Any) -> requests.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **extra}
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_new_requests_go_to_the_idle_pool(pools: tuple[Server, Server], router: Router) -> None:
    a, b = pools
    long = {"model": "shared", "input": "Write a long story about a dragon.", "stream": True}
    long["decoding"] = {"max_tokens": 400}
    streams = [requests.post(f"{a.url}/v1/responses", json=long, stream=True, timeout=120) for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        while load(a) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert load(a) == 2  # one running, one queued behind it
        time.sleep(2.5)  # the router polls /get_load every second
        loads = {
            w["worker"]: w["load"]
            for w in requests.get(f"{router.url}/get_loads", timeout=5).json()["workers"]
        }
        assert loads == {a.url: load(a), b.url: load(b)} == {a.url: gauges(a), b.url: gauges(b)}
        assert loads == {a.url: 2, b.url: 0}
        before = served(a), served(b)
        for _ in range(8):
            assert chat(router.url).status_code == 200
        to_a, to_b = served(a) - before[0], served(b) - before[1]
        assert to_a + to_b == 8 and to_b >= 7, (to_a, to_b)
    finally:
        for stream in streams:
            stream.close()  # the client hangs up: the pool drops the job


def test_chat_and_responses_json_and_streamed_through_the_router(router: Router) -> None:
    r = chat(router.url)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion", r.text
    assert r.json()["choices"][0]["message"]["content"]
    with requests.post(
        f"{router.url}/v1/chat/completions",
        json={
            "model": "shared",
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4,
            "stream": True,
        },
        stream=True,
        timeout=60,
    ) as s:
        lines = [line for line in s.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["object"] == "chat.completion.chunk"
    r = requests.post(f"{router.url}/v1/responses", json={"model": "shared", "input": "Say hi."}, timeout=60)
    assert r.status_code == 200 and r.json()["output_text"], r.text
    with requests.post(
        f"{router.url}/v1/responses",
        json={"model": "shared", "input": "Say hi.", "stream": True},
        stream=True,
        timeout=60,
    ) as s:
        events = [line[7:] for line in s.iter_lines(decode_unicode=True) if line.startswith("event: ")]
    assert events[0] == "response.created" and events[-1] == "response.completed"


def test_a_model_on_one_pool_needs_the_routers_igw_mode(
    pools: tuple[Server, Server], router: Router, tmp_path_factory: pytest.TempPathFactory
) -> None:
    a, b = pools
    # The plain router picks a pool by load alone and passes a 404 on: no retry elsewhere.
    answers = [chat(router.url, "alpha") for _ in range(10)]
    assert {r.status_code for r in answers} <= {200, 404}
    missing = [r for r in answers if r.status_code == 404]
    assert missing, "every request happened to reach the pool that serves the model"
    assert all(r.json()["error"]["code"] == "unknown_model" for r in missing), missing[0].text
    # IGW mode: each pool registered with the models it serves (GET /v1/models).
    igw = Router(tmp_path_factory.mktemp("igw"), [], "--enable-igw")
    try:
        for pool in (a, b):
            for card in requests.get(f"{pool.url}/v1/models", timeout=5).json()["data"]:
                r = requests.post(
                    f"{igw.url}/workers", json={"url": pool.url, "model_id": card["id"]}, timeout=10
                )
                assert r.status_code < 300, r.text
        time.sleep(1.5)  # registered workers pass a health check first
        before = served(a), served(b)
        for name in ("alpha", "beta", "alpha", "beta"):
            r = chat(igw.url, name)
            assert r.status_code == 200, (name, r.text, igw.log_path.read_text()[-3000:])
            assert r.json()["model"] == name
        assert (served(a) - before[0], served(b) - before[1]) == (2, 2)  # each model on its own pool
        # Not /v1/responses: in IGW mode 0.1.17 hands it to its prefill/decode router about
        # half the time (503 "No available workers: 0 prefill, 0 decode"); the README says
        # to run one router per group of pools with the same models for that API.
    finally:
        igw.stop()


def test_the_router_keeps_serving_when_a_pool_stops(pools: tuple[Server, Server], router: Router) -> None:
    """What a client sees while one pool goes away: at most a request or two fail (the
    router's 5xx, a plain-text body) before its circuit breaker and health checks take
    the pool out; everything after is served by the other."""
    a, b = pools
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                statuses.append(chat(router.url, max_tokens=2).status_code)
            except requests.RequestException:
                statuses.append(-1)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(2)
        stop_server(b)
        time.sleep(5)
    finally:
        stop.set()
        thread.join(60)
    failures = [s for s in statuses if s != 200]
    assert len(statuses) > 10 and len(failures) <= 2, statuses
    tail = [chat(router.url).status_code for _ in range(5)]
    assert tail == [200] * 5
    assert a.process.poll() is None
