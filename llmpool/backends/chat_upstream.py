"""Keep-alive HTTP connections to one OpenAI-compatible server (`ChatUpstream`), for
`llmpool.backends.openai_chat.stream_chat` and the adapters' small JSON calls."""

from __future__ import annotations

import http.client
import json
import os
import weakref
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
import urllib3

from llmpool.backends.http1 import Http1Origin, Http1Response

# What `ChatUpstream.request` returns: the lean client's answer for a plain-http origin
# reached directly, urllib3's otherwise. Both offer what the adapters use of it.
UpstreamResponse = Http1Response | urllib3.BaseHTTPResponse


class ChatUpstream:
    """Keep-alive connections to one OpenAI-compatible server, for `stream_chat`.

    A plain-http origin reached without a proxy (the pool's children, a server on the
    LAN) goes through `http1.Http1Origin`, a lean client that costs a fraction of
    urllib3's CPU per request (bench/floor.py); HTTPS and proxies through urllib3 directly,
    rather than a `requests.Session`, whose per-call layer (request preparation, hooks,
    settings merge) was about a seventh of the pool's CPU per request on an instant
    upstream (bench/). `maxsize` connections are kept alive (more are opened should more
    requests run at once). Default headers, proxy and CA bundle are
    fixed here; `from_env` reads the proxy and the CA bundle from the environment the way
    requests does (`HTTPS_PROXY`/`NO_PROXY`, `REQUESTS_CA_BUNDLE`), for remote servers;
    local children get neither.
    """

    def __init__(
        self, base_url: str, *, maxsize: int, headers: dict[str, str] | None = None, from_env: bool = False
    ) -> None:
        proxy: str | None = None
        ca_certs = requests.utils.DEFAULT_CA_BUNDLE_PATH
        if from_env:
            proxies = requests.utils.get_environ_proxies(base_url)
            proxy = proxies.get(urlsplit(base_url).scheme) or proxies.get("all")
            ca_certs = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or ca_certs
        self.proxy, self.ca_certs, self.maxsize = proxy, ca_certs, maxsize
        self.headers = {"User-Agent": "llm-pool", **(headers or {})}
        options: dict[str, Any] = {"num_pools": 4, "maxsize": maxsize, "ca_certs": ca_certs}
        self._manager = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
        # Without a proxy every request goes to one origin: its connection pool is taken
        # once, and requests skip the manager's per-call URL parsing and pool lookup.
        parts = urlsplit(base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._direct = None if proxy or "@" in parts.netloc else self._manager.connection_from_url(base_url)
        self._lean: Http1Origin | None = None
        if self._direct is not None and parts.scheme == "http" and parts.hostname:
            self._lean = Http1Origin(parts.hostname, parts.port or 80, maxsize=maxsize)
        self._timeouts: dict[tuple[float, float], urllib3.Timeout] = {}
        # Responses being read, so `abort()` can break a read stalled on the server.
        self._open: weakref.WeakSet[urllib3.BaseHTTPResponse] = weakref.WeakSet()

    def request(
        self,
        method: str,
        url: str,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: tuple[float, float],
    ) -> UpstreamResponse:
        """Send, return once the status line and headers are in; the body is left unread.

        Raises OSErrors (the lean client) or urllib3's errors (no retries, no redirects:
        the caller decides).
        """
        sent = {**self.headers, **(headers or {})}
        data = None
        if body is not None:
            data = _dump(body)
            sent["Content-Type"] = "application/json"
        # The path on the origin, for a URL there (taken once for both clients).
        path = url[len(self._origin) :] if url.startswith(self._origin + "/") else None
        if self._lean is not None and path is not None:
            return self._lean.request(method, path, body=data, headers=sent, timeout=timeout)
        # A keep-alive connection the server has closed in the meantime (llama-server
        # closes one idle for 5 s) fails the next request sent on it with "closed without
        # response": the server never saw that request, so it goes again on a fresh
        # connection, once per pooled connection that may be stale.
        limits = self._timeouts.get(timeout)
        if limits is None:
            limits = self._timeouts[timeout] = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        options: dict[str, Any] = {
            "body": data,
            "headers": sent,
            "preload_content": False,
            "retries": False,
            "redirect": False,
            "timeout": limits,
        }
        for attempt in range(self.maxsize + 1):
            try:
                if self._direct is not None and path is not None:
                    response = self._direct.urlopen(method, path, assert_same_host=False, **options)
                else:
                    response = self._manager.request(method, url, **options)
                break
            except urllib3.exceptions.ProtocolError as exc:
                if attempt == self.maxsize or not _stale_connection(exc):
                    raise
        self._open.add(response)
        return response

    def abort(self) -> None:
        """Shut down the sockets of responses still being read: their reads end now."""
        if self._lean is not None:
            self._lean.abort()
        for response in list(self._open):
            try:
                response.shutdown()
            except (OSError, ValueError, RuntimeError):
                pass  # already finished, or back in the pool

    def close(self) -> None:
        self.abort()
        if self._lean is not None:
            self._lean.close()
        self._manager.clear()


def _stale_connection(exc: urllib3.exceptions.ProtocolError) -> bool:
    """Whether a request failed because its pooled connection was already closed by the
    server: closed without any response, or reset/broken while the request was sent."""
    cause = exc.args[1] if len(exc.args) > 1 else exc.__context__
    return isinstance(cause, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError)


def read_capped(response: UpstreamResponse, limit: int = 1 << 20) -> bytes:
    """At most `limit` bytes of a body, for error messages and small JSON answers."""
    return bytes(response.read(limit, decode_content=True))


def _dump(body: dict[str, Any]) -> bytes:
    """A request body: orjson, or `json` for what orjson refuses (a lone surrogate)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()
