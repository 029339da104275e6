"""Case 12: time to the first content token (issue 23), pool against direct and LiteLLM.

(a) Instant upstream: the relay case's nginx stream (1,000 tokens at once). Milliseconds
from the request being written (on a kept-alive connection, one per side) to the first
content token's bytes at the client: for chat the first chunk with a non-empty
`delta.content`, for responses the first `response.output_text.delta`. Sequential
requests, each read to its end; nginx direct, the pool's chat and the pool's responses
alternate, LiteLLM (chat) runs afterwards on its own.

(b) A real llama-server: case 2's pool with SmolLM2 as a `llama_server` model against that
same child directly (case 2's requests: the pool's /v1/responses, the child's chat
completions, new connection each), and against the design's floor (bench/relay_floor.py:
the same gunicorn worker and a bare Flask app passing the direct request to the child and
its stream back unchanged); alternating, sequential, `max_tokens` small since only the
first token matters; layout *split* (the server side may use every core, as decoding does
not run on the pool's CPU on a GPU box). LiteLLM in front of the same child, afterwards.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import relay, streaming
from bench.common import LAYOUTS, Log, free_port, pool_server
from bench.proxy import litellm_server, pool_settings
from bench.relay_floor import floor_server
from bench.sse import Stream, connection, sse_request
from bench.upstream import MODEL, RELAY_TOKENS, static_upstream

# side -> (the API its events follow, its path); the URL is the side's server's
INSTANT = {
    "direct": ("chat", relay.BASE + "/chat/completions"),
    "pool_chat": ("chat", "/v1/chat/completions"),
    "pool_responses": ("responses", "/v1/responses"),
    "litellm": ("chat", "/v1/chat/completions"),
}


def percentiles(ms: list[float]) -> dict[str, Any]:
    ordered = sorted(ms)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]  # nearest rank
    return {"requests": len(ms), "p50_ms": round(statistics.median(ordered), 3), "p90_ms": round(p90, 3)}


def instant(urls: dict[str, str], requests: int, log: Log) -> dict[str, dict[str, Any]]:
    """First content token on the instant upstream for each side of `urls` (side -> URL),
    alternating; one warm-up round first."""
    conns = {side: connection(url, timeout_s=120) for side, url in urls.items()}
    times: dict[str, list[float]] = {side: [] for side in urls}
    try:
        for i in range(requests + 1):
            if i % 50 == 1:
                log(f"first_token (instant): {', '.join(urls)}, request {i}/{requests}")
            for side, url in urls.items():
                api, path = INSTANT[side]
                body = relay.body(api, allow_remote=side.startswith("pool"))
                stream = sse_request(
                    url,
                    path,
                    body,
                    functools.partial(relay.content_of, api),
                    None,
                    conn=conns[side],
                    connect_first=True,
                )
                if stream.tokens != RELAY_TOKENS:
                    raise RuntimeError(f"{side}: {stream.tokens} content events, not {RELAY_TOKENS}")
                if i:
                    times[side].append(stream.ttft_s * 1000)
    finally:
        for conn in conns.values():
            conn.close()
    return {side: percentiles(ms) for side, ms in times.items()}


def litellm_chat(url: str, max_tokens: int) -> Stream:
    """Case 2's request to the child, through LiteLLM (greedy; the sampling fields LiteLLM's
    OpenAI provider does not pass are left out, which changes nothing greedy)."""
    body = {
        "model": streaming.MODEL,
        "messages": [{"role": "user", "content": streaming.PROMPT}],
        "max_tokens": max_tokens,
        "temperature": streaming.DECODING["temperature"],
        "stream": True,
    }
    return sse_request(url, "/v1/chat/completions", body, lambda e: relay.content_of("chat", e), None)


def real(sides: dict[str, Callable[[], Stream]], requests: int, log: Log) -> dict[str, dict[str, Any]]:
    """TTFT of each side's request to the llama-server child, alternating; two warm-ups."""
    times: dict[str, list[float]] = {side: [] for side in sides}
    for i in range(-2, requests):
        if i % 10 == 0:
            log(f"first_token (llama-server): {', '.join(sides)}, request {i + 1}/{requests}")
        for side, one in sides.items():
            ttft = one().ttft_s * 1000
            if i >= 0:
                times[side].append(ttft)
    return {side: percentiles(ms) for side, ms in times.items()}


def added(out: dict[str, Any], side: str) -> dict[str, float]:
    """`side`'s p50 over direct's: ms added, and that as a share of direct's."""
    extra = out[side]["p50_ms"] - out["direct"]["p50_ms"]
    return {"ms": round(extra, 3), "of_direct": round(extra / out["direct"]["p50_ms"], 4)}


def run(
    *, requests: int = 200, real_requests: int = 100, max_tokens: int = 8, log: Log = print, workdir: Path
) -> dict[str, Any]:
    port = free_port()
    with static_upstream() as upstream:
        with pool_server(pool_settings(upstream, relay.BASE)) as pool:
            urls = {"direct": upstream, "pool_chat": pool.url, "pool_responses": pool.url}
            a: dict[str, Any] = instant(urls, requests, log)
        b: dict[str, Any] = {"max_tokens": max_tokens, "layout": "split"}
        settings = streaming.llama_server_settings(port, 1)
        child = f"http://127.0.0.1:{port}"
        with (
            pool_server(settings, cpus=LAYOUTS["split"]) as pool,
            floor_server(child + "/v1", LAYOUTS["split"]) as floor,
        ):
            url = pool.url
            b |= real(
                {
                    "direct": lambda: streaming.direct(child, max_tokens),
                    "pool": lambda: streaming.through_pool(url, max_tokens),
                    "floor": lambda: streaming.direct(floor.url, max_tokens),
                },
                real_requests,
                log,
            )
            log("first_token: starting LiteLLM (takes a while)")
            models = {MODEL: upstream + relay.BASE, streaming.MODEL: f"http://127.0.0.1:{port}/v1"}
            with litellm_server(models, workdir) as (lite, _):
                a |= instant({"litellm": lite}, requests, log)
                b |= real({"litellm": lambda: litellm_chat(lite, max_tokens)}, real_requests, log)
    a["added_p50"] = {side: added(a, side) for side in ("pool_chat", "pool_responses", "litellm")}
    b["added_p50"] = {side: added(b, side) for side in ("pool", "floor", "litellm")}
    return {"instant": a, "llama_server": b}
