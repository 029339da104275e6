"""The `llm-pool` command: serve the pool, check its settings, operate a running one.

Exit codes: 0 done; 1 the pool refused (its error code and message are printed) or the
settings are invalid; 2 the command line is wrong; 3 the pool did not answer (the URL
is named); 130 interrupted while waiting (the pool carries on with what it was asked).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from llmpool import __version__
from llmpool.auth import credentials_from
from llmpool.cli import render
from llmpool.cli.client import BIND_ENV, PoolClient, Refused, Target, Unreachable, resolve_target
from llmpool.config.loader import load_settings
from llmpool.config.spec import Settings
from llmpool.errors import ConfigError
from llmpool.secrets import redact

OK, REFUSED, USAGE, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130
ROOT = Path(__file__).resolve().parents[2]  # the checkout: conf/, wsgi.py
# A load waits for every replica (minutes for a large vLLM model), an unload for running
# jobs to finish: as long as the unit gives start-up (TimeoutStartSec).
SLOW_TIMEOUT_S = 900.0
TIMEOUT_S = 30.0

EPILOG = """\
exit codes: 0 done, 1 the pool refused (or invalid settings), 2 usage error,
            3 the pool did not answer, 130 interrupted
environment: LLM_POOL_URL (the pool), LLM_POOL_ADMIN_TOKEN (else the variable that
             service.admin_token_env names), LLM_POOL_SETTINGS_PATH,
             LLM_POOL_LOCAL_SETTINGS_PATH (the settings files)"""


def _say(message: str) -> None:
    print(f"llm-pool: {message}", file=sys.stderr)


# -- argument types --------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON: keep them as strings


def key_value(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` for --set: the value as JSON when it parses (512, true, null, "512"),
    else the text itself (on, q8_0)."""
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        value = raw
    return key.strip(), value


