"""The process supervisor and the managed-server base, driven with the fake runtime.

`tests/runtimes/fake_llm_server.py` is a stdlib OpenAI-compatible server whose --fake-*
flags make it fail the ways real runtimes fail. Every child a test starts is stopped by
a fixture, and every wait polls against a deadline instead of sleeping a fixed time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from llmpool.backends import managed
from llmpool.backends.llama_server import LlamaServerAdapter
from llmpool.config.loader import load_settings
from llmpool.config.spec import ModelSpec
from llmpool.errors import BackendError, ModelLoadFailed
from llmpool.generation import Decoding, GenerationRequest
from llmpool.supervisor import ChildFailed, ChildProcess, ChildSpec, ProcessState, next_line_seq, pick_port

ROOT = Path(__file__).resolve().parents[2]
FAKE = str(ROOT / "tests" / "runtimes" / "fake_llm_server.py")
WriteSettings = Callable[..., Path]


# -- helpers ---------------------------------------------------------------------------
def healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def poll(predicate: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:
    """True as soon as `predicate()` is truthy, False if it never was within the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def dead(pid: int) -> bool:
    """The process is gone, or a zombie nobody reaped yet (it runs no code any more)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def reaped(pid: int) -> bool:
    """Our own child is gone and reaped: no process, no zombie left behind."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def line_with(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"expected one line starting with {prefix!r} in {lines}"
    return found[0]


def join_watcher(child: ChildProcess, timeout_s: float = 5.0) -> None:
    """Wait for the watcher thread, so that whatever it calls has been called."""
    for thread in threading.enumerate():
        if thread.name == f"watch-{child.label}":
            thread.join(timeout_s)
            assert not thread.is_alive(), "the watcher thread did not finish"


MakeChild = Callable[..., tuple[ChildProcess, int]]


@pytest.fixture
def make_child() -> Iterator[MakeChild]:
    """make_child(*fake_flags, on_exit=None, **ChildSpec fields) -> (child, port); not started."""
    made: list[ChildProcess] = []

    def make(
        *fake_flags: str, on_exit: Callable[[int, list[str]], None] | None = None, **spec: Any
    ) -> tuple[ChildProcess, int]:
        port = pick_port()
        argv = [sys.executable, FAKE, "--port", str(port), *fake_flags]
        child = ChildProcess(f"fake{len(made)}", ChildSpec(argv=argv, **spec), on_exit=on_exit)
        made.append(child)
        return child, port

    yield make
    for child in made:
        pid = child.pid
        with contextlib.suppress(ProcessLookupError):
            if pid is not None and child.alive() and os.getpgid(pid) != pid:
                os.kill(pid, signal.SIGKILL)  # not a group leader: stop() could not reach it
        child.spec.stop_timeout_s = min(child.spec.stop_timeout_s, 1.0)
        child.stop()


def started(make_child: MakeChild, *fake_flags: str, **spec: Any) -> tuple[ChildProcess, int]:
    child, port = make_child(*fake_flags, **spec)
    child.start()
    child.wait_ready(lambda: healthy(port), timeout_s=15)
    return child, port


# -- start and readiness ---------------------------------------------------------------
def test_child_starts_in_its_own_process_group_and_becomes_ready(make_child: MakeChild) -> None:
    child, port = make_child()
    assert child.state is ProcessState.NEW and child.pid is None and not child.alive()
    child.start()
    assert child.state is ProcessState.STARTING
    child.wait_ready(lambda: healthy(port), timeout_s=15)
    assert child.state is ProcessState.READY
    pid = child.pid
    assert isinstance(pid, int) and pid > 0 and pid != os.getpid()
    assert child.alive() and child.returncode is None
    assert os.getpgid(pid) == pid, "the child leads a process group of its own"
    assert os.getsid(pid) == pid, "the child leads a new session"
    assert os.getpgid(pid) != os.getpgid(0)
    assert healthy(port)


