"""Case 3: in-process llama.cpp through the pool vs a bare llama-cpp-python loop.

Both load the same GGUF with the same arguments (1 thread, n_ctx 2048, CPU) and decode
the same ChatML prompt greedily with the same sampling values; both run pinned to the
server CPU. The bare loop is what the pool's adapter does minus the pool: tokenize,
reset, `create_completion(stream=True)`, measured in a process of its own. The pool is
measured from an SSE client. Decode tokens/s = output tokens (the text re-tokenized,
as the adapter counts them) over first token -> last.

    .venv/bin/python -m bench.inprocess --bare --max-tokens 200 --repeats 3   # the bare side alone
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from bench import streaming
from bench.common import LAYOUTS, ROOT, Log, pool_server
from bench.sse import Stream
from bench.streaming import DECODING, PROMPT, SMOLLM2

MODEL = "smollm2-inprocess"
N_CTX = 2048
THREADS = 1


def llama_kwargs(path: str) -> dict[str, Any]:
    # What the pool's llama_cpp adapter passes for the settings in pool_settings() below.
    return {
        "model_path": path,
        "n_ctx": N_CTX,
        "n_gpu_layers": -1,
        "flash_attn": False,
        "verbose": False,
        "n_threads": THREADS,
        "n_threads_batch": THREADS,
    }


def bare(max_tokens: int, repeats: int) -> list[dict[str, float]]:
    """The bare loop, in this process: one warm-up, then `repeats` timed completions."""
    import llama_cpp

    from llmpool.config.loader import resolve_model_path
    from llmpool.native.loader import ensure_backends
    from llmpool.prompts.generic import STOP, chatml

    ensure_backends()  # the portable build's CPU variant, as the pool loads it
    path = resolve_model_path(SMOLLM2, ROOT)
    llm = llama_cpp.Llama(**llama_kwargs(str(path)))
    prompt = chatml(None, [("user", PROMPT)])
    out = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        first: float | None = None
        pieces = []
        for part in llm.create_completion(
            prompt=tokens,
            max_tokens=max_tokens,
            temperature=DECODING["temperature"],
            top_p=DECODING["top_p"],
            top_k=DECODING["top_k"],
            repeat_penalty=DECODING["repetition_penalty"],
            stop=list(STOP),
            stream=True,
        ):
            text = part["choices"][0].get("text") or ""
            if text:
                first = first or time.perf_counter()
                pieces.append(text)
        ended = time.perf_counter()
        n = len(llm.tokenize("".join(pieces).encode(), add_bos=False, special=False))
        if i and first is not None:  # run 0 is the warm-up
            out.append(
                {
                    "ttft_s": first - started,
                    "tokens": n,
                    "decode_s": ended - first,
                    "total_s": ended - started,
                }
            )
    return out


def bare_in_subprocess(max_tokens: int, repeats: int, cpus: list[str]) -> list[Stream]:
    argv = [
        *cpus,
        sys.executable,
        "-m",
        "bench.inprocess",
        "--bare",
        "--max-tokens",
        str(max_tokens),
        "--repeats",
        str(repeats),
    ]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the bare llama-cpp-python loop failed:\n{done.stderr[-3000:]}")
    return [Stream(**r) for r in json.loads(done.stdout.strip().splitlines()[-1])]


def pool_settings() -> dict[str, Any]:
    return {
        "service": {"log_level": "warning"},
        "engine": {
            "models": {
                MODEL: {
                    "backend": "llama_cpp",
                    "model_path": SMOLLM2,
                    "prompt_format": "generic",
                    "gguf_n_ctx": N_CTX,
                    "gguf_n_threads": THREADS,
                    "enabled": True,
                }
            }
        },
    }


def through_pool(url: str, max_tokens: int) -> Stream:
    return streaming.through_pool(url, max_tokens, MODEL)


def rates(streams: list[Stream]) -> dict[str, Any]:
    return {
        "runs": len(streams),
        "tokens_per_s_median": round(statistics.median([s.tokens_per_s for s in streams]), 2),
        "tokens_per_s_all": [round(s.tokens_per_s, 2) for s in streams],
        "ttft_ms_median": round(statistics.median([s.ttft_s for s in streams]) * 1000, 2),
        "tokens_median": statistics.median([float(s.tokens) for s in streams]),
    }


def run(
    *, repeats: int = 4, max_tokens: int = 200, layout: str = "shared", log: Log = print
) -> dict[str, Any]:
    """`repeats` runs a side, in short alternating rounds (bare, then pool), so that a
    drift of the shared CPU's speed during the case lands on both sides alike."""
    per_round = 2 if repeats >= 4 else 1
    rounds = max(2, repeats // per_round)
    sides: dict[str, list[Stream]] = {"bare": [], "pool": []}
    cpus = LAYOUTS[layout]  # the same for both sides
    with pool_server(pool_settings(), cpus=cpus) as pool:
        through_pool(pool.url, 8)  # warm-up
        for rnd in range(1, rounds + 1):
            log(f"in-process ({layout}): round {rnd}/{rounds}, bare llama-cpp-python then the pool")
            sides["bare"] += bare_in_subprocess(max_tokens, per_round, cpus)
            sides["pool"] += [through_pool(pool.url, max_tokens) for _ in range(per_round)]
    b, p = rates(sides["bare"]), rates(sides["pool"])
    return {
        "max_tokens": max_tokens,
        "threads": THREADS,
        "layout": layout,
        "bare": b,
        "pool": p,
        "tokens_per_s_ratio": round(p["tokens_per_s_median"] / b["tokens_per_s_median"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bare", action="store_true", help="run only the bare loop, print JSON")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    if args.bare:
        print(json.dumps(bare(args.max_tokens, args.repeats)))
    else:
        print(json.dumps(run(repeats=args.repeats, max_tokens=args.max_tokens), indent=1))


if __name__ == "__main__":
    main()
