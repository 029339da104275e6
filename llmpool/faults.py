"""What a process's death by a signal usually means, in words an operator can act on.

A leaf module (no pool imports): the supervisor words a child's death with it, the crash
recorder a worker's, and the native self-test a faulting build's.
"""

from __future__ import annotations

import signal

# The signals a runtime dies of, and what each usually means for an LLM runtime.
MEANINGS: dict[str, str] = {
    "SIGILL": "illegal instruction: this build uses CPU instructions the machine does not run",
    "SIGSEGV": (
        "segmentation fault: a crash in native code (a runtime bug, a corrupt model file, "
        "or a CPU feature the machine advertises but faults on)"
    ),
    "SIGBUS": (
        "bus error: a memory-mapped model file was truncated or changed while in use, "
        "or shared memory ran out"
    ),
    "SIGABRT": (
        "aborted: the runtime stopped on a failed check or an uncaught C++ exception (see its last output)"
    ),
    "SIGFPE": "arithmetic fault in native code",
    "SIGKILL": "killed: most often the kernel's out-of-memory killer, else an operator",
    "SIGTERM": "terminated from outside the pool",
    "SIGINT": "interrupted from outside the pool",
    "SIGHUP": "hung up from outside the pool",
    "SIGPIPE": "wrote to a closed pipe or socket",
}

# The signals that mean the code itself faulted (rather than something outside killing it).
FAULTS = frozenset({"SIGSEGV", "SIGILL", "SIGBUS", "SIGABRT", "SIGFPE"})

# Python's faulthandler names the fault in its first line ("Fatal Python error: ...").
FAULTHANDLER_NAMES: dict[str, str] = {
    "Segmentation fault": "SIGSEGV",
    "Illegal instruction": "SIGILL",
    "Bus error": "SIGBUS",
    "Aborted": "SIGABRT",
    "Floating-point exception": "SIGFPE",
    "Floating point exception": "SIGFPE",
}


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_signal(name: str) -> str:
    """'SIGILL (illegal instruction: ...)', or the bare name when its meaning is not known."""
    meaning = MEANINGS.get(name)
    return f"{name} ({meaning})" if meaning else name


def describe_exit(returncode: int | None) -> str:
    """How a child ended, for "exited with ...", from its Popen returncode: the exit status
    as a number, or the signal that killed it (negative) by name and meaning."""
    if returncode is None:
        return "an unknown status"
    if returncode < 0:
        return describe_signal(signal_name(-returncode))
    return str(returncode)
