"""A worker killed inside native code: written down before it dies, explained by the next.

A fault in C inside an in-process runtime (SIGSEGV, SIGILL, SIGBUS, an abort) kills the
one worker, and gunicorn starts another, which would load the same model and die the same
way. So:

- `Recorder` (one per worker process, armed by the gunicorn app) keeps a small file,
  `<state_dir>/workers/<pid>.json`, saying which models the process is inside native code
  for (loading or generating) and which child process groups it started. Each change is
  one `pwrite` of the whole record padded to the file's length, so a death at any moment
  leaves the last complete record. Python's `faulthandler` writes the fatal signal and
  every thread's stack to `<pid>.fault` before the process dies of it.
- `CrashWatch.recover`, in the next worker, reads the records of processes that are gone:
  it kills what is left of their child process groups (they hold memory), adds a crash
  per model that was being worked on to `<state_dir>/worker-crashes.json`, and
  quarantines a model after `QUARANTINE_AFTER` crashes within `WINDOW_S`. A quarantined
  model is not loaded at start or on demand until an admin load lifts the quarantine.

A record marked `stopping` (the worker was asked to exit) is not a crash. Files are only
ever written on real threads or in a signal handler of the main thread, never on the hub
for longer than a write.
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from llmpool.faults import FAULTHANDLER_NAMES, describe_signal

log = logging.getLogger(__name__)

WINDOW_S = 600.0
QUARANTINE_AFTER = 2
HISTORY_FILE = "worker-crashes.json"
WORKERS_DIR = "workers"
KEEP = 200  # crashes kept in the history file (the newest)


# -- processes ----------------------------------------------------------------------------
def start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot; /proc), to tell it from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def alive(pid: int, ticks: int | None) -> bool:
    now = start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


def group_members(pgid: int) -> list[int]:
    from llmpool.supervisor import living_group_members

    return living_group_members(pgid)


def kill_group(pgid: int, ticks: int | None) -> bool:
    """SIGKILL what is left of a dead worker's child group; False if nothing was left.

    The group's leader may be gone with members left (vLLM's engine outliving `vllm serve`);
    a pid that is a live group's id cannot be handed to a new process, so the members are
    ours. A live leader must be the same process as recorded (else the pid was reused)."""
    leader = start_ticks(pgid)
    if leader is not None and ticks is not None and leader != ticks:
        return False
    if not group_members(pgid):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return True


# -- the record a worker keeps ----------------------------------------------------------
class Recorder:
    """This process's black box. Disarmed (every method a no-op) until `arm`. Thread-safe."""

    def __init__(self, state_dir: str | None) -> None:
        self.directory = Path(state_dir) / WORKERS_DIR if state_dir else None
        self.pid = os.getpid()
        # Re-entrant: `stopping` also runs in gunicorn's SIGTERM handler on the main thread.
        self._lock = threading.RLock()
        self._fd: int | None = None
        self._ticks: int | None = None
        self._fault_file: IO[str] | None = None
        self._size = 0
        self._tokens = itertools.count()
        self._activities: dict[int, dict[str, Any]] = {}
        self._children: dict[int, int | None] = {}
        self._state = "serving"

    @property
    def armed(self) -> bool:
        return self._fd is not None

    def arm(self) -> None:
        """Start recording for this process (the worker, once, before any model loads)."""
        if self.directory is None or self.armed:
            return
        self.pid = os.getpid()
        self._ticks = start_ticks(self.pid)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fault_file = open(self.directory / f"{self.pid}.fault", "w")  # noqa: SIM115 (kept open)
        # The handler writes the signal and every thread's stack, then lets the signal kill us.
        faulthandler.enable(file=self._fault_file, all_threads=True)
        self._fd = os.open(self.directory / f"{self.pid}.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._write()
        from llmpool.supervisor import watch_children

        watch_children(self.child_started, self.child_stopped)

    def disarm(self) -> None:
        """A clean exit: nothing to explain, so the files go."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None or self.directory is None:
                return
            os.close(fd)
            faulthandler.disable()
            if self._fault_file is not None:
                self._fault_file.close()
            for suffix in (".json", ".fault"):
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / f"{self.pid}{suffix}")

    def _write(self) -> None:
        """One pwrite of the whole record, padded over the previous one (call with the lock
        held, or before other threads can call in)."""
        if self._fd is None:
            return
        record = {
            "pid": self.pid,
            "start_ticks": self._ticks,
            "state": self._state,
            "activities": list(self._activities.values()),
            "children": [{"pgid": pgid, "start_ticks": t} for pgid, t in self._children.items()],
        }
        data = json.dumps(record).encode()
        self._size = max(self._size, len(data))
        os.pwrite(self._fd, data.ljust(self._size), 0)

    @contextlib.contextmanager
    def working(self, model: str, activity: str) -> Iterator[None]:
        """Around a call into native code for `model` ("loading", "generating")."""
        if self._fd is None:
            yield
            return
        token = next(self._tokens)
        with self._lock:
            self._activities[token] = {"model": model, "activity": activity, "since": round(time.time(), 3)}
            self._write()
        try:
            yield
        finally:
            with self._lock:
                self._activities.pop(token, None)
                self._write()

    def child_started(self, pgid: int) -> None:
        with self._lock:
            if self._fd is not None:
                self._children[pgid] = start_ticks(pgid)
                self._write()

    def child_stopped(self, pgid: int) -> None:
        with self._lock:
            if pgid in self._children:
                del self._children[pgid]
                self._write()

    def stopping(self) -> None:
        """The worker was asked to exit: a death from here on is not a crash."""
        with self._lock:
            self._state = "stopping"
            self._write()


# -- what the next worker makes of it ----------------------------------------------------
@dataclass(frozen=True)
class Crash:
    model: str
    signal: str | None  # "SIGSEGV"; None when no fault was reported (SIGKILL, out of memory)
    activity: str  # "loading" | "generating"
    at: float  # unix time of the dead worker's last record
    pid: int

    def cause(self) -> str:
        if self.signal is None:
            return "was killed without a fault report (SIGKILL: most often out of memory)"
        return f"died of {self.signal}"

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "meaning": describe_signal(self.signal) if self.signal else None}


def read_fault(path: Path) -> tuple[str | None, str]:
    """The signal faulthandler named in `path`, and its text ("" if it wrote nothing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None, ""
    for line in text.splitlines():
        if line.startswith("Fatal Python error: "):
            return FAULTHANDLER_NAMES.get(line.removeprefix("Fatal Python error: ").strip()), text
    return None, text


def reap_orphans(state_dir: str | None, pid: int) -> list[int]:
    """Kill the child groups left by worker `pid` (gunicorn's master calls this as soon as
    the worker is gone; `recover` does it again in the next worker). The groups killed."""
    if not state_dir:
        return []
    try:
        record = json.loads((Path(state_dir) / WORKERS_DIR / f"{pid}.json").read_bytes())
    except (OSError, ValueError):
        return []
    return [c["pgid"] for c in record.get("children", []) if kill_group(c["pgid"], c.get("start_ticks"))]


class CrashWatch:
    """The crash history and quarantine of one state directory. Thread-safe."""

    def __init__(self, state_dir: str | None) -> None:
        self.state_dir = state_dir
        self.recorder = Recorder(state_dir)
        self.path = Path(state_dir) / HISTORY_FILE if state_dir else None
        self._lock = threading.Lock()
        self._crashes: list[Crash] = []
        self._quarantined: dict[str, str] = {}
        self._read()

    def _read(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            self._crashes = [Crash(**c) for c in data.get("crashes", [])]
            self._quarantined = {str(k): str(v) for k, v in data.get("quarantined", {}).items()}
        except (OSError, ValueError, TypeError) as exc:
            log.warning("crash history %s is unreadable (%s); starting a new one", self.path, exc)

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"crashes": [asdict(c) for c in self._crashes[-KEEP:]], "quarantined": self._quarantined}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, self.path)

    # -- reading ---------------------------------------------------------------------
    def recent(self, model: str) -> list[Crash]:
        """Crashes of `model` in the last WINDOW_S before its newest one."""
        mine = [c for c in self._crashes if c.model == model]
        if not mine:
            return []
        newest = mine[-1].at
        return [c for c in mine if newest - c.at <= WINDOW_S]

    def quarantine(self, model: str) -> str | None:
        """Why `model` is quarantined (None: it is not)."""
        return self._quarantined.get(model)

    def counts(self) -> dict[tuple[str, str], int]:
        """Recorded crashes by (model, signal) for /metrics ("unknown": no fault report)."""
        out: dict[tuple[str, str], int] = {}
        for c in self._crashes:
            key = (c.model, c.signal or "unknown")
            out[key] = out.get(key, 0) + 1
        return out

    def row(self, model: str) -> dict[str, Any]:
        """The admin row's `worker_crashes`: how many are recorded, the last, the quarantine."""
        mine = [c for c in self._crashes if c.model == model]
        return {
            "count": len(mine),
            "last": mine[-1].row() if mine else None,
            "quarantined": self.quarantine(model),
        }

    def explain(self, model: str) -> str | None:
        """The last crash of `model`, in words for `last_error` (None: none recorded)."""
        recent = self.recent(model)
        if not recent:
            return None
        last, n = recent[-1], len(recent)
        times = "once" if n == 1 else f"{n} times"
        window = f"{WINDOW_S / 60:g} minutes"
        text = f"the worker {last.cause()} while this model was {last.activity} ({times} in {window})"
        if last.signal:
            text += f"; {describe_signal(last.signal)}"
        return text

    # -- writing ---------------------------------------------------------------------
    def lift(self, model: str) -> bool:
        """An operator's load: the model may load again. True if it was quarantined."""
        with self._lock:
            if self._quarantined.pop(model, None) is None:
                return False
            self._save()
        log.warning("model %s: quarantine lifted by an admin load", model)
        return True

    def recover(self) -> list[Crash]:
        """Read what dead workers left in this state directory (the next worker, at start):
        kill their leftover children, record a crash per model they were working on,
        quarantine repeat offenders. Returns the new crashes."""
        if self.state_dir is None:
            return []
        directory = Path(self.state_dir) / WORKERS_DIR
        new: list[Crash] = []
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            crashes = self._recover_one(path)
            new.extend(crashes)
        if new:
            with self._lock:
                self._crashes.extend(new)
                for model in sorted({c.model for c in new}):
                    recent = self.recent(model)
                    if len(recent) >= QUARANTINE_AFTER:
                        self._quarantined[model] = self.explain(model) or "repeated worker crashes"
                        log.error("model %s quarantined: %s", model, self._quarantined[model])
                self._save()
        return new

    def _recover_one(self, path: Path) -> list[Crash]:
        try:
            pid = int(path.stem)
            record = json.loads(path.read_bytes())
        except (ValueError, OSError):
            return []
        if pid == os.getpid() or alive(pid, record.get("start_ticks")):
            return []  # ours, or a live worker's (a graceful restart overlaps two)
        killed = reap_orphans(self.state_dir, pid)
        fault_path = path.with_suffix(".fault")
        signame, trace = read_fault(fault_path)
        at = path.stat().st_mtime
        crashes = []
        if record.get("state") != "stopping":
            crashes = [
                Crash(a["model"], signame, a["activity"], round(at, 3), pid)
                for a in record.get("activities", [])
            ]
        for crash in crashes:
            log.error(
                "the previous worker (pid %d) %s while model %s was %s",
                pid,
                crash.cause(),
                crash.model,
                crash.activity,
            )
        if crashes and trace:
            log.error("its last words (faulthandler):\n%s", "\n".join(trace.splitlines()[:60]))
        if killed:
            log.warning("killed %d process group(s) left by the dead worker %d: %s", len(killed), pid, killed)
        for leftover in (path, fault_path):
            with contextlib.suppress(OSError):
                leftover.unlink()
        return crashes
