"""A real OpenAI-compatible upstream on 127.0.0.1 that misbehaves on cue (stdlib only).

Stands in for a remote Chat Completions provider in `openai_remote` tests. Each
`POST /v1/chat/completions` (or `/v1/completions`, streamed as `text_completion` chunks
with `choices[].text`) is answered by the next scripted `Reply` (a normal stream once
the script runs out): an HTTP error with the provider's JSON error body and headers, a
slow first byte, a stall, garbage, or a TCP reset after some tokens. Streams use chunked
encoding and connections are kept alive, as real providers do, so tests can count the
client's TCP connections. Everything the pool sent is recorded.

    with MisbehavingUpstream(api_key="sk-...") as upstream:
        upstream.script(Reply(status=429, error="slow down"), Reply())
        ... point remote_base_url at upstream.url ...
        assert len(upstream.requests) == 2
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Longest a stall or slow first byte lasts if nobody stops the server: bounds every test.
MAX_WAIT_S = 30.0


@contextlib.contextmanager
def hard_deadline(seconds: float) -> Iterator[None]:
    """Fail the enclosed block (on the main thread) with TimeoutError after `seconds`.

    The tests here are about timeouts and stalls: if the code under test ever hangs, the
    test must fail fast instead of hanging the suite.
    """

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"test exceeded its hard deadline of {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Reply:
    """How the upstream answers one chat completion request."""

    tokens: tuple[str, ...] = ("Hello", ",", " world", "!")
    reasoning: tuple[str, ...] = ()  # sent as `reasoning_content` deltas before the tokens
    status: int = 200
    error: str | None = None  # message of the OpenAI-style error body when status >= 400
    headers: dict[str, str] = field(default_factory=dict)
    first_byte_delay_s: float = 0.0  # before the status line
    token_delay_s: float = 0.0  # after each token
    reset_after: int | None = None  # tokens sent, then a TCP reset (RST)
    stall_after: int | None = None  # tokens sent, then silence until the server stops
    garbage_after: int | None = None  # tokens sent, then a data line that is not JSON
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    port: int  # the client's source port: one per TCP connection


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless a reply says otherwise
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test asserts on `requests`, not on a log

    def setup(self) -> None:
        super().setup()
        # Each SSE event goes out at once, as from a real server (no Nagle delay).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.upstream._connected(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.upstream._disconnected_socket(self.connection)

    # -- plumbing ------------------------------------------------------------------
    def _record(self, body: dict[str, Any] | None) -> None:
        headers = {k: v for k, v in self.headers.items()}
        self.server.upstream._record(Seen(self.command, self.path, headers, body, self.client_address[1]))

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        key = self.server.upstream.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
        return False

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, obj: Any) -> None:
        self._chunk(f"data: {json.dumps(obj)}\n\n".encode())

    def _delta(self, key: str, text: str) -> None:
        if self.path == "/v1/completions":  # legacy Completions: text, no reasoning field
            self._event({"object": "text_completion", "choices": [{"index": 0, "text": text}]})
            return
        self._event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {key: text}}]})

    # -- endpoints -----------------------------------------------------------------
    def do_GET(self) -> None:
        self._record(None)
        if not self._authorised():
            return
        if self.path == "/v1/models":
            models = [{"id": m, "object": "model"} for m in self.server.upstream.models]
            self._json(200, {"object": "list", "data": models})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self._record(body)
        reply = self.server.upstream._next_reply()
        if reply.first_byte_delay_s and self.server.upstream.stopping.wait(reply.first_byte_delay_s):
            self.close_connection = True
            return
        if not self._authorised():
            return
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        if reply.status >= 400:
            message = reply.error or f"scripted error {reply.status}"
            self._json(reply.status, {"error": {"message": message, "code": reply.status}}, reply.headers)
            return
        self.server.upstream._stream_started()
        try:
            self._stream(reply, body or {})
        except (BrokenPipeError, ConnectionResetError):
            self.server.upstream._client_left()
            self.close_connection = True
        finally:
            self.server.upstream._stream_ended()

    def _stream(self, reply: Reply, body: dict[str, Any]) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        for text in reply.reasoning:
            self._delta("reasoning_content", text)
        for i, text in enumerate(reply.tokens):
            if i == reply.reset_after:
                self._reset()
                return
            if i == reply.stall_after:
                self.server.upstream.stopping.wait(MAX_WAIT_S)
                self.close_connection = True
                return
            if i == reply.garbage_after:
                self._chunk(b"data: {this is not json\n\n")
                self.close_connection = True
                return
            self._delta("content", text)
            if reply.token_delay_s:
                self.server.upstream.stopping.wait(reply.token_delay_s)
        usage = {
            "prompt_tokens": len(json.dumps(body.get("messages", body.get("prompt")))),
            "completion_tokens": len(reply.tokens),
        }
        self._event(
            {"choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}], "usage": usage}
        )
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.server.upstream._stream_finished()

    def _reset(self) -> None:
        # SO_LINGER 0: close() sends RST instead of FIN, as a dropped proxy connection does.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    upstream: MisbehavingUpstream


class MisbehavingUpstream:
    """The upstream server; thread-safe counters for the test to assert on."""

    def __init__(self, *, api_key: str | None = None, models: tuple[str, ...] = ("remote-model",)) -> None:
        self.api_key = api_key
        self.models = models
        self.stopping = threading.Event()
        self.client_gone = threading.Event()
        self._lock = threading.Lock()
        self._script: list[Reply] = []
        self._seen: list[Seen] = []
        self._sockets: set[socket.socket] = set()
        self.streams_finished = 0
        self.disconnects = 0  # streams the client abandoned (the write failed)
        self.active = 0  # streams being written now
        self.max_active = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="upstream", daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> MisbehavingUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end stalls, close every client connection; joins the server."""
        self.stopping.set()
        self._server.shutdown()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a handler waiting for the next request
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MisbehavingUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test side -------------------------------------------------------------------
    def script(self, *replies: Reply) -> None:
        """Answer the next chat requests with these, in order (then normal streams)."""
        with self._lock:
            self._script.extend(replies)

    @property
    def requests(self) -> list[Seen]:
        """Chat completion requests received, in order."""
        with self._lock:
            return [s for s in self._seen if s.method == "POST"]

    @property
    def all_requests(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    @property
    def ports(self) -> set[int]:
        """Distinct client source ports, i.e. TCP connections the client opened."""
        with self._lock:
            return {s.port for s in self._seen}

    # -- handler side ----------------------------------------------------------------
    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.pop(0) if self._script else Reply()

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def _connected(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _disconnected_socket(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _stream_started(self) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def _stream_ended(self) -> None:
        with self._lock:
            self.active -= 1

    def _stream_finished(self) -> None:
        with self._lock:
            self.streams_finished += 1

    def _client_left(self) -> None:
        with self._lock:
            self.disconnects += 1
        self.client_gone.set()
