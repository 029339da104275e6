"""An instant OpenAI-compatible upstream: nginx (Debian's package) serving fixed bodies.

`/json/v1/chat/completions` answers a fixed `chat.completion` object, and
`/sse/v1/chat/completions` a fixed stream (role chunk, one content chunk, a finish chunk
with usage, `[DONE]`), whatever the request. `/relay/v1/chat/completions` streams
`RELAY_TOKENS` content chunks at once (the relay and first-token cases: an upstream as fast
as a GPU box, faster); nginx's `return` strings are too short for it, so it is a static
file, reached from a POST through a 405 answered as 200 (nginx turns the redirect into a
GET). Every base also answers `GET .../models`. The pool's `openai_remote` always asks its
upstream to stream, so it is pointed at a streaming base; LiteLLM, asked for a non-streamed
completion, at the JSON one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import LOAD_CPU, free_port, spawn, stop, wait_ready

MODEL = "bench"
_BASE = {"id": "chatcmpl-bench", "created": 1700000000, "model": MODEL}
USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
COMPLETION = {
    **_BASE,
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
    "usage": USAGE,
}


def _chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
    body = {
        **_BASE,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return "data: " + json.dumps({**body, **extra}, separators=(",", ":")) + "\n\n"


STREAM = (
    _chunk({"role": "assistant", "content": ""}, None)
    + _chunk({"content": "Paris."}, None)
    + _chunk({}, "stop", usage=USAGE)
    + "data: [DONE]\n\n"
)
# The relay stream: role chunk, RELAY_TOKENS one-token content chunks (" w0", " w1", ...:
# short, and each different, so a client can check order), a finish chunk with usage, [DONE].
RELAY_TOKENS = 1000
RELAY_PIECES = tuple(f" w{i}" for i in range(RELAY_TOKENS))
RELAY_TEXT = "".join(RELAY_PIECES)
RELAY_USAGE = {"prompt_tokens": 9, "completion_tokens": RELAY_TOKENS, "total_tokens": 9 + RELAY_TOKENS}
RELAY_STREAM = (
    _chunk({"role": "assistant", "content": ""}, None)
    + "".join(_chunk({"content": piece}, None) for piece in RELAY_PIECES)
    + _chunk({}, "stop", usage=RELAY_USAGE)
    + "data: [DONE]\n\n"
)
RELAY_FILE = "stream.sse"
MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}


def _quoted(text: str) -> str:
    # nginx single-quoted strings: only the quote and the backslash need escaping.
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def nginx_conf(workdir: Path, port: int) -> str:
    locations = []
    for prefix in ("json", "sse", "relay"):
        locations.append(
            f"location = /{prefix}/v1/models {{ default_type application/json; "
            f"return 200 {_quoted(json.dumps(MODELS))}; }}"
        )
    locations.append(
        "location = /json/v1/chat/completions { default_type application/json; "
        f"return 200 {_quoted(json.dumps(COMPLETION))}; }}"
    )
    locations.append(
        "location = /sse/v1/chat/completions { default_type text/event-stream; "
        f"return 200 {_quoted(STREAM)}; }}"
    )
    # POST to a static file is a 405; answered as 200 with the file, whatever the body.
    locations.append(
        f"location = /relay/v1/chat/completions {{ error_page 405 =200 /{RELAY_FILE}; return 405; }}"
    )
    locations.append(
        f"location = /{RELAY_FILE} {{ internal; root {workdir}; default_type text/event-stream; }}"
    )
    body = "\n    ".join(locations)
    return f"""worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    {body}
  }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise RuntimeError("nginx is not installed: `make bench-tools` (apt-get install nginx-light wrk)")
    return found


@contextmanager
def static_upstream() -> Iterator[str]:
    """Start nginx on a free port; yields its root URL (add /json/v1, /sse/v1 or /relay/v1)."""
    workdir = Path(tempfile.mkdtemp(prefix="llmpool-nginx-"))
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port))
    # nginx's workers may run as another user (nobody, under root): the file must be theirs to read.
    workdir.chmod(0o755)
    (workdir / RELAY_FILE).write_text(RELAY_STREAM)
    (workdir / RELAY_FILE).chmod(0o644)
    binary = nginx_binary()
    check = subprocess.run(
        [binary, "-t", "-q", "-c", str(conf), "-p", str(workdir)], capture_output=True, text=True
    )
    if check.returncode != 0:
        raise RuntimeError(f"nginx rejected the generated config: {check.stderr}")
    log_path = workdir / "nginx.out"
    proc = spawn([*LOAD_CPU, binary, "-c", str(conf), "-p", str(workdir)], log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/json/v1/models", proc, "nginx", log_path, 20)
        yield url
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
