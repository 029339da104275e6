"""The `llm-pool` command against live pools (issue 12): a pool started by `llm-pool serve`
(the real SmolLM2 GGUF in-process, plus the fake runtime as a `llama_server` child for
logs), and a pool whose admin API needs a token.

The command runs as `python -m llmpool.cli` from the repository root: the entry point
(setup.cfg) exists only once `pip install -e .` has run again, and this tests this
checkout either way.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import requests

from llmpool.config.loader import LOCAL_ENV, SETTINGS_ENV
from tests.conftest import SMOLLM2_ID
from tests.integration.conftest import (
    ROOT,
    Server,
    free_port,
    integration_settings,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "llmpool.cli"]
FAKE = str(ROOT / "tests" / "runtimes" / "fake_llm_server.py")
ADMIN_ENV = "CLI_TEST_ADMIN_TOKEN"
ADMIN = "adm-cli-5b4a3c2d1e0f"
# The variables the CLI reads: each test says which ones it means.
CLI_VARS = ("LLM_POOL_URL", "LLM_POOL_ADMIN_TOKEN", "LLM_POOL_BIND", SETTINGS_ENV, LOCAL_ENV, ADMIN_ENV)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CLI_VARS}
    return subprocess.run(
        [*CLI, *args], cwd=ROOT, env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def fake_model() -> dict[str, Any]:
    return {
        "backend": "llama_server",
        "model_path": FAKE,  # any existing file: the fake ignores it
        "llama_server_binary": FAKE,
        "llama_server_extra_args": ["--fake-tokens", "5", "--fake-token-delay", "0"],
        "llama_server_start_timeout_s": 20,
        "llama_server_stop_timeout_s": 2,
        "enabled": False,
    }


def settings() -> dict[str, Any]:
    s = integration_settings()
    s["engine"]["models"][SMOLLM2_ID].update(replicas=1, replica_max=2)
    s["engine"]["models"]["fake"] = fake_model()
    return s


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("cli"), settings(), command=[*CLI, "serve"])
    yield srv
    stop_server(srv)


def table(stdout: str) -> dict[str, list[str]]:
    """Status rows by model name (cells split on whitespace)."""
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "BACKEND", "STATE"], stdout
    return {line.split()[0]: line.split() for line in lines[1:]}


def test_serve_started_the_pool_from_this_checkout(pool: Server) -> None:
    assert requests.get(pool.url + "/readyz", timeout=5).status_code == 200
    # `serve` replaced itself with gunicorn: the process we started is the master.
    cmdline = Path(f"/proc/{pool.process.pid}/cmdline").read_bytes().split(b"\0")
    assert b"gunicorn" in cmdline and b"wsgi:app" in cmdline


def test_status_prints_one_row_per_model(pool: Server) -> None:
    result = cli("status", "--url", pool.url)
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert list(rows) == [SMOLLM2_ID, "fake"]
    assert rows[SMOLLM2_ID][1:4] == ["llama_cpp", "loaded", "1/2"]
    assert rows["fake"][1:4] == ["llama_server", "unloaded", "0/1"]

    as_json = cli("status", "--json", env={"LLM_POOL_URL": pool.url})
    assert as_json.returncode == 0, as_json.stderr
    assert [m["name"] for m in json.loads(as_json.stdout)["models"]] == [SMOLLM2_ID, "fake"]


def test_load_with_an_override_shows_in_status_then_unload(pool: Server) -> None:
    url = ["--url", pool.url]
    try:
        first = cli("unload", SMOLLM2_ID, *url)
        assert (first.returncode, first.stdout) == (0, f"{SMOLLM2_ID}: unloaded\n"), first.stderr

        loaded = cli("load", SMOLLM2_ID, "--replicas", "2", "--set", "gguf_n_ctx=512", *url)
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.startswith(f"{SMOLLM2_ID}: loaded, 2/2 replicas, overrides gguf_n_ctx=512, in ")
        row = table(cli("status", *url).stdout)[SMOLLM2_ID]
        assert row[2:4] == ["loaded", "2/2"] and "gguf_n_ctx=512" in row

        # Loaded with a body: the pool refuses (unload first), and the CLI says why.
        again = cli("load", SMOLLM2_ID, "--set", "gguf_n_ctx=1024", *url)
        assert again.returncode == 1 and again.stdout == ""
        assert again.stderr.startswith("llm-pool: 400 invalid_load_request: ")

        assert cli("unload", SMOLLM2_ID, "--force", *url).returncode == 0
        bad = cli("load", SMOLLM2_ID, "--set", "gguf_n_ctx=100", *url)
        assert bad.returncode == 1
        assert "400 invalid_load_request" in bad.stderr and "gguf_n_ctx" in bad.stderr
        assert table(cli("status", *url).stdout)[SMOLLM2_ID][2] == "unloaded"  # state untouched
    finally:
        cli("unload", SMOLLM2_ID, *url)
        restored = cli("load", SMOLLM2_ID, *url)  # as configured, for the other tests
        assert restored.returncode == 0, restored.stderr


def test_unknown_model_exits_1_with_the_pools_error(pool: Server) -> None:
    for command in ("load", "unload", "logs"):
        result = cli(command, "no-such-model", "--url", pool.url)
        assert result.returncode == 1, (command, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith("llm-pool: 404 unknown_model: "), result.stderr


def test_an_unreachable_pool_exits_3_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = cli("status", env={"LLM_POOL_URL": url})
    assert result.returncode == 3
    assert result.stderr == f"llm-pool: cannot connect to {url}: [Errno 111] Connection refused\n"


def _lines_to(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


def test_logs_and_follow_show_a_childs_new_lines_once(pool: Server) -> None:
    url = ["--url", pool.url]
    assert cli("load", "fake", *url).returncode == 0
    try:
        logs = cli("logs", "fake", *url)
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.startswith("[0] fake runtime pid=")
        assert any(line.startswith("[0] listening on 127.0.0.1:") for line in logs.stdout.splitlines())
        assert cli("logs", "fake", "--tail", "1", *url).stdout.count("\n") == 1

        lines: queue.Queue[str] = queue.Queue()
        seen: list[str] = []

        def wait_for(text: str) -> None:
            deadline = time.monotonic() + 20
            while not any(text in line for line in seen):
                seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))

        argv = [*CLI, "logs", "fake", "--follow", "--interval", "0.1", *url]
        with subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as follower:
            assert follower.stdout is not None and follower.stderr is not None
            reader = threading.Thread(target=_lines_to, args=(follower.stdout, lines))
            reader.start()
            try:
                wait_for("listening on")  # the tail that was already there
                body = {"model": "fake", "input": "hi"}
                answer = requests.post(f"{pool.url}/v1/responses", json=body, timeout=30)
                assert answer.status_code == 200, answer.text
                wait_for("stream finished after 5 tokens")  # the child prints it after the answer
            finally:
                follower.send_signal(signal.SIGINT)  # how an operator ends a follow
                follower.wait(timeout=10)
                reader.join(5)
            assert follower.returncode == 0, follower.stderr.read()
        seen += list(lines.queue)
        assert any(line.startswith("[0] request: ") and "/v1/chat/completions" in line for line in seen)
        for once in ("fake runtime pid=", "listening on"):  # old lines are not printed again
            assert len([line for line in seen if once in line]) == 1, seen
    finally:
        cli("unload", "fake", *url)


def test_logs_of_an_in_process_model_say_there_are_none(pool: Server) -> None:
    result = cli("logs", SMOLLM2_ID, "--url", pool.url)
    assert result.returncode == 0 and result.stdout == ""
    assert "no captured output" in result.stderr


def test_reload_speaks_to_the_pools_settings_reload(pool: Server) -> None:
    result = cli("reload", "--url", pool.url)
    assert result.returncode == 0, result.stderr
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines()[1:])
    assert set(rows) == {"added", "removed", "updated", "unchanged", "conflicts", "settings_changed"}
    assert rows["unchanged"] == f"{SMOLLM2_ID}, fake"
    assert rows["conflicts"] == "-"


def test_a_reload_conflict_exits_1_naming_it(pool: Server) -> None:
    settings_path = Path(pool.log_path).with_name("settings.json")
    original = settings_path.read_text()
    changed = json.loads(original)
    changed["engine"]["models"][SMOLLM2_ID]["gguf_n_ctx"] = 512  # the model is loaded
    settings_path.write_text(json.dumps(changed))
    try:
        result = cli("reload", "--url", pool.url)
    finally:
        settings_path.write_text(original)
    assert result.returncode == 1
    assert "409 settings_conflict" in result.stderr
    assert f"{SMOLLM2_ID} (model is loaded; unload it before changing its definition)" in result.stderr


# -- a pool whose admin API needs a token -------------------------------------------------
@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = {"service": {"log_level": "warning", "admin_token_env": ADMIN_ENV}, "engine": {"models": {}}}
    s["engine"]["models"]["fake"] = fake_model()
    mp = pytest.MonkeyPatch()
    mp.setenv(ADMIN_ENV, ADMIN)
    try:
        srv = start_server(tmp_path_factory.mktemp("cli-secured"), s)
    finally:
        mp.undo()
    yield srv
    stop_server(srv)


def test_with_the_token_in_the_environment_the_cli_works(secured: Server) -> None:
    result = cli("status", "--url", secured.url, env={"LLM_POOL_ADMIN_TOKEN": ADMIN})
    assert result.returncode == 0, result.stderr
    assert list(table(result.stdout)) == ["fake"]
    assert ADMIN not in result.stdout + result.stderr


def test_the_settings_say_where_the_pool_is_and_which_variable_holds_the_token(secured: Server) -> None:
    """No --url, no LLM_POOL_ADMIN_TOKEN: the operator's environment under systemd (the
    env file's LLM_POOL_BIND and the secret the settings name) is enough."""
    tmp = secured.log_path.parent
    env = {
        SETTINGS_ENV: str(tmp / "settings.json"),
        LOCAL_ENV: str(tmp / "local.json"),
        "LLM_POOL_BIND": secured.url.removeprefix("http://"),
        ADMIN_ENV: ADMIN,
    }
    result = cli("status", env=env)
    assert result.returncode == 0, result.stderr
    assert list(table(result.stdout)) == ["fake"]


def test_without_the_token_the_cli_exits_1_and_says_what_is_missing(secured: Server) -> None:
    result = cli("status", "--url", secured.url)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "llm-pool: 401 unauthorized: this endpoint needs 'Authorization: Bearer <token>'"
        " (or 'x-api-key: <token>')",
        "llm-pool: no admin token: set LLM_POOL_ADMIN_TOKEN to the pool's admin token",
    ]
    wrong = cli("unload", "fake", "--url", secured.url, env={"LLM_POOL_ADMIN_TOKEN": "not-the-token"})
    assert wrong.returncode == 1
    assert "401 unauthorized: the bearer token is not valid for this endpoint" in wrong.stderr
    assert "the admin token from LLM_POOL_ADMIN_TOKEN was not accepted" in wrong.stderr
    assert "not-the-token" not in wrong.stderr
