"""Supervision of runtime child processes (llama-server, vllm serve).

Guarantees, in llama-swap's manner:
- each child starts in its own process group (session), so stopping it reaches every
  process it spawned; on Linux it also gets PDEATHSIG=SIGKILL, so a pool killed with
  SIGKILL cannot orphan it;
- its stdout/stderr go to a ring buffer (last `log_lines` lines) read by a cooperative
  reader, so logs survive the child and are served to operators; every line gets a
  number from one sequence shared by all children, so a follower asks for "the lines
  after N" (`lines_since`, `next_line_seq`) across replicas and reloads;
- readiness polling gives up as soon as the child exits and reports its last lines;
- stop is SIGTERM to the group, SIGKILL to the group after `stop_timeout_s`, then reap;
- an exit nobody asked for is reported once through `on_exit`.

Threading: `subprocess` is the standard library's (the worker does not patch it), so
starting, reading, watching and stopping a child wait on real primitives and run on real
threads: `start`, `wait_ready` and `stop` on the load/unload thread, the reader and the
watcher on threads of their own. Only `wait_exit` may be called on the hub (a `Latch`).
"""

from __future__ import annotations

import collections
import ctypes
import enum
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmpool.faults import describe_exit
from llmpool.greenbridge import Latch, assert_may_block, start_thread
from llmpool.secrets import redact_argv, scrub

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_ADDRESS_IN_USE = ("address already in use", "couldn't bind", "failed to bind", "errno 98")


class _LineSequence:
    """Numbers for captured lines, one sequence for every child of the process.

    A number is taken and its line stored under one lock, and the counter moves past it
    only after the line is stored: so every number below `next()` is already in its
    child's buffer, and a reader that asks for [since, next()) never misses a line that
    is still buffered nor sees one twice. `next()` reads an int without the lock, so a
    greenlet may call it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0

    def next(self) -> int:
        return self._next

    def append(self, buffer: collections.deque[tuple[int, str]], line: str) -> None:
        with self._lock:
            buffer.append((self._next, line))
            self._next += 1


_lines = _LineSequence()


def next_line_seq() -> int:
    """The number the next captured line (of any child) will get."""
    return _lines.next()


class ProcessState(enum.StrEnum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    EXITED = "exited"  # died without being asked to
    STOPPING = "stopping"
    STOPPED = "stopped"


_P = ProcessState
# The whole life of a child. `ChildProcess._move` is the only writer of its state and
# refuses any edge not listed here.
PROCESS_TRANSITIONS: dict[ProcessState, frozenset[ProcessState]] = {
    _P.NEW: frozenset({_P.STARTING}),
    # Ready (the probe answered), dead before that (or exec failed), or asked to stop.
    _P.STARTING: frozenset({_P.READY, _P.EXITED, _P.STOPPING}),
    _P.READY: frozenset({_P.EXITED, _P.STOPPING}),
    # A stop after an unasked-for exit still reaps the group (grandchildren may linger).
    _P.EXITED: frozenset({_P.STOPPING}),
    _P.STOPPING: frozenset({_P.STOPPED}),
    _P.STOPPED: frozenset(),
}


class ChildFailed(Exception):
    """The child could not be started or did not become ready; `tail` holds its last lines."""

    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail

    def describe(self, lines: int = 20) -> str:
        shown = "\n".join(self.tail[-lines:])
        return f"{self}\n--- last output ---\n{shown}" if shown else str(self)


@dataclass
class ChildSpec:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    library_path: Sequence[str] = ()
    log_lines: int = 2000
    stop_timeout_s: float = 10.0
    # Values masked in the child's captured output (an API key it echoes, for instance):
    # that output is shown by the admin API and quoted in load errors.
    secrets: Sequence[str] = ()

    def environment(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        if self.library_path:
            parts = [*self.library_path, env.get("LD_LIBRARY_PATH", "")]
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in parts if p)
        return env


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the process group and stop() still apply


class _Spawner:
    """Forks every child from one thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process:
    children forked from a load thread would be killed when that thread finishes. One
    long-lived spawner thread ties them to the process instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[dict[str, Any], queue.SimpleQueue[Any]]] = queue.SimpleQueue()
        self._pid: int | None = None  # the process whose thread serves (a fork needs its own)

    def popen(self, **kwargs: Any) -> subprocess.Popen[bytes]:
        assert_may_block("starting a child process")
        with self._lock:
            if self._pid != os.getpid():
                self._requests = queue.SimpleQueue()
                threading.Thread(
                    target=self._serve, args=(self._requests,), name="spawner", daemon=True
                ).start()
                self._pid = os.getpid()
            requests = self._requests
        reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
        requests.put((kwargs, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    @staticmethod
    def _serve(requests: queue.SimpleQueue[tuple[dict[str, Any], queue.SimpleQueue[Any]]]) -> None:
        while True:
            kwargs, reply = requests.get()
            try:
                reply.put((True, subprocess.Popen(preexec_fn=_die_with_parent, **kwargs)))  # noqa: PLW1509
            except BaseException as exc:  # handed to the caller, which re-raises it
                reply.put((False, exc))


_spawner = _Spawner()

# Told of every child group this process starts and stops (llmpool.crashes.Recorder keeps
# them in the worker's record, so a worker that dies cannot leave them behind).
_child_watchers: list[tuple[Callable[[int], None], Callable[[int], None]]] = []


def watch_children(started: Callable[[int], None], stopped: Callable[[int], None]) -> None:
    _child_watchers.append((started, stopped))


def _tell_watchers(pgid: int, started: bool) -> None:
    for on_start, on_stop in list(_child_watchers):
        try:
            (on_start if started else on_stop)(pgid)
        except OSError:
            log.exception("recording child group %d failed", pgid)


def living_group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not zombies (Linux /proc; [] elsewhere)."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we looked
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry))
    return members


