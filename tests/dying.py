"""A process that records its work like a pool worker and then really dies inside it
(issue 19): a NULL read (SIGSEGV), abort() (SIGABRT) or SIGKILL. It starts a child group
first that would outlive it, as vLLM's engine outlives `vllm serve`."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DYING = textwrap.dedent(
    """
    import ctypes, os, signal, subprocess, sys, time
    from llmpool.crashes import Recorder
    state_dir, model, activity, how = sys.argv[1:5]
    recorder = Recorder(state_dir)
    recorder.arm()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    child = subprocess.Popen(["sleep", "300"], start_new_session=True, **quiet)
    recorder.child_started(child.pid)
    print(child.pid, flush=True)
    if how == "stopping":
        recorder.stopping()
    with recorder.working(model, activity):
        if how in ("segv", "stopping"):
            ctypes.string_at(0)  # a NULL read: a real SIGSEGV
        elif how == "abort":
            ctypes.CDLL(None).abort()
        elif how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


def die(state_dir: Path, how: str, model: str = "m", activity: str = "generating") -> int:
    """Run DYING; return the pid of the child group it left behind."""
    proc = subprocess.run(
        [sys.executable, "-c", DYING, str(state_dir), model, activity, how],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    expected = {
        "segv": signal.SIGSEGV,
        "stopping": signal.SIGSEGV,
        "abort": signal.SIGABRT,
        "kill": signal.SIGKILL,
    }
    assert proc.returncode == -expected[how], (proc.returncode, proc.stderr)
    return int(proc.stdout.split()[0])
