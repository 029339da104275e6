"""Many short requests over keep-alive connections: does the worker's RSS creep?

Starts a real gunicorn+gevent pool (SmolLM2 GGUF in-process, one replica, one slot). C
client threads, each with one persistent HTTP/1.1 connection, send non-streaming POST
/v1/responses with `max_tokens` 1, back to back: a warm-up, then the measured requests.
The worker's VmRSS is read after the warm-up and after every `every` requests; growth is
the last reading over the first.

    .venv/bin/python -m bench.soak [--requests 10000] [--warmup 1000] [--clients 4]
    .venv/bin/python -m bench.soak --tracemalloc DIR   # and where the memory went

With --tracemalloc the worker runs under PYTHONTRACEMALLOC and the bench's gunicorn
config (bench/tracemalloc.gunicorn.conf.py), which writes a snapshot on SIGUSR2; one is
taken after the warm-up and one at the end, and the result lists the allocation sites
that grew most between them. Tracing slows the worker and adds to its RSS: its RSS
figures are not comparable with an untraced run.

Progress goes to stderr, the result (a JSON object) to stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import time
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import Log, one_slot_settings, pool_server, print_result, rss_mb
from tests.conftest import SMOLLM2_ID

BODY = json.dumps({"model": SMOLLM2_ID, "input": "Hi", "decoding": {"max_tokens": 1}}).encode()
HEADERS = {"Content-Type": "application/json"}
TRACE_CONFIG = "bench/tracemalloc.gunicorn.conf.py"
SNAPSHOT_ENV = "LLM_POOL_BENCH_SNAPSHOT"  # read by TRACE_CONFIG
TRACE_FRAMES = 12
SNAPSHOT_TIMEOUT_S = 120.0


class Client:
    """One keep-alive connection; counts the connections it had to open."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
        self.opened = 0

    def send(self, n: int) -> Counter[str]:
        """`n` requests one after another; the errors by kind (empty: all 200)."""
        errors: Counter[str] = Counter()
        for _ in range(n):
            if self.conn.sock is None:
                self.opened += 1  # http.client reconnects on its own; count it
            try:
                self.conn.request("POST", "/v1/responses", BODY, HEADERS)
                reply = self.conn.getresponse()
                body = reply.read()  # read to the end, or the connection cannot be reused
            except (OSError, http.client.HTTPException) as exc:
                errors[type(exc).__name__] += 1
                self.conn.close()
                continue
            if reply.status != 200 or b'"output_text"' not in body:
                errors[f"http {reply.status}"] += 1
        return errors


def send(clients: list[Client], threads: ThreadPoolExecutor, n: int) -> tuple[Counter[str], float]:
    """`n` requests spread over the clients, all at once; (errors, seconds taken)."""
    shares = [n // len(clients) + (i < n % len(clients)) for i in range(len(clients))]
    t0 = time.perf_counter()
    calls = [threads.submit(c.send, k) for c, k in zip(clients, shares, strict=True)]
    errors = sum((call.result() for call in calls), Counter[str]())
    return errors, time.perf_counter() - t0


def snapshot(worker: int, prefix: Path, n: int) -> tracemalloc.Snapshot:
    """Ask the worker for snapshot number `n` (SIGUSR2) and load it when it is written."""
    os.kill(worker, signal.SIGUSR2)
    path = Path(f"{prefix}.{n}")
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no snapshot at {path} after {SNAPSHOT_TIMEOUT_S}s")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(path))


def growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int = 20) -> dict[str, Any]:
    """The traced total at both snapshots, and the `top` allocation sites (by traceback,
    newest frame first) whose live memory grew most between them."""
    stats = sorted(after.compare_to(before, "traceback"), key=lambda s: s.size_diff, reverse=True)
    return {
        "traced_kb": {
            "after_warmup": round(sum(t.size for t in before.statistics("filename")) / 1024, 1),
            "end": round(sum(t.size for t in after.statistics("filename")) / 1024, 1),
        },
        "top_sites": [
            {
                "size_diff_kb": round(stat.size_diff / 1024, 1),
                "count_diff": stat.count_diff,
                "size_kb": round(stat.size / 1024, 1),
                "traceback": [f"{f.filename}:{f.lineno}" for f in reversed(stat.traceback)],
            }
            for stat in stats[:top]
        ],
    }


def run(
    *,
    requests: int = 10_000,
    warmup: int = 1000,
    clients: int = 4,
    every: int = 1000,
    trace_dir: Path | None = None,
    log: Log = print,
) -> dict[str, Any]:
    started = time.monotonic()
    prefix = None if trace_dir is None else trace_dir / "snapshot"
    env = None
    if prefix is not None:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        env = {"PYTHONTRACEMALLOC": str(TRACE_FRAMES), SNAPSHOT_ENV: str(prefix)}
    log(f"soak: starting the pool{'' if prefix is None else ', tracing its allocations'}")
    with (
        pool_server(one_slot_settings(clients + 16), env=env, config=TRACE_CONFIG if env else None) as pool,
        ThreadPoolExecutor(clients) as threads,
    ):
        worker = pool.worker_pid()
        conns = [Client(pool.url) for _ in range(clients)]
        warm_errors, _ = send(conns, threads, warmup)
        series = [rss_mb(worker)]
        log(f"soak: warmed up with {warmup} requests, RSS {series[0]} MB")
        first = None if prefix is None else snapshot(worker, prefix, 1)
        errors, seconds = Counter[str](), 0.0
        for done in range(0, requests, every):
            chunk_errors, chunk_s = send(conns, threads, min(every, requests - done))
            errors += chunk_errors
            seconds += chunk_s
            series.append(rss_mb(worker))
            sent = min(done + every, requests)
            log(f"soak: {sent}/{requests}, RSS {series[-1]} MB, errors {sum(errors.values())}")
        last = None if prefix is None else snapshot(worker, prefix, 2)
    result = {
        "clients": clients,
        "warmup": warmup,
        "requests": requests,
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "warmup_errors": sum(warm_errors.values()),
        "connections_opened": sum(c.opened for c in conns),
        "rps": round(requests / seconds, 1),
        "rss_mb": {"after_warmup": series[0], "end": series[-1]},
        "rss_growth_pct": round((series[-1] - series[0]) / series[0] * 100, 2),
        "rss_mb_every": every,
        "rss_mb_series": series,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if first is not None and last is not None:
        result["tracemalloc"] = growth(first, last)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument(
        "--tracemalloc",
        type=Path,
        metavar="DIR",
        dest="trace_dir",
        help="trace the worker; snapshots go here",
    )
    print_result(run, **vars(parser.parse_args()))


if __name__ == "__main__":
    main()
