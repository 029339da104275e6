"""The figures of one run as a markdown page (RESULTS.md) and a chart (overhead.png).

Every number comes from the JSON file the run wrote; nothing here measures anything.
Targets are the ones issue 6 set (issue 23's for the relay and the first token); each row
says whether this run reached it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import sections
from bench.sections import fmt as _fmt


def targets(r: dict[str, Any]) -> list[tuple[str, str, float | None, bool | None]]:
    """(what, target, value, met) for every target the run has a figure for."""
    rows: list[tuple[str, str, float | None, bool | None]] = []

    def add(what: str, target: str, value: float | None, ok: Any) -> None:
        rows.append((what, target, value, None if value is None else bool(ok(value))))

    def context(what: str, value: float) -> None:
        """A figure beside the targets with none of its own (the design's floor)."""
        rows.append((what, "-", value, None))

    proxy = r.get("proxy")
    if proxy:
        added = proxy["added_ms"]["pool"]["p50_ms"]
        add("proxy: pool added p50, sequential (ms)", "<= 0.5", added, lambda v: v <= 0.5)
        add(
            "proxy: pool added p50 / LiteLLM added p50",
            "<= 0.08",  # issue 23 (was 0.2)
            proxy["pool_added_p50_vs_litellm"],
            lambda v: v <= 0.08,
        )
        add(
            "proxy: pool req/s / LiteLLM req/s at 64",
            ">= 10",  # issue 23 (was 5)
            proxy["pool_rps_vs_litellm"]["64"],
            lambda v: v >= 10,
        )
        if "floor_added_p50_vs_litellm" in proxy:  # the fixed design's own share
            context(
                "proxy: floor (bare Flask relay) added p50 / LiteLLM added p50",
                proxy["floor_added_p50_vs_litellm"],
            )
    for layout, streaming in sections.layouts(r.get("streaming") or {}):
        for n in ("1", "4"):
            if n in streaming:
                add(
                    f"streaming ({layout}): pool / direct tokens/s, {n} stream(s)",
                    ">= 0.99",  # issue 23 (was 0.98)
                    streaming[n]["tokens_per_s_ratio"],
                    lambda v: v >= 0.99,
                )
    for layout, inproc in sections.layouts(r.get("inprocess") or {}):
        add(
            f"in-process ({layout}): pool / bare tokens/s",
            ">= 0.97",
            inproc["tokens_per_s_ratio"],
            lambda v: v >= 0.97,
        )
    many = r.get("many_clients")
    if many:
        add(
            f"{many['clients']} queued clients: worker RSS while waiting (MB)",
            "< 300",
            many["rss_mb"]["waiting_peak"],
            lambda v: v < 300,
        )
        add(
            f"{many['clients']} queued clients: GET /v1/models p99 (ms)",
            "<= 20",
            many["models_ms"]["p99"],
            lambda v: v <= 20,
        )
    hang = r.get("hangups")
    if hang:
        what = f"hangups: {hang['rounds']} x {hang['clients']} clients with {hang['prompt_mb']:g} MB prompts"
        growth = hang["after_minus_before_mb"]
        add(f"{what}: worker RSS after - before (MB)", "<= 20", growth, lambda v: v <= 20)
        add(f"{what}: queue_depth after the hang-ups", "0", hang["queue_depth_after"], lambda v: v == 0)
        add(
            f"{what}: long jobs that completed",
            str(hang["rounds"]),
            sum(x["long_job"]["completed"] for x in hang["by_round"]),
            lambda v: v == hang["rounds"],
        )
    cpu = r.get("cpu_variants")
    if cpu:
        add(
            f"llama.cpp decode tokens/s: portable ({cpu['chosen']}) / fastest here ({cpu['fastest']})",
            ">= 0.95",
            cpu["chosen_vs_fastest_decode"],
            lambda v: v >= 0.95,
        )
    relay = r.get("relay")
    for api, runs in (relay or {}).get("pool", {}).items():
        if "32" in runs:
            add(
                f"relay ({api}): tokens/s at 32 streams",
                ">= 100,000",
                runs["32"]["tokens_per_s"],
                lambda v: v >= 1e5,
            )
            add(
                f"relay ({api}): worker CPU µs per token at 32 streams",
                "<= 10",
                runs["32"]["cpu_us_per_token"],
                lambda v: v <= 10,
            )
    first = r.get("first_token")
    if first:
        for side in ("pool_chat", "pool_responses"):
            add(
                f"first token, instant upstream ({side.removeprefix('pool_')}): pool p50 (ms)",
                "<= 2",
                first["instant"][side]["p50_ms"],
                lambda v: v <= 2,
            )
        add(
            "first token, llama-server: pool added p50 / direct TTFT p50",
            "<= 0.05",
            first["llama_server"]["added_p50"]["pool"]["of_direct"],
            lambda v: v <= 0.05,
        )
        floor = first["llama_server"]["added_p50"].get("floor")
        if floor:
            context(
                "first token, llama-server: floor (bare Flask relay) added p50 / direct", floor["of_direct"]
            )
    soak = r.get("soak")
    if soak:
        what = f"soak: {soak['requests']} requests over {soak['clients']} keep-alive connections"
        add(f"{what}: errors", "0", soak["errors"], lambda v: v == 0)
        add(f"{what}: worker RSS growth after warm-up (%)", "< 5", soak["rss_growth_pct"], lambda v: v < 5)
    return rows


def markdown(r: dict[str, Any], command: str) -> str:
    meta = r["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `{command}` on {meta['date']}"
        + (" (a smoke run: too short to quote)." if meta.get("smoke") else "."),
        "Ratios are measured within one run; absolute times on a shared 2-core machine are noise.",
        "Where the time goes, and why a target is missed: [bench/README.md](README.md).",
        "",
        "## Machine and versions",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in meta["machine"].items()]
    lines += [f"| {k} | {v} |" for k, v in meta["versions"].items()]
    lines += ["", "## Targets", "", "| figure | target | this run | met |", "|---|---|---|---|"]
    for what, target, value, met in targets(r):
        lines.append(
            f"| {what} | {target} | {_fmt(value)} | {'-' if met is None else ('yes' if met else 'NO')} |"
        )
    proxy = r.get("proxy")
    if proxy:
        lines += [
            "",
            "## 1. Proxy overhead on an instant upstream (nginx, fixed bodies)",
            "",
            f"wrk, {proxy['seconds_per_run']:g} s per run, keep-alive. nginx direct is also the ceiling of "
            "wrk + upstream here. The pool reaches nginx through `openai_remote` (a streamed upstream "
            "call); the floor (bench/relay_floor.py: the same gunicorn worker and a bare Flask app, no "
            "pool) passes the request to nginx and its answer back; LiteLLM goes through its OpenAI "
            "provider (a non-streamed one).",
            "",
            "| target | conns | req/s | p50 ms | p90 ms | p99 ms |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("direct", "pool", "floor", "litellm"):
            for c, row in proxy.get(name, {}).items():
                lines.append(
                    f"| {name} | {c} | {_fmt(row['rps'])} | {_fmt(row['p50_ms'])} | {_fmt(row['p90_ms'])} "
                    f"| {_fmt(row['p99_ms'])} |"
                )
        lines += [
            "",
            "| added over direct, 1 connection | p50 ms | p99 ms |",
            "|---|---|---|",
        ]
        for name, added in proxy["added_ms"].items():
            lines.append(f"| {name} | {_fmt(added['p50_ms'])} | {_fmt(added['p99_ms'])} |")
        rps = ", ".join(f"{c}: {v}x" for c, v in proxy["pool_rps_vs_litellm"].items())
        lines += ["", f"Pool req/s over LiteLLM's by connections: {rps}."] + sections.rerun_note(proxy)
    if r.get("streaming"):
        lines += [
            "",
            "## 2. Streaming: pool vs its llama-server child directly",
            "",
            "SmolLM2 Q4_1, greedy, one decode thread. Layout *shared*: the pool, its child and the "
            "decode thread on one core (every microsecond the pool spends per token is taken from "
            "decoding); *split*: the server side may use both cores (as on a GPU box, where decoding "
            "does not run on the pool's CPU).",
            "",
            "| layout | streams | side | TTFT ms (median) | decode tok/s (median) |",
            "|---|---|---|---|---|",
        ]
        for layout, streaming in sections.layouts(r["streaming"]):
            for n in ("1", "4"):
                if n not in streaming:
                    continue
                for side in ("direct", "pool"):
                    s = streaming[n][side]
                    lines.append(
                        f"| {layout} | {n} | {side} | {_fmt(s['ttft_ms_median'])} "
                        f"| {_fmt(s['tokens_per_s_median'])} |"
                    )
                lines.append(
                    f"| {layout} | {n} | pool/direct | {_fmt(streaming[n]['ttft_added_ms'])} ms added "
                    f"| {_fmt(streaming[n]['tokens_per_s_ratio'])} |"
                )
        lines += sections.rerun_note(r["streaming"])
    if r.get("inprocess"):
        lines += [
            "",
            "## 3. In-process llama_cpp: pool vs a bare llama-cpp-python loop",
            "",
            "One decode thread, greedy; both sides get the same CPUs (layouts as above).",
            "",
            "| layout | side | decode tok/s (median) | runs | TTFT ms (median) |",
            "|---|---|---|---|---|",
        ]
        for layout, inproc in sections.layouts(r["inprocess"]):
            for side in ("bare", "pool"):
                s = inproc[side]
                lines.append(
                    f"| {layout} | {side} | {_fmt(s['tokens_per_s_median'])} | {s['runs']} "
                    f"| {_fmt(s['ttft_ms_median'])} |"
                )
            lines.append(f"| {layout} | pool/bare | {_fmt(inproc['tokens_per_s_ratio'])} | | |")
        lines += sections.rerun_note(r["inprocess"])
    many = r.get("many_clients")
    if many:
        lines += [
            "",
            f"## 4. {many['clients']} SSE clients queued on one model",
            "",
            "| figure | value |",
            "|---|---|",
        ]
        for key in ("connected", "failed", "queued_seen", "inflight_seen", "drain_s"):
            if key in many:
                lines.append(f"| {key} | {_fmt(many[key])} |")
        for key, value in many["rss_mb"].items():
            lines.append(f"| worker RSS {key} (MB) | {_fmt(value)} |")
        calls = many["models_ms"].get("calls")
        for key in ("p50", "p90", "p99", "max"):
            lines.append(f"| GET /v1/models {key} (ms), {calls} calls | {_fmt(many['models_ms'][key])} |")
        lines += sections.rerun_note(many)
    loads = r.get("load_times")
    if loads:
        lines += [
            "",
            "## 5. Load call (admin API, waits for ready)",
            "",
            "| backend | median s | runs |",
            "|---|---|---|",
        ]
        for backend in ("llama_server", "llama_cpp"):
            if backend in loads:
                lines.append(
                    f"| {backend} | {_fmt(loads[backend]['median_s'])} | {loads[backend]['all_s']} |"
                )
    lines += sections.hangups(r.get("hangups")) + sections.soak(r.get("soak"))
    lines += sections.swaps(r.get("swaps"))
    lines += sections.cpu_variants(r.get("cpu_variants"))
    lines += sections.router(r.get("router"))
    lines += sections.relay(r.get("relay")) + sections.first_token(r.get("first_token"))
    if r.get("errors"):
        lines += ["", "## Cases that failed", ""]
        lines += [f"- **{case}**: {message}" for case, message in r["errors"].items()]
    return "\n".join(lines) + "\n"


def chart(r: dict[str, Any], path: Path) -> bool:
    """The overhead comparison as a PNG; False when the run has no proxy figures."""
    proxy = r.get("proxy")
    if not proxy:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = ["pool", "litellm"]
    added = [proxy["added_ms"][n]["p50_ms"] for n in names]
    bars = left.bar(["llm-pool", "LiteLLM"], added, color=["#2b7bba", "#d95f02"])
    left.bar_label(bars, fmt="%.2f ms")
    left.set_title("Added latency over nginx direct (p50, 1 connection)")
    left.set_ylabel("ms")
    conns = list(proxy["pool"].keys())
    width = 0.27
    for i, (name, label, color) in enumerate(
        [
            ("direct", "nginx direct", "#7f7f7f"),
            ("pool", "llm-pool", "#2b7bba"),
            ("litellm", "LiteLLM", "#d95f02"),
        ]
    ):
        xs = [j + (i - 1) * width for j in range(len(conns))]
        right.bar(xs, [proxy[name][c]["rps"] for c in conns], width, label=label, color=color)
    right.set_yscale("log")
    right.set_xticks(range(len(conns)), [f"{c} conn" for c in conns])
    right.set_title("Requests/s (log scale)")
    right.legend()
    fig.suptitle(f"Proxy overhead on an instant upstream - {r['meta']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
