"""The bench's SSE client: one streamed POST read as it arrives, http.client and nothing
between (the streaming, relay and first-token cases).

`post_stream` sends the request (on a new connection or a kept-alive one) and returns the
response with the moment the request began; `data_payloads` yields each `data:` payload as
its line arrives; `sse_request` measures one stream (time to the first output, tokens,
decode time).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Stream:
    ttft_s: float
    tokens: int
    decode_s: float
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.decode_s if self.decode_s > 0 else 0.0


def connection(url: str, timeout_s: float = 300) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)


def post_stream(
    url: str,
    path: str,
    body: dict[str, Any],
    *,
    conn: http.client.HTTPConnection | None = None,
    connect_first: bool = False,
    timeout_s: float = 300,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, float]:
    """POST `body` as JSON; (connection, response, perf_counter when the request began).

    On `conn` (a kept-alive connection, whose previous response was read to its end) or on
    a new one. With `connect_first` a connection not yet open is opened before the clock
    starts, so the time runs from the request being written; without, it includes the
    connect."""
    conn = conn or connection(url, timeout_s)
    payload = json.dumps(body).encode()
    if connect_first and conn.sock is None:
        conn.connect()
    started = time.perf_counter()
    conn.request("POST", path, payload, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        text = resp.read()[:500]
        conn.close()
        raise RuntimeError(f"{url}{path} answered {resp.status}: {text!r}")
    return conn, resp, started


def data_payloads(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """Each `data:` payload of the stream (`[DONE]` included), as soon as its line is in."""
    buffer = b""
    while True:
        data = resp.read1(65536)
        if not data:
            # Read to its end: closed, so that a kept-alive connection takes the next
            # request (read1 leaves a Content-Length body open at its last byte).
            resp.close()
            return
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()


def sse_request(
    url: str,
    path: str,
    body: dict[str, Any],
    content_of: Callable[[dict[str, Any]], Any],
    tokens_of: Callable[[dict[str, Any]], int | None] | None,
    *,
    conn: http.client.HTTPConnection | None = None,
    connect_first: bool = False,
) -> Stream:
    """POST `body`, read the SSE reply as it arrives; `content_of(event)` says whether a
    data payload carries output text, `tokens_of(event)` returns the output token count
    where the payload has it (None: the events with output are counted instead).

    A connection passed as `conn` is left open for the next request; one made here is
    closed."""
    keep = conn is not None
    conn, resp, started = post_stream(url, path, body, conn=conn, connect_first=connect_first)
    first: float | None = None
    tokens: int | None = None
    seen = 0
    try:
        for payload in data_payloads(resp):
            if payload == b"[DONE]":
                continue
            event = json.loads(payload)
            if content_of(event):
                seen += 1
                if first is None:
                    first = time.perf_counter()
            if tokens_of is not None:
                tokens = tokens_of(event) or tokens
        ended = time.perf_counter()
    except BaseException:
        conn.close()  # a stream cut short leaves nothing to reuse
        raise
    if not keep:
        conn.close()
    if tokens_of is None:
        tokens = seen
    if first is None or not tokens:
        raise RuntimeError(f"{url}{path}: a stream without output or usage")
    return Stream(first - started, tokens, ended - first, ended - started)