def pick_port() -> int:
    """A port that is free right now. Another process may take it before the child
    binds, so callers retry with a new port when the child reports the address in use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChildProcess:
    def __init__(
        self, label: str, spec: ChildSpec, on_exit: Callable[[int, list[str]], None] | None = None
    ) -> None:
        self.label = label
        self.spec = spec
        self.on_exit = on_exit
        self._state = ProcessState.NEW
        self._state_lock = threading.Lock()
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: collections.deque[tuple[int, str]] = collections.deque(maxlen=spec.log_lines)
        self._reader: threading.Thread | None = None
        self._exited = Latch()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def state(self) -> ProcessState:
        return self._state

    def _move(self, to: ProcessState) -> bool:
        """Take the edge to `to` if the table allows it from the current state: True if
        taken. Compare and set under one lock, so the watcher thread (EXITED) and the
        caller's thread (READY, STOPPING) never overwrite each other's news."""
        with self._state_lock:
            if to not in PROCESS_TRANSITIONS[self._state]:
                return False
            self._state = to
            return True

    def tail(self, n: int | None = None) -> list[str]:
        # list() copies the deque in one step; iterating it while the reader appends
        # would raise "deque mutated during iteration".
        lines = [line for _, line in list(self._log)]
        return lines if n is None else lines[-n:] if n > 0 else []

    def lines_since(self, n: int, since: int = 0, before: int | None = None) -> list[str]:
        """The last `n` buffered lines numbered `since` <= number < `before` (a reader of
        several children takes `before` from `next_line_seq()` once, first). Lines pushed
        out of the ring buffer are gone; the caller sees the oldest that remain."""
        end = _lines.next() if before is None else before
        lines = [line for seq, line in list(self._log) if since <= seq < end]
        return lines[-n:] if n > 0 else []

    def start(self) -> None:
        if not self._move(ProcessState.STARTING):
            raise RuntimeError(f"{self.label}: start() on a child that is {self._state}")  # a bug
        log.info("%s: starting %s", self.label, " ".join(redact_argv(self.spec.argv)))
        try:
            self._proc = _spawner.popen(
                args=self.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.spec.environment(),
                start_new_session=True,
            )
        except OSError as exc:
            self._move(ProcessState.EXITED)
            raise ChildFailed(f"cannot start {self.spec.argv[0]}: {exc}", []) from exc
        _tell_watchers(self._proc.pid, started=True)  # its own session: pid == group id
        self._reader = start_thread(self._read_output, name=f"log-{self.label}")
        start_thread(self._watch, name=f"watch-{self.label}")

    def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with self._proc.stdout:  # closed at EOF: the child is gone or closed its output
            for raw in self._proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                _lines.append(self._log, scrub(line, self.spec.secrets) if self.spec.secrets else line)

    def _watch(self) -> None:
        assert self._proc is not None
        returncode = self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)  # let the last lines land before reporting
        self.returncode = returncode
        self._exited.set()
        if self._move(ProcessState.EXITED):  # nobody asked it to stop
            log.warning("%s exited unexpectedly with %s", self.label, describe_exit(returncode))
            if self.on_exit is not None:
                self.on_exit(returncode, self.tail())

    def wait_exit(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the child to be gone (and its last lines read).
        Cooperative on the hub."""
        return self._exited.wait(timeout_s)

    def alive(self) -> bool:
        return self._proc is not None and self.returncode is None and self._proc.poll() is None

    def address_in_use(self) -> bool:
        text = "\n".join(self.tail(50)).lower()
        return any(marker in text for marker in _ADDRESS_IN_USE)

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> None:
        """Poll `probe` until it returns True; fail at once if the child exits."""
        assert_may_block("ChildProcess.wait_ready")
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive():
                self._exited.wait(2)  # the watcher fills in returncode and the last lines
                raise ChildFailed(
                    f"{self.label} exited with {describe_exit(self.returncode)} before it was ready",
                    self.tail(),
                )
            if probe() and self._move(ProcessState.READY):
                return
            if time.monotonic() >= deadline:
                raise ChildFailed(f"{self.label} not ready after {timeout_s:g}s", self.tail())
            time.sleep(interval_s)

    def terminate(self) -> None:
        """SIGTERM the group and return at once (any thread, never waits): a `wait_ready`
        in progress then fails at its next poll, and its caller's `stop` reaps."""
        proc = self._proc
        if proc is not None and self._state in (ProcessState.STARTING, ProcessState.READY):
            self._signal_group(proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after stop_timeout_s, reap. Idempotent."""
        assert_may_block("ChildProcess.stop")
        proc = self._proc
        if proc is None or self._state is ProcessState.STOPPED:
            return
        # A second stop while one is under way repeats the signals and waits; only one
        # of them takes each edge.
        self._move(ProcessState.STOPPING)
        self._signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.spec.stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %gs: SIGKILL", self.label, self.spec.stop_timeout_s)
        # SIGKILL the group even if the leader exited: a grandchild may linger in it.
        self._signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        self._exited.wait(5)
        # Killed grandchildren (vLLM's engine and worker) die a moment later: wait, so
        # that when stop() returns no process of the group holds a port or memory.
        deadline = time.monotonic() + 5
        while living_group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._move(ProcessState.STOPPED)
        _tell_watchers(proc.pid, started=False)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # the group is already gone
