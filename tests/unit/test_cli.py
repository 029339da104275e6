"""The `llm-pool` command without a pool: parsing, exit codes, tables, where the pool and
the token come from, and the HTTP side against a tiny stub server (stdlib http.server)
that answers the way the admin API does, including `POST /v1/admin/settings/reload`
(SPEC §2), which this branch's pool does not have yet.

The same commands against a real gunicorn pool are in tests/integration/test_cli.py.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llmpool.cli import commands as cli
from llmpool.cli import render
from llmpool.cli.client import resolve_target

ROOT = Path(__file__).resolve().parents[2]
FAKE = str(ROOT / "tests" / "runtimes" / "fake_llm_server.py")
WriteSettings = Callable[..., Path]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr); argparse's own exits count too."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- parsing -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gguf_n_ctx=512", ("gguf_n_ctx", 512)),
        ("gguf_flash_attn=on", ("gguf_flash_attn", "on")),
        ("gguf_type_k=q8_0", ("gguf_type_k", "q8_0")),
        ("x=true", ("x", True)),
        ("x=null", ("x", None)),
        ('x="512"', ("x", "512")),  # JSON string: how to pass digits as text
        ("x=0.5", ("x", 0.5)),
        ("x=", ("x", "")),
        ("x=a=b", ("x", "a=b")),  # split at the first '='
        ("x=NaN", ("x", "NaN")),  # not JSON: stays text instead of becoming a float
        ("x=[1, 2]", ("x", [1, 2])),
    ],
)
def test_set_values_are_json_when_they_parse_else_text(text: str, expected: tuple[str, Any]) -> None:
    assert cli.key_value(text) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["load"],
        ["load", "m", "--set", "novalue"],
        ["load", "m", "--set", "=1"],
        ["load", "m", "--set", "a=1", "--set", "a=2"],
        ["load", "m", "--replicas", "0"],
        ["load", "m", "--replicas", "two"],
        ["logs", "m", "--tail", "-1"],
        ["logs", "m", "--interval", "0"],
        ["status", "--timeout", "nan"],
        ["status", "extra"],
    ],
)
def test_usage_errors_exit_2_without_calling_anything(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv, "--url", "http://127.0.0.1:1") if argv else run(capsys)
    assert code == 2, (out, err)
    assert "usage: llm-pool" in err
    assert "cannot connect" not in err


def test_every_subcommand_is_there(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("serve", "check-config", "status", "load", "unload", "logs", "reload"):
        assert command in out
    assert "exit codes: 0 done, 1 the pool refused" in out


def test_the_console_script_is_declared() -> None:
    text = (ROOT / "setup.cfg").read_text()
    assert "console_scripts =\n    llm-pool = llmpool.cli:main\n" in text
    assert callable(cli.main)


# -- tables ------------------------------------------------------------------------------
def model_row(**fields: Any) -> dict[str, Any]:
    row = {
        "name": "smollm2",
        "backend": "llama_cpp",
        "state": "loaded",
        "last_error": None,
        "replicas": 1,
        "replica_max": 2,
        "queue_depth": 0,
        "inflight": 1,
        "load_override": None,
        "load_seconds": 0.4321,
        "vram": {"estimate_mib": 98.2, "source": "artifact_size"},
    }
    return {**row, **fields}


def test_status_table_lines_up_and_shortens_errors() -> None:
    rows = [
        model_row(load_override={"replicas": 1, "target_inflight": 1, "overrides": {"gguf_n_ctx": 512}}),
        model_row(
            name="broken-model",
            backend="llama_server",
            state="failed",
            replicas=0,
            vram={"estimate_mib": None, "source": "unavailable"},
            last_error="llama-server exited with 2 before it was ready\n--- last output ---\nerror: corrupt",
        ),
        {"name": "newer-pool"},  # a row without the other columns: "-"
    ]
    assert render.status_table(rows).splitlines() == [
        "NAME          BACKEND       STATE   REPLICAS  INFLIGHT  QUEUE  VRAM           OVERRIDES       "
        "LAST ERROR",
        "smollm2       llama_cpp     loaded  1/2       1         0      98 MiB (size)  gguf_n_ctx=512  -",
        "broken-model  llama_server  failed  0/2       1         0      -              -               "
        "llama-server exited with 2 before it was ready...",
        "newer-pool    -             -       -/-       -         -      -              -               -",
    ]


def test_long_single_line_errors_are_cut_to_the_column() -> None:
    cell = render.status_table([model_row(last_error="x" * 200)]).splitlines()[1].split()[-1]
    assert len(cell) == render.ERROR_WIDTH and cell.endswith("...")


def test_load_and_unload_summaries() -> None:
    plan = {"replicas": 2, "target_inflight": 1, "overrides": {"gguf_flash_attn": "on", "gguf_n_ctx": 512}}
    row = model_row(replicas=2, load_override=plan)
    assert render.load_summary(row, waited=True) == (
        "smollm2: loaded, 2/2 replicas, overrides gguf_flash_attn=on gguf_n_ctx=512, in 0.43 s"
    )
    assert render.load_summary(model_row(state="loading", replicas=0), waited=False).startswith(
        "smollm2: loading (not waiting"
    )
    assert render.unload_summary(model_row(state="unloaded")) == "smollm2: unloaded"


def test_log_lines_carry_their_replica() -> None:
    answer = {"replicas": [{"id": 0, "pid": 10, "lines": ["a", "b"]}, {"id": 1, "pid": 11, "lines": ["c"]}]}
    assert render.log_lines(answer) == ["[0] a", "[0] b", "[1] c"]
    assert render.log_lines({"replicas": []}) == []


def test_reload_summary_names_every_outcome() -> None:
    answer = {
        "added": ["new-model"],
        "removed": [],
        "updated": ["a", "b"],
        "unchanged": ["c"],
        "conflicts": [{"model": "d", "reason": "loaded"}, {"key": "service.port", "reason": "restart"}],
        "settings_changed": ["media"],
    }
    assert render.reload_summary(answer).splitlines() == [
        "OUTCOME           MODELS",
        "added             new-model",
        "removed           -",
        "updated           a, b",
        "unchanged         c",
        "conflicts         d (loaded), service.port (restart)",
        "settings_changed  media",
    ]


# -- where the pool and the token come from ------------------------------------------------
def secured(write_settings: WriteSettings, **service: Any) -> None:
    write_settings({"service": {"host": "0.0.0.0", "port": 8123, **service}})


def test_url_precedence(write_settings: WriteSettings) -> None:
    secured(write_settings)
    assert resolve_target("http://a:1/", {"LLM_POOL_URL": "http://b:2"}).url == "http://a:1"
    assert resolve_target(None, {"LLM_POOL_URL": "http://b:2", "LLM_POOL_BIND": "c:3"}).url == "http://b:2"
    assert resolve_target(None, {"LLM_POOL_BIND": "10.0.0.5:3"}).url == "http://10.0.0.5:3"
    assert resolve_target(None, {"LLM_POOL_BIND": "[::]:3"}).url == "http://[::1]:3"
    # a unix socket cannot be reached with http://: the settings decide
    assert resolve_target(None, {"LLM_POOL_BIND": "unix:/run/x.sock"}).url == "http://127.0.0.1:8123"
    assert resolve_target(None, {}).url == "http://127.0.0.1:8123"  # 0.0.0.0 includes loopback


def test_broken_settings_fall_back_to_the_default_url_with_a_note(write_settings: WriteSettings) -> None:
    write_settings({"service": {"port": "8010"}})  # a string is not a port
    target = resolve_target(None, {})
    assert target.url == "http://127.0.0.1:8010"
    assert target.notes == ["the settings files could not be read (see `llm-pool check-config`)"]


def test_token_from_its_own_variable_first_then_the_one_the_settings_name(
    write_settings: WriteSettings,
) -> None:
    secured(write_settings, admin_token_env="POOL_ADMIN")
    both = resolve_target(None, {"LLM_POOL_ADMIN_TOKEN": "t1", "POOL_ADMIN": "t2"})
    assert (both.token, both.token_source) == ("t1", "LLM_POOL_ADMIN_TOKEN")
    named = resolve_target("http://x:1", {"POOL_ADMIN": "t2"})
    assert (named.token, named.token_source) == ("t2", "POOL_ADMIN")
    missing = resolve_target("http://x:1", {})
    assert missing.token is None
    assert missing.notes == ["service.admin_token_env names POOL_ADMIN, which is not set here"]
    assert "t2" not in repr(named) and "t1" not in repr(both)


# -- check-config and serve ----------------------------------------------------------------
def test_check_config_prints_the_merged_settings_with_secrets_hidden(
    write_settings: WriteSettings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_TEST_ADMIN", "adm-secret-value")
    model = {
        "backend": "llama_server",
        "model_path": FAKE,
        "llama_server_binary": FAKE,
        "llama_server_env": {"HF_TOKEN": "hf-secret-value", "OMP_NUM_THREADS": "2"},
        "llama_server_extra_args": ["--api-key", "sk-secret-value", "--threads", "2"],
    }
    base = {"service": {"admin_token_env": "CLI_TEST_ADMIN"}, "engine": {"models": {"m": model}}}
    path = write_settings(base, local={"engine": {"models": {"m": {"replica_max": 3}}}})
    code, out, err = run(capsys, "check-config")
    assert code == 0, err
    assert "secret-value" not in out
    doc = json.loads(out)
    assert doc["sources"] == [str(path), str(path.with_name("local.json"))]
    assert doc["service"]["admin_token_env"] == "CLI_TEST_ADMIN"  # a name, shown
    assert doc["engine"]["decoding"]["max_tokens"] == 256  # defaults filled in
    m = doc["engine"]["models"]["m"]
    assert m["replica_max"] == 3 and m["replicas"] == 1 and m["enabled"] is False
    assert m["model_path"] == FAKE and m["llama_server_start_timeout_s"] > 0
    assert m["llama_server_env"] == {"HF_TOKEN": "***", "OMP_NUM_THREADS": "2"}
    assert m["llama_server_extra_args"] == ["--api-key", "***", "--threads", "2"]


def test_check_config_fails_on_invalid_files(
    write_settings: WriteSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_settings(
        {"engine": {"models": {"m": {"backend": "scripted", "replicas": 3, "replica_max": 2}}}}
    )
    code, out, err = run(capsys, "check-config")
    assert code == 1 and out == ""
    assert f"{path}: engine.models.m.replicas: replicas (3) exceeds replica_max (2)" in err


def test_check_config_fails_closed_like_start_up_when_a_named_secret_is_unset(
    write_settings: WriteSettings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLI_TEST_UNSET", raising=False)
    write_settings({"service": {"api_keys_env": "CLI_TEST_UNSET"}})
    code, out, err = run(capsys, "check-config")
    assert code == 1 and out == ""
    assert "service.api_keys_env names the environment variable CLI_TEST_UNSET, which is not set" in err


def test_serve_execs_gunicorn_from_the_checkout_like_make_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str], dict[str, str], str]] = []

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        calls.append((path, argv, env, os.getcwd()))
        raise SystemExit(0)  # execve does not return

    monkeypatch.setattr(cli.os, "execve", execve)
    monkeypatch.chdir("/")
    monkeypatch.delenv("LLM_POOL_BIND", raising=False)
    run(capsys, "serve", "--bind", "127.0.0.1:9999")
    ((path, argv, env, cwd),) = calls
    assert argv[1:] == ["-m", "gunicorn", "-c", "conf/gunicorn.conf.py", "wsgi:app"]
    assert path == argv[0] and cwd == str(ROOT)
    assert env["LLM_POOL_BIND"] == "127.0.0.1:9999"
    assert "-c conf/gunicorn.conf.py wsgi:app" in (ROOT / "Makefile").read_text()  # as `make run`


# -- against a stub pool -------------------------------------------------------------------
# What Flask answers for a route it does not have (the pool's error shape).
NOT_FOUND = (
    404,
    {
        "detail": {
            "code": "not_found",
            "message": "The requested URL was not found on the server.",
            "model": None,
        }
    },
)


class Stub:
    """Answers each (method, path) with a scripted (status, body); records what came."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], tuple[int, Any]] = {}
        self.seen: list[dict[str, Any]] = []
        self.url = ""


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.seen.append(
                {
                    "method": method,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "body": json.loads(body) if body else None,
                }
            )
            status, answer = state.answers.get((method, self.path.split("?")[0]), NOT_FOUND)
            if isinstance(answer, list):  # a sequence of answers, one per call
                answer = answer.pop(0) if len(answer) > 1 else answer[0]
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


