"""The gunicorn worker class: gevent for HTTP only, real threads for the scheduler.

gunicorn's stock gevent worker calls `monkey.patch_all()`, which turns `threading`,
`queue` and `subprocess` into greenlet versions: the scheduler's threads would all share
one OS thread, and a runtime blocking in C would freeze every request. This worker
patches what serving HTTP cooperatively needs (sockets, DNS, ssl, time) and nothing
else; llmpool.greenbridge says how greenlets and real threads then meet.

The same patch must run in the gunicorn master before anything imports `ssl`
(conf/gunicorn.conf.py calls `patch_selectively` first): gevent only ever adds patches,
so a fuller patch applied earlier could not be narrowed here.
"""

from __future__ import annotations

import _socket
import ctypes
import logging
from typing import Any

import gevent
from gevent import monkey
from gevent.resolver.thread import Resolver as ThreadResolver
from gunicorn.workers.ggevent import GeventWorker

# Every patch gevent offers, on or off. `queue` must be named: gevent 26 patches it unless
# told not to. `os` off keeps fork and waitpid real (children are reaped by real threads);
# `signal` off keeps gunicorn's own handlers.
PATCHES: dict[str, bool] = {
    "socket": True,
    "dns": True,
    "ssl": True,
    "time": True,
    "thread": False,
    "queue": False,
    "os": False,
    "select": False,
    "subprocess": False,
    "signal": False,
    "sys": False,
    "builtins": False,
}


# glibc's mallopt parameter, and the size from which blocks are mmapped (its default).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def fixed_mmap_threshold() -> None:
    """Make glibc give large freed blocks back to the OS at once.

    By default glibc raises its mmap threshold to the size of the last large block freed
    (up to 32 MiB): after the first 4 MB prompt has come and gone, later ones are carved
    from the heap, whose freed middle is never returned. Forty clients that queued 4 MB
    prompts and hung up left the worker ~100 MB larger for good (bench/hangups.py).
    Setting the threshold pins it (and turns that adjustment off): request bodies and
    prompts above 128 KiB are mmapped and unmapped when freed. Small allocations are
    unaffected. Elsewhere than glibc this does nothing.
    """
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        return
    if not ok:
        logging.getLogger(__name__).warning("mallopt(M_MMAP_THRESHOLD) refused")


class LiteralFirstResolver(ThreadResolver):
    """gevent's default (thread) resolver, except that an address literal is answered at
    once, on the calling greenlet.

    The thread resolver sends every lookup to the hub's threadpool, 127.0.0.1 included:
    two thread switches, about 45 µs of CPU a lookup here (bench/README.md). The pool
    connects to its local children by address, and llama-server closes a streamed
    connection after each answer, so that was every request to it. `AI_NUMERICHOST` makes
    getaddrinfo only parse the host: it never blocks, and a name fails at once with
    EAI_NONAME and goes to the threadpool as before.
    """

    def getaddrinfo(
        self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        try:
            return _socket.getaddrinfo(host, port, family, type, proto, flags | _socket.AI_NUMERICHOST)
        except _socket.gaierror as exc:
            if exc.errno != _socket.EAI_NONAME:
                raise  # a literal that cannot be used as asked (a family mismatch): as is
        return super().getaddrinfo(host, port, family, type, proto, flags)


def patch_selectively() -> None:
    """Apply `PATCHES` (idempotent: a second identical call is a no-op), with
    `LiteralFirstResolver` as the hub's resolver."""
    gevent.config.resolver = LiteralFirstResolver
    monkey.patch_all(**PATCHES)


class SelectiveGeventWorker(GeventWorker):
    """gunicorn's gevent worker with `patch_selectively` instead of `patch_all`, and a
    fixed mmap threshold (`fixed_mmap_threshold`)."""

    def init_process(self) -> None:
        fixed_mmap_threshold()  # before the app and its models allocate anything
        super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: from now on a death (the master's SIGKILL after the graceful timeout)
        is a shutdown, not a crash for the next worker to count (llmpool.crashes)."""
        pool = getattr(getattr(self, "wsgi", None), "extensions", {}).get("llmpool")
        if pool is not None:
            pool.crashes.recorder.stopping()
        super().handle_exit(sig, frame)

    def patch(self) -> None:
        patch_selectively()
        # What the parent class does after patching: listening sockets as gevent sockets.
        from gevent import socket

        sockets: list[Any] = []
        for s in self.sockets:
            sockets.append(socket.socket(s.FAMILY, socket.SOCK_STREAM, fileno=s.sock.detach()))
        self.sockets: list[Any] = sockets
