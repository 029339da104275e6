"""Register llama-cpp-python's ggml backends, choosing the fastest CPU variant that runs.

A portable build (llmpool.native.build) keeps its backends as `libggml-cpu-<tag>.so`
files beside `libllama.so`. llama.cpp only looks for backends in the executable's
directory and the working directory, neither of which is the package's: so before the
first model loads, `ensure_backends` asks ggml to load every backend from the package's
own directory (`ggml_backend_load_all_from_path`). ggml's chooser then loads, of the CPU
variants, the one with the highest score, and every variant scores 0 on a CPU that lacks
one of its instructions. The same scores are read here only to name the choice in the log.

A binding built the ordinary way (backends linked in) has its backends registered already,
and is left as it is. Blocking (dlopen), once per process, on a real thread.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmpool.native import variants

log = logging.getLogger(__name__)


class NoBackend(RuntimeError):
    """No ggml backend of the binding runs on this machine."""


@dataclass(frozen=True)
class Backends:
    lib_dir: Path
    cpu_library: str | None  # the CPU variant chosen (None: linked into the binding)
    scores: dict[str, int]  # every CPU variant found, with its score on this machine
    build: dict[str, Any] | None  # llm-pool-build.json, when this project built the binding

    def describe(self) -> str:
        if self.cpu_library is None:
            return f"llama.cpp backends linked into the binding ({self.lib_dir})"
        others = ", ".join(f"{name} {score}" for name, score in sorted(self.scores.items()))
        portable = "portable build" if self.build else "not built by llm-pool (no build record)"
        return f"llama.cpp CPU backend {self.cpu_library} of [{others}] ({portable}, {self.lib_dir})"


_lock = threading.Lock()
_done: Backends | None = None


def lib_dir() -> Path:
    """Where llama-cpp-python loads its libraries from (LLAMA_CPP_LIB_PATH honoured)."""
    from llama_cpp import llama_cpp as binding

    base = getattr(binding, "_base_path", None)
    return Path(base) if base is not None else Path(binding.__file__).parent / "lib"


def ggml_in_use() -> ctypes.CDLL:
    """The libggml instance libllama uses. A wheel holds copies, not links: `libggml.so` and
    `libggml.so.0` are two files, and loading the first by path (as `llama_cpp._ggml` does)
    maps a second libggml with a registry of its own, where libllama never looks. So find
    the file the dynamic linker mapped for libllama and open that (the same inode: the same
    instance)."""
    import llama_cpp.llama_cpp  # noqa: F401  (loads libllama, and with it its libggml)

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            mapped = {line.split(None, 5)[-1].strip() for line in maps if "/libggml.so" in line}
    except OSError:
        mapped = set()
    for path in sorted(mapped):
        if re.fullmatch(r"libggml\.so(\.\d+)*", os.path.basename(path)):
            return ctypes.CDLL(path)
    return ctypes.CDLL(str(lib_dir() / "libggml.so"))  # not Linux: no maps to read


def variant_scores(directory: Path) -> dict[str, int]:
    """Each `libggml-cpu*.so` in `directory` with its `ggml_backend_score()` here (what ggml's
    chooser reads; 0: the CPU lacks an instruction it uses)."""
    scores = {}
    for path in sorted(directory.glob("libggml-cpu*.so")):
        try:
            score_fn = ctypes.CDLL(str(path)).ggml_backend_score
        except (OSError, AttributeError):
            continue  # not loadable, or a backend without a score (linked build)
        score_fn.restype = ctypes.c_int
        scores[path.name] = int(score_fn())
    return scores


def chosen(scores: dict[str, int]) -> str | None:
    """ggml's rule (ggml_backend_load_best): the tagged variant with the highest score above
    zero; else the untagged base library if it scores above zero."""
    tagged = {name: s for name, s in scores.items() if name != variants.BASE_LIBRARY and s > 0}
    if tagged:
        return max(tagged, key=lambda name: tagged[name])
    return variants.BASE_LIBRARY if scores.get(variants.BASE_LIBRARY, 0) > 0 else None


def read_build_info(directory: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((directory / variants.BUILD_INFO).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def ensure_backends() -> Backends:
    """Register the binding's backends once; raise NoBackend when none runs here."""
    global _done
    with _lock:
        if _done is not None:
            return _done
        ggml = ggml_in_use()
        ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        directory = lib_dir()
        if ggml.ggml_backend_reg_count() > 0:
            _done = Backends(directory, None, {}, read_build_info(directory))
        else:
            scores = variant_scores(directory)
            pick = chosen(scores)
            if pick is None:
                raise NoBackend(
                    f"no llama.cpp CPU backend in {directory} runs on this CPU "
                    f"(scores: {scores or 'no libggml-cpu*.so found'})"
                )
            ggml.ggml_backend_load_all_from_path(str(directory).encode())
            if ggml.ggml_backend_reg_count() == 0:
                raise NoBackend(f"ggml registered no backend from {directory}")
            _done = Backends(directory, pick, scores, read_build_info(directory))
        log.info("%s", _done.describe())
        return _done
