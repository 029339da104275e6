"""greenbridge on plain threads, and under the worker's selective gevent patch (subprocesses)."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llmpool.greenbridge import (
    Channel,
    ChannelClosed,
    ChannelTimeout,
    Home,
    Latch,
    call_blocking,
    on_hub,
    peer_closed,
    start_thread,
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

    start_thread(produce)
    assert drain(channel) == list(range(200))
    assert producer_ident and producer_ident[0] != threading.get_ident()


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


# -- Latch, Home, peer_closed without gevent ------------------------------------------------
def test_latch_wakes_every_waiting_thread_and_stays_set() -> None:
    latch = Latch()
    woke: list[bool] = []
    waiters = [threading.Thread(target=lambda: woke.append(latch.wait(5))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    assert not latch.wait(0.01)
    threading.Timer(0.02, latch.set).start()
    for waiter in waiters:
        waiter.join(5)
    assert woke == [True, True, True]
    assert latch.is_set() and latch.wait(0)


def test_home_spawn_without_gevent_runs_on_another_thread() -> None:
    assert not on_hub()
    ran: Channel[int] = Channel()
    Home().spawn(lambda: ran.put(threading.get_ident()))
    assert ran.get(timeout=5) != threading.get_ident()


def test_peer_closed_sees_a_hang_up_but_not_an_idle_or_talking_peer() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        assert not peer_closed(ours.fileno())  # idle
        theirs.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request: not a hang-up
        assert not peer_closed(ours.fileno())
        assert ours.recv(100)  # and it is still there to read
        theirs.close()
        assert peer_closed(ours.fileno())


# -- under the worker's selective patch ------------------------------------------------------
# Each script runs in a fresh interpreter: patching is process-wide and cannot be undone.
GEVENT_SCRIPT = r"""
from conf.worker import patch_selectively

patch_selectively()

import json
import threading
import time

import gevent
from gevent import monkey

from llmpool.greenbridge import (
    Channel, ChannelClosed, Home, Latch, call_blocking, on_hub, start_thread,
)

real_sleep = monkey.get_original("time", "sleep")
ticks = 0


def ticker():
    global ticks
    while True:
        ticks += 1
        gevent.sleep(0.005)


def ticks_during(fn):
    before = ticks
    value = fn()
    return ticks - before, value


ticking = gevent.spawn(ticker)
gevent.sleep(0)
result = {"on_hub_main": on_hub(), "threading_patched": monkey.is_module_patched("threading")}

# A real thread is a real OS thread: it can block in C while the hub keeps ticking.
seen = []
start_thread(lambda: seen.append((on_hub(), threading.get_ident())))
gevent.sleep(0.1)
result["on_hub_in_thread"] = seen[0][0]
result["thread_is_other"] = seen[0][1] != threading.get_ident()

channel = Channel()
def produce():
    for i in range(5):
        real_sleep(0.04)  # blocks this OS thread only, like a runtime decoding a token
        channel.put(i)
    channel.close()
start_thread(produce)
items, ticks_per_wait = [], []
while True:
    try:
        n, item = ticks_during(lambda: channel.get(timeout=5))
    except ChannelClosed:
        break
    items.append(item)
    ticks_per_wait.append(n)
result["items"], result["ticks_per_wait"] = items, ticks_per_wait

latch = Latch()
threading.Thread(target=lambda: (real_sleep(0.1), latch.set())).start()
result["latch_ticks"], result["latch_set"] = ticks_during(lambda: latch.wait(5))
result["latch_timeout"] = Latch().wait(0.05)

def slow_answer():
    real_sleep(0.1)
    return 42
result["call_ticks"], result["call_value"] = ticks_during(lambda: call_blocking(slow_answer))

# A real thread hands socket-bound work to the hub: it runs there, as a greenlet.
home = Home()
ran = Channel()
threading.Thread(target=lambda: home.spawn(lambda: ran.put((on_hub(), threading.get_ident())))).start()
where = ran.get(timeout=5)
result["spawned_on_hub"] = where[0] and where[1] == threading.get_ident()

