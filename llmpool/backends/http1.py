"""A lean HTTP/1.1 client for one plain-http origin: the pool's own children (llama-server,
`vllm serve`) and an OpenAI-compatible server reached without TLS or a proxy.

Why not urllib3 there: on an instant upstream its per-request layers (connection-pool
bookkeeping, `http.client`'s status and header parsing through the `email` package, the
response wrapper) cost the worker about 300 µs of CPU a request, a fifth of the pool's
whole request (bench/floor.py, `client`). This one sends the request in one write and
parses the answer with httptools (llhttp, the parser uvicorn uses), which also undoes the
chunked encoding; what is left here is connection reuse and the read loop. HTTPS and
proxies stay with urllib3 (`chat_upstream.ChatUpstream` picks).

The response offers the part of urllib3's `HTTPResponse` the adapters use: `status`,
`headers.get`, `read1`, `read`, `release_conn`, `close`, `shutdown`. Errors are OSErrors,
as the adapters already catch: `TimeoutError` for a timeout, `ConnectionError` for a
connection lost or refused, `Http1Error` (a ConnectionError) for an answer that is not
HTTP/1.1.
"""

from __future__ import annotations

import _socket
import errno
import ipaddress
import select
import socket
import weakref
from typing import Any

import httptools

RECV_BYTES = 65536
# The most a status line and headers may take (http.client allows 100 lines of 64 KiB):
# a server that never ends its headers is an error, not a buffer that grows.
MAX_HEAD_BYTES = 1 << 18


class Http1Error(ConnectionError):
    """The server's answer broke HTTP/1.1 (or the connection closed mid-answer)."""


