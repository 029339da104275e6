"""A real HTTP(S) server on 127.0.0.1 that serves, redirects, drips and floods images,
for the media policy's fetch tests (unit and HTTP level)."""

from __future__ import annotations

import base64
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# A real 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()

Route = Callable[["_Handler"], None]


@dataclass(frozen=True)
class Seen:
    path: str
    host: str | None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.seen.append(Seen(self.path, self.headers.get("Host")))
            route = owner.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        route(self)

    @property
    def stopping(self) -> threading.Event:
        return self.server.owner.stopping


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: ImageServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stopped reading (the size cap, a timeout) is the point

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.owner.threaded:
            super().process_request(request, client_address)
        else:  # on the accepting thread, one request at a time
            socketserver.BaseServer.process_request(self, request, client_address)


class ImageServer:
    """`routes` maps a request path to what to answer; `seen` lists every request."""

    def __init__(self, tls: ssl.SSLContext | None = None, threaded: bool = True) -> None:
        # threaded=False under gevent's socket patch: a gevent socket belongs to the hub of
        # the thread that made it, so the accepting thread must serve what it accepted.
        self.threaded = threaded
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        with self.lock:
            return [s.path for s in self.seen]

    def connect_instead(self) -> tuple[list[Any], Callable[[int, Any, float], socket.socket]]:
        """A `Network.connect` that records the address it was asked for and reaches this
        server instead: the server plays whatever public address the fetch pinned."""
        asked: list[Any] = []

        def connect(family: int, address: Any, timeout: float) -> socket.socket:
            asked.append(address)
            return socket.create_connection(("127.0.0.1", self.port), timeout)

        return asked, connect


# -- routes ------------------------------------------------------------------------------
def image(body: bytes = PNG, content_type: str = "image/png", length: bool = True) -> Route:
    def answer(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        if length:
            h.send_header("Content-Length", str(len(body)))
        else:
            h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body)
        h.close_connection = True

    return answer


def redirect(location: str, status: int = 302) -> Route:
    def answer(h: _Handler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return answer


def claims_length(length: int) -> Route:
    """Headers announcing `length` bytes of image; the body never comes."""

    def answer(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(length))
        h.end_headers()
        h.stopping.wait(10)

    return answer


def endless() -> Route:
    """An image body without Content-Length that never ends, sent as fast as read."""

    def answer(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Connection", "close")
        h.end_headers()
        block = PNG + b"\0" * 65536
        while not h.stopping.is_set():
            h.wfile.write(block)

    return answer


def drip(interval_s: float, body: bytes = PNG, headers_too: bool = False) -> Route:
    """One byte every `interval_s`: the body, or (headers_too) the status line onwards."""

    def answer(h: _Handler) -> None:
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        slow = head + body if headers_too else body
        if not headers_too:
            h.wfile.write(head)
        for i in range(len(slow)):
            if h.stopping.wait(interval_s):
                return
            h.wfile.write(slow[i : i + 1])
            h.wfile.flush()
        h.close_connection = True

    return answer


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for DNS name `name` and its key, made by openssl: (cert, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key
