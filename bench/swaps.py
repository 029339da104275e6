"""Case 8: agents that alternate between two models under a memory budget that holds one.

4 agent-like clients each send 50 requests alternating A, B, A, B (A: SmolLM2 in-process
through llama_cpp, B: SmolLM2 in a llama-server child; 8 output tokens each), with a
short random "tool call" pause between requests and a random start, from a fixed seed so
both policies see the same schedule. `host` budget 200 MiB: one model at a time.

- `pool`: the pool's policy as configured by default (a model waiting for memory lets the
  loaded one serve its queue, new requests included, for up to swap_max_wait_s; busy
  models are never evicted).
- `naive`: swap on every request for the other model (what most model swappers do):
  min_resident_s 0 and swap_max_wait_s 0, so a model that waits makes the loaded one
  stop taking jobs at once.

Counted: loads (the pool's llmpool_model_loads_total), swaps, total wall time, and each
request's latency.

    .venv/bin/python -m bench --cases swaps
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import Log, pool_server
from bench.streaming import SMOLLM2

AGENTS = 4
PER_AGENT = 50
MODELS = {
    "A": {"backend": "llama_cpp", "gguf_n_ctx": 512, "gguf_n_threads": 1},
    "B": {"backend": "llama_server", "llama_server_n_ctx": 512, "llama_server_n_threads": 1},
}
POLICIES: dict[str, dict[str, float]] = {
    "pool": {},  # the defaults
    "naive": {"min_resident_s": 0, "swap_max_wait_s": 0},
}


def settings(policy: dict[str, float]) -> dict[str, Any]:
    return {
        "service": {"log_level": "info", "memory_budget_mib": {"host": 200}, **policy},
        "engine": {
            "decoding": {"temperature": 0.0, "max_tokens": 8},
            "models": {
                name: {**extra, "model_path": SMOLLM2, "load_on_demand": True, "max_queue": 256}
                for name, extra in MODELS.items()
            },
        },
    }


def counter(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def one_policy(name: str, policy: dict[str, float], per_agent: int, seed: int, log: Log) -> dict[str, Any]:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def agent(index: int, rng: random.Random, url: str) -> None:
        time.sleep(rng.uniform(0, 0.5))
        with requests.Session() as http:
            for i in range(per_agent):
                model = "A" if (i + index) % 2 == 0 else "B"
                body = {"model": model, "input": f"Agent {index}, step {i}: say hello."}
                t0 = time.perf_counter()
                r = http.post(url + "/v1/responses", json=body, timeout=600)
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                time.sleep(rng.uniform(0.05, 0.3))  # the agent's "tool call"

    with pool_server(settings(policy)) as pool:
        rngs = [random.Random(seed + i) for i in range(AGENTS)]
        threads = [threading.Thread(target=agent, args=(i, rngs[i], pool.url)) for i in range(AGENTS)]
        log(f"swaps: {name} policy, {AGENTS} agents x {per_agent} requests")
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = time.perf_counter() - t0
        loads = counter(pool.url, "llmpool_model_loads_total{")
        swaps = counter(pool.url, "llmpool_model_swaps_total")
        if failures:
            kept = Path(tempfile.gettempdir()) / f"llmpool-bench-swaps-{name}.log"
            shutil.copy(pool.log_path, kept)
            raise RuntimeError(f"{name}: {len(failures)} failed (pool log: {kept}), first: {failures[0]}")
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "loads": int(loads),
        "swaps": int(swaps),
        "total_s": round(total, 1),
        "latency_p50_s": round(statistics.median(ordered), 3),
        "latency_p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        "settings": policy or "defaults",
    }


def run(*, per_agent: int = PER_AGENT, seed: int = 7, log: Log = print) -> dict[str, Any]:
    out: dict[str, Any] = {"agents": AGENTS, "per_agent": per_agent}
    for name, policy in POLICIES.items():
        out[name] = one_policy(name, policy, per_agent, seed, log)
        log(f"swaps: {name}: {out[name]}")
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
