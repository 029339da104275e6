"""Case 11: the relay at GPU speed (issue 23): a 1,000-token stream from an instant upstream.

nginx streams `RELAY_TOKENS` one-token chunks at once (`/relay/v1`), faster than any GPU
box decodes, so what is measured is the relay alone: the pool's worker reading the
upstream's SSE, handing each token to the request's greenlet and writing it out as the
API's own event. wrk POSTs streamed requests at 1, 8 and 32 connections to the pool's
`/v1/chat/completions` and `/v1/responses` (one `openai_remote` model), to LiteLLM's proxy
(chat, same upstream), and straight to nginx (the ceiling of wrk + upstream here).
LiteLLM relays too slowly for wrk (a stream takes it longer than the window at 8 streams and
more), so its load is Python clients that count each content delta as it arrives.

Per run: tokens/s relayed (completed streams x RELAY_TOKENS over wrk's duration) and the
server's CPU per relayed token (/proc utime + stime before and after the run: the pool's
worker; every process of LiteLLM's group). The streams wrk cuts at the end of its window
cost CPU but count no tokens, so the pool's CPU figure is an upper bound; `_low` counts
each of them as relayed whole (wrk leaves at most one per connection), the lower bound. At
32 streams the two differ by about 32 over the streams completed (~10 % at 300).

Before any timing each API is read once by a client that checks the whole stream: the
content deltas join to the upstream's text, in order, and the stream ends properly.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Log, cpu_s, group_cpu_s, pool_server
from bench.loadgen import run_wrk
from bench.proxy import litellm_server, pool_settings
from bench.sse import connection, data_payloads, post_stream
from bench.upstream import MODEL, RELAY_TEXT, RELAY_TOKENS, static_upstream

STREAMS = (1, 8, 32)
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses"}
PROMPT = "Count, one word at a time."
BASE = "/relay/v1"


def body(api: str, *, allow_remote: bool = True) -> dict[str, Any]:
    """A streamed request for the whole relay stream (`allow_remote` only where the pool reads it)."""
    if api == "chat":
        out: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": RELAY_TOKENS,
            "stream": True,
        }
    else:
        out = {"model": MODEL, "input": PROMPT, "max_output_tokens": RELAY_TOKENS, "stream": True}
    return {**out, "allow_remote": True} if allow_remote else out


def content_of(api: str, event: dict[str, Any]) -> str:
    """The output text an event carries ('' for the others)."""
    if api == "chat":
        return "".join((c.get("delta") or {}).get("content") or "" for c in event.get("choices") or ())
    return str(event.get("delta") or "") if event.get("type") == "response.output_text.delta" else ""


def check_stream(url: str, api: str, *, path: str | None = None, allow_remote: bool = True) -> dict[str, int]:
    """Read one whole stream from `url` (at `path`, the API's own by default); RuntimeError
    unless every token arrived, in order, and the stream ended as its API ends one ([DONE]
    for chat, response.completed for responses)."""
    path = path or PATHS[api]
    conn, resp, _ = post_stream(url, path, body(api, allow_remote=allow_remote), timeout_s=120)
    try:
        payloads = list(data_payloads(resp))
    finally:
        conn.close()
    events = [json.loads(p) for p in payloads if p != b"[DONE]"]
    pieces = [text for e in events if (text := content_of(api, e))]
    joined = "".join(pieces)
    problems = []
    if joined != RELAY_TEXT:
        at = next((i for i, (a, b) in enumerate(zip(joined, RELAY_TEXT, strict=False)) if a != b), None)
        at = min(len(joined), len(RELAY_TEXT)) if at is None else at
        problems.append(
            f"content of {len(joined)} chars in {len(pieces)} deltas, not the upstream's {len(RELAY_TEXT)}: "
            f"differs from char {at} ({joined[at : at + 40]!r})"
        )
    if api == "chat":
        if not payloads or payloads[-1] != b"[DONE]":
            problems.append(f"does not end with [DONE] (last: {payloads[-1][:200] if payloads else None!r})")
        if not any(c.get("finish_reason") == "stop" for e in events for c in e.get("choices") or ()):
            problems.append("no finish_reason 'stop'")
    else:
        last = events[-1] if events else {}
        if last.get("type") != "response.completed":
            problems.append(f"does not end with response.completed (last: {last.get('type')!r})")
        elif last.get("output_text", RELAY_TEXT) != RELAY_TEXT:
            problems.append("response.completed's output_text is not the upstream's text")
    if problems:
        raise RuntimeError(f"{url}{path}: the relayed stream is wrong: " + "; ".join(problems))
    return {"content_deltas": len(pieces), "events": len(payloads)}


def with_cpu(row: dict[str, Any], tokens: int, used: float | None) -> dict[str, Any]:
    row["tokens_per_s"] = round(tokens / row["duration_s"])
    if used is not None:
        row["cpu_s"] = round(used, 3)
        row["cpu_us_per_token"] = round(used * 1e6 / tokens, 2) if tokens else None
    return row


def wrk_run(
    url: str, request: dict[str, Any], connections: int, seconds: float, cpu: Callable[[], float] | None
) -> dict[str, Any]:
    """One wrk run: tokens/s relayed (completed streams) and, with `cpu`, CPU µs per token."""
    before = cpu() if cpu else 0.0
    run = run_wrk(url, connections=connections, seconds=seconds, body=request)
    used = cpu() - before if cpu else None
    row = {k: run[k] for k in ("connections", "requests", "errors", "non2xx", "duration_s")}
    row |= {"stream_p50_ms": run["p50_ms"], "stream_p99_ms": run["p99_ms"]}
    row = with_cpu(row, run["requests"] * RELAY_TOKENS, used)
    if used is not None:  # the lower bound: as if every stream cut at the end had been whole
        row["cpu_us_per_token_low"] = round(used * 1e6 / ((run["requests"] + connections) * RELAY_TOKENS), 2)
    return row


def client_run(
    url: str, request: dict[str, Any], connections: int, seconds: float, cpu: Callable[[], float] | None
) -> dict[str, Any]:
    """`connections` Python clients streaming chat back to back for `seconds`, counting
    each content delta that arrives within the window (a stream cut at its end counts what
    it got): for a relay too slow to finish a stream in wrk's window. CPU is sampled at the
    window's ends; "requests" are the streams completed within it."""
    counts = [[0, 0] for _ in range(connections)]  # per client: tokens, completed streams
    conns = [connection(url, timeout_s=120) for _ in range(connections)]
    errors: list[BaseException] = []
    deadline = time.monotonic() + seconds

    def client(conn: http.client.HTTPConnection, mine: list[int]) -> None:
        try:
            while time.monotonic() < deadline:
                _, resp, _ = post_stream(url, PATHS["chat"], request, conn=conn)
                for payload in data_payloads(resp):
                    if time.monotonic() >= deadline:
                        return
                    if payload == b"[DONE]":
                        mine[1] += 1
                    elif content_of("chat", json.loads(payload)):
                        mine[0] += 1
        except Exception as exc:
            if time.monotonic() < deadline:  # after it, the sockets are shut down under us
                errors.append(exc)

    before = cpu() if cpu else 0.0
    threads = [threading.Thread(target=client, args=args) for args in zip(conns, counts, strict=True)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, deadline - time.monotonic()))
    used = cpu() - before if cpu else None
    while any(t.is_alive() for t in threads):  # a client still waiting stops waiting now
        for conn in conns:
            with contextlib.suppress(OSError, AttributeError):  # closed, or never opened
                conn.sock.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout=0.2)
    for conn in conns:
        conn.close()
    row = {
        "connections": connections,
        "requests": sum(c[1] for c in counts),
        "errors": len(errors),
        "non2xx": 0,
        "duration_s": seconds,
        "first_error": repr(errors[0])[:300] if errors else None,
    }
    return with_cpu(row, sum(c[0] for c in counts), used)


