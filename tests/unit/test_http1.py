"""The lean HTTP/1.1 client (llmpool.backends.http1) against scripted servers on real
sockets: what the server sends, byte for byte, and how it treats the connection.

Each server connection runs one script: a function of the accepted socket that reads
requests and writes answers exactly as written here, in as many pieces as it likes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmpool.backends.chat_upstream import ChatUpstream
from llmpool.backends.http1 import Http1Error, Http1Origin, Http1Response, _still_open

Script = Callable[[socket.socket], None]
REPO_ROOT = Path(__file__).resolve().parents[2]

SSE = b"data: one\n\ndata: two\n\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED = CHUNKED_HEAD + chunk(SSE) + b"0\r\n\r\n"


def read_request(conn: socket.socket) -> bytes:
    """One request (head and Content-Length body); b"" when the client closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return b""
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(fields.get(b"content-length", 0))
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


class Server:
    """Accepts connections on 127.0.0.1; the n-th runs `scripts[n]` (the last one repeats)."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            script = self.scripts[min(self.connections, len(self.scripts) - 1)]
            self.connections += 1
            threading.Thread(target=self._run, args=(script, conn), daemon=True).start()

    def _run(self, script: Script, conn: socket.socket) -> None:
        with conn:
            try:
                script(conn)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client left mid-script (a test of its error path): its side decides

    def answer_each(self, *answers: bytes, pieces: int = 1) -> Script:
        """A script: answer the connection's requests with `answers` in turn (each written
        in `pieces` writes), then close."""

        def script(conn: socket.socket) -> None:
            for answer in answers:
                request = read_request(conn)
                if not request:
                    return
                self.requests.append(request)
                step = max(1, len(answer) // pieces)
                for start in range(0, len(answer), step):
                    conn.sendall(answer[start : start + step])
                    if pieces > 1:
                        time.sleep(0.001)

        return script

    def close(self) -> None:
        self.listener.close()


ORIGINS: list[Http1Origin] = []


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """The test's servers; they and every origin the test made are closed after it."""
    made: list[Server] = []
    yield made
    while ORIGINS:
        ORIGINS.pop().close()
    for server in made:
        server.close()


def origin(server: Server | int, maxsize: int = 2) -> Http1Origin:
    port = server if isinstance(server, int) else server.port
    made = Http1Origin("127.0.0.1", port, maxsize=maxsize)
    ORIGINS.append(made)
    return made


def post(target: Http1Origin, body: bytes = b'{"a": 1}', timeout: float = 5.0) -> Http1Response:
    headers = {"X-A": "b"}
    return target.request("POST", "/v1/chat/completions", body=body, headers=headers, timeout=(2.0, timeout))


def read_all(response: Http1Response) -> bytes:
    out = b""
    while data := response.read1():
        out += data
    return out


def test_the_request_is_sent_whole_with_host_and_length(servers: list[Server]) -> None:
    server = Server()
    servers.append(server)
    server.scripts = [server.answer_each(CHUNKED)]
    sent = '{"x": "é"}'.encode()  # 11 bytes in 10 characters
    response = post(origin(server), body=sent)
    assert read_all(response) == SSE
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"Content-Length: 11" in lines and b"X-A: b" in lines
    assert body == sent


@pytest.mark.parametrize("pieces", [1, 7, 400])
def test_a_chunked_answer_in_any_number_of_pieces_is_one_body(servers: list[Server], pieces: int) -> None:
    server = Server()
    servers.append(server)
    server.scripts = [server.answer_each(CHUNKED, pieces=pieces)]
    response = post(origin(server))
    assert response.status == 200
    assert response.headers.get("content-type") == "text/event-stream"
    assert response.headers.get("Content-Type") == "text/event-stream"  # any case
    assert read_all(response) == SSE


def test_sequential_answers_reuse_one_connection_and_an_error_answer_keeps_it(servers: list[Server]) -> None:
    error = b'HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 7\r\n\r\n{"e":1}'
    server = Server()
    servers.append(server)
    server.scripts = [server.answer_each(error, CHUNKED, CHUNKED)]
    target = origin(server)
    first = post(target)
    assert (first.status, first.headers.get("retry-after")) == (429, "3")
    assert first.read(1 << 20) == b'{"e":1}'
    first.release_conn()
    for _ in range(2):
        response = post(target)
        assert read_all(response) == SSE
        response.release_conn()
    assert server.connections == 1


def test_a_kept_alive_connection_the_server_closed_unanswered_is_replaced(servers: list[Server]) -> None:
    """llama-server closes kept-alive connections (idle, or after a stream): the request
    goes again on a fresh connection, whether the close is seen before sending or not."""
    server = Server()
    servers.append(server)

    def answer_then_close_on_the_next(conn: socket.socket) -> None:
        server.answer_each(CHUNKED)(conn)
        read_request(conn)  # takes the next request, and closes without a word

    server.scripts = [answer_then_close_on_the_next, server.answer_each(CHUNKED)]
    target = origin(server)
    response = post(target)
    assert read_all(response) == SSE
    response.release_conn()
    again = post(target)  # sent on the kept-alive connection, which the server drops
    assert read_all(again) == SSE
    assert server.connections == 2


