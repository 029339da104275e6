"""Talking to a running pool from the command line: where it is, the admin token, errors.

The pool's URL comes from `--url`, else `LLM_POOL_URL`, else `LLM_POOL_BIND` (the address
gunicorn binds), else the settings files' `service.host`/`service.port`, else
http://127.0.0.1:8010. The admin token comes from `LLM_POOL_ADMIN_TOKEN`, else from the
variable the settings name in `service.admin_token_env`. The token is only ever put in
the `Authorization` header: never printed, never in an error message.

Every failure is one of two exceptions, which the CLI turns into its exit codes:
`Refused` (the pool answered 4xx/5xx) and `Unreachable` (no answer at all).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from llmpool.config.loader import load_settings
from llmpool.config.spec import ServiceSettings
from llmpool.errors import ConfigError

URL_ENV = "LLM_POOL_URL"
TOKEN_ENV = "LLM_POOL_ADMIN_TOKEN"
BIND_ENV = "LLM_POOL_BIND"
DEFAULT_URL = "http://127.0.0.1:8010"
CONNECT_TIMEOUT_S = 5.0


class Refused(Exception):
    """The pool answered with an error status; `code` and `message` come from its body."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail  # the body's `detail`, for callers that show more of it


class Unreachable(Exception):
    """No answer: connection refused, DNS, timeout. The message names the URL."""


@dataclass
class Target:
    url: str
    token: str | None = field(default=None, repr=False)
    token_source: str | None = None  # the variable it came from, for messages
    notes: list[str] = field(default_factory=list)  # warnings for stderr (never the token)


def _url_of_bind(bind: str) -> str | None:
    """http://host:port for a gunicorn bind address; None for a unix socket."""
    if bind.startswith(("unix:", "fd://")):
        return None
    host, _, port = bind.rpartition(":")
    return _url_of(host, port)


def _url_of(host: str, port: object) -> str:
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"  # listening everywhere: this machine is one of those places
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def resolve_target(url: str | None, environ: Mapping[str, str]) -> Target:
    """Where the pool is and which token to send (see the module docstring)."""
    url = url or environ.get(URL_ENV) or None
    token = environ.get(TOKEN_ENV) or None
    source = TOKEN_ENV if token else None
    notes: list[str] = []
    if url is None and environ.get(BIND_ENV):
        url = _url_of_bind(environ[BIND_ENV])
    if url is None or token is None:
        service: ServiceSettings | None = None
        try:
            service = load_settings().service
        except ConfigError:
            notes.append("the settings files could not be read (see `llm-pool check-config`)")
        if url is None and service is not None:
            url = _url_of(service.host, service.port)
        token_env = service.admin_token_env if service is not None else None
        if token is None and token_env:
            token = environ.get(str(token_env)) or None
            source = str(token_env)
            if token is None:
                notes.append(f"service.admin_token_env names {token_env}, which is not set here")
    return Target(url=(url or DEFAULT_URL).rstrip("/"), token=token, token_source=source, notes=notes)


class PoolClient:
    """The admin API over HTTP. Each call returns the decoded JSON body or raises
    `Refused` / `Unreachable`. Blocks for up to `timeout_s` waiting for an answer."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        self.url = target.url
        self.timeout_s = timeout_s
        self._session = requests.Session()
        if target.token:
            self._session.headers["Authorization"] = f"Bearer {target.token}"

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params=params)

    def post(self, path: str, body: Mapping[str, Any] | None = None, **params: Any) -> Any:
        return self._call("POST", path, params=params, json=body)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        timeout = (CONNECT_TIMEOUT_S, self.timeout_s)
        try:
            response = self._session.request(method, self.url + path, timeout=timeout, **kwargs)
        except requests.ConnectTimeout:
            raise Unreachable(f"cannot connect to {self.url}: no answer in {CONNECT_TIMEOUT_S:g} s") from None
        except requests.ReadTimeout:
            raise Unreachable(
                f"{self.url} did not answer {method} {path} within {self.timeout_s:g} s "
                "(it may still be working on it: see `llm-pool status`)"
            ) from None
        except requests.ConnectionError as exc:
            raise Unreachable(f"cannot connect to {self.url}: {_reason(exc)}") from None
        if response.status_code >= 400:
            raise refused(response)
        try:
            return response.json()
        except ValueError:
            raise Refused(response.status_code, "invalid_response", "the answer is not JSON") from None


def refused(response: requests.Response) -> Refused:
    """A `Refused` from an error answer of either shape the pool uses
    ({"detail": {code, message}} or 422 {"detail": [{loc, msg, type}]}), or from a body
    that is neither (a proxy in front of the pool, say)."""
    status = response.status_code
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, dict) and "code" in detail:
        return Refused(status, str(detail["code"]), str(detail.get("message", "")), detail)
    if isinstance(detail, list) and detail:
        parts = []
        for item in detail:
            loc = ".".join(str(p) for p in item.get("loc", [])) if isinstance(item, dict) else ""
            msg = item.get("msg", item) if isinstance(item, dict) else item
            parts.append(f"{loc}: {msg}" if loc else str(msg))
        return Refused(status, "validation_error", "; ".join(parts), detail)
    text = " ".join(response.text.split())[:200] or response.reason or "no body"
    return Refused(status, "http_error", text)


def _reason(exc: requests.ConnectionError) -> str:
    """The innermost cause ("[Errno 111] Connection refused"), not urllib3's wrappers,
    which repeat the URL and a connection object's repr."""
    reason: BaseException = exc
    for _ in range(10):  # the chain is three or four deep; never loop on a cycle
        inner = reason.args[0] if reason.args and isinstance(reason.args[0], BaseException) else None
        inner = inner or getattr(reason, "reason", None) or reason.__cause__
        if not isinstance(inner, BaseException):
            break
        reason = inner
    return str(reason)
