"""A real gunicorn + gevent server on a free port, serving the real SmolLM2 GGUF.

Started the way operators start it (conf/gunicorn.conf.py, wsgi:app); stopped the way
vLLM's test helper does it: SIGTERM, wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from llmpool.config.loader import LOCAL_ENV, SETTINGS_ENV
from tests.conftest import SMOLLM2_ID, SMOLLM2_REF

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 4  # four concurrent generations for the hub-never-blocks test


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def template_copy(env: str, name: str) -> str:
    """A copy of SmolLM2 with another chat template that `make test` builds
    (tests/runtimes/make_template_copies.sh): its path from `env`, else `.cache/NAME`; a
    GGUF file, or an HF directory with its chat_template.jinja. Missing: a failure."""
    path = Path(os.environ.get(env) or ROOT / ".cache" / name)
    found = path.is_file() if name.endswith(".gguf") else (path / "chat_template.jinja").is_file()
    assert found, f"no {name} at {path}: run `make test`, which builds it"
    return str(path)


@contextlib.contextmanager
def openai_client(server: Server, timeout_s: float = 120) -> Iterator[Any]:
    """The official client on `server`, without retries: an error surfaces at once as the
    exception its status maps to. (`openai` imported here: the vLLM env has none.)"""
    import openai

    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=timeout_s) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def integration_settings() -> dict:
    return {
        "service": {"log_level": "warning"},
        "engine": {
            "decoding": {"temperature": 0.8, "max_tokens": 64},
            "models": {
                SMOLLM2_ID: {
                    "backend": "llama_cpp",
                    "model_path": SMOLLM2_REF,
                    "gguf_n_ctx": 2048,
                    "gguf_n_threads": 1,
                    "replicas": REPLICAS,
                    "replica_max": REPLICAS,
                    "enabled": True,
                }
            },
        },
    }


def start_server(
    tmp: Path, settings: dict, timeout_s: float = 60, command: list[str] | None = None
) -> Server:
    """Write `settings`, start the pool (gunicorn as `make run` does, or `command` from the
    repository root) on a free port, wait for /readyz."""
    # Each server keeps its state (memory ledger, worker crash records) to itself: one
    # test's dead worker must not be explained to another test's server.
    service = {"state_dir": str(tmp / "state"), **settings.get("service", {})}
    settings_path = tmp / "settings.json"
    settings_path.write_text(json.dumps({**settings, "service": service}))
    port = free_port()
    env = {
        **os.environ,
        SETTINGS_ENV: str(settings_path),
        LOCAL_ENV: str(tmp / "local.json"),
        "LLM_POOL_BIND": f"127.0.0.1:{port}",
    }
    log_path = tmp / "server.log"
    gunicorn = Path(sys.executable).with_name("gunicorn")
    command = command or [str(gunicorn), "-c", "conf/gunicorn.conf.py", "wsgi:app"]
    with log_path.open("wb") as log_file:  # the child keeps its own copy of the fd
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_ready(server.url + "/readyz", process, "server", log_path, timeout_s)
    except RuntimeError:
        stop_server(server)
        raise
    return server


def gunicorn_once(
    settings_path: Path, local_path: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run the server the operators' way in a minimal environment, for a start-up that is
    meant to fail (it must exit on its own within 30 s)."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    return subprocess.run(
        [str(gunicorn), "-c", "conf/gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            SETTINGS_ENV: str(settings_path),
            LOCAL_ENV: str(local_path),
            "LLM_POOL_BIND": "127.0.0.1:0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )


def wait_ready(
    url: str, process: subprocess.Popen[bytes], what: str, log_path: Path, timeout_s: float
) -> None:
    """Poll `url` until it answers 200. A process that exits first, or a deadline that
    passes, is a RuntimeError carrying the end of the process's log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_tail(log_path)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or still starting up
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {timeout_s} s:\n{log_tail(log_path)}")


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def sse_events(url: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """POST a streaming /v1/responses body; its events as (name, data) in order."""
    events: list[tuple[str, Any]] = []
    with requests.post(f"{url}/v1/responses", json={**body, "stream": True}, stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        name = None
        for line in r.iter_lines(chunk_size=None, decode_unicode=True):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((str(name), json.loads(line[6:])))
    return events


def completion_chunks(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streaming /v1/completions body; its `data:` objects, up to `[DONE]` (required)."""
    chunks: list[dict[str, Any]] = []
    with requests.post(f"{url}/v1/completions", json={**body, "stream": True}, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines(chunk_size=None, decode_unicode=True):
            if line == "data: [DONE]":
                return chunks
            if line.startswith("data: "):
                chunks.append(json.loads(line[6:]))
    raise AssertionError(f"no [DONE] after {chunks}")


def check_raw_prompt_route(url: str, model: str) -> None:
    """POST /v1/completions on `model` (issue 14): the bare prompt reaches the runtime with
    no template around it (a handful of tokens, where the same text through /v1/responses
    gets the model's chat markup), and the stream's text deltas join to the JSON text."""
    prompt = "The capital of France is"
    body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}
    r = requests.post(f"{url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["object"] == "text_completion" and got["id"].startswith("cmpl-")
    text = got["choices"][0]["text"]
    assert text.strip() and got["choices"][0]["finish_reason"] in ("stop", "length")
    chat = {"model": model, "input": prompt, "decoding": {"max_tokens": 1}}
    templated = requests.post(f"{url}/v1/responses", json=chat, timeout=120)
    assert templated.status_code == 200, templated.text
    assert got["usage"]["prompt_tokens"] <= 8 < templated.json()["usage"]["input_tokens"]
    chunks = completion_chunks(url, body)
    assert len(chunks) >= 2 and "".join(c["choices"][0]["text"] for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == got["choices"][0]["finish_reason"]


def stop_server(server: Server) -> int:
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        raise


def concurrent_responses(server: Server, body: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """POST `body` to /v1/responses from `n` threads at once; every reply must be a 200."""
    replies: list[requests.Response] = []

    def call() -> None:
        replies.append(requests.post(f"{server.url}/v1/responses", json=body, timeout=60))

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(replies) == n
    for r in replies:
        assert r.status_code == 200, r.text
    return [r.json() for r in replies]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("server"), integration_settings())
    yield srv
    stop_server(srv)
