"""Where the pool's worker spends its CPU while relaying (case 11's load), by py-spy.

    .venv/bin/python -m bench.profile_relay --api chat --streams 32 --out /tmp/prof

Starts case 11's nginx upstream and the pool (pinned as in the case), checks one stream
whole, then runs wrk (`--streams` connections, streamed POSTs of the 1,000-token stream)
while py-spy records the worker (`py-spy record -r RATE -f raw`, on the load-side CPU).
Writes DIR/relay-API-STREAMS.raw (collapsed stacks, `thread;frame;frame;... count`) and
DIR/relay-API-STREAMS.txt, the summary it also prints: the top functions by inclusive
share (on the stack) and by self share (the frame running), and self share by package, of
the main thread's samples (the gevent hub and every greenlet run there; py-spy leaves out
its idle ones, the hub in epoll), then the other threads' sample counts (the pool's real
threads, waiting on locks, which py-spy does not always see as idle).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import LOAD_CPU, pin_self_to_load_side, pool_server
from bench.loadgen import run_wrk
from bench.proxy import pool_settings
from bench.relay import BASE, PATHS, body, check_stream
from bench.upstream import RELAY_TOKENS, static_upstream

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")
MAIN = "MainThread"  # gunicorn's worker: the gevent hub and every greenlet run on it


def function(frame: str) -> str:
    """`func (file:line)` -> `func (file)`: one name for every line of a function (py-spy
    writes the file from its sys.path entry on: llmpool/executor.py, gevent/hub.py)."""
    m = FRAME.match(frame)
    return f"{m['func']} ({m['file']})" if m else frame


def package(frame: str) -> str:
    """The frame's top-level package or module (llmpool, gunicorn, json, socket, ...)."""
    m = FRAME.match(frame)
    return (m["file"] if m else frame).split("/", 1)[0].removesuffix(".py")


def summarize(raw: str, top: int = 15) -> tuple[str, dict[str, Any]]:
    """The summary of py-spy's raw output (recorded with --threads), as text and figures:
    shares of the main thread's samples; the other threads by their sample counts."""
    by_thread: collections.Counter[str] = collections.Counter()
    thread_top: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        thread, *frames = stack.split(";")
        name = thread.split(": ", 1)[1] if ": " in thread else thread
        by_thread[name] += n
        if not frames:
            continue
        thread_top[name][function(frames[-1])] += n
        if name != MAIN:
            continue
        for func in {function(f) for f in frames}:  # once per stack, recursion or not
            inclusive[func] += n
        own[function(frames[-1])] += n
        packages[package(frames[-1])] += n
    total = by_thread[MAIN]
    if not total:
        raise RuntimeError(f"py-spy recorded no samples of {MAIN}: {dict(by_thread)}")

    def table(title: str, counter: collections.Counter[str], k: int, what: str = "function") -> list[str]:
        rows = [f"{title}:", f"  {'share':>6}  {what}"]
        rows += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(k)]
        return rows

    lines = [f"{MAIN} (the hub and every greenlet): {total} samples; the shares are of these", ""]
    lines += table("top by inclusive share", inclusive, top) + [""]
    lines += table("top by self share", own, top) + [""]
    lines += table("self share by package", packages, 10, "package") + [
        "",
        "other threads (samples, top frame):",
    ]
    for name, n in by_thread.most_common():
        if name != MAIN:
            frame, _ = thread_top[name].most_common(1)[0] if thread_top[name] else ("-", 0)
            lines.append(f"  {n:7d}  {name}: {frame}")
    figures = {
        "samples": dict(by_thread),
        "inclusive": {k: round(n / total, 4) for k, n in inclusive.most_common(top)},
        "self": {k: round(n / total, 4) for k, n in own.most_common(top)},
        "packages": {k: round(n / total, 4) for k, n in packages.most_common(10)},
    }
    return "\n".join(lines) + "\n", figures


def record(api: str, streams: int, seconds: float, rate: int, out: Path, nonblocking: bool) -> str:
    """Run the load, record the worker; returns the summary (also written beside the raw file)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"relay-{api}-{streams}"
    raw_path = stem.with_suffix(".raw")
    with static_upstream() as upstream, pool_server(pool_settings(upstream, BASE)) as pool:
        check_stream(pool.url, api)
        url = pool.url + PATHS[api]
        run_wrk(url, connections=streams, seconds=1, body=body(api))  # warm-up
        worker = pool.worker_pid()
        load: dict[str, Any] = {}
        wrk = threading.Thread(
            target=lambda: load.update(run_wrk(url, connections=streams, seconds=seconds + 2, body=body(api)))
        )
        wrk.start()
        time.sleep(1)  # every connection streaming
        argv = [*LOAD_CPU, str(Path(sys.executable).with_name("py-spy")), "record", "-r", str(rate)]
        argv += ["--threads", "-f", "raw", "-p", str(worker), "-d", str(round(seconds)), "-o", str(raw_path)]
        argv += ["--nonblocking"] if nonblocking else []
        spy = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        wrk.join()
    if spy.returncode != 0 or not raw_path.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy.stderr[-2000:]}")
    text, _ = summarize(raw_path.read_text())
    tokens_per_s = round(load["requests"] * RELAY_TOKENS / load["duration_s"])
    head = (
        f"relay profile: api {api}, {streams} streams, py-spy -r {rate} -d {round(seconds)}"
        f"{' --nonblocking' if nonblocking else ''} on the worker (pid {worker})\n"
        f"load while recording: {tokens_per_s} tokens/s ({load['requests']} streams in "
        f"{load['duration_s']} s, errors {load['errors']}, non2xx {load['non2xx']})\n"
    )
    summary = head + text
    stem.with_suffix(".txt").write_text(summary)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api", choices=sorted(PATHS), default="chat")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8, help="py-spy's recording (wrk runs 2 s longer)")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--nonblocking", action="store_true", help="py-spy does not pause the worker")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    pin_self_to_load_side()
    print(record(args.api, args.streams, args.seconds, args.rate, args.out, args.nonblocking), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