def test_a_fresh_connection_closed_unanswered_is_an_error(servers: list[Server]) -> None:
    server = Server(lambda conn: read_request(conn) and None)
    servers.append(server)
    with pytest.raises(ConnectionResetError, match="without answering"):
        post(origin(server))
    assert server.connections == 1


def test_connection_close_and_a_body_without_length_do_not_keep_the_connection(servers: list[Server]) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    server = Server()
    servers.append(server)
    until_close = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    server.scripts = [server.answer_each(closing), server.answer_each(until_close)]
    target = origin(server)
    response = post(target)
    assert response.read(100) == b"ok"
    response.release_conn()
    response = post(target)
    assert read_all(response) == b"all of it"  # ends with the connection
    response.release_conn()
    assert target._idle == [] and server.connections == 2


def test_an_answer_cut_off_mid_body_is_a_connection_error(servers: list[Server]) -> None:
    server = Server()
    servers.append(server)
    server.scripts = [server.answer_each(CHUNKED_HEAD + chunk(b"data: one\n\n"))]
    response = post(origin(server))
    assert response.read1() == b"data: one\n\n"
    with pytest.raises(Http1Error, match="closed before"):
        response.read1()


def test_garbage_is_a_connection_error_naming_it(servers: list[Server]) -> None:
    server = Server()
    servers.append(server)
    server.scripts = [server.answer_each(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")]
    with pytest.raises(Http1Error, match="malformed HTTP answer"):
        post(origin(server))
    assert issubclass(Http1Error, ConnectionError)


def test_a_silent_server_is_a_timeout(servers: list[Server]) -> None:
    server = Server(lambda conn: read_request(conn) and time.sleep(2))
    servers.append(server)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        post(origin(server), timeout=0.2)
    assert time.monotonic() - began < 1.5


def test_nobody_listening_is_a_refused_connection(servers: list[Server]) -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(ConnectionRefusedError):
        post(origin(port))


def test_read1_and_read_honour_their_sizes(servers: list[Server]) -> None:
    server = Server()
    servers.append(server)
    server.scripts = [server.answer_each(CHUNKED)]
    response = post(origin(server))
    assert response.read1(5) == SSE[:5]
    assert response.read(6) == SSE[5:11]
    assert response.read(1000) == SSE[11:]
    assert response.read1() == b""


def test_abort_ends_a_read_stalled_on_the_server(servers: list[Server]) -> None:
    server = Server()
    servers.append(server)

    def head_then_stall(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(CHUNKED_HEAD + chunk(b"data: one\n\n"))
        time.sleep(5)

    server.scripts = [head_then_stall]
    target = origin(server)
    response = post(target, timeout=30)
    assert response.read1() == b"data: one\n\n"
    threading.Timer(0.2, target.abort).start()
    began = time.monotonic()
    with pytest.raises(OSError):
        response.read1()
    assert time.monotonic() - began < 3


def test_chat_upstream_takes_the_lean_client_only_for_plain_http_without_a_proxy() -> None:
    assert ChatUpstream("http://127.0.0.1:8080/v1", maxsize=1)._lean is not None
    assert ChatUpstream("https://api.example.com/v1", maxsize=1)._lean is None
    assert ChatUpstream("http://user:pw@127.0.0.1:8080/v1", maxsize=1)._lean is None


def test_an_idle_connection_closed_by_the_server_is_noticed_before_use() -> None:
    mine, theirs = socket.socketpair()
    with mine:
        assert _still_open(mine)
        theirs.close()
        assert not _still_open(mine)


def test_headers_that_never_end_are_an_error_not_a_growing_buffer(servers: list[Server]) -> None:
    server = Server()
    servers.append(server)

    def endless_headers(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        for _ in range(2000):  # 2 MB of headers, never a blank line
            conn.sendall(line)

    server.scripts = [endless_headers]
    with pytest.raises(Http1Error, match="longer than 256 KiB"):
        post(origin(server))


# Under the worker's patch: whether connecting parks the greenlet until the hub's next
# poll (another ready greenlet then runs first) or completes in the call.
CONNECT_ORDER_SCRIPT = r"""
from conf.worker import patch_selectively

patch_selectively()

import json
import socket

import gevent

from llmpool.backends.http1 import Http1Origin

listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
result = {}
for host in ("127.0.0.1", "localhost"):
    order = []
    origin = Http1Origin(host, port, maxsize=1)

    def connect():
        sock, reused = origin._take(5.0)
        order.append("connected" if not reused else "reused")
        sock.close()

    first = gevent.spawn(connect)
    second = gevent.spawn(order.append, "other greenlet")
    gevent.joinall([first, second])
    result[host] = order
print(json.dumps(result))
"""


def test_a_loopback_connect_never_parks_the_greenlet_and_a_name_still_connects() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CONNECT_ORDER_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    order = json.loads(proc.stdout.strip().splitlines()[-1])
    assert order["127.0.0.1"] == ["connected", "other greenlet"]  # sent before anyone else runs
    assert order["localhost"] == ["other greenlet", "connected"]  # a name waits for the resolver
