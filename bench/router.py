"""Case 10: pools behind vLLM's router (`vllm-router`), on the instant upstream.

Each pool serves `openai_remote` -> nginx (case 1's upstream), so what is measured is the
serving path, not a model. The same wrk runs as case 1 against: one pool alone, the
router in front of that one pool (its own added latency; round_robin, as power_of_two
needs two workers), and the router in front of two pools (power_of_two on /get_load, the
flags of tests/integration/test_router.py). On this
machine every process shares the server CPUs, so two pools do not add CPU: the figure is
what routing costs and keeps, not how far it scales.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.common import ROOT, SERVER_CPU, Log, free_port, pool_server, spawn, stop, wait_ready
from bench.proxy import ALLOW_REMOTE, CONCURRENCY, measure, pool_settings
from bench.upstream import static_upstream

ROUTER_ENV = "LLM_POOL_VLLM_ROUTER"
DEFAULT_ROUTER = ROOT / ".venv-router" / "bin" / "vllm-router"


def router_binary() -> Path:
    path = Path(os.environ.get(ROUTER_ENV) or DEFAULT_ROUTER)
    if not path.exists():
        raise RuntimeError(f"vllm-router not found at {path}: `make bench` installs it (.venv-router)")
    return path


@contextmanager
def router(workers: list[str], workdir: Path) -> Iterator[str]:
    from tests.integration.test_router import ROUTER_FLAGS

    flags = list(ROUTER_FLAGS)
    if len(workers) == 1:  # power_of_two refuses to start with one worker: nothing to pick
        flags[flags.index("--policy") + 1] = "round_robin"
    port = free_port()
    argv = [*SERVER_CPU, str(router_binary()), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--prometheus-port", str(free_port()), "--worker-urls", *workers, *flags]
    log_path = workdir / f"router-{port}.log"
    proc = spawn(argv, log_path)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc, "vllm-router", log_path, 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def run(*, seconds: float = 10, log: Log = print, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"loadgen": "wrk, 1 thread, keep-alive", "seconds_per_run": seconds}
    with static_upstream() as upstream, ExitStack() as stack:
        one = stack.enter_context(pool_server(pool_settings(upstream)))
        out["pool"] = measure(one.url + "/v1/chat/completions", seconds, ALLOW_REMOTE, log, "one pool")
        with router([one.url], workdir) as url:
            out["router_one"] = measure(
                url + "/v1/chat/completions", seconds, ALLOW_REMOTE, log, "router + 1 pool"
            )
        two = stack.enter_context(pool_server(pool_settings(upstream)))
        with router([one.url, two.url], workdir) as url:
            out["router_two"] = measure(
                url + "/v1/chat/completions", seconds, ALLOW_REMOTE, log, "router + 2 pools"
            )
    alone = out["pool"]["1"]
    out["router_added_ms"] = {q: round(out["router_one"]["1"][q] - alone[q], 3) for q in ("p50_ms", "p99_ms")}
    out["rps_two_vs_one"] = {
        str(c): round(out["router_two"][str(c)]["rps"] / rps, 2)
        if (rps := out["pool"][str(c)]["rps"])
        else None
        for c in CONCURRENCY
    }
    return out