def _bounded(kind: Callable[[str], Any], minimum: float, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
        if not value >= minimum:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return value

    return parse


positive_int = _bounded(int, 1, "expected an integer >= 1")
count = _bounded(int, 0, "expected an integer >= 0")
seconds = _bounded(float, 0.01, "expected a number of seconds > 0")


class _SetOverride(argparse.Action):
    """Collects --set pairs into one dict; a key given twice is a usage error, not a
    silent "last one wins"."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        key, value = values
        overrides = dict(getattr(namespace, self.dest) or {})
        if key in overrides:
            parser.error(f"--set {key} is given more than once")
        overrides[key] = value
        setattr(namespace, self.dest, overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-pool",
        description="Serve llm-pool, check its settings, and operate a running pool.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument(
        "--url", help="the pool, e.g. http://127.0.0.1:8010 (default: $LLM_POOL_URL, else the settings)"
    )
    remote.add_argument("--timeout", type=seconds, metavar="S", help="seconds to wait for an answer")

    serve = sub.add_parser("serve", help="run the pool in the foreground (gunicorn, as `make run` does)")
    serve.add_argument("--bind", metavar="HOST:PORT", help="listen here instead of service.host:port")
    sub.add_parser("check-config", help="validate the settings files and print them, secrets hidden")

    status = sub.add_parser("status", parents=[remote], help="one line per configured model")
    status.add_argument("--json", action="store_true", help="the admin API's rows as JSON")

    load = sub.add_parser("load", parents=[remote], help="load a model (waits until it is loaded)")
    load.add_argument("name")
    load.add_argument("--replicas", type=positive_int, metavar="N")
    load.add_argument("--target-inflight", type=positive_int, metavar="N", help="slots per replica")
    load.add_argument(
        "--set",
        type=key_value,
        action=_SetOverride,
        default={},
        metavar="KEY=VALUE",
        help="a load override (repeatable); VALUE is read as JSON when it parses, else as text",
    )
    load.add_argument("--no-wait", action="store_true", help="return as soon as the load has started")

    unload = sub.add_parser("unload", parents=[remote], help="unload a model (running jobs may finish)")
    unload.add_argument("name")
    unload.add_argument("--force", action="store_true", help="cancel running jobs at once")

    logs = sub.add_parser("logs", parents=[remote], help="what a model's child processes printed")
    logs.add_argument("name")
    logs.add_argument("--tail", type=count, default=200, metavar="N", help="lines per replica (200)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    logs.add_argument("--interval", type=seconds, default=1.0, metavar="S", help="poll period when following")

    reload = sub.add_parser("reload", parents=[remote], help="re-read the settings files in the pool")
    reload.add_argument("--json", action="store_true", help="the answer as JSON")
    return parser


# -- local commands --------------------------------------------------------------------
def serve(args: argparse.Namespace) -> int:
    """Replace this process with gunicorn, from the checkout, as `make run` starts it."""
    if not (ROOT / "conf" / "gunicorn.conf.py").is_file() or not (ROOT / "wsgi.py").is_file():
        _say(f"serve runs from a checkout of llm-pool; {ROOT} has no conf/gunicorn.conf.py and wsgi.py")
        return REFUSED
    env = dict(os.environ)
    if args.bind:
        env[BIND_ENV] = args.bind
    os.chdir(ROOT)
    argv = [sys.executable, "-m", "gunicorn", "-c", "conf/gunicorn.conf.py", "wsgi:app"]
    os.execve(sys.executable, argv, env)
    raise AssertionError("unreachable: execve returns only by raising")


def settings_document(settings: Settings) -> dict[str, Any]:
    """The merged, validated settings (defaults filled in, model paths resolved) with
    secret values shown as `***`."""
    models = {}
    for name, spec in settings.models.items():
        common = {
            f.name: getattr(spec, f.name)
            for f in dataclasses.fields(spec)
            if f.name not in ("name", "options", "definition")
        }
        models[name] = redact({**common, **spec.options})
    return {
        "sources": list(settings.sources),
        "service": redact(dataclasses.asdict(settings.service)),
        "media": redact(dataclasses.asdict(settings.media)),
        "engine": {"decoding": settings.decoding.values(), "models": models},
    }


def check_config(args: argparse.Namespace) -> int:
    """What start-up checks, without starting: the files, then the secrets they name."""
    try:
        settings = load_settings()
        credentials_from(settings.service, os.environ)
    except ConfigError as exc:
        _say(exc.message)
        return REFUSED
    print(json.dumps(settings_document(settings), indent=2))
    return OK


# -- commands against a running pool ---------------------------------------------------
def _model_path(name: str, action: str = "") -> str:
    return f"/v1/admin/models/{quote(name, safe='')}" + (f"/{action}" if action else "")


def status(client: PoolClient, args: argparse.Namespace) -> int:
    answer = client.get("/v1/admin/models")
    print(json.dumps(answer, indent=2) if args.json else render.status_table(answer.get("models") or []))
    return OK


def load(client: PoolClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.replicas is not None:
        body["replicas"] = args.replicas
    if args.target_inflight is not None:
        body["target_inflight"] = args.target_inflight
    if args.set:
        body["overrides"] = args.set
    # No body at all when nothing was asked: "load it as configured" (200 if already loaded).
    row = client.post(_model_path(args.name, "load"), body or None, wait="false" if args.no_wait else None)
    print(render.load_summary(row, waited=not args.no_wait))
    return OK


def unload(client: PoolClient, args: argparse.Namespace) -> int:
    row = client.post(_model_path(args.name, "unload"), force="true" if args.force else None)
    print(render.unload_summary(row))
    return OK


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        print(line, flush=True)


def logs(client: PoolClient, args: argparse.Namespace) -> int:
    path = _model_path(args.name, "logs")
    answer = client.get(path, tail=args.tail)
    lines = render.log_lines(answer)
    _print_lines(lines)
    if not args.follow:
        if not lines:
            _say(f"{args.name}: no captured output (only child-process backends have any)")
        return OK
    since = answer.get("next")
    if not isinstance(since, int):
        _say(f"{client.url} cannot follow logs (its answer has no `next`): upgrade the pool")
        return REFUSED
    # Ctrl-C ends a follow even where SIGINT came in ignored (a job a shell started in
    # the background inherits SIG_IGN, and Python then never raises KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            time.sleep(args.interval)
            answer = client.get(path, since=since)
            if answer["next"] < since:  # a restarted pool numbers its lines from 0 again
                answer = client.get(path, since=0)
            _print_lines(render.log_lines(answer))
            since = answer["next"]
    except KeyboardInterrupt:
        return OK  # the way a follow ends


def reload(client: PoolClient, args: argparse.Namespace) -> int:
    try:
        answer = client.post("/v1/admin/settings/reload")
    except Refused as exc:
        if exc.status in (404, 405) and exc.code in ("not_found", "method_not_allowed"):
            _say(f"{client.url} has no settings reload (POST /v1/admin/settings/reload): upgrade the pool")
        raise
    print(json.dumps(answer, indent=2) if args.json else render.reload_summary(answer))
    return OK


REMOTE: dict[str, Callable[[PoolClient, argparse.Namespace], int]] = {
    "status": status,
    "load": load,
    "unload": unload,
    "logs": logs,
    "reload": reload,
}
LOCAL: dict[str, Callable[[argparse.Namespace], int]] = {"serve": serve, "check-config": check_config}


def _explain(exc: Refused, target: Target) -> None:
    _say(f"{exc.status} {exc.code}: {exc.message}")
    if isinstance(exc.detail, dict):  # anything the pool adds (a reload's conflicts, say)
        for key, value in exc.detail.items():
            if key not in ("code", "message", "model") and value not in (None, [], {}):
                shown = render.names(value) if key == "conflicts" else render.plain(value)
                print(f"  {key}: {shown}", file=sys.stderr)
    if exc.status == 401:
        if target.token is None:
            _say("no admin token: set LLM_POOL_ADMIN_TOKEN to the pool's admin token")
        else:
            _say(f"the admin token from {target.token_source} was not accepted")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in LOCAL:
        return LOCAL[args.command](args)
    target = resolve_target(args.url, os.environ)
    for note in target.notes:
        _say(f"note: {note}")
    slow = args.command in ("load", "unload")
    client = PoolClient(target, args.timeout or (SLOW_TIMEOUT_S if slow else TIMEOUT_S))
    try:
        return REMOTE[args.command](client, args)
    except Refused as exc:
        _explain(exc, target)
        return REFUSED
    except Unreachable as exc:
        _say(str(exc))
        return UNREACHABLE
    except KeyboardInterrupt:
        _say("interrupted (the pool carries on with what it was asked)")
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing more, and let the exit not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
