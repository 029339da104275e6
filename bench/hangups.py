"""Clients that queue a huge prompt and hang up: does the worker give the memory back?

Starts a real gunicorn+gevent pool (SmolLM2 GGUF in-process, one replica, one slot). Each
round starts one long streaming job that holds the slot (greedy counting, many tokens),
then N clients POST /v1/responses (stream) each with a prompt of several MB; once every
one of them has read its `: queued N` comment they close their sockets. The worker's RSS
is read before the clients, at its peak (sampled every 20 ms) and after the hang-ups (once
queue_depth is back to 0, five readings over 2 s; the last is "after"). The long job must
still complete. Rounds repeat, so that memory kept per round would show as a ratchet.

    .venv/bin/python -m bench.hangups [--rounds 5] [--clients 40] [--prompt-mb 4]

Progress goes to stderr, the result (a JSON object) to stdout.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import requests

from bench.common import (
    Log,
    Pool,
    RssPeak,
    model_row,
    one_slot_settings,
    pool_server,
    print_result,
    rss_mb,
    rss_settled,
    wait_for_row,
)
from tests.conftest import SMOLLM2_ID
from tests.integration.conftest import Server, sse_events
from tests.integration.test_server import open_stream, read_until

# Greedy counting rarely reaches EOS: the job runs to its max_tokens (7 ms a token or more
# here), past a round's uploads and hang-ups; `outlasted_hangups` says whether it did.
LONG_PROMPT = "Count from 1 to 5000, separated by commas, without stopping: 1, 2, 3, 4, 5,"
SETTLE_TIMEOUT_S = 30.0  # hang-ups until queue_depth is 0


def big_prompt(megabytes: float) -> str:
    """Plain words, `megabytes` MiB of them."""
    size = int(megabytes * 1024 * 1024)
    words = "the quick brown fox jumps over the lazy dog "
    return (words * (size // len(words) + 1))[:size]


def wait_queued(target: Server, body: dict[str, Any]) -> socket.socket:
    """Stream `body` on a raw socket, read until its first `: queued N` comment; the open
    socket. AssertionError (with what was read) when the stream ends first."""
    sock = open_stream(target, body)
    try:
        read_until(sock, b"\n: queued ", 1)
    except BaseException:
        sock.close()
        raise
    return sock


def start_long_job(
    pool: Pool, session: requests.Session, threads: ThreadPoolExecutor, tokens: int
) -> Future[Any]:
    """The stream that keeps the one slot busy; returns once it holds the slot."""
    body = {"model": SMOLLM2_ID, "input": LONG_PROMPT, "decoding": {"max_tokens": tokens, "temperature": 0.0}}
    job = threads.submit(sse_events, pool.url, body)
    wait_for_row(session, pool, lambda r: r["inflight"] == 1 or job.done(), "running", 60)
    if job.done():
        job.result()  # raises what broke it
        raise RuntimeError("the long job ended before any client was queued")
    return job


def queue_then_hang_up(
    pool: Pool, session: requests.Session, threads: ThreadPoolExecutor, clients: int, body: dict[str, Any]
) -> tuple[int, Counter[str], int]:
    """`clients` connections at once, each until it is queued; then every one is closed
    (a plain close: the server learns it at its next writes). Returns how many were
    queued, failures by kind, and queue_depth while all waited."""
    target = Server(pool.url, pool.proc, pool.log_path)  # the pool as the test helpers take it
    calls = [threads.submit(wait_queued, target, body) for _ in range(clients)]
    sockets: list[socket.socket] = []
    failures: Counter[str] = Counter()
    try:
        for call in calls:
            try:
                sockets.append(call.result())
            except (OSError, AssertionError) as exc:
                failures[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
        return len(sockets), failures, model_row(session, pool)["queue_depth"]
    finally:
        for sock in sockets:
            sock.close()  # the hang-up


def one_round(
    pool: Pool, session: requests.Session, clients: int, body: dict[str, Any], long_tokens: int, log: Log
) -> dict[str, Any]:
    worker = pool.worker_pid()
    with ThreadPoolExecutor(clients + 1, thread_name_prefix="hangups") as threads:
        long_job = start_long_job(pool, session, threads, long_tokens)
        before = rss_mb(worker)
        with RssPeak(worker) as peak:
            queued, failures, depth = queue_then_hang_up(pool, session, threads, clients, body)
            emptied_s = wait_for_row(
                session, pool, lambda r: r["queue_depth"] == 0, "emptied", SETTLE_TIMEOUT_S
            )
        outlasted = not long_job.done()  # else a queued client may have run: the round is void
        settled = rss_settled(worker)
        row = model_row(session, pool)
        events = long_job.result()
    end, last = events[-1]
    result = {
        "queued": queued,
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "queue_depth_seen": depth,
        "emptied_s": emptied_s,
        "queue_depth_after": row["queue_depth"],
        "rss_mb": {"before": before, "peak": peak.peak, "after": settled[-1]},
        "rss_mb_settling": settled,
        "after_minus_before_mb": round(settled[-1] - before, 1),
        "long_job": {
            "completed": end == "response.completed",
            "output_tokens": last.get("usage", {}).get("output_tokens"),
            "outlasted_hangups": outlasted,
        },
    }
    log(
        f"hangups: {queued}/{clients} queued (depth {depth}), emptied in {emptied_s}s; "
        f"RSS {before} -> peak {peak.peak} -> {settled[-1]} MB; long job {end}"
    )
    return result


def run(
    *,
    rounds: int = 5,
    clients: int = 40,
    prompt_mb: float = 4.0,
    long_tokens: int = 1900,
    log: Log = print,
) -> dict[str, Any]:
    started = time.monotonic()
    log(f"hangups: starting the pool; {rounds} round(s) of {clients} clients x {prompt_mb:g} MB prompts")
    with pool_server(one_slot_settings(clients + 64)) as pool:
        session = requests.Session()
        session.get(pool.url + "/v1/models", timeout=30).raise_for_status()
        body = {"model": SMOLLM2_ID, "input": big_prompt(prompt_mb), "decoding": {"max_tokens": 4}}
        idle = rss_mb(pool.worker_pid())
        done = [one_round(pool, session, clients, body, long_tokens, log) for _ in range(rounds)]
    first, last = done[0]["rss_mb"], done[-1]["rss_mb"]
    return {
        "rounds": rounds,
        "clients": clients,
        "prompt_mb": prompt_mb,
        "failed": sum(r["failed"] for r in done),
        "rss_mb": {
            "idle": idle,
            "before": first["before"],
            "peak": max(r["rss_mb"]["peak"] for r in done),
            "after": last["after"],
        },
        # The target figure: what the worker still holds after every round, over what it
        # held before the first (so a per-round ratchet adds up here).
        "after_minus_before_mb": round(last["after"] - first["before"], 1),
        "after_by_round_mb": [r["rss_mb"]["after"] for r in done],
        "queue_depth_after": done[-1]["queue_depth_after"],
        "long_jobs_completed": all(r["long_job"]["completed"] for r in done),
        "long_jobs_outlasted_hangups": all(r["long_job"]["outlasted_hangups"] for r in done),
        "by_round": done,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--prompt-mb", type=float, default=4.0)
    parser.add_argument(
        "--long-tokens", type=int, default=1900, help="max_tokens of the job that holds the slot"
    )
    print_result(run, **vars(parser.parse_args()))


if __name__ == "__main__":
    main()
