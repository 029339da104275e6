"""End to end against gunicorn + one gevent worker + the real SmolLM2 GGUF."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests

from tests.conftest import SMOLLM2_ID
from tests.integration.conftest import (
    REPLICAS,
    Server,
    gunicorn_once,
    integration_settings,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration

# A raw continuation rarely hits end-of-sequence early, so generations run their length.
STORY = {"model": SMOLLM2_ID, "input": "Once upon a time, in a small village by the sea,"}


def admin_row(server: Server, session: requests.Session | None = None) -> dict[str, Any]:
    getter = session or requests
    rows = getter.get(server.url + "/v1/admin/models", timeout=5).json()["models"]
    return next(r for r in rows if r["name"] == SMOLLM2_ID)


def open_stream(server: Server, body: dict[str, Any], stream: bool = True) -> socket.socket:
    """POST a (streaming) request on a raw socket, so the test can drop it at will."""
    url = urlparse(server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    payload = json.dumps({**body, "stream": stream}).encode()
    head = (
        f"POST /v1/responses HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def read_until(sock: socket.socket, marker: bytes, count: int) -> bytes:
    data = b""
    while data.count(marker) < count:
        chunk = sock.recv(65536)
        assert chunk, f"stream ended early: {data[-500:]!r}"
        data += chunk
    return data


def hard_close(sock: socket.socket) -> None:
    # SO_LINGER 0: close sends RST at once, like a client process that died.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_gevent_patches_before_ssl_is_imported(server: Server) -> None:
    # Patched too late, urllib3 keeps the blocking SSLContext: HTTPS upstream reads would
    # stall the worker. gevent says so in the log when it happens.
    assert "MonkeyPatchWarning" not in server.log()


def test_json_reply(server: Server) -> None:
    r = requests.post(
        server.url + "/v1/responses",
        json={**STORY, "decoding": {"max_tokens": 16, "temperature": 0.0}},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == SMOLLM2_ID and body["output_text"]
    assert body["metrics"]["engine_output_tokens"] > 0


def test_sse_deltas_arrive_spread_over_the_generation(server: Server) -> None:
    body = {**STORY, "stream": True, "decoding": {"max_tokens": 64, "temperature": 0.7}}
    arrivals: list[float] = []
    start = time.monotonic()
    completed: dict[str, Any] | None = None
    with requests.post(server.url + "/v1/responses", json=body, stream=True, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines(chunk_size=None, decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "response.output_text.delta":
                arrivals.append(time.monotonic())
            elif line.startswith("data: ") and event == "response.completed":
                completed = json.loads(line[6:])
    end = time.monotonic()
    assert completed is not None
    assert len(arrivals) >= 16, completed
    # Deltas are written as the backend produces them: they arrive over most of the
    # stream's life, not in one burst at the end.
    spread = arrivals[-1] - arrivals[0]
    assert spread >= 0.5 * (end - start) and spread > 0.1, (spread, end - start)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert sum(1 for g in gaps if g > 0.002) >= len(gaps) // 2


def test_client_disconnect_mid_stream_frees_the_slot(server: Server) -> None:
    session = requests.Session()
    served_before = sum(r["served"] for r in admin_row(server, session)["replica_states"])
    sock = open_stream(server, {**STORY, "decoding": {"max_tokens": 1500}})
    read_until(sock, b"response.output_text.delta", 3)
    assert admin_row(server, session)["inflight"] == 1
    hard_close(sock)
    dropped = time.monotonic()
    while (row := admin_row(server, session))["inflight"] != 0:
        assert time.monotonic() - dropped < 0.5, row["replica_states"]
        time.sleep(0.01)
    assert sum(r["served"] for r in row["replica_states"]) == served_before + 1
    assert row["queue_depth"] == 0


def wait_for(server: Server, what: str, predicate: Any, within_s: float) -> float:
    """Seconds until `predicate(admin row)` holds; fails past `within_s`."""
    began = time.monotonic()
    while not predicate(row := admin_row(server)):
        assert time.monotonic() - began < within_s, f"{what}: {row['replica_states']}"
        time.sleep(0.01)
    return time.monotonic() - began


def test_json_client_hanging_up_mid_generation_frees_its_slot(server: Server) -> None:
    served_before = sum(r["served"] for r in admin_row(server)["replica_states"])
    sock = open_stream(server, {**STORY, "decoding": {"max_tokens": 1500}}, stream=False)
    wait_for(server, "job started", lambda row: row["inflight"] == 1, 10)
    time.sleep(0.3)
    assert admin_row(server)["inflight"] == 1  # still generating: 1500 tokens take seconds
    hard_close(sock)
    freed = wait_for(server, "slot not freed", lambda row: row["inflight"] == 0, 0.5)
    row = admin_row(server)
    assert sum(r["served"] for r in row["replica_states"]) == served_before + 1
    assert freed < 0.5


def test_queued_json_client_hanging_up_leaves_the_line(server: Server) -> None:
    socks = [open_stream(server, {**STORY, "decoding": {"max_tokens": 1500}}) for _ in range(REPLICAS)]
    try:
        for sock in socks:
            read_until(sock, b"response.output_text.delta", 1)
        waiting = open_stream(server, {**STORY, "decoding": {"max_tokens": 8}}, stream=False)
        wait_for(server, "not queued", lambda row: row["queue_depth"] == 1, 5)
        hard_close(waiting)
        wait_for(server, "still queued", lambda row: row["queue_depth"] == 0, 0.5)
        assert admin_row(server)["inflight"] == REPLICAS  # the running streams go on
    finally:
        for sock in socks:
            hard_close(sock)


def test_hub_never_blocks_while_four_generations_run(server: Server) -> None:
    socks = [open_stream(server, {**STORY, "decoding": {"max_tokens": 1500}}) for _ in range(REPLICAS)]
    try:
        for sock in socks:
            read_until(sock, b"response.output_text.delta", 1)
        session = requests.Session()
        session.get(server.url + "/v1/models", timeout=5)  # open the keep-alive connection
        latencies = []
        for _ in range(30):
            t0 = time.perf_counter()
            r = session.get(server.url + "/v1/models", timeout=5)
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200 and r.json()["models"] == [SMOLLM2_ID]
            time.sleep(0.03)
        row = admin_row(server, session)
        assert row["inflight"] == REPLICAS  # all four were generating throughout
        assert max(latencies) < 0.1, [round(x * 1000, 1) for x in latencies]
    finally:
        for sock in socks:
            hard_close(sock)


def test_queued_stream_reports_its_place_and_drop_removes_it(server: Server) -> None:
    socks = [open_stream(server, {**STORY, "decoding": {"max_tokens": 1500}}) for _ in range(REPLICAS)]
    waiting = None
    try:
        for sock in socks:
            read_until(sock, b"response.output_text.delta", 1)
        waiting = open_stream(server, {**STORY, "decoding": {"max_tokens": 8}})
        read_until(waiting, b": queued 1", 1)
        assert admin_row(server)["queue_depth"] == 1
        hard_close(waiting)
        waiting = None
        # Noticed at once by the read watcher on its socket, not at the next comment (1 s).
        wait_for(server, "still queued", lambda row: row["queue_depth"] == 0, 0.5)
    finally:
        for sock in socks:
            hard_close(sock)
        if waiting is not None:
            hard_close(waiting)


def test_sigterm_stops_the_pool_cleanly(tmp_path: Path, smollm2_path: str) -> None:
    settings = integration_settings()
    settings["engine"]["models"][SMOLLM2_ID]["replicas"] = 1
    srv = start_server(tmp_path, settings)
    port = urlparse(srv.url).port
    stream = open_stream(srv, {**STORY, "decoding": {"max_tokens": 5000 // 4}})
    try:
        read_until(stream, b"response.output_text.delta", 1)
        t0 = time.monotonic()
        assert stop_server(srv) == 0, srv.log()
        # gunicorn's graceful_timeout (10 s) bounds the wait for the running stream.
        assert time.monotonic() - t0 < 15
    finally:
        stream.close()
    with socket.socket() as s:  # the port is free again: nothing of the pool survived
        s.bind(("127.0.0.1", port))
    assert "Traceback" not in srv.log(), srv.log()


def test_concurrent_json_requests_all_complete(server: Server) -> None:
    results: list[int] = []

    def call() -> None:
        r = requests.post(
            server.url + "/v1/responses", json={**STORY, "decoding": {"max_tokens": 8}}, timeout=60
        )
        results.append(r.status_code)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [200] * 12


def test_invalid_settings_stop_start_up_with_a_readable_message(tmp_path: Path) -> None:
    base = tmp_path / "settings.json"
    base.write_text(json.dumps(integration_settings()))
    local = tmp_path / "local.json"
    local.write_text(json.dumps({"engine": {"models": {SMOLLM2_ID: {"replicas": "2"}}}}))
    result = gunicorn_once(base, local, {})
    assert result.returncode == 1
    assert f"{local}: engine.models.{SMOLLM2_ID}.replicas: Not a valid integer." in result.stderr
    assert "Traceback" not in result.stderr
