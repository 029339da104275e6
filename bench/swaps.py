"""Case 8: agents that alternate between two models under a memory budget that holds one.

4 agent-like clients each send 50 requests alternating A, B, A, B (A: SmolLM2 in-process
through llama_cpp, B: SmolLM2 in a llama-server child; 8 output tokens each), with a
short random "tool call" pause between requests and a random start, from a fixed seed so
every policy sees the same schedule. `host` budget 200 MiB: one model at a time.

- `pool`: the pool's placement with its defaults (a model waiting for memory lets the
  loaded one serve its queue, new requests included, for up to swap_max_wait_s; busy
  models are never evicted).
- `pool-eager`: the same with min_resident_s 0 and swap_max_wait_s 0 (a model that waits
  makes the loaded one stop taking new jobs at once).
- `naive`: swap on every request for the other model, in arrival order: what a simple
  model swapper does. Driven from here: one request at a time, and before each one whose
  model is not the loaded one, an admin unload of the other and an admin load of it.

Counted: loads (llmpool_model_loads_total), total wall time, each request's latency.

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
POLICIES: dict[str, dict[str, float] | None] = {
    "pool": {},  # the defaults
    "pool-eager": {"min_resident_s": 0, "swap_max_wait_s": 0},
    "naive": None,  # swapped from here, see NaiveSwapper
}


def settings(policy: dict[str, float] | None) -> dict[str, Any]:
    placement = {"memory_budget_mib": {"host": 200}, **policy} if policy is not None else {}
    return {
        "service": {"log_level": "info", **placement},
        "engine": {
            "decoding": {"temperature": 0.0, "max_tokens": 8},
            "models": {
                name: {**extra, "model_path": SMOLLM2, "load_on_demand": policy is not None, "max_queue": 256}
                for name, extra in MODELS.items()
            },
        },
    }


class NaiveSwapper:
    """Serves requests strictly in arrival order (a ticket lock), swapping the one loaded
    model through the admin API whenever the next request wants the other."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loaded: str | None = None
        self.swaps = 0  # unloads of one model to load the other
        self._turn = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def post(self, http: requests.Session, model: str, body: dict[str, Any]) -> requests.Response:
        with self._turn:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._turn.wait()
        try:
            if self.loaded != model:
                if self.loaded is not None:
                    self.swaps += 1
                    http.post(
                        f"{self.url}/v1/admin/models/{self.loaded}/unload", timeout=120
                    ).raise_for_status()
                http.post(f"{self.url}/v1/admin/models/{model}/load", timeout=300).raise_for_status()
                self.loaded = model
            return http.post(self.url + "/v1/responses", json=body, timeout=600)
        finally:
            with self._turn:
                self._serving += 1
                self._turn.notify_all()


def counter(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def one_policy(
    name: str, policy: dict[str, float] | None, per_agent: int, seed: int, log: Log
) -> dict[str, Any]:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    naive: NaiveSwapper | None = None

    def agent(index: int, rng: random.Random, url: str) -> None:
        time.sleep(rng.uniform(0, 0.5))
        with requests.Session() as http:
            for i in range(per_agent):
                model = "A" if (i + index) % 2 == 0 else "B"
                body = {"model": model, "input": f"Agent {index}, step {i}: say hello."}
                t0 = time.perf_counter()
                if naive is not None:
                    r = naive.post(http, model, body)
                else:
                    r = http.post(url + "/v1/responses", json=body, timeout=600)
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                time.sleep(rng.uniform(0.05, 0.3))  # the agent's "tool call"

    with pool_server(settings(policy)) as pool:
        naive = NaiveSwapper(pool.url) if policy is None else None
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
        swaps = naive.swaps if naive is not None else counter(pool.url, "llmpool_model_swaps_total")
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
        "settings": "defaults" if policy == {} else policy or "admin-driven swaps in arrival order",
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
