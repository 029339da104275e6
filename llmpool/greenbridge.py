"""The only module that knows about gevent: how greenlets and real threads meet.

Under gunicorn the pool runs in one gevent worker that patches sockets, DNS, ssl and
time only (conf/worker.py). `threading`, `queue`, `subprocess`, `os` and `select` stay
the standard library's: the scheduler's dispatcher and replica threads are real OS
threads, and the runtimes block in C there. Greenlets serve HTTP on the hub, which runs
on the worker's main thread. One rule makes the two worlds coexist:

    A greenlet never waits on a real primitive.

A greenlet that waits on a real `Queue.get`, `Condition.wait`, `Event.wait`, `join` or
`Popen.wait` freezes the hub and with it every request. So:

- greenlet -> thread: non-blocking puts on real queues (`queue.Queue.put_nowait`);
  short, bounded critical sections under real locks are fine, waits are not;
- thread -> greenlet: a `Channel` or a `Latch`, whose hub-side waiter is woken through
  the hub loop's thread-safe callback;
- a greenlet that needs blocking work done: `call_blocking` (the hub's threadpool, whose
  threads are real; the greenlet waits cooperatively);
- a real thread that needs socket-bound work done on the hub (a gevent socket belongs to
  the hub of the thread that made it): `Home.spawn`. Pooled HTTP connections made on a
  real thread must never be reused on the hub, or the reverse.

Without gevent (Flask test client, `flask run`, unit tests) the same API runs on plain
threads: `call_blocking` is a direct call, waits use real primitives, `Home.spawn` starts
a daemon thread.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def gevent_serving() -> bool:
    """True when this process serves HTTP on a gevent hub (sockets patched by gevent)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def check_not_fully_patched() -> None:
    """Refuse to run when `threading` is patched: the scheduler's threads would be
    greenlets and a runtime blocking in C would freeze every request."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        raise RuntimeError(
            "llm-pool needs real threads: run it with conf/gunicorn.conf.py, whose worker "
            "patches only sockets, DNS, ssl and time (gevent's monkey.patch_all() patches threading)"
        )


def on_hub() -> bool:
    """True where waiting must be cooperative: the hub's thread of a gevent worker.

    The worker's hub runs on the main thread; every other thread is a real thread that
    may block (gevent may give such a thread a hub of its own, e.g. for a patched
    `time.sleep`, but nothing else runs there).
    """
    return gevent_serving() and threading.current_thread() is threading.main_thread()


def assert_may_block(what: str) -> None:
    """Guard for functions that wait on real primitives: never on the hub."""
    if on_hub():
        raise RuntimeError(f"{what} waits on a real primitive and must not run on the gevent hub")


# -- waking one waiter from any thread ---------------------------------------------------
class _Waiter:
    """One consumer's wake-up: `notify` from any thread, `wait` by the consumer only.

    On the hub the consumer parks on a gevent `Waiter` that the hub loop switches back
    to, through its thread-safe callback queue (no watcher per waiter, nothing to
    dispose): the wake-up's callback resumes the consumer itself, ahead of callbacks
    queued after it, such as a producing greenlet's `yield_to_hub`. Wake-ups are
    coalesced: a producer schedules a callback only when none is pending. Elsewhere it is
    a real `threading.Event`.
    """

    __slots__ = ("_event", "_loop", "_pending", "_parked", "_woken", "_hub_thread")

    def __init__(self) -> None:
        self._loop: Any = None
        self._pending = False
        if on_hub():
            import gevent

            self._loop = gevent.get_hub().loop
            self._hub_thread = threading.get_ident()
            self._parked: Any = None  # the consumer's gevent Waiter while it waits
            self._woken = False  # a wake-up that came while nobody waited
        else:
            self._event = threading.Event()

    @property
    def cooperative(self) -> bool:
        return self._loop is not None

    def notify(self) -> None:
        if self._loop is None:
            self._event.set()
        elif not self._pending:
            # A stale True only skips a callback that is already queued and will still
            # wake the consumer after this producer's item was appended (GIL ordering).
            self._pending = True
            if threading.get_ident() == self._hub_thread:
                self._loop.run_callback(self._wake)  # a greenlet producing: no wake-up write
            else:
                self._loop.run_callback_threadsafe(self._wake)

    def _wake(self) -> None:  # on the hub
        self._pending = False
        parked, self._parked = self._parked, None
        if parked is None:
            self._woken = True
        else:
            parked.switch(None)

    def wait(self, timeout: float | None) -> None:
        """Until notified or `timeout` passes; may return early (callers re-check)."""
        if self._loop is None:
            self._event.wait(timeout)
            self._event.clear()
            return
        if self._woken:
            self._woken = False
            return
        from gevent.hub import Waiter

        parked = self._parked = Waiter()
        timer = None
        if timeout is not None:
            timer = self._loop.timer(max(timeout, 0.0))
            timer.start(parked.switch, None)
        try:
            parked.get()
        finally:
            self._parked = None
            if timer is not None:
                timer.close()


class ChannelClosed(Exception):
    """The producer closed the channel and every item has been taken."""


class ChannelTimeout(Exception):
    """No item arrived within the timeout."""


class Channel(Generic[T]):
    """Many producers on any thread, one consumer (a greenlet or a thread).

    Create it where the consumer lives: that fixes how the consumer waits. `put` and
    `close` never block; `get` blocks only the consumer and, on the hub, only its greenlet.
    """

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._closed = False
        self._waiter = _Waiter()

    def put(self, item: T) -> None:
        self._items.append(item)  # deque.append is atomic under the GIL
        self._waiter.notify()

    def close(self) -> None:
        self._closed = True
        self._waiter.notify()

    def get(self, timeout: float | None = None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Read `closed` before looking at the items: producers put before they close,
            # so once closed is seen, every item is already in the deque. Checking in the
            # other order could miss an item put (and the channel closed) in between.
            closed = self._closed
            if self._items:
                return self._items.popleft()
            if closed:
                raise ChannelClosed()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ChannelTimeout()
            self._waiter.wait(remaining)

    def take_ready(self) -> list[T]:
        """Every item already put, without waiting (empty if none): a consumer that
        handles a burst at once (one socket write for many tokens) takes the rest of it
        after a `get`."""
        items, taken = self._items, []
        while items:
            taken.append(items.popleft())
        return taken


class Latch:
    """A one-way flag set from any thread, waited on by any number of greenlets and threads.

    Real threads wait on a real Event; hub greenlets each register a wake-up that the
    setter runs, so neither side ever waits on the other's primitive.
    """

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._lock = threading.Lock()  # guards _waiters against a concurrent set()
        self._waiters: list[_Waiter] = []

    def is_set(self) -> bool:
        return self._flag.is_set()

    def set(self) -> None:
        with self._lock:
            self._flag.set()
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.notify()

    def wait(self, timeout: float | None = None) -> bool:
        if not on_hub():
            return self._flag.wait(timeout)
        waiter = _Waiter()
        with self._lock:
            if self._flag.is_set():
                return True
            self._waiters.append(waiter)
        try:
            waiter.wait(timeout)
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self._flag.is_set()


# -- running work where it belongs ----------------------------------------------------------
def start_thread(fn: Callable[..., None], *args: Any, name: str | None = None) -> threading.Thread:
    """Run `fn(*args)` on a new real daemon thread; `fn` must catch its own exceptions.

    If `fn` uses a patched `time.sleep` or a gevent socket, gevent gives the thread a hub
    of its own; it is not destroyed here, since sockets made there may outlive the thread
    (vLLM keeps some) and would fail to close on a destroyed hub; it goes with its last
    reference."""
    thread = threading.Thread(target=fn, args=args, name=name, daemon=True)
    thread.start()
    return thread


def yield_to_hub() -> None:
    """On the hub, let every greenlet that is ready run before going on; elsewhere nothing.

    For a greenlet that produces from a socket: while data is waiting its reads never
    block, so without this it would work through a whole read buffer (hundreds of
    tokens from a fast upstream) before its consumer wrote the first of them."""
    if on_hub():
        import gevent

        gevent.sleep(0)


def call_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn` so that it may block (in C, or on real primitives) without stalling
    other requests.

    On the hub it runs on the hub's threadpool (real threads; gevent destroys any hub a
    task made there) while the calling greenlet waits cooperatively; elsewhere it is a
    plain call on the current thread. Exceptions propagate to the caller either way. For
    loads, unloads and shutdown, never per token.
    """
    if not on_hub():
        return fn(*args, **kwargs)
    import gevent

    def outcome() -> tuple[bool, Any]:
        # An exception comes back as a value and is raised here, in the caller: gevent's
        # threadpool would print the traceback of every one it passes on, expected ones
        # (a 409 for a model that is loading) included.
        try:
            return True, fn(*args, **kwargs)
        except Exception as exc:
            return False, exc

    ok, value = gevent.get_hub().threadpool.apply(outcome)
    if not ok:
        raise value
    return value


