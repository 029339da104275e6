"""1000 concurrent SSE clients queued on one model: the pool worker's RSS and the latency
of GET /v1/models while they wait.

Starts a real gunicorn+gevent pool (SmolLM2 GGUF, one replica, one slot, a queue long
enough for every client), then a separate load-generator process (this module with
--client-mode, asyncio raw sockets: the clients must not share the pool's process) that
opens N streaming POST /v1/responses at once. The one slot is always busy (a job runs
until EOS or 2000 tokens, then the next queued one starts), so all but one wait in the
queue, and the result says how many did. While they wait it samples the worker's VmRSS,
reads the queue depth from /v1/admin/models and times M sequential GET /v1/models over
one keep-alive connection. Then the clients drop their sockets (RST) and it times how
long the pool takes to drain the queue.

    .venv/bin/python -m bench.many_clients [--clients 1000] [--probes 300]

Progress goes to stderr, the result (a JSON object) to stdout. `run()` is the same case
for other modules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, Any
from urllib.parse import urlparse

import requests

from bench.common import (
    ROOT,
    Pool,
    model_row,
    one_slot_settings,
    pool_server,
    print_result,
    rss_mb,
    wait_for_row,
)
from tests.conftest import SMOLLM2_ID

# conf/gunicorn.conf.py reads it: gunicorn's gevent worker serves at most
# `worker_connections` sockets at once (default 1000) and leaves the rest unaccepted in
# the listen backlog, so N clients plus the probes need more than N.
WORKER_CONNECTIONS_ENV = "LLM_POOL_WORKER_CONNECTIONS"
MAX_TOKENS = 2000  # no early cut-off: the running job holds the slot until SmolLM2's EOS
CONNECT_TIMEOUT_S = 60.0
HEADERS_TIMEOUT_S = 120.0  # a client the worker never accepts counts as failed after this
DRAIN_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 30.0
RSS_SAMPLES = 10  # while the clients wait, spread over the probes


def raise_nofile() -> None:
    # Each client is a socket on both sides; the default soft limit (often 1024) is too low.
    # gunicorn inherits the parent's limit, so raising it here raises the pool's too.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- load generator (its own process) ------------------------------------------------


class Load:
    """What the client coroutines saw, counted as they go."""

    def __init__(self) -> None:
        self.connected = 0  # status 200 and headers received
        self.failures: Counter[str] = Counter()
        self.saw_queued = 0  # got a `: queued N` comment: proof the job waited
        self.completed = 0  # got response.completed before being told to stop
        self.ended = 0  # the server closed the stream before being told to stop
        self.writers: list[asyncio.StreamWriter] = []

    def settled(self) -> int:
        return self.connected + sum(self.failures.values())

    def report(self, phase: str) -> dict[str, Any]:
        return {
            "phase": phase,
            "connected": self.connected,
            "failed": sum(self.failures.values()),
            "failures": dict(self.failures),
            "saw_queued": self.saw_queued,
            "completed": self.completed,
            "ended": self.ended,
        }


def emit(message: dict[str, Any]) -> None:
    """One JSON line on stdout: the parent's only channel from this process."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def one_client(host: str, port: int, request: bytes, load: Load) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
    except TimeoutError:
        load.failures["connect timeout"] += 1
        return
    except OSError as exc:
        load.failures[f"connect {type(exc).__name__}"] += 1
        return
    load.writers.append(writer)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADERS_TIMEOUT_S)
    except TimeoutError:
        load.failures["no headers in time"] += 1
        return
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        load.failures[f"headers {type(exc).__name__}"] += 1
        return
    status = head.split(b" ", 2)[1].decode(errors="replace")
    if status != "200":
        load.failures[f"http {status}"] += 1
        return
    load.connected += 1
    # Keep reading so the pool's writes (a `: queued N` each second) never back up, and
    # so we see whether the stream really waited. A marker can straddle two reads: keep
    # the tail of the previous one.
    tail = b""
    queued = completed = False
    try:
        while chunk := await reader.read(65536):
            seen = tail + chunk
            if not queued and b": queued " in seen:
                queued = True
                load.saw_queued += 1
            if not completed and b"response.completed" in seen:
                completed = True
                load.completed += 1
            tail = seen[-32:]
    except OSError:
        pass
    load.ended += 1


async def wait_for_stop() -> None:
    """Until stdin reaches EOF (the parent closed it or died) or SIGTERM/SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    async def until_eof() -> None:
        while await stdin.read(4096):
            pass
        stop.set()

    eof = asyncio.create_task(until_eof())
    await stop.wait()
    eof.cancel()


async def generate_load(url: str, clients: int) -> None:
    """Open `clients` streams at once, report as they settle, hold them until told to stop,
    then reset every socket like a client process that died."""
    raise_nofile()
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    body = json.dumps(
        {
            "model": SMOLLM2_ID,
            "input": "Once upon a time,",
            "stream": True,
            "decoding": {"max_tokens": MAX_TOKENS},
        }
    ).encode()
    request = (
        f"POST /v1/responses HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    load = Load()
    tasks = [asyncio.create_task(one_client(host, port, request, load)) for _ in range(clients)]
    deadline = time.monotonic() + CONNECT_TIMEOUT_S + HEADERS_TIMEOUT_S + 10
    while load.settled() < clients and time.monotonic() < deadline:
        emit(load.report("connecting"))
        await asyncio.sleep(1.0)
    emit(load.report("ready"))
    await wait_for_stop()
    final = load.report("stopped")  # counted before the resets below end every stream
    for writer in load.writers:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0: close sends RST at once instead of a polite FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    emit(final)


# -- the measuring side (this process) -------------------------------------------------


def line_reader(stream: IO[bytes]) -> queue.Queue[dict[str, Any] | None]:
    """The load generator's JSON lines, read on a thread so waits can time out; None at EOF."""
    lines: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(json.loads(line))
        lines.put(None)

    threading.Thread(target=pump, name="many-clients-stdout", daemon=True).start()
    return lines