def settle(cpu: Callable[[], float], timeout_s: float = 120, every_s: float = 0.5) -> float:
    """Wait until the server is idle (under 5 % CPU over `every_s`): a stream cut at the end
    of the last run may still be relayed for a while (LiteLLM goes on with one whose client
    left). Returns the seconds waited."""
    began = time.monotonic()
    last = cpu()
    while time.monotonic() - began < timeout_s:
        time.sleep(every_s)
        now = cpu()
        if now - last < 0.05 * every_s:
            break
        last = now
    return round(time.monotonic() - began, 2)


def series(
    name: str,
    url: str,
    request: dict[str, Any],
    seconds: float,
    cpu: Callable[[], float] | None,
    log: Log,
    runner: Callable[..., dict[str, Any]] = wrk_run,
) -> dict[str, dict[str, Any]]:
    runner(url, request, 1, 1, None)  # warm-up: connections, caches
    rows = {}
    for n in STREAMS:
        log(f"relay: {name}, {n} stream(s), {seconds:g} s")
        waited = settle(cpu) if cpu else None
        row = runner(url, request, n, seconds, cpu)
        row["settled_s"] = waited
        if row["errors"] or row["non2xx"]:
            raise RuntimeError(f"{name} failed streams under load: {row}")
        rows[str(n)] = row
    return rows


def ratios(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """a's tokens/s over b's, by streams (None where b relayed nothing)."""
    return {
        n: round(a[n]["tokens_per_s"] / b[n]["tokens_per_s"], 2) if b[n]["tokens_per_s"] else None for n in a
    }


def run(*, seconds: float = 10, log: Log = print, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {
        "loadgen": "wrk, 1 thread, keep-alive, streamed POSTs",
        "seconds_per_run": seconds,
        "tokens_per_stream": RELAY_TOKENS,
        "check": {},
        "pool": {},
    }
    with static_upstream() as upstream:
        direct = BASE + "/chat/completions"
        out["check"]["direct"] = check_stream(upstream, "chat", path=direct, allow_remote=False)
        out["direct"] = series(
            "nginx direct", upstream + direct, body("chat", allow_remote=False), seconds, None, log
        )
        with pool_server(pool_settings(upstream, BASE)) as pool:
            worker = pool.worker_pid()
            for api, path in PATHS.items():
                out["check"][api] = check_stream(pool.url, api)
                out["pool"][api] = series(
                    f"pool {api}", pool.url + path, body(api), seconds, lambda: cpu_s(worker), log
                )
        log("relay: starting LiteLLM (takes a while)")
        with litellm_server({MODEL: upstream + BASE}, workdir) as (url, proc):
            out["check"]["litellm"] = check_stream(url, "chat", allow_remote=False)
            out["litellm"] = series(
                "LiteLLM",
                url + PATHS["chat"],
                body("chat", allow_remote=False),
                seconds,
                lambda: group_cpu_s(proc.pid),
                log,
                client_run,
            )
    out["pool_vs_litellm"] = ratios(out["pool"]["chat"], out["litellm"])
    return out
