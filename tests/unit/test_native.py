"""The portable llama.cpp recipe (issue 19): what a variant compiles for, how a build is
keyed, and how the run-time choice is made. The builds themselves are checked in
tests/integration/test_native_build.py."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from llmpool.native import build, loader, variants

ROOT = Path(__file__).resolve().parents[2]


def test_no_variant_uses_amx_or_the_build_machines_cpu() -> None:
    for variant in variants.VARIANTS:
        args = variant.cmake_args()
        assert "-DGGML_NATIVE=OFF" in args and "-DGGML_BACKEND_DL=ON" in args
        assert not [a for a in args if a.startswith("-DGGML_AMX") and a.endswith("=ON")], variant.tag
        # every switch explicit: with GGML_NATIVE off, ggml turns AVX2 and friends on itself
        for feature in variants.GGML_X86_FEATURES:
            assert sum(a.startswith(f"-DGGML_{feature}=") for a in args) == 1, (variant.tag, feature)


def test_variants_go_from_any_x86_64_upwards() -> None:
    assert variants.BASE.features == ("SSE42",)
    features = [set(v.features) for v in variants.VARIANTS]
    assert all(lower < higher for lower, higher in zip(features, features[1:], strict=False))


def test_an_unknown_feature_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown ggml features"):
        variants.Variant("x", ("AVX1024",), "").cmake_args()


def test_the_pins_are_setup_cfgs() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    assert build.pinned("llama_cpp") == extras["llama_cpp"].strip()
    assert build.pinned("llama_server") == extras["llama_server"].strip()


def test_a_changed_flag_is_a_new_build(monkeypatch: pytest.MonkeyPatch) -> None:
    requirement = "llama-cpp-python==0.3.36"
    package = build.package_for(requirement)
    key = build.build_key(requirement, package)
    assert build.build_key(requirement, package) == key  # stable
    assert build.build_key("llama-cpp-python==0.3.35", package) != key
    changed = (*variants.VARIANTS[:-1], variants.Variant("x86-64-v4", ("SSE42", "AVX", "AVX2"), ""))
    monkeypatch.setattr(variants, "VARIANTS", changed)
    assert build.build_key(requirement, package) != key
    monkeypatch.undo()
    monkeypatch.setattr(variants, "RECIPE_VERSION", variants.RECIPE_VERSION + 1)
    assert build.build_key(requirement, package) != key


def test_a_kept_wheel_is_found_by_its_key(tmp_path: Path) -> None:
    assert build.kept_wheel(tmp_path, "abc") is None
    (tmp_path / "abc").mkdir()
    wheel = tmp_path / "abc" / "x-1-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"")
    assert build.kept_wheel(tmp_path, "abc") == wheel
    assert build.kept_wheel(tmp_path, "other") is None


@pytest.mark.parametrize(
    ("scores", "pick"),
    [
        (
            {"libggml-cpu.so": 5, "libggml-cpu-x86-64-v3.so": 64, "libggml-cpu-x86-64-v4.so": 1984},
            "libggml-cpu-x86-64-v4.so",
        ),
        (
            {"libggml-cpu.so": 5, "libggml-cpu-x86-64-v3.so": 64, "libggml-cpu-x86-64-v4.so": 0},
            "libggml-cpu-x86-64-v3.so",
        ),
        (
            {"libggml-cpu.so": 5, "libggml-cpu-x86-64-v3.so": 0, "libggml-cpu-x86-64-v4.so": 0},
            "libggml-cpu.so",
        ),
        ({"libggml-cpu.so": 0, "libggml-cpu-x86-64-v3.so": 0}, None),
        ({}, None),
    ],
)
def test_the_choice_is_ggmls_rule(scores: dict[str, int], pick: str | None) -> None:
    assert loader.chosen(scores) == pick


def test_unknown_package_has_no_recipe() -> None:
    with pytest.raises(SystemExit, match="no recipe for torch"):
        build.package_for("torch==2.13.0")


def test_cmake_args_from_the_environment_are_built_and_keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    requirement = "llama-cpp-python==0.3.36"
    package = build.package_for(requirement)
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    plain = build.build_key(requirement, package)
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=ON")
    assert build.operator_args() == ["-DGGML_CUDA=ON"]
    assert build.build_key(requirement, package) != plain


@pytest.mark.parametrize(
    "arg", ["-DGGML_NATIVE=ON", "-DGGML_AVX512=ON", "-DGGML_AMX_INT8:BOOL=ON", "-DGGML_BACKEND_DL=OFF"]
)
def test_cmake_args_may_not_take_over_the_cpu_switches(monkeypatch: pytest.MonkeyPatch, arg: str) -> None:
    monkeypatch.setenv("CMAKE_ARGS", f"-DGGML_CUDA=ON {arg}")
    with pytest.raises(SystemExit, match="which the portable recipe decides"):
        build.operator_args()