RELOADED = {
    "added": ["new"],
    "removed": ["old"],
    "updated": [],
    "unchanged": ["smollm2"],
    "conflicts": [],
    "settings_changed": [],
}


def test_reload_prints_each_outcome(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    stub.answers[("POST", "/v1/admin/settings/reload")] = (200, RELOADED)
    code, out, err = run(capsys, "reload", "--url", stub.url)
    assert code == 0, err
    assert out.splitlines() == [
        "OUTCOME           MODELS",
        "added             new",
        "removed           old",
        "updated           -",
        "unchanged         smollm2",
        "conflicts         -",
        "settings_changed  -",
    ]
    assert stub.seen[-1]["method"] == "POST" and stub.seen[-1]["body"] is None
    code, out, _ = run(capsys, "reload", "--url", stub.url, "--json")
    assert code == 0 and json.loads(out) == RELOADED


def test_reload_conflict_exits_1_with_the_pools_code_message_and_conflicts(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    detail = {
        "code": "settings_conflict",
        "message": "loaded models changed; nothing was applied",
        "model": None,
        "conflicts": [{"model": "smollm2", "state": "loaded", "reason": "model is loaded"}],
    }
    stub.answers[("POST", "/v1/admin/settings/reload")] = (409, {"detail": detail})
    code, out, err = run(capsys, "reload", "--url", stub.url)
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "llm-pool: 409 settings_conflict: loaded models changed; nothing was applied",
        "  conflicts: smollm2 (model is loaded)",
    ]


def test_reload_against_a_pool_without_it_says_so(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "reload", "--url", stub.url)
    assert code == 1
    assert "has no settings reload (POST /v1/admin/settings/reload): upgrade the pool" in err
    assert "404 not_found: The requested URL was not found on the server." in err


def test_the_token_goes_in_the_header_and_nowhere_else(
    stub: Stub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_POOL_ADMIN_TOKEN", "tok-cli-7f3e")
    stub.answers[("GET", "/v1/admin/models")] = (
        401,
        {"detail": {"code": "unauthorized", "message": "the bearer token is not valid", "model": None}},
    )
    code, out, err = run(capsys, "status", "--url", stub.url)
    assert code == 1
    assert stub.seen[-1]["authorization"] == "Bearer tok-cli-7f3e"
    assert "tok-cli-7f3e" not in out + err
    assert "401 unauthorized: the bearer token is not valid" in err
    assert "the admin token from LLM_POOL_ADMIN_TOKEN was not accepted" in err


def test_load_sends_only_what_was_asked(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    row = model_row()
    stub.answers[("POST", "/v1/admin/models/a b/load".replace(" ", "%20"))] = (200, row)
    code, out, _ = run(capsys, "load", "a b", "--url", stub.url)
    assert code == 0 and out.startswith("smollm2: loaded, 1/2 replicas")
    assert stub.seen[-1]["body"] is None and stub.seen[-1]["path"] == "/v1/admin/models/a%20b/load"
    asked = ["--replicas", "2", "--set", "k=1", "--set", "f=on", "--no-wait"]
    run(capsys, "load", "a b", "--url", stub.url, *asked)
    assert stub.seen[-1]["body"] == {"replicas": 2, "overrides": {"k": 1, "f": "on"}}
    assert stub.seen[-1]["path"].endswith("/load?wait=false")


def test_validation_errors_and_non_json_answers_are_readable(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers[("GET", "/v1/admin/models/m/logs")] = (
        422,
        {"detail": [{"loc": ["query", "tail"], "msg": "Must be an integer.", "type": "value_error"}]},
    )
    stub.answers[("POST", "/v1/admin/models/m/unload")] = (502, b"<html><body>Bad Gateway</body></html>")
    code, _, err = run(capsys, "logs", "m", "--url", stub.url)
    assert code == 1 and "422 validation_error: query.tail: Must be an integer." in err
    code, _, err = run(capsys, "unload", "m", "--url", stub.url)
    assert code == 1 and "502 http_error: <html><body>Bad Gateway</body></html>" in err


def test_a_pool_that_does_not_answer_exits_3_naming_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "status", "--url", "http://127.0.0.1:1")
    assert code == 3 and out == ""
    assert err.strip() == "llm-pool: cannot connect to http://127.0.0.1:1: [Errno 111] Connection refused"


def test_follow_starts_over_when_the_pool_restarted(
    stub: Stub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new pool process numbers its lines from 0: a `next` below the one asked for
    means the old numbers are gone, and the new process's lines are all new."""

    def replica(*lines: str) -> dict[str, Any]:
        return {"name": "m", "replicas": [{"id": 0, "pid": 1, "lines": list(lines)}]}

    answers = [
        {**replica("old 1", "old 2"), "next": 500},  # --tail
        {**replica("old 3"), "next": 501},  # since=500
        {**replica(), "next": 3},  # since=501: restarted, and this answer is empty
        {**replica("new 1", "new 2", "new 3"), "next": 3},  # since=0
        {**replica(), "next": 3},
    ]
    stub.answers[("GET", "/v1/admin/models/m/logs")] = (200, answers)
    sleeps = 0

    def sleep(_: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps > 4:
            raise KeyboardInterrupt  # the operator's Ctrl-C

    monkeypatch.setattr(cli.time, "sleep", sleep)
    code, out, err = run(capsys, "logs", "m", "--follow", "--url", stub.url)
    assert code == 0, err
    assert out.splitlines() == ["[0] old 1", "[0] old 2", "[0] old 3", "[0] new 1", "[0] new 2", "[0] new 3"]
    asked = [seen["path"].split("?")[1] for seen in stub.seen]
    assert asked[:5] == ["tail=200", "since=500", "since=501", "since=0", "since=3"]
