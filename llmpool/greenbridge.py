"""The only module that knows about gevent.

Under gunicorn's gevent worker, `threading` and `queue` are monkey-patched: every
"thread" the pool starts is a greenlet on one OS thread. A runtime call that blocks in C
(llama.cpp decode, CTranslate2, torch) would freeze that OS thread and with it every
request. So blocking runtime work runs on *real* OS threads, and results travel back
through a `Channel` whose consumer side wakes the waiting greenlet through the hub's
thread-safe async watcher.

Without gevent (Flask test client, `flask run`, unit tests) the same API runs on plain
threads: `call_blocking` is a direct call and `Channel` waits on a real `threading.Event`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def gevent_active() -> bool:
    """True when `threading` has been monkey-patched by gevent in this process."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("threading"))


def _original(module: str, name: str) -> Any:
    if gevent_active():
        from gevent import monkey

        return monkey.get_original(module, name)
    return getattr(__import__(module), name)


_MAIN_THREAD_IDENT = _original("_thread", "get_ident")()


def on_main_os_thread() -> bool:
    """True on the process's main OS thread (under gevent: on the hub's thread)."""
    return bool(_original("_thread", "get_ident")() == _MAIN_THREAD_IDENT)


def spawn(fn: Callable[..., None], *args: Any) -> None:
    """Run `fn(*args)` concurrently on a cooperative thread: a greenlet under gevent (a
    patched `threading.Thread` costs several times more per start, which shows on an
    instant upstream), a daemon thread otherwise. `fn` must catch its own exceptions.
    """
    if gevent_active():
        import gevent

        gevent.spawn(fn, *args)
    else:
        threading.Thread(target=fn, args=args, daemon=True).start()


def start_os_thread(fn: Callable[[], None]) -> None:
    """Run `fn` on a new real OS thread, never a greenlet.

    `fn` must catch its own exceptions and must touch only thread-safe objects
    (a `Channel`'s producer side), never gevent primitives.
    """
    _original("_thread", "start_new_thread")(fn, ())


def os_queue() -> Any:
    """A `queue.SimpleQueue` whose `get` blocks the real OS thread, never a greenlet.

    For hand-offs between two non-hub OS threads, e.g. a runtime's C++ callback thread
    feeding the adapter's producer thread: gevent's patched queue is bound to one hub
    and would neither wake across threads nor stream (ctranslate2's own
    `generate_tokens` delivers every token at the end under gevent for that reason).
    """
    return _original("queue", "SimpleQueue")()


def call_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn` so that it may block in C without stalling other requests.

    Under gevent it runs on the hub's thread pool and the calling greenlet waits
    cooperatively; otherwise it is a plain call on the current thread. Exceptions
    propagate to the caller either way.
    """
    if gevent_active():
        import gevent

        return gevent.get_hub().threadpool.apply(fn, args, kwargs)
    return fn(*args, **kwargs)


class _ThreadWaiter:
    def __init__(self) -> None:
        self._event = threading.Event()  # only used when threading is not patched

    def notify(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def dispose(self) -> None:
        pass


class _GeventWaiter:
    """Wakes a greenlet from any OS thread.

    The async watcher is started once, at creation, in the consumer's hub: libev resets a
    watcher's pending flag on start, so a watcher started only while waiting could lose a
    send that raced with the start.
    """

    def __init__(self) -> None:
        import gevent
        import gevent.event

        self._event = gevent.event.Event()
        self._async = gevent.get_hub().loop.async_()
        self._async.start(self._event.set)

    def notify(self) -> None:
        self._async.send()

    def wait(self, timeout: float | None) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def dispose(self) -> None:
        self._async.stop()
        self._async.close()


class ChannelClosed(Exception):
    """The producer closed the channel and every item has been taken."""


class ChannelTimeout(Exception):
    """No item arrived within the timeout."""


class Channel(Generic[T]):
    """Many producers on any OS thread, one consumer (a greenlet or a thread).

    Create it on the consumer's side. `put`/`close` never block; `get` blocks only the
    consumer and, under gevent, only its greenlet.
    """

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._closed = False
        self._waiter: _ThreadWaiter | _GeventWaiter = _GeventWaiter() if gevent_active() else _ThreadWaiter()

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

    def dispose(self) -> None:
        """Release the wake-up watcher; call once the consumer is done."""
        self._waiter.dispose()


_ITEM, _ERROR = "item", "error"


class ThreadedIterator(Generic[T]):
    """Drives a blocking iterator on its own OS thread and yields its items here.

    `stop()` asks the producer to stop after the item it is computing (for a runtime:
    at the next token); the producer then closes the source iterator so the runtime
    frees its resources. Iterating to the end always waits for the producer thread to
    finish, so the runtime is idle once iteration is over.
    """

    def __init__(self, make_source: Callable[[], Iterator[T]]) -> None:
        self._make_source = make_source
        self._channel: Channel[tuple[str, Any]] = Channel()
        self._stop = False
        start_os_thread(self._produce)

    def stop(self) -> None:
        self._stop = True  # a plain attribute: read by the producer between items

    @property
    def stopped(self) -> bool:
        return self._stop

    def _produce(self) -> None:
        source: Iterator[T] | None = None
        try:
            source = self._make_source()
            for item in source:
                if self._stop:
                    break
                self._channel.put((_ITEM, item))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._channel.put((_ERROR, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException as exc:
                    self._channel.put((_ERROR, exc))
            self._channel.close()

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                try:
                    kind, value = self._channel.get()
                except ChannelClosed:
                    return
                if kind == _ERROR:
                    self._drain()
                    raise value
                if not self._stop:
                    yield value
        finally:
            # Consumer abandoned us early (generator closed): stop the producer and wait
            # for it, so the runtime is never driven by two jobs at once.
            self._stop = True
            self._drain()
            self._channel.dispose()

    def _drain(self) -> None:
        while True:
            try:
                self._channel.get()
            except ChannelClosed:
                return


class DirectIterator(Generic[T]):
    """Drives an I/O-bound iterator on the calling greenlet or thread.

    For adapters that only wait on sockets (child-process servers, remote APIs): under
    gevent their sockets are cooperative, so no OS thread is needed, and gevent sockets
    must not be used from a foreign OS thread anyway. Same `stop()` contract as
    `ThreadedIterator`: the source is closed at the next item.
    """

    def __init__(self, make_source: Callable[[], Iterator[T]]) -> None:
        self._make_source = make_source
        self._stop = False

    def stop(self) -> None:
        self._stop = True

    @property
    def stopped(self) -> bool:
        return self._stop

    def __iter__(self) -> Iterator[T]:
        source = self._make_source()
        try:
            for item in source:
                if self._stop:
                    return
                yield item
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()


def drive(make_source: Callable[[], Iterator[T]], blocking: bool) -> ThreadedIterator[T] | DirectIterator[T]:
    """The right driver for a runtime's iterator: an OS thread when it blocks in C."""
    return ThreadedIterator(make_source) if blocking else DirectIterator(make_source)


def call(fn: Callable[[], T], blocking: bool) -> T:
    """Run `fn` off the hub when it blocks in C, else right here (cooperatively)."""
    return call_blocking(fn) if blocking else fn()
