"""`make bench`'s harness, run end to end with a few requests per case (`--smoke`).

Real processes throughout: nginx, wrk, LiteLLM's proxy (`make test` installs them, as
`make bench` does), the pool under gunicorn, llama-server and llama-cpp-python. The
figures of so short a run mean nothing; what is checked is that every case ran, that
each produced the figures RESULTS.md reports, and that the three output files exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import ROOT


def test_bench_smoke_produces_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == {}
    assert results["meta"]["smoke"] is True
    proxy = results["proxy"]
    for target in ("direct", "pool", "floor", "litellm"):
        for conns in ("1", "16", "64"):
            run = proxy[target][conns]
            assert run["requests"] > 0 and run["errors"] == 0 and run["non2xx"] == 0, (target, conns, run)
    assert set(proxy["added_ms"]) == {"pool", "floor", "litellm"}
    assert proxy["floor_answer_as_direct"] is True
    for layout in ("shared", "split"):
        for n in ("1", "4"):
            assert results["streaming"][layout][n]["direct"]["tokens_median"] > 0
            assert results["streaming"][layout][n]["pool"]["tokens_median"] > 0
        assert results["inprocess"][layout]["tokens_per_s_ratio"] > 0
    many = results["many_clients"]
    assert many["connected"] == many["clients"] and many["failed"] == 0
    assert many["queued_seen"] >= many["clients"] - 2  # one runs; the rest really waited
    assert results["load_times"]["llama_server"]["median_s"] > 0
    assert results["load_times"]["llama_cpp"]["median_s"] > 0
    # Memory figures: present and plausible. Their targets are benchmark targets, which a
    # run this short cannot show; the queue emptying and the long job completing it can.
    hang = results["hangups"]
    assert hang["failed"] == 0 and hang["queue_depth_after"] == 0
    for one in hang["by_round"]:
        assert one["queued"] == one["queue_depth_seen"] == hang["clients"], one
        assert one["long_job"]["completed"] and one["long_job"]["outlasted_hangups"], one
        assert 0 < one["rss_mb"]["before"] <= one["rss_mb"]["peak"] and one["rss_mb"]["after"] > 0, one
    soak = results["soak"]
    assert soak["errors"] == 0 and soak["warmup_errors"] == 0 and soak["rps"] > 0, soak
    assert soak["connections_opened"] == soak["clients"], soak  # every connection was kept alive
    assert len(soak["rss_mb_series"]) == soak["requests"] // soak["rss_mb_every"] + 1
    routed = results["router"]
    for target in ("pool", "router_one", "router_two"):
        for conns in ("1", "16", "64"):
            run = routed[target][conns]
            assert run["requests"] > 0 and run["errors"] == 0 and run["non2xx"] == 0, (target, conns, run)
    assert set(routed["router_added_ms"]) == {"p50_ms", "p99_ms"}
    swaps = results["swaps"]
    for policy in ("pool", "pool-eager", "naive"):
        assert swaps[policy]["requests"] == swaps["agents"] * swaps["per_agent"], swaps
        assert swaps[policy]["loads"] >= 2 and swaps[policy]["swaps"] >= 1, swaps  # both ran, in turn
    cpu = results["cpu_variants"]  # issue 19: the portable build against a native one
    assert cpu["chosen"] in cpu["builds"] and "native" in cpu["builds"], cpu
    assert all(b["decode_tps"] > 0 and b["prompt_tps"] > 0 for b in cpu["builds"].values()), cpu
    assert 0 < cpu["chosen_vs_fastest_decode"] <= 1
    relay = results["relay"]  # issue 23: every stream was checked whole before the timing
    assert set(relay["check"]) == {"direct", "chat", "responses", "litellm"}, relay["check"]
    assert all(c["content_deltas"] == relay["tokens_per_stream"] for c in relay["check"].values())
    for runs in (relay["direct"], relay["pool"]["chat"], relay["pool"]["responses"], relay["litellm"]):
        for streams in ("1", "8", "32"):
            run = runs[streams]
            assert run["errors"] == 0 and run["non2xx"] == 0, (streams, run)
        assert runs["1"]["tokens_per_s"] > 0, runs  # at 32 streams a short window may end before any does
    assert relay["pool"]["chat"]["1"]["cpu_us_per_token"] > 0
    first = results["first_token"]
    for side in ("direct", "pool_chat", "pool_responses", "litellm"):
        assert first["instant"][side]["requests"] > 0 and first["instant"][side]["p50_ms"] > 0, first
    for side in ("direct", "pool", "floor", "litellm"):
        assert first["llama_server"][side]["p50_ms"] > 0, first
    assert set(first["llama_server"]["added_p50"]) == {"pool", "floor", "litellm"}
    page = (tmp_path / "RESULTS.md").read_text()
    assert "## 8. Agents alternating" in page
    assert "## 9. llama.cpp CPU builds" in page
    assert "## 10. Pools behind vLLM's router" in page
    assert "## 11. The relay at GPU speed" in page and "## 12. Time to the first content token" in page
    assert "## Targets" in page and "smoke run" in page
    assert (tmp_path / "overhead.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_floor_measures_the_bare_stack_the_client_and_the_pool(tmp_path: Path) -> None:
    """bench/floor.py (issue 23's request-side floor), briefly: every figure is there."""
    out = tmp_path / "floor.json"
    argv = [sys.executable, "-m", "bench.floor", "--seconds", "1", "--clients", "50", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    for side in ("bare", "pool"):
        for connections in ("c1", "c64"):
            row = figures[side][connections]
            assert row["cpu_us_per_request"] > 0 and row["p50_ms"] > 0 and row["rps"] > 0, (side, row)
    assert figures["client"]["cpu_us_per_request"] > 0
    assert "floor (bare + client)" in done.stdout


def test_bench_request_trace_times_every_step_of_a_streamed_request(tmp_path: Path) -> None:
    """bench/request_trace.py, briefly, on the instant upstream: the trace config's
    wrappers caught every step of each request, in the order the worker takes them."""
    out = tmp_path / "trace.json"
    argv = [sys.executable, "-m", "bench.request_trace", "--requests", "3", "--gaps", "0,0.05"]
    argv += ["--upstream", "instant", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for gap in ("gap 0 s", "gap 0.05 s"):
        steps = json.loads(out.read_text())["instant"][gap]
        order = ["accepted", "request parsed", "before_request hooks", "body load", "body load end"]
        order += ["submit", "job starts", "upstream request", "status line at the client"]
        order += ["first token at the client"]
        times = [steps[name] for name in order]
        assert all(t > 0 for t in times) and times == sorted(times), steps


def test_bench_ab_loads_both_checkouts_in_turn(tmp_path: Path) -> None:
    """bench/ab.py, briefly, against a clone of this commit: both pools served (each from
    its own checkout: the tool checks the worker's directory), every round counted."""
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(other)], check=True, timeout=120)
    out = tmp_path / "ab.json"
    argv = [sys.executable, "-m", "bench.ab", str(other), "--rounds", "2", "--seconds", "0.5"]
    argv += ["--api", "responses", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures) == {str(ROOT.resolve()), str(other.resolve())}
    for row in figures.values():
        assert len(row["rounds"]) == 2 and all(us > 0 for us in row["rounds"]), row
        assert row["cpu_us_per_request_min"] <= row["cpu_us_per_request_median"]
