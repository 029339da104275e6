"""Case 5: how long an operator's load call takes, per backend.

`POST /v1/admin/models/{name}/load` (it waits for ready by default) on a `llama_server`
model (a supervised child: spawn, load the GGUF, answer /health) and on the in-process
`llama_cpp` model (the binding loads the GGUF on an OS thread), each unloaded again
between runs. Both SmolLM2 Q4_1, both start disabled.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import requests

from bench.common import Log, pool_server
from bench.streaming import SMOLLM2

MODELS = {
    "load-llama-server": {"backend": "llama_server", "llama_server_n_ctx": 2048},
    "load-llama-cpp": {"backend": "llama_cpp", "gguf_n_ctx": 2048},
}


def run(*, repeats: int = 3, log: Log = print) -> dict[str, Any]:
    settings = {
        "service": {"log_level": "warning"},
        "engine": {
            "models": {
                name: {**extra, "model_path": SMOLLM2, "prompt_format": "generic", "enabled": False}
                for name, extra in MODELS.items()
            }
        },
    }
    out: dict[str, Any] = {"repeats": repeats}
    with pool_server(settings) as pool, requests.Session() as http:
        for name, extra in MODELS.items():
            times = []
            for i in range(repeats):
                log(f"load times: {extra['backend']}, run {i + 1}/{repeats}")
                t0 = time.perf_counter()
                r = http.post(f"{pool.url}/v1/admin/models/{name}/load", timeout=300)
                elapsed = time.perf_counter() - t0
                if r.status_code != 200 or r.json().get("state") != "loaded":
                    raise RuntimeError(f"load of {name} failed: {r.status_code} {r.text[:500]}")
                times.append(elapsed)
                r = http.post(f"{pool.url}/v1/admin/models/{name}/unload", timeout=120)
                if r.status_code != 200:
                    raise RuntimeError(f"unload of {name} failed: {r.status_code} {r.text[:500]}")
            out[extra["backend"]] = {
                "median_s": round(statistics.median(times), 3),
                "all_s": [round(t, 3) for t in times],
            }
    return out
