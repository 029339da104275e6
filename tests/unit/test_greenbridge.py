"""Channel and ThreadedIterator on plain threads, and the Channel under gevent (subprocess)."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmpool.greenbridge import (
    Channel,
    ChannelClosed,
    ChannelTimeout,
    ThreadedIterator,
    call_blocking,
    start_os_thread,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def drain(channel: Channel[int], timeout: float = 2.0) -> list[int]:
    items = []
    while True:
        try:
            items.append(channel.get(timeout=timeout))
        except ChannelClosed:
            return items


# -- Channel ---------------------------------------------------------------------------
def test_items_arrive_in_order_from_a_producer_os_thread() -> None:
    channel: Channel[int] = Channel()
    producer_ident: list[int] = []

    def produce() -> None:
        producer_ident.append(threading.get_ident())
        for i in range(200):
            channel.put(i)
            if i % 50 == 0:
                time.sleep(0.001)  # let the consumer catch up and wait in between
        channel.close()

    start_os_thread(produce)
    assert drain(channel) == list(range(200))
    assert producer_ident and producer_ident[0] != threading.get_ident()
    channel.dispose()


def test_items_put_before_close_are_all_delivered() -> None:
    channel: Channel[str] = Channel()
    channel.put("a")
    channel.put("b")
    channel.close()
    assert channel.get() == "a"
    assert channel.get() == "b"
    with pytest.raises(ChannelClosed):
        channel.get()


def test_get_times_out_with_nothing_put() -> None:
    channel: Channel[int] = Channel()
    started = time.monotonic()
    with pytest.raises(ChannelTimeout):
        channel.get(timeout=0.05)
    assert 0.05 <= time.monotonic() - started < 1.0


def test_get_wakes_as_soon_as_an_item_is_put() -> None:
    channel: Channel[int] = Channel()
    threading.Timer(0.02, channel.put, args=(7,)).start()
    started = time.monotonic()
    assert channel.get(timeout=5) == 7
    assert time.monotonic() - started < 1.0


class _PreemptedAfterEmptyCheck(collections.deque[str]):
    """The first time the consumer finds it empty, run `between` before answering:
    exactly what a producer thread preempting the consumer right there would do."""

    def __init__(self, between: Callable[[], None]) -> None:
        super().__init__()
        self._between: Callable[[], None] | None = between

    def __len__(self) -> int:
        n = super().__len__()
        if n == 0 and self._between is not None:
            between, self._between = self._between, None
            between()
        return n


def test_item_put_and_closed_between_consumer_checks_is_not_lost() -> None:
    # Regression guard for the check-then-check race in Channel.get: the consumer sees
    # no items, the producer then puts its last item and closes, the consumer sees
    # "closed" and must still deliver that item instead of ending the stream.
    channel: Channel[str] = Channel()

    def producer_finishes() -> None:
        channel.put("last")
        channel.close()

    channel._items = _PreemptedAfterEmptyCheck(producer_finishes)
    assert channel.get(timeout=1.0) == "last"


def test_call_blocking_without_gevent_is_a_direct_call_on_this_thread() -> None:
    assert call_blocking(threading.get_ident) == threading.get_ident()
    assert call_blocking(lambda a, b=0: a + b, 1, b=2) == 3
    with pytest.raises(KeyError):
        call_blocking({}.__getitem__, "missing")


# -- ThreadedIterator ------------------------------------------------------------------
class Source:
    """A blocking generator that records where it ran and whether its finally ran."""

    def __init__(self, n: int | None = None, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.n, self.delay, self.fail_at = n, delay, fail_at
        self.closed = threading.Event()
        self.thread: int | None = None
        self.produced = 0

    def __call__(self) -> Iterator[int]:
        self.thread = threading.get_ident()
        try:
            i = 0
            while self.n is None or i < self.n:
                if i == self.fail_at:
                    raise ValueError(f"boom at {i}")
                if self.delay:
                    time.sleep(self.delay)
                self.produced += 1
                yield i
                i += 1
        finally:
            self.closed.set()


def test_threaded_iterator_yields_source_items_in_order_from_another_thread() -> None:
    source = Source(n=50)
    assert list(ThreadedIterator(source)) == list(range(50))
    assert source.thread is not None and source.thread != threading.get_ident()
    assert source.closed.is_set()


def test_exception_in_source_is_reraised_in_consumer_after_earlier_items() -> None:
    source = Source(n=10, fail_at=3)
    got = []
    with pytest.raises(ValueError, match="boom at 3"):
        for item in ThreadedIterator(source):
            got.append(item)
    assert got == [0, 1, 2]
    assert source.closed.is_set()


def test_exception_creating_the_source_is_reraised_in_consumer() -> None:
    def make() -> Iterator[int]:
        raise RuntimeError("cannot start")

    with pytest.raises(RuntimeError, match="cannot start"):
        list(ThreadedIterator(make))


def test_stop_closes_the_source_and_ends_iteration() -> None:
    source = Source(n=None, delay=0.002)  # endless until stopped
    stream = ThreadedIterator(source)
    got = []
    started = time.monotonic()
    for item in stream:
        got.append(item)
        stream.stop()
    assert time.monotonic() - started < 2.0
    assert got == [0]  # nothing after stop() reaches the consumer
    assert stream.stopped
    assert source.closed.is_set()  # the producer closed the generator: its finally ran


def test_stop_before_iterating_still_closes_the_source() -> None:
    source = Source(n=None, delay=0.002)
    stream = ThreadedIterator(source)
    stream.stop()
    assert list(stream) == []
    assert source.closed.is_set()


def test_abandoning_iteration_stops_the_producer() -> None:
    source = Source(n=None, delay=0.002)
    stream = ThreadedIterator(source)
    consumer = iter(stream)
    assert next(consumer) == 0
    consumer.close()  # what a `break` or a dropped generator does
    # close() waited for the producer: the source is already closed, nothing runs on.
    assert source.closed.is_set()
    assert stream.stopped
    produced = source.produced
    time.sleep(0.02)
    assert source.produced == produced


def test_breaking_out_of_the_loop_stops_the_producer() -> None:
    source = Source(n=None, delay=0.002)
    for item in ThreadedIterator(source):
        if item == 2:
            break
    assert source.closed.is_set()


# -- under gevent ----------------------------------------------------------------------
GEVENT_SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import json
import time

import gevent

from llmpool.greenbridge import (
    Channel, ChannelClosed, ThreadedIterator, gevent_active, start_os_thread,
)

real_sleep = monkey.get_original("time", "sleep")
ticks = 0


def ticker():
    global ticks
    while True:
        ticks += 1
        gevent.sleep(0.005)


def produce():
    for i in range(5):
        real_sleep(0.04)  # blocks this OS thread only, like a runtime decoding a token
        channel.put(i)
    channel.close()


def source():
    for i in range(3):
        real_sleep(0.04)
        yield i


ticking = gevent.spawn(ticker)
gevent.sleep(0)
channel = Channel()
start_os_thread(produce)
items, ticks_per_wait = [], []
while True:
    before = ticks
    try:
        items.append(channel.get(timeout=5))
    except ChannelClosed:
        break
    ticks_per_wait.append(ticks - before)
channel.dispose()

iter_ticks_before = ticks
iterated = list(ThreadedIterator(source))
iter_ticks = ticks - iter_ticks_before
ticking.kill()
print(json.dumps({
    "gevent_active": gevent_active(),
    "items": items,
    "ticks_per_wait": ticks_per_wait,
    "iterated": iterated,
    "iter_ticks": iter_ticks,
}))
"""


def test_channel_under_gevent_does_not_block_the_hub() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["gevent_active"] is True
    assert result["items"] == [0, 1, 2, 3, 4]
    # Each item takes ~40 ms on the producer's OS thread; the ticker (5 ms) must keep
    # running on the hub while the consumer greenlet waits.
    # A blocked hub gives 0 ticks; under a loaded CPU a wait may see only one.
    assert min(result["ticks_per_wait"]) >= 1, result
    assert result["iterated"] == [0, 1, 2]
    assert result["iter_ticks"] >= 3, result
