"""The load generator: wrk (Debian's package), in its own process on the load-side CPU.

wrk keeps every connection alive and reports from its own latency histogram; a small Lua
script sets the POST body and headers and prints the figures as one JSON line. Run against
nginx directly, the same measurement is the ceiling of wrk plus the upstream on this
machine, which every proxied figure is read against.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.common import LOAD_CPU

BODY = {
    "model": "bench",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 16,
}

_SCRIPT = """
wrk.method = "POST"
wrk.body = %(body)s
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRKJSON {"requests":%%d,"duration_us":%%d,"errors":%%d,"non2xx":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,"mean_us":%%.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: `make bench-tools` (apt-get install nginx-light wrk)")
    return found


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """POST `body` (BODY unless given) to `url` from `connections` keep-alive connections
    for `seconds`."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    header_lines = "\n".join(
        f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in all_headers.items()
    )
    script = _SCRIPT % {
        "body": _lua_string(json.dumps(BODY if body is None else body)),
        "headers": header_lines,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = Path(f.name)
    try:
        argv = [
            *LOAD_CPU,
            wrk_binary(),
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(path),
            url,
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        path.unlink(missing_ok=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    raw = json.loads(line[len("WRKJSON ") :])
    seconds_run = raw["duration_us"] / 1e6
    return {
        "connections": connections,
        "requests": raw["requests"],
        "errors": raw["errors"],
        "non2xx": raw["non2xx"],
        "duration_s": round(seconds_run, 3),
        "rps": round(raw["requests"] / seconds_run, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": round(raw["mean_us"] / 1000, 4),
    }