def test_library_path_is_prepended_in_order_and_env_reaches_the_child(
    make_child: MakeChild, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "/existing/lib")
    monkeypatch.setenv("FAKE_ENV", "from-parent")
    child, _ = started(
        make_child, library_path=["/opt/first/lib", "/opt/second/lib"], env={"FAKE_ENV": "from-spec"}
    )
    assert poll(lambda: any(line.startswith("FAKE_ENV=") for line in child.tail()))
    lines = child.tail()
    assert line_with(lines, "LD_LIBRARY_PATH=") == (
        "LD_LIBRARY_PATH=/opt/first/lib:/opt/second/lib:/existing/lib"
    )
    assert line_with(lines, "FAKE_ENV=") == "FAKE_ENV=from-spec"


def test_environment_without_an_inherited_library_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    monkeypatch.setenv("SOME_PARENT_VAR", "kept")
    spec = ChildSpec(argv=["x"], env={"A": "1"}, library_path=["/a", "/b"])
    env = spec.environment()
    assert env["LD_LIBRARY_PATH"] == "/a:/b"
    assert env["A"] == "1" and env["SOME_PARENT_VAR"] == "kept"
    assert "LD_LIBRARY_PATH" not in ChildSpec(argv=["x"]).environment()
    assert "LD_LIBRARY_PATH" not in os.environ, "environment() must not touch our own environment"


def test_defaults_keep_2000_log_lines() -> None:
    spec = ChildSpec(argv=["x"])
    assert spec.log_lines == 2000
    assert spec.env == {} and tuple(spec.library_path) == ()


def test_log_ring_buffer_keeps_only_the_last_lines(make_child: MakeChild) -> None:
    child, port = make_child("--fake-log-lines", "50", log_lines=10)
    child.start()
    # No health probe here: each request would add a line of its own.
    assert poll(lambda: any(line.startswith("listening on") for line in child.tail()), timeout_s=10)
    expected = [f"log line {i}" for i in range(41, 50)] + [f"listening on 127.0.0.1:{port}"]
    assert child.tail() == expected
    assert child.tail(None) == expected
    assert child.tail(3) == expected[-3:]
    assert child.tail(1) == [expected[-1]]
    assert child.tail(0) == []
    assert child.tail(100) == expected


def test_lines_since_a_number_are_only_the_newer_lines_of_every_child(make_child: MakeChild) -> None:
    """A follower passes back the number it was given and sees each new line exactly
    once, whichever of two children printed it."""
    first, first_port = make_child()
    second, second_port = make_child()
    first.start()
    second.start()
    assert poll(lambda: any(line.startswith("listening on") for line in first.tail()), timeout_s=10)
    assert poll(lambda: any(line.startswith("listening on") for line in second.tail()), timeout_s=10)
    mark = next_line_seq()
    assert first.lines_since(1000, 0, mark) == first.tail()  # everything before the mark
    assert first.lines_since(1000, mark) == [] and second.lines_since(1000, mark) == []

    assert healthy(first_port) and healthy(second_port)  # one "request:" line in each child
    assert poll(lambda: first.lines_since(1000, mark) and second.lines_since(1000, mark))
    upto = next_line_seq()
    new_first = first.lines_since(1000, mark, upto)
    new_second = second.lines_since(1000, mark, upto)
    assert len(new_first) == 1 and new_first[0].startswith("request: ") and "/health" in new_first[0]
    assert len(new_second) == 1 and new_second[0].startswith("request: ")
    assert upto >= mark + 2
    assert first.lines_since(1000, upto) == [] and second.lines_since(1000, upto) == []
    assert first.lines_since(0, mark) == []  # n still caps the count


def test_early_exit_fails_fast_with_the_last_lines(make_child: MakeChild) -> None:
    child, port = make_child("--fake-exit-at-start")
    child.start()
    began = time.monotonic()
    with pytest.raises(ChildFailed) as info:
        child.wait_ready(lambda: healthy(port), timeout_s=30)
    assert time.monotonic() - began < 5, "an exited child must not be polled until the timeout"
    assert "error: model file is corrupt" in info.value.tail
    assert "exited with 2" in str(info.value)
    assert child.returncode == 2
    assert child.state is ProcessState.EXITED
    assert not child.alive()
    assert "error: model file is corrupt" in info.value.describe()
    assert "--- last output ---" in info.value.describe()


