"""How long GET /v1/models takes while N streaming generations run (the gevent hub must
stay free while llama.cpp decodes on OS threads).

Starts a real gunicorn+gevent pool (SmolLM2 GGUF, N replicas, 1 thread each), opens N
long streams, then times M sequential GET /v1/models calls. Prints percentiles in ms.

    .venv/bin/python -m bench.hub_latency [--streams 4] [--calls 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests

from tests.integration.conftest import integration_settings, start_server, stop_server
from tests.integration.test_server import STORY, hard_close, open_stream, read_until


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    settings = integration_settings()
    model = next(iter(settings["engine"]["models"].values()))
    model["replicas"] = model["replica_max"] = args.streams
    server = start_server(Path(tempfile.mkdtemp()), settings)
    try:
        socks = [
            open_stream(server, {**STORY, "decoding": {"max_tokens": 1500}}) for _ in range(args.streams)
        ]
        for sock in socks:
            read_until(sock, b"response.output_text.delta", 1)
        session = requests.Session()
        session.get(server.url + "/v1/models", timeout=5)
        latencies = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            session.get(server.url + "/v1/models", timeout=5).raise_for_status()
            latencies.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.01)
        inflight = session.get(server.url + "/v1/admin/models", timeout=5).json()["models"][0]["inflight"]
        for sock in socks:
            hard_close(sock)
        q = statistics.quantiles(latencies, n=100)
        print(
            f"streams={args.streams} (inflight at end: {inflight}) calls={args.calls} "
            f"p50={q[49]:.1f}ms p90={q[89]:.1f}ms p99={q[98]:.1f}ms max={max(latencies):.1f}ms"
        )
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