class Headers(dict[str, str]):
    """Response headers, names lower-cased; `get` ignores case as urllib3's does."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class Http1Origin:
    """Keep-alive connections to one `host:port`, at most `maxsize` of them kept idle.

    Idle sockets sit in a list (a LIFO: the most recently used is the least likely to have
    been closed by the server); `pop` and `append` are atomic, so greenlets and threads
    take and return them without a lock. Sockets are gevent's under the worker's patch,
    so a request waits on the hub, never on the thread.
    """

    def __init__(self, host: str, port: int, *, maxsize: int) -> None:
        self.address = (host, port)
        self.maxsize = maxsize
        try:  # an address literal may be connected without a round through the hub
            version = ipaddress.ip_address(host).version
            self._family: int | None = socket.AF_INET if version == 4 else socket.AF_INET6
        except ValueError:
            self._family = None
        self._host = f"Host: [{host}]:{port}\r\n" if ":" in host else f"Host: {host}:{port}\r\n"
        self._idle: list[socket.socket] = []
        # Being read, for `abort`; weak, so that an answer a caller dropped unreleased
        # (an exception between request and release) is not kept alive here.
        self._open: weakref.WeakSet[Http1Response] = weakref.WeakSet()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None,
        headers: dict[str, str],
        timeout: tuple[float, float],
    ) -> Http1Response:
        """Send, return once the status line and headers are in; the body is left unread.

        A request sent on a kept-alive connection that the server had closed meanwhile
        goes again on the next one (or a fresh one): the server never saw it. On a fresh
        connection every error stands.
        """
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        length = f"Content-Length: {len(body)}\r\n" if body is not None else ""
        head = f"{method} {path} HTTP/1.1\r\n{self._host}{extra}{length}\r\n".encode("latin-1")
        data = head + body if body is not None else head
        while True:
            sock, reused = self._take(timeout[0])
            try:
                sock.settimeout(timeout[1])
                sock.sendall(data)
                response = Http1Response(self, sock)
                response.begin()
            except (ConnectionResetError, BrokenPipeError, _Unanswered) as exc:
                sock.close()
                if reused:
                    continue
                if isinstance(exc, _Unanswered):
                    raise ConnectionResetError("the server closed the connection without answering") from None
                raise
            except BaseException:
                sock.close()
                raise
            self._open.add(response)
            return response

    def _take(self, connect_timeout: float) -> tuple[socket.socket, bool]:
        """A kept-alive connection that is still open, or a new one."""
        while True:
            try:
                sock = self._idle.pop()
            except IndexError:
                break
            if _still_open(sock):
                return sock, True
            sock.close()
        sock = self._connect_now() or socket.create_connection(self.address, timeout=connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, False

    def _connect_now(self) -> socket.socket | None:
        """A connection the kernel completes within the connect call, as it does on the
        loopback (llama-server closes each streamed connection, so the next request
        connects again): made on a plain socket that never waits, then handed to the
        socket class in use (gevent's in the worker). Connecting through gevent would park
        this greenlet until the hub's next poll, and the greenlet that started the job
        would run first, building and writing its answer's opening before this request
        leaves (bench/README.md, first_token). None when it is not done at once, or
        failed: the caller connects the usual way, which waits, and raises what it meets.
        """
        if self._family is None:
            return None
        raw = _socket.socket(self._family, _socket.SOCK_STREAM)
        try:
            raw.setblocking(False)
            if raw.connect_ex(self.address) not in (0, errno.EINPROGRESS):
                return None
            poller = select.poll()  # not patched: a zero timeout never waits
            poller.register(raw, select.POLLOUT)
            if not poller.poll(0) or raw.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR):
                return None
            return socket.socket(self._family, socket.SOCK_STREAM, fileno=raw.detach())
        finally:
            if raw.fileno() != -1:
                raw.close()

    def give_back(self, sock: socket.socket) -> None:
        if len(self._idle) < self.maxsize:
            self._idle.append(sock)
        else:
            sock.close()

    def abort(self) -> None:
        """Shut down the sockets of responses still being read: their reads end now."""
        for response in list(self._open):
            response.shutdown()

    def close(self) -> None:
        """Every connection closed, idle or being read (whose reads end with an error)."""
        self.abort()
        for response in list(self._open):
            response.close()
        while self._idle:
            self._idle.pop().close()


def _still_open(sock: socket.socket) -> bool:
    """Whether an idle connection is still open: a poll that never waits (`select` is not
    patched, and a zero timeout never blocks the hub). Readable means the server closed
    it (or sent a stray answer, as unusable); so do an error and a hang-up."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


class _Unanswered(Exception):
    """The connection ended before any byte of an answer (a stale kept-alive connection)."""


class Http1Response:
    """One answer being read; its connection goes back to the origin once read to the end."""

    def __init__(self, origin: Http1Origin, sock: socket.socket) -> None:
        self._origin = origin
        self._sock: socket.socket | None = sock
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._headers_done = False
        self._complete = False
        self._fed = 0  # bytes of the answer read so far
        self._keep_alive = False
        self.status = 0
        self.headers = Headers()

    # -- httptools' callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools joins a header split across reads before it calls this.
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        # Asked here: llhttp forgets the answer's keep-alive once the message is complete.
        self._keep_alive = self._parser.should_keep_alive()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # -- reading -------------------------------------------------------------------------------
    def begin(self) -> None:
        """Read until the status line and headers are in (and whatever body came with them)."""
        while not self._headers_done:
            if self._fed >= MAX_HEAD_BYTES:
                raise Http1Error(f"the answer's headers are longer than {MAX_HEAD_BYTES >> 10} KiB")
            if not self._feed():
                if not self._fed:
                    raise _Unanswered()
                raise Http1Error("the connection closed in the answer's headers")

    def _feed(self) -> bool:
        """One read from the socket into the parser; False at the end of the connection."""
        assert self._sock is not None
        try:
            data = self._sock.recv(RECV_BYTES)
        except ConnectionResetError:
            if not self._fed:
                raise _Unanswered() from None
            raise
        if not data:
            if self._headers_done and self._close_delimited():
                self._complete = True  # a body without length ends with the connection
            return False
        self._fed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise Http1Error("the server switched protocols") from None
        except httptools.HttpParserError as exc:
            raise Http1Error(f"malformed HTTP answer: {exc}") from None
        return True

    def _close_delimited(self) -> bool:
        chunked = "chunked" in self.headers.get("transfer-encoding", "")
        return "content-length" not in self.headers and not chunked

    def read1(self, amt: int = RECV_BYTES) -> bytes:
        """Whatever body has arrived, at most `amt` bytes; waits only when nothing has.
        b"" at the end of the body."""
        while not self._body:
            if self._complete or self._sock is None:
                return b""
            if not self._feed() and not self._body:
                if self._complete:
                    return b""
                raise Http1Error("the connection closed before the answer's end")
        return self._take_body(amt)

    def read(self, amt: int, decode_content: bool = True) -> bytes:
        """Up to `amt` bytes of the body: less only at its end. (No content coding is ever
        asked for, so `decode_content` has nothing to undo.)"""
        parts: list[bytes] = []
        while amt > 0 and (data := self.read1(amt)):
            parts.append(data)
            amt -= len(data)
        return b"".join(parts)

    def _take_body(self, amt: int) -> bytes:
        data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        if len(data) > amt:
            self._body = [data[amt:]]
            data = data[:amt]
        else:
            self._body = []
        return data

    # -- the connection --------------------------------------------------------------------
    def release_conn(self) -> None:
        """The connection back to the origin if the answer was read to its end and the server
        keeps it alive; closed otherwise (the server sees a client that left)."""
        sock, self._sock = self._sock, None
        self._origin._open.discard(self)
        if sock is None:
            return
        if self._complete and not self._body and self._keep_alive:
            self._origin.give_back(sock)
        else:
            sock.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._origin._open.discard(self)
        if sock is not None:
            sock.close()

    def shutdown(self) -> None:
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the server
