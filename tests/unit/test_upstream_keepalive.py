"""A request that died with its kept-alive connection, unanswered, is sent again once.

llama-server at times closes a kept-alive connection without answering the request just
sent on it (tests/integration/test_llama_server.py shows it on the real binary: 9 of 60
back-to-back requests came back 502 before). Anything else stays an error.

These cover urllib3's path (HTTPS, proxies), with its pool manager scripted; the lean
client that a plain-http origin uses has its own in tests/unit/test_http1.py.
"""

from __future__ import annotations

import http.client
from typing import Any

import pytest
import urllib3

from llmpool.backends.openai_chat import ChatUpstream


class FlakyManager:
    """Stands in for urllib3's PoolManager: fails the first `failures` requests."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return urllib3.HTTPResponse(body=b"{}", status=200, preload_content=False)

    urlopen = request  # as the origin's own connection pool, which requests use without a proxy


def upstream(failures: list[BaseException], maxsize: int = 1) -> tuple[ChatUpstream, FlakyManager]:
    chat = ChatUpstream("https://127.0.0.1:9", maxsize=maxsize)
    manager = FlakyManager(failures)
    chat._manager = manager  # type: ignore[assignment]
    chat._direct = manager  # type: ignore[assignment]
    return chat, manager


def aborted(cause: BaseException) -> urllib3.exceptions.ProtocolError:
    return urllib3.exceptions.ProtocolError("Connection aborted.", cause)


@pytest.mark.parametrize(
    "cause",
    [
        http.client.RemoteDisconnected("closed"),
        ConnectionResetError(104, "reset"),
        BrokenPipeError(32, "pipe"),
    ],
)
def test_an_unanswered_request_on_a_dead_connection_goes_again(cause: BaseException) -> None:
    chat, manager = upstream([aborted(cause)])
    response = chat.request("POST", "https://127.0.0.1:9/x", body={"a": 1}, timeout=(1, 1))
    assert response.status == 200
    assert manager.calls == 2


def test_once_per_pooled_connection_then_the_error_stands() -> None:
    causes = [aborted(http.client.RemoteDisconnected("closed")) for _ in range(3)]
    chat, manager = upstream(causes, maxsize=2)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        chat.request("POST", "https://127.0.0.1:9/x", body={}, timeout=(1, 1))
    assert manager.calls == 3


def test_other_protocol_errors_are_not_repeated() -> None:
    chat, manager = upstream([urllib3.exceptions.ProtocolError("bad chunk", ValueError("x"))])
    with pytest.raises(urllib3.exceptions.ProtocolError):
        chat.request("POST", "https://127.0.0.1:9/x", body={}, timeout=(1, 1))
    assert manager.calls == 1