# A hang-up wakes the watcher at once; a pipelined request does not count as one.
import socket as socket_module
from llmpool.greenbridge import watch_hangup

ours, theirs = socket_module.socketpair()
calls = []
stop = watch_hangup(ours.fileno(), lambda: calls.append(time.monotonic()))
gevent.sleep(0.05)
result["hangup_before_close"] = len(calls)
closed_at = time.monotonic()
theirs.close()
gevent.sleep(0.05)
result["hangup_after_close"] = len(calls)
result["hangup_delay_s"] = calls[0] - closed_at if calls else None
stop()
talker, listener = socket_module.socketpair()
talked = []
stop = watch_hangup(talker.fileno(), lambda: talked.append(1))
listener.sendall(b"GET / HTTP/1.1\r\n")
gevent.sleep(0.05)
result["hangup_on_pipelined_data"] = len(talked)
stop()

# 50 greenlets sleeping 0.5 s (patched time.sleep) finish together: time is cooperative.
began = time.monotonic()
gevent.joinall([gevent.spawn(time.sleep, 0.5) for _ in range(50)])
result["fifty_sleeps_s"] = time.monotonic() - began
ticking.kill()
print(json.dumps(result))
"""


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env
    )


def test_greenlets_and_real_threads_under_the_selective_patch() -> None:
    proc = run_script(GEVENT_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["on_hub_main"] is True
    assert result["threading_patched"] is False
    assert result["on_hub_in_thread"] is False
    assert result["thread_is_other"] is True
    assert result["items"] == [0, 1, 2, 3, 4]
    # Each item takes ~40 ms on the producer's OS thread; the ticker (5 ms) must keep
    # running on the hub while the consumer greenlet waits. A blocked hub gives 0 ticks;
    # under a loaded CPU a wait may see only one.
    assert min(result["ticks_per_wait"]) >= 1, result
    assert result["latch_set"] is True and result["latch_ticks"] >= 3, result
    assert result["latch_timeout"] is False
    assert result["call_value"] == 42 and result["call_ticks"] >= 3, result
    assert result["spawned_on_hub"] is True
    assert result["hangup_before_close"] == 0 and result["hangup_after_close"] == 1
    assert result["hangup_delay_s"] < 0.5  # at once, not at a poll or a comment (1 s)
    assert result["hangup_on_pipelined_data"] == 0
    assert result["fifty_sleeps_s"] < 2.5, result


RESOLVER_SCRIPT = r"""
from conf.worker import patch_selectively

patch_selectively()

import json
import socket

import gevent

resolver = gevent.get_hub().resolver
through_threadpool = []


class Counting:
    def __init__(self, pool):
        self.pool = pool

    def apply(self, func, args=(), kwds=None):
        through_threadpool.append(args[0])
        return self.pool.apply(func, args, kwds)


resolver.pool = Counting(resolver.pool)
answers = {
    host: [info[4][0] for info in socket.getaddrinfo(host, 8080, 0, socket.SOCK_STREAM)]
    for host in ("127.0.0.1", "::1", "localhost")
}
try:
    socket.getaddrinfo("::1", 8080, socket.AF_INET)
    mismatch = None
except socket.gaierror as exc:
    mismatch = exc.errno
print(json.dumps({
    "resolver": type(resolver).__name__,
    "answers": answers,
    "through_threadpool": through_threadpool,
    "mismatch": mismatch,
    "expected_mismatch": socket.EAI_ADDRFAMILY,
}))
"""


def test_an_address_literal_is_resolved_on_the_hub_and_a_name_in_the_threadpool() -> None:
    proc = run_script(RESOLVER_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["resolver"] == "LiteralFirstResolver"
    assert result["answers"]["127.0.0.1"] == ["127.0.0.1"]
    assert result["answers"]["::1"] == ["::1"]
    assert "127.0.0.1" in result["answers"]["localhost"] or "::1" in result["answers"]["localhost"]
    assert result["through_threadpool"] == ["localhost"]  # the literals never went there
    assert result["mismatch"] == result["expected_mismatch"]  # refused as getaddrinfo does


FULL_PATCH_SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

from llmpool.greenbridge import check_not_fully_patched

check_not_fully_patched()
"""


