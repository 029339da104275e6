"""A runtime that kills the worker (issue 19), under the real gunicorn + gevent worker.

Each test kills the worker twice inside one model's in-process runtime, with a real
`llama-server` model loaded beside it, and checks what an operator sees after each death:
the reason on the model, the quarantine after the second, the counter in /metrics, the
start-up log, no child of a dead worker left running, and the other model answering.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from llmpool.supervisor import living_group_members
from tests.conftest import SMOLLM2_REF
from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

BESIDE = "smollm2-llama-server"
MARKER = "FAULT-IN-C-NOW"


def beside_model() -> dict[str, Any]:
    return {
        "backend": "llama_server",
        "model_path": SMOLLM2_REF,
        "llama_server_n_ctx": 512,
        "llama_server_n_threads": 1,
        "enabled": True,
    }


def settings(state_dir: Path, crashing: dict[str, Any]) -> dict[str, Any]:
    return {
        "service": {"log_level": "info", "state_dir": str(state_dir)},
        "engine": {
            "decoding": {"max_tokens": 16},
            "models": {"crashing": crashing, BESIDE: beside_model()},
        },
    }


def worker_pid(master: int, timeout_s: float = 60) -> int:
    """The gunicorn worker: the master's one Python child (its llama-server is the worker's)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == master and fields[0] != "Z":
                return int(entry)
        time.sleep(0.1)
    raise AssertionError("gunicorn started no worker")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    return bool(living_group_members(pgid))


def row(server: Server, name: str) -> dict[str, Any]:
    r = requests.get(f"{server.url}/v1/admin/models/{name}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def child_pid(server: Server) -> int:
    (replica,) = row(server, BESIDE)["replica_states"]
    return int(replica["pid"])


def wait_for_new_worker(server: Server, old: int, timeout_s: float = 120) -> int:
    """The master noticed the death and booted a worker that has finished starting up."""
    deadline = time.monotonic() + timeout_s
    while alive(old):
        assert time.monotonic() < deadline, "the worker did not die"
        time.sleep(0.05)
    new = worker_pid(server.process.pid)
    assert new != old
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return new
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the new worker was not ready in {timeout_s} s:\n{server.log()[-3000:]}")


def crash_count(server: Server, name: str, signame: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    prefix = f'llmpool_worker_crashes_total{{model="{name}",signal="{signame}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def answers(server: Server, name: str) -> None:
    r = requests.post(f"{server.url}/v1/responses", json={"model": name, "input": "hi"}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["metrics"]["engine_output_tokens"] >= 1


def check_after_first_death(server: Server, signame: str, activity: str, old_child: int) -> None:
    crashed = row(server, "crashing")
    crashes = crashed["worker_crashes"]
    assert crashes["count"] == 1 and crashes["quarantined"] is None
    assert (crashes["last"]["signal"], crashes["last"]["activity"]) == (signame, activity)
    assert crashed["state"] == "loaded"  # enabled, one death: loaded again, as its settings say
    assert crash_count(server, "crashing", signame) == 1
    assert not group_alive(old_child)  # the dead worker's llama-server went with it
    assert row(server, BESIDE)["state"] == "loaded" and child_pid(server) != old_child
    answers(server, BESIDE)
    assert "the previous worker (pid" in server.log() and f"died of {signame}" in server.log()


def check_after_second_death(server: Server, signame: str, activity: str, old_child: int) -> None:
    crashed = row(server, "crashing")
    assert crashed["state"] == "failed"  # quarantined: not loaded again at start
    reason = crashed["worker_crashes"]["quarantined"]
    assert f"the worker died of {signame} while this model was {activity} (2 times in 10 minutes)" in reason
    assert crashed["last_error"].startswith("quarantined: ") and reason in crashed["last_error"]
    assert crash_count(server, "crashing", signame) == 2
    refused = requests.post(
        f"{server.url}/v1/responses", json={"model": "crashing", "input": "hi"}, timeout=30
    )
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "model_failed" and "quarantined" in error["message"]
    assert not group_alive(old_child)
    answers(server, BESIDE)
    assert "model crashing quarantined" in server.log()
    # An operator's load lifts the quarantine.
    loaded = requests.post(f"{server.url}/v1/admin/models/crashing/load", timeout=120)
    assert loaded.status_code == 200, loaded.text
    assert row(server, "crashing")["worker_crashes"]["quarantined"] is None
    answers(server, "crashing")


def stream_until_cut(server: Server, body: dict[str, Any], streaming: threading.Event) -> None:
    """Read a stream, setting `streaming` at its first token, until the worker's death cuts it."""
    try:
        with requests.post(f"{server.url}/v1/responses", json=body, stream=True, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith(b"event: response.output_text.delta"):
                    streaming.set()
    except requests.RequestException:
        pass  # cut off by the worker's death


def test_a_scripted_runtime_that_faults_in_c_is_quarantined(tmp_path: Path) -> None:
    crashing = {"backend": "scripted", "enabled": True, "scripted_fault_marker": MARKER, "scripted_tokens": 3}
    command = [
        sys.executable,
        "-m",
        "tests.runtimes.scripted_gunicorn",
        "-c",
        "conf/gunicorn.conf.py",
        "wsgi:app",
    ]
    server = start_server(tmp_path, settings(tmp_path / "state", crashing), timeout_s=120, command=command)
    try:
        for death in (1, 2):
            worker, child = worker_pid(server.process.pid), child_pid(server)
            with pytest.raises(requests.ConnectionError):  # the worker dies under the request
                requests.post(
                    f"{server.url}/v1/responses", json={"model": "crashing", "input": MARKER}, timeout=60
                )
            wait_for_new_worker(server, worker)
            check = check_after_first_death if death == 1 else check_after_second_death
            check(server, "SIGSEGV", "generating", child)
    finally:
        stop_server(server)


def test_kill_segv_in_the_middle_of_a_real_llama_cpp_generation(tmp_path: Path, smollm2_path: str) -> None:
    crashing = {
        "backend": "llama_cpp",
        "model_path": SMOLLM2_REF,
        "gguf_n_ctx": 2048,
        "gguf_n_threads": 1,
        "enabled": True,
    }
    server = start_server(tmp_path, settings(tmp_path / "state", crashing), timeout_s=120)
    body = {"model": "crashing", "input": "Tell me a long story.", "stream": True}
    body["decoding"] = {"max_tokens": 1500, "temperature": 1.0}
    try:
        for death in (1, 2):
            worker, child = worker_pid(server.process.pid), child_pid(server)
            streaming = threading.Event()
            client = threading.Thread(target=stream_until_cut, args=(server, body, streaming))
            client.start()
            assert streaming.wait(60), "no token came"
            os.kill(worker, signal.SIGSEGV)
            client.join(timeout=30)
            wait_for_new_worker(server, worker)
            check = check_after_first_death if death == 1 else check_after_second_death
            check(server, "SIGSEGV", "generating", child)
    finally:
        stop_server(server)
