"""What every benchmark case shares: processes started, pinned, probed and stopped.

On a machine with two or more cores the server under test runs pinned to one CPU (the
pool is one gevent worker: one core is what it uses) and the load generator, the static
upstream and the clients to another, so that they do not take each other's CPU and the
ratios measured in one run stay comparable. With one core nothing is pinned.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.conftest import SMOLLM2_ID
from tests.integration.conftest import free_port, integration_settings, wait_ready

ROOT = Path(__file__).resolve().parents[1]
Log = Callable[[str], None]


def cpus() -> tuple[list[str], list[str], list[str]]:
    """taskset prefixes for (server under test, load side, every CPU); empty with one core."""
    n = os.cpu_count() or 1
    if n < 2:
        return [], [], []
    return (
        ["taskset", "-c", str(n - 1)],
        ["taskset", "-c", ",".join(str(i) for i in range(n - 1))],
        ["taskset", "-c", f"0-{n - 1}"],
    )


SERVER_CPU, LOAD_CPU, ALL_CPUS = cpus()
# Where a runtime's decoding runs relative to the pool's own work (streaming, in-process):
# "shared": the pool, its runtime and its single decode thread on one core, so every
# microsecond the pool spends per token is taken from decoding (the strict case on a
# CPU-only box); "split": the server side may use every core, the decode thread one of
# them, the pool's hub another, as on a GPU box where decoding is not on the pool's CPU.
LAYOUTS = {"shared": SERVER_CPU, "split": ALL_CPUS}


def pin_self_to_load_side() -> None:
    """Keep this process (and the clients it runs) off the server CPU."""
    if LOAD_CPU:
        os.sched_setaffinity(0, {int(c) for c in LOAD_CPU[-1].split(",")})


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    """SIGTERM to the process group, SIGKILL if it lingers: nothing it started survives."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def spawn(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as out:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            argv,
            cwd=cwd or ROOT,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, so stop() reaches its children too
        )


@dataclass
class Pool:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    workdir: Path

    def worker_pid(self) -> int:
        """The gunicorn worker: where models and requests live."""
        return worker_pid(self.proc.pid)


def worker_pid(master: int) -> int:
    """The gunicorn worker: the master's only child (found by ppid in /proc/*/stat)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited while we looked
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        fields = text.rpartition(")")[2].split()
        if int(fields[1]) == master:
            children.append(int(stat.parent.name))
    if len(children) != 1:
        raise RuntimeError(f"expected one gunicorn worker under pid {master}, found {children}")
    return children[0]


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 on (the command name may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_s(pid: int) -> float:
    """CPU seconds `pid` has used, user + system (stat fields 14 and 15, in clock ticks)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used by the live processes of process group `pgid` (stat field 5)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """VmRSS in MiB (the figures call it MB; /proc reports kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)  # reported in kB
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssPeak:
    """The highest VmRSS of `pid` while the `with` block runs, sampled on a thread every
    `every_s` (a peak between two samples is missed; 20 ms is well under how long a
    request's body stays in memory)."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.pid = pid
        self.every_s = every_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-peak", daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb(self.pid))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


def rss_settled(pid: int, seconds: float = 2.0, samples: int = 5) -> list[float]:
    """`samples` readings spread over `seconds`: whether RSS is still moving shows in them."""
    readings = []
    for i in range(samples):
        if i:
            time.sleep(seconds / (samples - 1))
        readings.append(rss_mb(pid))
    return readings


def one_slot_settings(max_queue: int, max_tokens: int = 2000) -> dict[str, Any]:
    """The integration tests' SmolLM2 (llama_cpp, in-process) with one replica and one
    slot: while a job runs, every other request waits in its queue of `max_queue`."""
    settings = integration_settings()
    settings["engine"]["decoding"]["max_tokens"] = max_tokens
    settings["engine"]["models"][SMOLLM2_ID].update(
        replicas=1, replica_max=1, target_inflight=1, max_queue=max_queue
    )
    return settings


def model_row(session: requests.Session, pool: Pool, timeout_s: float = 30) -> dict[str, Any]:
    """SmolLM2's row of GET /v1/admin/models (queue_depth, inflight, ...).

    Asked again once on a reset: gunicorn closes a keep-alive connection idle for its
    `keepalive` seconds, and a request sent just as it does meets a reset (a full bench
    lost its hang-ups case to that race once)."""
    url = pool.url + "/v1/admin/models"
    try:
        answer = session.get(url, timeout=timeout_s)
    except requests.ConnectionError:
        answer = session.get(url, timeout=timeout_s)
    return next(r for r in answer.json()["models"] if r["name"] == SMOLLM2_ID)


def wait_for_row(
    session: requests.Session,
    pool: Pool,
    done: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float,
) -> float:
    """Seconds until SmolLM2's admin row satisfies `done`; RuntimeError after `timeout_s`."""
    t0 = time.monotonic()
    while True:
        row = model_row(session, pool)
        if done(row):
            return round(time.monotonic() - t0, 2)
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(
                f"not {what} after {timeout_s}s: queue_depth={row['queue_depth']} inflight={row['inflight']}"
            )
        time.sleep(0.1)


@contextmanager
def pool_server(
    settings: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
    cpus: list[str] | None = None,
    config: str | None = None,
    app: str = "wsgi:app",
    root: Path | None = None,
) -> Iterator[Pool]:
    """The pool as operators run it (conf/gunicorn.conf.py, wsgi:app), pinned to the server CPU.

    `config` replaces the gunicorn config file (a bench-only one that adds hooks); `app`
    the WSGI app (bench.floor's bare one), which must answer GET /readyz; `root` another
    checkout to serve from (bench.ab), run with this one's interpreter."""
    workdir = Path(tempfile.mkdtemp(prefix="llmpool-bench-"))
    settings_path = workdir / "settings.json"
    settings_path.write_text(json.dumps(settings))
    port = free_port()
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    log_path = workdir / "pool.log"
    proc = spawn(
        [
            *(SERVER_CPU if cpus is None else cpus),
            gunicorn,
            "-c",
            config or "conf/gunicorn.conf.py",
            app,
        ],
        log_path,
        {
            "LLM_POOL_SETTINGS_PATH": str(settings_path),
            "LLM_POOL_LOCAL_SETTINGS_PATH": str(workdir / "local.json"),
            "LLM_POOL_BIND": f"127.0.0.1:{port}",
            **(env or {}),
        },
        root,
    )
    pool = Pool(f"http://127.0.0.1:{port}", proc, log_path, workdir)
    try:
        wait_ready(pool.url + "/readyz", proc, "the pool", log_path, timeout_s)
        yield pool
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def print_result(run: Callable[..., dict[str, Any]], **kwargs: Any) -> None:
    """A case run from its own command line: progress to stderr, the result (JSON) alone
    on stdout."""

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    print(json.dumps(run(log=progress, **kwargs), indent=2))


def command_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "pinning": "server on CPU " + SERVER_CPU[-1] + ", load side on " + LOAD_CPU[-1]
        if SERVER_CPU
        else "none",
    }


@dataclass
class Figures:
    """Everything one run measured, by case; what is written to the JSON file."""

    meta: dict[str, Any] = field(default_factory=dict)
    cases: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"meta": self.meta, **self.cases, "errors": self.errors}