def test_a_fully_patched_process_is_refused_with_a_clear_message() -> None:
    proc = run_script(FULL_PATCH_SCRIPT)
    assert proc.returncode != 0
    assert "conf/gunicorn.conf.py" in proc.stderr


CALL_RAISES_SCRIPT = r"""
from conf.worker import patch_selectively

patch_selectively()

from llmpool.errors import ModelLoading
from llmpool.greenbridge import call_blocking, on_hub


def refuse():
    raise ModelLoading("model 'm' is still loading", model="m")


assert on_hub()
try:
    call_blocking(refuse)
except ModelLoading as exc:
    print("raised in the caller:", exc.message)
"""


def test_call_blocking_on_the_hub_raises_in_the_caller_without_printing_a_traceback() -> None:
    proc = run_script(CALL_RAISES_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert "raised in the caller: model 'm' is still loading" in proc.stdout
    assert "Traceback" not in proc.stderr and "failed with" not in proc.stderr, proc.stderr


RELAY_SCRIPT = r"""
from conf.worker import patch_selectively

patch_selectively()

import json
import time

import gevent

from llmpool.executor import Executor
from llmpool.generation import Chunk, GenerationRequest
from llmpool.greenbridge import Channel, ChannelTimeout, on_hub
from llmpool.job import Delta, Done, Job
from llmpool.metrics import JobTimes

assert on_hub()


class Instant:
    # A socket-bound runtime whose socket always has data waiting: it never blocks.
    blocking = False

    def generate(self, request):
        for i in range(300):
            yield Chunk(text=f" t{i}")


now = time.monotonic()
job = Job(model="m", request=GenerationRequest(input="hi"), times=JobTimes(now, now))
seen_at_first = []
bursts = []


def consume():
    while True:
        event = job.events.get(timeout=5)
        if not seen_at_first:
            seen_at_first.append(len(job._text))  # deltas the producer had made by then
        burst = [event, *job.events.take_ready()]
        bursts.append(len(burst))
        if any(isinstance(e, Done) for e in burst):
            return


def produce():
    Executor._drive(job, Instant())
    job.events.put(Done(job.output_text, None, "stop", None))


consumer = gevent.spawn(consume)
gevent.sleep(0)  # the consumer waits first, as a request's greenlet does
producer = gevent.spawn(produce)
gevent.joinall([consumer, producer], timeout=10)

quiet = Channel()
began = time.monotonic()
try:
    quiet.get(timeout=0.05)
    timed_out = False
except ChannelTimeout:
    timed_out = True
print(json.dumps({
    "seen_at_first": seen_at_first,
    "bursts": bursts,
    "text": job.output_text == "".join(f" t{i}" for i in range(300)),
    "timed_out": timed_out,
    "waited_s": time.monotonic() - began,
}))
"""


def test_a_relay_greenlet_hands_over_its_first_delta_at_once_and_the_rest_in_bursts() -> None:
    # An upstream whose data is already waiting never blocks the relaying greenlet: it
    # must step aside after its first delta (the client gets the first token now, not
    # after the whole read buffer) and every 64 after, and its consumer takes what is
    # ready in one go (one socket write per burst, not per token).
    proc = run_script(RELAY_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["seen_at_first"] == [1], result
    assert sum(result["bursts"]) == 301 and result["text"] is True, result
    assert 4 <= len(result["bursts"]) <= 8, result  # 1, then about 64 at a time, then the rest
    assert result["timed_out"] is True and 0.04 <= result["waited_s"] < 1.0, result


def test_take_ready_returns_what_was_put_without_waiting() -> None:
    channel: Channel[int] = Channel()
    assert channel.take_ready() == []
    for i in range(3):
        channel.put(i)
    assert channel.get() == 0
    assert channel.take_ready() == [1, 2]
    assert channel.take_ready() == []
