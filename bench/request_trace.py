"""Where the time of one streamed request goes before its first token, in the real worker.

    .venv/bin/python -m bench.request_trace [--requests 40] [--gaps 0,0.1] [--upstream instant,llama-server]

The pool runs under bench/trace.gunicorn.conf.py, which notes the time at each step of a
request in the worker. The client (this process, on the load side) sends streamed
`/v1/responses` requests, each on a new connection, with `gap` seconds of idle before
each, and notes when it connected, when the status line arrived and when the first
content token did. Both sides use CLOCK_MONOTONIC, so each request's marks line up with
its client's. Printed: the median ms of each step after the client's connect, by gap.

Upstreams: `instant`, case 11's nginx stream (`openai_remote`), and `llama-server`, case
12's SmolLM2 child (layout *split*, as in first_token). The gap is what tells a worker
that is busy from one that was idle: first_token's llama-server requests each follow
20-160 ms in which the worker only waited for the previous request's tokens.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import relay, streaming
from bench.common import LAYOUTS, free_port, pin_self_to_load_side, pool_server
from bench.proxy import pool_settings
from bench.upstream import MODEL, static_upstream

CONFIG = "bench/trace.gunicorn.conf.py"
WARMUP = 3


def one(port: int, body: dict[str, Any]) -> tuple[float, float, float]:
    """Connect, send, read to the end; monotonic times of connect, status line, first token."""
    data = json.dumps(body).encode()
    head = "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head.encode() + data)
        seen = b""
        status = first = None
        while chunk := sock.recv(65536):
            now = time.perf_counter()
            status = status or now
            seen += chunk
            if first is None and b"response.output_text.delta" in seen:
                first = now
    if status is None or first is None:
        raise RuntimeError(f"no answer or no token: {seen[-500:]!r}")
    return began, status, first


def trace(port: int, body: dict[str, Any], requests: int, gap: float, log_path: Path) -> dict[str, float]:
    log_path.write_text("")
    clients = []
    for _ in range(WARMUP + requests):
        time.sleep(gap)
        clients.append(one(port, body))
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    steps: dict[str, list[float]] = {}
    for began, status, first in clients[WARMUP:]:
        # This request's worker side: the first accept after its connect.
        mine = min((line for line in lines if line["accepted"] >= began), key=lambda line: line["accepted"])
        offset = (mine["accepted"] - began) * 1000
        seen: set[str] = set()
        for name, ms in mine["marks"]:
            if name not in seen:  # the first of each (the first write is the status line)
                seen.add(name)
                steps.setdefault(name, []).append(offset + ms)
        steps.setdefault("status line at the client", []).append((status - began) * 1000)
        steps.setdefault("first token at the client", []).append((first - began) * 1000)
    return {name: round(statistics.median(ms), 3) for name, ms in steps.items()}


@contextmanager
def served(upstream: str, env: dict[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The pool under the trace config in front of `upstream`: its port, and the body."""
    if upstream == "instant":
        with static_upstream() as nginx:
            with pool_server(pool_settings(nginx, relay.BASE), env=env, config=CONFIG) as pool:
                yield (
                    int(pool.url.rsplit(":", 1)[1]),
                    {"model": MODEL, "input": "hi", "stream": True, "allow_remote": True},
                )
        return
    settings = streaming.llama_server_settings(free_port(), 1)
    body = {"model": streaming.MODEL, "input": streaming.PROMPT, "stream": True}
    body["decoding"] = {**streaming.DECODING, "max_tokens": 8}
    with pool_server(settings, env=env, config=CONFIG, cpus=LAYOUTS["split"]) as pool:
        yield int(pool.url.rsplit(":", 1)[1]), body


def run(upstream: str, requests: int, gaps: list[float]) -> dict[str, dict[str, float]]:
    log_path = Path(tempfile.mkdtemp(prefix="llmpool-trace-")) / "marks.jsonl"
    with served(upstream, {"LLM_POOL_BENCH_TRACE": str(log_path)}) as (port, body):
        return {f"gap {gap:g} s": trace(port, body, requests, gap, log_path) for gap in gaps}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--gaps", default="0,0.1", help="seconds of idle before each request")
    parser.add_argument("--upstream", default="instant,llama-server")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    pin_self_to_load_side()
    gaps = [float(g) for g in args.gaps.split(",")]
    figures = {name: run(name, args.requests, gaps) for name in args.upstream.split(",")}
    for name, by_gap in figures.items():
        columns = list(by_gap)
        print(f"\n{name}: ms after the client's connect (median of {args.requests})")
        print(f"{'step':34s}" + "".join(f"{c:>12s}" for c in columns))
        for step in by_gap[columns[0]]:
            print(f"{step:34s}" + "".join(f"{by_gap[c].get(step, float('nan')):12.3f}" for c in columns))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