def test_never_ready_fails_after_the_timeout_with_the_child_alive(make_child: MakeChild) -> None:
    child, port = make_child("--fake-never-ready")
    child.start()
    assert poll(lambda: any(line.startswith("listening on") for line in child.tail()), timeout_s=10)
    began = time.monotonic()
    with pytest.raises(ChildFailed) as info:
        child.wait_ready(lambda: healthy(port), timeout_s=1.0, interval_s=0.05)
    elapsed = time.monotonic() - began
    assert 1.0 <= elapsed < 5
    assert "not ready after 1s" in str(info.value)
    assert any(line.startswith("listening on") for line in info.value.tail)
    assert child.alive(), "a timeout leaves stopping to the caller"
    assert child.state is ProcessState.STARTING
    pid = child.pid
    assert pid is not None
    child.stop()
    assert child.state is ProcessState.STOPPED
    assert reaped(pid)


def test_start_of_a_missing_program_raises_child_failed(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-runtime")
    child = ChildProcess("missing", ChildSpec(argv=[missing, "--port", "1"]))
    with pytest.raises(ChildFailed) as info:
        child.start()
    assert missing in str(info.value)
    assert info.value.tail == []
    assert child.state is ProcessState.EXITED
    assert child.pid is None and not child.alive()
    child.stop()  # nothing to stop: must not raise


# -- stop ------------------------------------------------------------------------------
def test_stop_sends_sigterm_and_reaps(make_child: MakeChild) -> None:
    child, port = started(make_child)
    pid = child.pid
    assert pid is not None
    began = time.monotonic()
    child.stop()
    assert time.monotonic() - began < 3
    assert child.state is ProcessState.STOPPED
    assert child.returncode == -signal.SIGTERM
    assert not child.alive()
    assert reaped(pid)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped by stop()
    assert not healthy(port)


def test_stop_kills_a_child_that_ignores_sigterm(make_child: MakeChild) -> None:
    child, _ = started(make_child, "--fake-ignore-sigterm", stop_timeout_s=0.5)
    pid = child.pid
    assert pid is not None
    began = time.monotonic()
    child.stop()
    elapsed = time.monotonic() - began
    assert 0.45 <= elapsed < 2.5
    assert child.returncode == -signal.SIGKILL
    assert child.state is ProcessState.STOPPED
    assert reaped(pid)
    assert "ignoring SIGTERM" in child.tail()


def test_stop_kills_grandchildren_in_the_group(make_child: MakeChild) -> None:
    child, _ = started(make_child, "--fake-spawn-grandchild")
    pid = child.pid
    assert pid is not None
    assert poll(lambda: any(line.startswith("grandchild pid=") for line in child.tail()))
    grandchild = int(line_with(child.tail(), "grandchild pid=").split("=", 1)[1])
    assert not dead(grandchild)
    assert os.getpgid(grandchild) == pid, "the grandchild is in the child's process group"
    child.stop()
    assert child.state is ProcessState.STOPPED
    assert reaped(pid)
    assert poll(lambda: dead(grandchild), timeout_s=3), "the grandchild survived stop()"


def test_stop_is_idempotent(make_child: MakeChild) -> None:
    child, _ = started(make_child)
    child.stop()
    returncode = child.returncode
    began = time.monotonic()
    child.stop()
    assert time.monotonic() - began < 0.5
    assert child.state is ProcessState.STOPPED
    assert child.returncode == returncode

    never_started, _ = make_child()
    never_started.stop()
    assert never_started.state is ProcessState.NEW


def test_child_dies_with_the_pool_process() -> None:
    """PDEATHSIG: a pool killed with SIGKILL (no chance to stop anything) orphans nothing."""
    port = pick_port()
    code = (
        "import sys, time\n"
        "from llmpool.supervisor import ChildProcess, ChildSpec\n"
        f"argv = [sys.executable, {FAKE!r}, '--port', '{port}']\n"
        "child = ChildProcess('orphan', ChildSpec(argv=argv))\n"
        "child.start()\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    pool = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT)
    pid: int | None = None
    try:
        assert pool.stdout is not None
        pid = int(pool.stdout.readline())
        assert poll(lambda: healthy(port), timeout_s=10), "the fake runtime did not come up"
        pool.kill()
        pool.wait()
        assert poll(lambda: dead(pid), timeout_s=5), "the runtime outlived the pool"
    finally:
        if pool.poll() is None:
            pool.kill()
        pool.wait()
        if pool.stdout is not None:
            pool.stdout.close()
        if pid is not None and not dead(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


# -- unexpected exits ------------------------------------------------------------------
def test_on_exit_is_called_once_when_the_child_dies_on_its_own(make_child: MakeChild) -> None:
    calls: list[tuple[int, list[str]]] = []
    child, port = make_child(on_exit=lambda code, tail: calls.append((code, tail)))
    child.start()
    child.wait_ready(lambda: healthy(port), timeout_s=15)
    pid = child.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert poll(lambda: calls, timeout_s=5), "on_exit was not called"
    join_watcher(child)
    assert child.state is ProcessState.EXITED
    assert child.returncode == -signal.SIGKILL
    assert not child.alive()
    child.stop()  # reaping what is already dead reports nothing more
    assert len(calls) == 1
    code, tail = calls[0]
    assert code == -signal.SIGKILL
    assert any(line.startswith("listening on") for line in tail)
    assert child.state is ProcessState.STOPPED


def test_on_exit_is_not_called_on_stop(make_child: MakeChild) -> None:
    calls: list[tuple[int, list[str]]] = []
    child, port = make_child(on_exit=lambda code, tail: calls.append((code, tail)))
    child.start()
    child.wait_ready(lambda: healthy(port), timeout_s=15)
    child.stop()
    join_watcher(child)
    assert calls == []
    assert child.state is ProcessState.STOPPED


# -- ports -----------------------------------------------------------------------------
def test_pick_port_returns_a_bindable_port() -> None:
    port = pick_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


def test_address_in_use_detects_the_port_race_message(make_child: MakeChild, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    child, port = make_child("--fake-port-in-use-once", str(flag))
    child.start()
    with pytest.raises(ChildFailed) as info:
        child.wait_ready(lambda: healthy(port), timeout_s=15)
    assert flag.exists()
    assert child.returncode == 1
    assert any("Address already in use" in line for line in info.value.tail)
    assert child.address_in_use()


def test_address_in_use_is_false_for_other_failures(make_child: MakeChild) -> None:
    child, port = make_child("--fake-exit-at-start")
    child.start()
    with pytest.raises(ChildFailed):
        child.wait_ready(lambda: healthy(port), timeout_s=15)
    assert not child.address_in_use()


# -- ManagedServerAdapter through LlamaServerAdapter -----------------------------------
MakeSpec = Callable[..., ModelSpec]


@pytest.fixture
def llama_spec(write_settings: WriteSettings) -> MakeSpec:
    """llama_spec(**keys) -> the validated spec of model "m" run by the fake runtime."""

    def make(**keys: Any) -> ModelSpec:
        model = {
            "backend": "llama_server",
            "model_path": FAKE,  # any existing file
            "llama_server_binary": FAKE,  # executable, python3 shebang
            "llama_server_start_timeout_s": 20,
            "llama_server_stop_timeout_s": 2,
            **keys,
        }
        write_settings({"engine": {"models": {"m": model}}})
        return load_settings().models["m"]

    return make


MakeAdapter = Callable[..., LlamaServerAdapter]


@pytest.fixture
def make_adapter(llama_spec: MakeSpec) -> Iterator[MakeAdapter]:
    adapters: list[LlamaServerAdapter] = []

    def make(**keys: Any) -> LlamaServerAdapter:
        adapter = LlamaServerAdapter(llama_spec(**keys), 0)
        adapters.append(adapter)
        return adapter

    yield make
    for adapter in adapters:
        adapter.close()


def test_load_retries_on_a_new_port_when_the_address_is_in_use(
    make_adapter: MakeAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picked: list[int] = []

    def recording_pick_port() -> int:
        picked.append(pick_port())
        return picked[-1]

    monkeypatch.setattr(managed, "pick_port", recording_pick_port)
    flag = tmp_path / "flag"
    adapter = make_adapter(llama_server_extra_args=["--fake-port-in-use-once", str(flag)])
    adapter.load()
    assert flag.exists(), "the first child lost the port race"
    assert len(picked) == 2, "exactly one retry, on a newly picked port"
    assert adapter.port == picked[1]
    assert adapter.child is not None and adapter.child.alive()
    assert adapter.child.state is ProcessState.READY
    argv = adapter.child.spec.argv
    assert argv[argv.index("--port") + 1] == str(adapter.port)
    pid = adapter.pid()
    assert pid is not None and pid == adapter.child.pid
    assert healthy(adapter.port)
    assert any(line.startswith("listening on") for line in adapter.logs(50))
    adapter.close()
    assert adapter.child.state is ProcessState.STOPPED
    assert reaped(pid)
    assert not healthy(adapter.port)


def test_a_fixed_port_is_not_retried(
    make_adapter: MakeAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picked: list[int] = []
    monkeypatch.setattr(managed, "pick_port", lambda: picked.append(0) or pick_port())
    flag = tmp_path / "flag"
    port = pick_port()
    adapter = make_adapter(
        llama_server_port=port, llama_server_extra_args=["--fake-port-in-use-once", str(flag)]
    )
    with pytest.raises(ModelLoadFailed) as info:
        adapter.load()
    assert "Address already in use" in info.value.message
    assert flag.exists() and picked == []
    assert adapter.port is None


def test_close_is_safe_before_load_and_twice(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    adapter.close()
    adapter.load()
    pid = adapter.pid()
    assert pid is not None
    adapter.close()
    adapter.close()
    assert reaped(pid)


@pytest.mark.parametrize(
    "extra", [["-np", "4"], ["--parallel=2"], ["--parallel", "2"], ["--port=9"], ["-m", "x.gguf"]]
)
def test_reserved_flags_in_extra_args_fail_before_any_process_starts(
    make_adapter: MakeAdapter, monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    def no_child(*_: Any, **__: Any) -> ChildProcess:
        raise AssertionError("a child was built although extra_args are refused")

    monkeypatch.setattr(managed, "ChildProcess", no_child)
    adapter = make_adapter(llama_server_extra_args=["--jinja", *extra])
    with pytest.raises(ModelLoadFailed) as info:
        adapter.load()
    flag = extra[0].split("=", 1)[0]
    assert flag in info.value.message
    assert "llama_server_extra_args" in info.value.message
    assert info.value.model == "m"
    assert adapter.child is None and adapter.pid() is None


def test_missing_binary_names_the_binary(make_adapter: MakeAdapter, tmp_path: Path) -> None:
    missing = str(tmp_path / "bin" / "llama-server-missing")
    adapter = make_adapter(llama_server_binary=missing)
    with pytest.raises(ModelLoadFailed) as info:
        adapter.load()
    assert missing in info.value.message
    assert info.value.model == "m"


def test_no_binary_configured_nor_found(make_adapter: MakeAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = make_adapter(llama_server_binary=None)
    monkeypatch.setattr(adapter, "default_binary", lambda: None)
    with pytest.raises(ModelLoadFailed) as info:
        adapter.load()
    assert "llama-server" in info.value.message and "llama_server_binary" in info.value.message
    assert adapter.child is None


def test_early_exit_fails_the_load_with_the_last_output(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(llama_server_extra_args=["--fake-exit-at-start"])
    began = time.monotonic()
    with pytest.raises(ModelLoadFailed) as info:
        adapter.load()
    assert time.monotonic() - began < 10
    assert "error: model file is corrupt" in info.value.message
    assert "exited with 2" in info.value.message
    assert info.value.model == "m"
    assert adapter.child is not None and not adapter.child.alive()


def test_a_load_that_times_out_stops_its_child(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(llama_server_extra_args=["--fake-never-ready"], llama_server_start_timeout_s=1)
    began = time.monotonic()
    with pytest.raises(ModelLoadFailed) as info:
        adapter.load()
    assert time.monotonic() - began < 6
    assert "not ready after 1s" in info.value.message
    assert adapter.child is not None
    pid = adapter.child.pid
    assert pid is not None
    assert adapter.child.state is ProcessState.STOPPED
    assert reaped(pid), "a failed load must not leave its child running"
    assert adapter.port is None


# -- generation ------------------------------------------------------------------------
def request(max_tokens: int) -> GenerationRequest:
    return GenerationRequest(input="hi", decoding=Decoding(max_tokens=max_tokens))


def test_generate_before_load_is_a_backend_error(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    with pytest.raises(BackendError):
        list(adapter.generate(request(5)))


def test_generate_streams_text_then_the_final_chunk(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    adapter.load()
    chunks = list(adapter.generate(request(5)))
    assert [c.text for c in chunks[:-1]] == [f"tok{i} " for i in range(5)]
    assert all(c.final is None for c in chunks[:-1])
    final = chunks[-1].final
    assert final is not None and chunks[-1].text == ""
    assert final.output_tokens == 5
    assert final.prompt_tokens == 1
    assert final.finish_reason == "length"
    assert final.generate_total_ms is not None and final.generate_total_ms >= 0


def test_closing_the_stream_disconnects_from_the_server(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(llama_server_extra_args=["--fake-tokens", "200", "--fake-token-delay", "0.02"])
    adapter.load()
    stream = adapter.generate(request(200))
    assert next(stream).text == "tok0 "
    assert next(stream).text == "tok1 "
    stream.close()
    assert poll(lambda: any("client disconnected" in line for line in adapter.logs(50)), timeout_s=2), (
        adapter.logs(50)
    )
    assert adapter.child is not None and adapter.child.alive(), "the server survives a cancel"


def test_child_crash_mid_stream_is_a_backend_error_naming_the_exit(make_adapter: MakeAdapter) -> None:
    failures: list[str] = []
    adapter = make_adapter(llama_server_extra_args=["--fake-exit-after", "3"])
    adapter.on_failure = failures.append
    adapter.load()
    texts: list[str] = []
    with pytest.raises(BackendError) as info:
        for chunk in adapter.generate(request(8)):
            texts.append(chunk.text)
    assert texts == ["tok0 ", "tok1 ", "tok2 "]
    assert "exited with 9" in info.value.message
    assert "simulated crash" in info.value.message
    assert info.value.model == "m"
    assert poll(lambda: failures, timeout_s=5)
    assert len(failures) == 1 and "exited with 9" in failures[0]


def test_child_killed_mid_stream_is_a_backend_error_naming_the_exit(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(llama_server_extra_args=["--fake-tokens", "200", "--fake-token-delay", "0.02"])
    adapter.on_failure = lambda message: None
    adapter.load()
    pid = adapter.pid()
    assert pid is not None
    stream = adapter.generate(request(200))
    next(stream)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(BackendError) as info:
        for _ in stream:
            pass
    assert "exited with SIGKILL (killed: " in info.value.message  # the signal by name and meaning
    assert info.value.model == "m"


def test_living_group_members_sees_a_group_and_not_its_zombies() -> None:
    import subprocess as sp

    from llmpool.supervisor import living_group_members

    leader = sp.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert living_group_members(leader.pid) == [leader.pid]
        leader.kill()
        deadline = time.monotonic() + 2
        while living_group_members(leader.pid):  # a zombie (not yet reaped) does not count
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        leader.kill()
        leader.wait()
    assert living_group_members(leader.pid) == []


def test_the_process_state_table_is_the_only_writer() -> None:
    from llmpool.supervisor import PROCESS_TRANSITIONS

    assert set(PROCESS_TRANSITIONS) == set(ProcessState)
    child = ChildProcess("t", ChildSpec(argv=["true"]))
    assert not child._move(ProcessState.READY)  # NEW -> READY is no edge
    assert child.state is ProcessState.NEW
    assert child._move(ProcessState.STARTING) and child._move(ProcessState.EXITED)
    # The waiter's late READY cannot overwrite the watcher's EXITED.
    assert not child._move(ProcessState.READY) and child.state is ProcessState.EXITED
    assert child._move(ProcessState.STOPPING) and child._move(ProcessState.STOPPED)
    assert not any(child._move(s) for s in ProcessState) and child.state is ProcessState.STOPPED
    with pytest.raises(RuntimeError, match="start"):
        child.start()  # a child is started once
    with pytest.raises(AttributeError):
        child.state = ProcessState.NEW  # type: ignore[misc]
