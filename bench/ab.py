"""This checkout's worker against another's: CPU per non-streamed request, both pools up at once.

    git worktree add /tmp/base HEAD~3
    .venv/bin/python -m bench.ab /tmp/base [--rounds 12] [--seconds 2] [--connections 1]
        [--api chat] [--out FILE]

On the shared dev VM a pool's CPU per request moves by a fifth between runs a few minutes
apart (bench/README.md), more than most changes make; `bench.floor` run from one checkout
and then the other mostly measures that drift. Here both pools serve at once, pinned to
the server CPU, in front of the proxy case's instant upstream (`openai_remote`), and wrk
loads them in turn, `--rounds` short runs each, the side that goes first alternating. A
round's figure is the worker's CPU (user + system, from /proc) over the requests wrk
completed. Printed per side: the median and minimum µs per request, every round's, and
the median of wrk's p50. The other checkout runs on this one's interpreter and packages,
so compare commits whose dependencies are the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import ROOT, pin_self_to_load_side, pool_server
from bench.floor import measure
from bench.loadgen import BODY, run_wrk
from bench.proxy import ALLOW_REMOTE, pool_settings
from bench.upstream import MODEL, static_upstream

APIS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", BODY),
    "responses": ("/v1/responses", {"model": MODEL, "input": "What is the capital of France?"}),
}


def compare(roots: list[Path], *, rounds: int, seconds: float, connections: int, api: str) -> dict[str, Any]:
    path, body = APIS[api]
    cpu: dict[Path, list[float]] = {root: [] for root in roots}
    p50: dict[Path, list[float]] = {root: [] for root in roots}
    with static_upstream() as upstream, ExitStack() as stack:
        pools = [stack.enter_context(pool_server(pool_settings(upstream), root=root)) for root in roots]
        for pool, root in zip(pools, roots, strict=True):
            served_from = Path(f"/proc/{pool.worker_pid()}/cwd").resolve()
            if served_from != root:
                raise RuntimeError(f"the pool for {root} serves from {served_from}")
            run_wrk(pool.url + path, connections=connections, seconds=1, headers=ALLOW_REMOTE, body=body)
        for n in range(rounds):
            order = list(zip(roots, pools, strict=True))
            for root, pool in order if n % 2 == 0 else reversed(order):
                row = measure(
                    pool.url + path,
                    pool.worker_pid(),
                    connections=connections,
                    seconds=seconds,
                    headers=ALLOW_REMOTE,
                    body=body,
                )
                cpu[root].append(row["cpu_us_per_request"])
                p50[root].append(row["p50_ms"])
    return {
        str(root): {
            "cpu_us_per_request_median": round(statistics.median(cpu[root])),
            "cpu_us_per_request_min": round(min(cpu[root])),
            "rounds": [round(us) for us in cpu[root]],
            "wrk_p50_ms_median": round(statistics.median(p50[root]), 3),
        }
        for root in roots
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("other", type=Path, help="the other checkout (a git worktree of another commit)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=2, help="each wrk run")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--api", choices=sorted(APIS), default="chat")
    parser.add_argument("--out", type=Path, help="also write the figures here, as JSON")
    args = parser.parse_args()
    other = args.other.resolve()
    if not (other / "conf" / "gunicorn.conf.py").is_file() or other == ROOT:
        parser.error(f"{other} is not another checkout of this repository")
    pin_self_to_load_side()
    result = compare(
        [ROOT, other], rounds=args.rounds, seconds=args.seconds, connections=args.connections, api=args.api
    )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    for root, row in result.items():
        print(
            f"{root}: CPU µs/request median {row['cpu_us_per_request_median']}, "
            f"min {row['cpu_us_per_request_min']}, wrk p50 median {row['wrk_p50_ms_median']} ms; "
            f"rounds {row['rounds']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
