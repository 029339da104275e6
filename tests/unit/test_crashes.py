"""Worker crashes inside native code (issue 19): the record a dying process leaves, and
what the next process makes of it. The dying processes here really fault (a NULL read,
abort()) or are really killed; nothing is simulated by writing files by hand."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from llmpool.crashes import QUARANTINE_AFTER, CrashWatch, Recorder, alive, start_ticks
from llmpool.faults import describe_exit
from tests.dying import die


def gone(pid: int, timeout_s: float = 5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_a_segfault_while_generating_is_explained_by_the_next_process(tmp_path: Path) -> None:
    orphan = die(tmp_path, "segv")
    assert not gone(orphan, 0.2)  # the dead process's child group outlived it
    watch = CrashWatch(str(tmp_path))
    (crash,) = watch.recover()
    assert (crash.model, crash.signal, crash.activity) == ("m", "SIGSEGV", "generating")
    assert gone(orphan)  # recover killed what it left behind
    assert not list((tmp_path / "workers").iterdir())  # record and fault report consumed
    text = watch.explain("m")
    assert text is not None
    assert text.startswith("the worker died of SIGSEGV while this model was generating (once in 10 minutes)")
    assert "segmentation fault" in text
    assert watch.quarantine("m") is None
    assert watch.counts() == {("m", "SIGSEGV"): 1}
    assert watch.recover() == []  # read once


def test_two_deaths_in_the_window_quarantine_the_model_until_lifted(tmp_path: Path) -> None:
    die(tmp_path, "segv")
    CrashWatch(str(tmp_path)).recover()
    die(tmp_path, "abort", activity="loading")
    watch = CrashWatch(str(tmp_path))
    assert len(watch.recover()) == 1
    reason = watch.quarantine("m")
    assert QUARANTINE_AFTER == 2 and reason is not None
    assert "died of SIGABRT while this model was loading (2 times in 10 minutes)" in reason
    assert watch.counts() == {("m", "SIGSEGV"): 1, ("m", "SIGABRT"): 1}
    row = watch.row("m")
    assert row["count"] == 2 and row["last"]["signal"] == "SIGABRT" and row["quarantined"] == reason
    # Kept across processes until an operator's load lifts it.
    again = CrashWatch(str(tmp_path))
    assert again.quarantine("m") == reason
    assert again.lift("m") and not again.lift("m")
    assert CrashWatch(str(tmp_path)).quarantine("m") is None
    assert CrashWatch(str(tmp_path)).counts()[("m", "SIGABRT")] == 1  # the count stays


def test_crashes_of_other_models_do_not_add_up(tmp_path: Path) -> None:
    die(tmp_path, "segv", model="a")
    CrashWatch(str(tmp_path)).recover()
    die(tmp_path, "segv", model="b")
    watch = CrashWatch(str(tmp_path))
    watch.recover()
    assert watch.quarantine("a") is None and watch.quarantine("b") is None


def test_a_kill_without_a_fault_report_says_so(tmp_path: Path) -> None:
    die(tmp_path, "kill")
    watch = CrashWatch(str(tmp_path))
    (crash,) = watch.recover()
    assert crash.signal is None
    assert "killed without a fault report (SIGKILL: most often out of memory)" in (watch.explain("m") or "")
    assert watch.counts() == {("m", "unknown"): 1}


def test_a_death_after_the_worker_was_told_to_stop_is_no_crash(tmp_path: Path) -> None:
    orphan = die(tmp_path, "stopping")
    watch = CrashWatch(str(tmp_path))
    assert watch.recover() == []
    assert gone(orphan)  # its children are still not left behind
    assert watch.counts() == {}


def test_a_live_process_record_is_left_alone(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path))
    recorder.arm()
    try:
        with recorder.working("m", "generating"):
            assert CrashWatch(str(tmp_path)).recover() == []  # our own record
            record = json.loads((tmp_path / "workers" / f"{os.getpid()}.json").read_bytes())
            assert record["activities"][0]["model"] == "m" and record["state"] == "serving"
        record = json.loads((tmp_path / "workers" / f"{os.getpid()}.json").read_bytes())
        assert record["activities"] == []  # the shorter record is padded over the longer
    finally:
        recorder.disarm()
    assert not list((tmp_path / "workers").iterdir())  # a clean exit leaves nothing


def test_a_reused_pid_is_not_taken_for_the_recorded_process() -> None:
    ticks = start_ticks(os.getpid())
    assert ticks is not None
    assert alive(os.getpid(), ticks) and not alive(os.getpid(), ticks + 1)


def test_a_disarmed_recorder_writes_nothing(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path))
    with recorder.working("m", "generating"):
        pass
    recorder.stopping()
    assert not (tmp_path / "workers").exists()


@pytest.mark.parametrize(
    ("returncode", "words"),
    [
        (
            -signal.SIGILL,
            "SIGILL (illegal instruction: this build uses CPU instructions the machine does not run)",
        ),
        (-signal.SIGKILL, "SIGKILL (killed: most often the kernel's out-of-memory killer, else an operator)"),
        (-signal.SIGBUS, "SIGBUS (bus error: "),
        (2, "2"),
    ],
)
def test_a_childs_death_is_worded_with_its_signal(returncode: int, words: str) -> None:
    assert describe_exit(returncode).startswith(words)
