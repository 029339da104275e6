"""A child's KV-cache use from its /metrics (llmpool.backends.kv_poll): the gauge read,
polled on the adapter's own thread, aged out when the child stops answering, and never a
made-up number."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from llmpool.backends.kv_poll import KvPoller, kv_usage

VLLM_TEXT = """# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
"""
NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def test_the_fullest_engine_counts_and_nothing_is_made_up() -> None:
    assert kv_usage(VLLM_TEXT, NAMES) == 0.5
    old = "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.125\n"
    assert kv_usage(old, NAMES) == 0.125  # the name before vLLM's V1 engine
    assert kv_usage("# TYPE x gauge\nx 1\n", NAMES) is None  # no such gauge: unknown
    assert kv_usage("# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc 37\n", NAMES) is None


class Metrics(http.server.BaseHTTPRequestHandler):
    body = VLLM_TEXT
    status = 200

    def do_GET(self) -> None:
        data = self.body.encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def child() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_poller_keeps_the_last_value_until_it_ages_out(child: http.server.ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{child.server_address[1]}/metrics"
    poller = KvPoller(url, NAMES, {}, interval_s=0.05)
    assert poller.value() is None  # nothing read yet
    poller.start()
    try:
        deadline = time.monotonic() + 5
        while poller.value() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert poller.value() == 0.5
        Metrics.status = 500  # the child stops answering: the last value ages out
        deadline = time.monotonic() + 5
        while poller.value() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert poller.value() is None
    finally:
        Metrics.status = 200
        poller.stop()
    poller._thread.join(5)
    assert not poller._thread.is_alive()  # stop() ends the thread
