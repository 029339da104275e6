"""What one non-streamed request costs the worker, against what the fixed stack costs alone.

    .venv/bin/python -m bench.floor [--seconds 6] [--clients 2000]

Issue 23 asks the pool to add at most 0.08 of LiteLLM's p50 on an instant upstream. On one
core the added latency of a sequential request is the worker's CPU per request, so this
tool sets the pool's figure beside two floors that the customer's design fixes, each
measured the same way, on the server CPU:

1. `bare`: a Flask app with nothing of the pool in it (bench/floor_app.py: read the JSON
   body, answer a fixed chat completion) under the same gunicorn config and worker class.
2. `client`: the pool's upstream client alone (`ChatUpstream`, which takes
   llmpool.backends.http1 for this plain-http origin) sending the pool's upstream request
   to the instant upstream and reading the streamed answer, in a process under the
   worker's selective patch; CPU per request over `--clients` requests.
3. `pool`: the pool itself (case 1's `openai_remote` model on the same upstream).

Worker CPU per request comes from /proc (user + system) over a wrk run of `--seconds` at 1
and at 64 connections, with wrk's p50. Prints a table; `--out FILE` also writes the figures
as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, SERVER_CPU, cpu_s, pin_self_to_load_side, pool_server
from bench.loadgen import BODY, run_wrk
from bench.proxy import ALLOW_REMOTE, pool_settings
from bench.upstream import MODEL, static_upstream

CONNECTIONS = (1, 64)

# Run under the worker's patch: the upstream client's CPU per request, alone.
CLIENT_SCRIPT = r"""
from conf.worker import patch_selectively

patch_selectively()

import json
import sys
import time

from llmpool.backends.chat_upstream import ChatUpstream

base, model, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
upstream = ChatUpstream(base, maxsize=1)
body = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True}}


def one():
    response = upstream.request("POST", base + "/chat/completions", body=body, timeout=(5.0, 30.0))
    while response.read1(65536):
        pass
    response.release_conn()


for _ in range(200):
    one()
began = time.process_time()
for _ in range(count):
    one()
print(json.dumps({"cpu_us_per_request": round((time.process_time() - began) / count * 1e6, 1)}))
"""


def measure(
    url: str,
    pid: int,
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One wrk run: CPU µs per request of `pid` (unrounded), wrk's p50 and req/s; any
    error or non-2xx answer is raised."""
    before = cpu_s(pid)
    load = run_wrk(url, connections=connections, seconds=seconds, headers=headers, body=body)
    used = cpu_s(pid) - before
    if load["errors"] or load["non2xx"] or not load["requests"]:
        raise RuntimeError(f"{url} at {connections} connections: {load}")
    return {"cpu_us_per_request": used / load["requests"] * 1e6, "p50_ms": load["p50_ms"], "rps": load["rps"]}


def per_request(url: str, pid: int, seconds: float, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """CPU µs per request of `pid` and wrk's p50 and req/s, at each of CONNECTIONS."""
    run_wrk(url, connections=1, seconds=1, headers=headers)  # warm-up
    out: dict[str, Any] = {}
    for connections in CONNECTIONS:
        row = measure(url, pid, connections=connections, seconds=seconds, headers=headers)
        out[f"c{connections}"] = {**row, "cpu_us_per_request": round(row["cpu_us_per_request"])}
    return out


def bare(seconds: float) -> dict[str, Any]:
    """bench/floor_app.py under the pool's own gunicorn config and worker class."""
    with pool_server({"service": {"log_level": "warning"}}, app="bench.floor_app:app") as server:
        return per_request(server.url + "/v1/chat/completions", server.worker_pid(), seconds)


def client(upstream: str, count: int) -> dict[str, Any]:
    argv = [*SERVER_CPU, sys.executable, "-c", CLIENT_SCRIPT, upstream + "/sse/v1", MODEL, str(count)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"client run failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--clients", type=int, default=2000, help="requests the client-alone loop times")
    parser.add_argument("--out", type=Path, help="also write the figures here, as JSON")
    args = parser.parse_args()
    pin_self_to_load_side()
    result: dict[str, Any] = {"bare": bare(args.seconds)}
    with static_upstream() as upstream:
        result["client"] = client(upstream, args.clients)
        with pool_server(pool_settings(upstream)) as pool:
            url = pool.url + "/v1/chat/completions"
            result["pool"] = per_request(url, pool.worker_pid(), args.seconds, ALLOW_REMOTE)
    floor = result["bare"]["c1"]["cpu_us_per_request"] + result["client"]["cpu_us_per_request"]
    result["floor_c1_cpu_us"] = round(floor)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    rows = [("bare Flask app", result["bare"]), ("the pool", result["pool"])]
    print(f"\n{'':16} {'CPU µs/req c1':>14} {'p50 ms c1':>10} {'CPU µs/req c64':>15} {'req/s c64':>10}")
    for name, row in rows:
        c1, c64 = row["c1"], row["c64"]
        print(
            f"{name:16} {c1['cpu_us_per_request']:>14} {c1['p50_ms']:>10.3f} "
            f"{c64['cpu_us_per_request']:>15} {c64['rps']:>10.0f}"
        )
    print(f"{'upstream client':16} {result['client']['cpu_us_per_request']:>14}")
    print(f"floor (bare + client), c1: {floor:.0f} µs of CPU per request; BODY is {json.dumps(BODY)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