def next_report(lines: queue.Queue[dict[str, Any] | None], timeout_s: float) -> dict[str, Any]:
    try:
        message = lines.get(timeout=timeout_s)
    except queue.Empty:
        raise RuntimeError(f"load generator silent for {timeout_s}s") from None
    if message is None:
        raise RuntimeError("load generator exited early")
    return message


def percentiles(latencies: list[float]) -> dict[str, float]:
    if len(latencies) < 2:  # statistics.quantiles needs two points
        return {"max": round(max(latencies), 2)} if latencies else {}
    # "inclusive": with few probes the default method extrapolates p99 past the maximum.
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    picked = {"p50": q[49], "p90": q[89], "p99": q[98], "max": max(latencies)}
    return {k: round(v, 2) for k, v in picked.items()}


def idle(row: dict[str, Any]) -> bool:
    return row["queue_depth"] == 0 and row["inflight"] == 0


def run(*, clients: int = 1000, probes: int = 300, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.monotonic()
    raise_nofile()
    log(f"many clients: starting the pool (max_queue {clients + 64})")
    with pool_server(
        one_slot_settings(clients + 64, MAX_TOKENS), env={WORKER_CONNECTIONS_ENV: str(clients + 256)}
    ) as server:
        return _measure(server, clients, probes, log, started)


def _measure(
    server: Pool, clients: int, probes: int, log: Callable[[str], None], started: float
) -> dict[str, Any]:
    generator: subprocess.Popen[bytes] | None = None
    try:
        worker = server.worker_pid()
        session = requests.Session()
        session.get(server.url + "/v1/models", timeout=PROBE_TIMEOUT_S).raise_for_status()
        rss = {"idle": rss_mb(worker)}
        log(f"many clients: worker pid {worker}, idle RSS {rss['idle']} MB; opening {clients} streams")

        generator = subprocess.Popen(
            [sys.executable, "-m", "bench.many_clients", "--client-mode", server.url]
            + ["--clients", str(clients)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert generator.stdout is not None and generator.stdin is not None
        lines = line_reader(generator.stdout)
        while (report := next_report(lines, CONNECT_TIMEOUT_S + HEADERS_TIMEOUT_S + 30))["phase"] != "ready":
            log(f"many clients: {report['connected']}/{clients} connected, {report['failed']} failed")
        log(
            f"many clients: {report['connected']}/{clients} connected, {report['failed']} failed "
            f"{report['failures'] or ''}".rstrip()
        )

        waiting = [rss_mb(worker)]
        row = model_row(session, server, PROBE_TIMEOUT_S)
        queued_seen, inflight_seen = row["queue_depth"], row["inflight"]
        log(f"many clients: queue_depth {queued_seen}, inflight {inflight_seen}")
        log(f"many clients: probing /v1/models x{probes}")
        latencies: list[float] = []
        probe_errors: Counter[str] = Counter()
        every = max(1, probes // RSS_SAMPLES)
        for i in range(probes):
            t0 = time.perf_counter()
            try:
                session.get(server.url + "/v1/models", timeout=PROBE_TIMEOUT_S).raise_for_status()
            except requests.RequestException as exc:
                probe_errors[type(exc).__name__] += 1
            else:
                latencies.append((time.perf_counter() - t0) * 1000)
            if i % every == every - 1:
                waiting.append(rss_mb(worker))
            # Spread the probes over several seconds: each second every queued stream's
            # greenlet wakes to write its `: queued N`, and the tail should include those.
            time.sleep(0.01)
        waiting.append(rss_mb(worker))
        row_end = model_row(session, server, PROBE_TIMEOUT_S)
        rss["waiting_peak"] = max(waiting)
        log(f"many clients: waiting RSS peak {rss['waiting_peak']} MB; stopping the clients")

        generator.stdin.close()  # EOF: the generator resets every socket and reports
        stopped = next_report(lines, 60)
        generator.wait(timeout=30)
        drain_s = wait_for_row(session, server, idle, "drained", DRAIN_TIMEOUT_S)
        time.sleep(1.0)  # let the worker free what the last cancelled streams held
        rss["after"] = rss_mb(worker)
        log(f"many clients: drained in {drain_s}s, RSS after {rss['after']} MB")
        return {
            "clients": clients,
            "connected": report["connected"],
            "failed": report["failed"],
            "failures": report["failures"],
            "saw_queued_comment": report["saw_queued"],
            "streams_ended_while_waiting": stopped["ended"],
            "streams_completed_while_waiting": stopped["completed"],
            "queued_seen": queued_seen,
            "inflight_seen": inflight_seen,
            "queued_after_probes": row_end["queue_depth"],
            "inflight_after_probes": row_end["inflight"],
            "rss_mb": rss,
            "rss_mb_waiting_samples": waiting,
            "models_ms": {**percentiles(latencies), "calls": probes, "errors": dict(probe_errors)},
            "drain_s": drain_s,
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
        if generator is not None and generator.poll() is None:
            generator.kill()
            generator.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=300)
    # Internal: run as the load generator against this pool URL.
    parser.add_argument("--client-mode", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_mode:
        asyncio.run(generate_load(args.client_mode, args.clients))
        return
    print_result(run, clients=args.clients, probes=args.probes)


if __name__ == "__main__":
    main()
