"""Case 1: what a proxy adds on an instant upstream (nginx answering fixed bodies).

Four targets, the same wrk run against each: nginx directly, the pool
(`openai_remote` -> nginx, `POST /v1/chat/completions`), the design's floor (bench/relay_floor.py:
gunicorn's gevent worker and a bare Flask app passing the request to nginx and its answer
back) and LiteLLM's proxy (one worker, same upstream). Sequential latency from one
connection, then requests/s at 1, 16 and 64 connections. "Added" latency is a target's
percentile minus nginx's.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from bench.common import ROOT, SERVER_CPU, Log, free_port, pool_server, spawn, stop, wait_ready
from bench.loadgen import BODY, run_wrk
from bench.relay_floor import floor_server
from bench.upstream import MODEL, static_upstream

CONCURRENCY = (1, 16, 64)
LITELLM_ENV = "LLM_POOL_BENCH_LITELLM"
DEFAULT_LITELLM = ROOT / ".venv-litellm" / "bin" / "litellm"
ALLOW_REMOTE = {"X-LLM-Pool-Allow-Remote": "true"}


def pool_settings(upstream: str, base: str = "/sse/v1") -> dict[str, Any]:
    """One `openai_remote` model on the instant upstream's streaming `base`."""
    return {
        "service": {"log_level": "warning"},
        "engine": {
            "models": {
                MODEL: {
                    "backend": "openai_remote",
                    "remote_base_url": upstream + base,
                    "remote_model": MODEL,
                    "remote_timeout_s": 30,
                    # Never the bottleneck: 64 connections => at most 64 jobs at once.
                    "target_inflight": 128,
                    "max_queue": 1024,
                    "enabled": True,
                }
            }
        },
    }


def litellm_binary() -> Path:
    path = Path(os.environ.get(LITELLM_ENV) or DEFAULT_LITELLM)
    if not path.exists():
        raise RuntimeError(f"LiteLLM not found at {path}: `make bench` installs it (.venv-litellm)")
    return path


@contextmanager
def litellm_server(models: dict[str, str], workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """LiteLLM's proxy (one worker, on the server CPU) serving each model name of `models`
    from the OpenAI-style API base it maps to; yields its URL and its process (the leader
    of a process group of its own)."""
    port = free_port()
    config = workdir / f"litellm-{port}.yaml"
    lines = ["model_list:"]
    for name, api_base in models.items():
        lines += [f"  - model_name: {name}", "    litellm_params:", f"      model: openai/{name}"]
        lines += [f"      api_base: {api_base}", "      api_key: none"]
    config.write_text("\n".join([*lines, "litellm_settings:", "  telemetry: false", ""]))
    log_path = workdir / f"litellm-{port}.log"
    proc = spawn(
        [
            *SERVER_CPU,
            str(litellm_binary()),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        log_path,
        {
            # Offline: no model cost map download; no master key for a local benchmark.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
        },
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/liveliness", proc, "LiteLLM", log_path, 180)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop(proc)


@contextmanager
def litellm_proxy(upstream: str, workdir: Path, base: str = "/json/v1") -> Iterator[str]:
    """LiteLLM in front of the instant upstream's `base`; yields its URL."""
    with litellm_server({MODEL: upstream + base}, workdir) as (url, _):
        yield url


def measure(url: str, seconds: float, headers: dict[str, str] | None, log: Log, name: str) -> dict[str, Any]:
    runs = {}
    # Warm-up: one answered request first (LiteLLM's first one imports for seconds, longer
    # than a smoke's window on a busy machine), then a second of wrk: pools, caches.
    requests.post(url, json=BODY, headers=headers, timeout=120).raise_for_status()
    run_wrk(url, connections=1, seconds=1, headers=headers)
    for c in CONCURRENCY:
        log(f"proxy: {name}, {c} connection(s), {seconds:g} s")
        result = run_wrk(url, connections=c, seconds=seconds, headers=headers)
        if result["errors"] or result["non2xx"]:
            raise RuntimeError(f"{name} failed requests under load: {result}")
        runs[str(c)] = result
    return runs


def same_answer(direct_url: str, relay_url: str) -> bool:
    """True when the relay answers BODY with the very bytes the upstream does; raises
    otherwise (a floor that changed the request or the answer would measure less)."""
    direct, relayed = (requests.post(url, json=BODY, timeout=30) for url in (direct_url, relay_url))
    if not (direct.ok and relayed.ok and direct.content == relayed.content):
        raise RuntimeError(
            f"{relay_url} answered {relayed.status_code} {relayed.text[:300]!r}, not nginx's answer"
        )
    return True


def run(*, seconds: float = 10, log: Log = print, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"loadgen": "wrk, 1 thread, keep-alive", "seconds_per_run": seconds}
    with static_upstream() as upstream:
        direct_url = upstream + "/json/v1/chat/completions"
        out["direct"] = measure(direct_url, seconds, None, log, "nginx direct")
        with pool_server(pool_settings(upstream)) as pool:
            out["pool"] = measure(pool.url + "/v1/chat/completions", seconds, ALLOW_REMOTE, log, "pool")
        with floor_server(upstream + "/json/v1") as floor:
            floor_url = floor.url + "/v1/chat/completions"
            out["floor_answer_as_direct"] = same_answer(direct_url, floor_url)
            out["floor"] = measure(floor_url, seconds, None, log, "floor (bare Flask)")
        log("proxy: starting LiteLLM (takes a while)")
        with litellm_proxy(upstream, workdir) as litellm:
            out["litellm"] = measure(litellm + "/v1/chat/completions", seconds, None, log, "LiteLLM")
    direct = out["direct"]["1"]
    out["added_ms"] = {
        name: {q: round(out[name]["1"][q] - direct[q], 3) for q in ("p50_ms", "p99_ms")}
        for name in ("pool", "floor", "litellm")
    }
    lite = out["added_ms"]["litellm"]["p50_ms"]
    for name in ("pool", "floor"):
        out[f"{name}_added_p50_vs_litellm"] = (
            round(out["added_ms"][name]["p50_ms"] / lite, 3) if lite > 0 else None
        )
    # None where LiteLLM answered nothing in the window (a loaded machine, a short smoke).
    out["pool_rps_vs_litellm"] = {
        str(c): round(out["pool"][str(c)]["rps"] / lite_rps, 2)
        if (lite_rps := out["litellm"][str(c)]["rps"])
        else None
        for c in CONCURRENCY
    }
    return out