class Home:
    """Where a consumer lives: the hub (with gevent) or plain threads (without).

    Captured where a job is created, on the request's greenlet; a real thread later uses
    it to run socket-bound work there (`spawn`), because a gevent socket belongs to the
    hub of the thread that made it and the hub must do that I/O.
    """

    __slots__ = ("_loop", "_thread")

    def __init__(self) -> None:
        self._loop: Any = None
        if on_hub():
            import gevent

            self._loop = gevent.get_hub().loop
            self._thread = threading.get_ident()

    def spawn(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` as a greenlet on this hub, from any thread (a daemon thread
        without gevent). `fn` must catch its own exceptions."""
        if self._loop is None:
            start_thread(fn, *args)
            return
        import gevent

        if threading.get_ident() == self._thread:
            gevent.spawn(fn, *args)  # a greenlet of this hub: no wake-up to send
        else:
            self._loop.run_callback_threadsafe(gevent.spawn, fn, *args)


def watch_hangup(fileno: int | None, on_hangup: Callable[[], None]) -> Callable[[], None]:
    """Call `on_hangup()` on the hub as soon as the client on socket `fileno` hangs up;
    returns the function that stops watching (call it once, always).

    For a request whose body has been read: the socket then turns readable only when the
    client closes it, or sends a pipelined next request, which is left unread (the watch
    just ends). A read watcher on the hub, not a poll loop: nothing runs while nothing
    happens. Without a socket (`fileno` None: not under gunicorn) or without gevent: a
    no-op.
    """
    if fileno is None or not on_hub():
        return lambda: None
    import gevent

    watcher = gevent.get_hub().loop.io(fileno, 1)  # 1: readable

    def readable() -> None:
        watcher.stop()
        if peer_closed(fileno):
            on_hangup()

    watcher.start(readable)

    def stop() -> None:
        watcher.stop()
        watcher.close()

    return stop


def peer_closed(fileno: int) -> bool:
    """True when the client on socket `fileno` has closed (or broken) the connection.

    A zero-timeout poll for the peer's hang-up, never a wait and never a read: a
    pipelined next request stays in the socket for the server to read.
    """
    import select

    hangup = getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR | select.POLLNVAL
    poller = select.poll()
    poller.register(fileno, hangup)
    return any(revents & hangup for _, revents in poller.poll(0))
