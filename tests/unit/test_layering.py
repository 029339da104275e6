"""The import layering of `llmpool/` and `blueprints/` (README, "How it works"): every
import goes to the same layer or one below, no module imports itself back through others,
and the core never imports Flask. Read from the source, so a lazy import inside a function
counts too; imports under `if TYPE_CHECKING:` do not (they never run)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top. A module belongs to the layer of its longest listed prefix; the bare
# package `llmpool` (its __init__) matches only itself.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "llmpool",
            "llmpool.errors",
            "llmpool.generation",
            "llmpool.faults",
            "llmpool.secrets",
            "llmpool.greenbridge",
            "llmpool.gpu",
            "llmpool.states",
            "llmpool.metrics",
            "llmpool.reasoning",
            "llmpool.config.fields",
            "llmpool.native.variants",
        ),
    ),
    (
        "parts",
        (
            "llmpool.auth",
            "llmpool.config",
            "llmpool.media",
            "llmpool.prompts",
            "llmpool.job",
            "llmpool.structured",
            "llmpool.tool_calls",
            "llmpool.supervisor",
            "llmpool.native",
        ),
    ),
    ("runtimes", ("llmpool.backends",)),
    ("settings", ("llmpool.config.loader",)),
    (
        "core",
        (
            "llmpool.waiting_line",
            "llmpool.executor",
            "llmpool.crashes",
            "llmpool.model",
            "llmpool.model_view",
            "llmpool.model_plan",
            "llmpool.load_plan",
            "llmpool.telemetry",
            "llmpool.placement",
            "llmpool.reload",
            "llmpool.pool",
        ),
    ),
    ("serving", ("llmpool.serving",)),
    ("tools", ("llmpool.cli", "llmpool.native.build", "llmpool.native.selftest")),
    ("http", ("blueprints",)),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in [*ROOT.glob("llmpool/**/*.py"), *ROOT.glob("blueprints/**/*.py")]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = modules()


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "llmpool" and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to the README)")
    return best[1]


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of import nodes inside `if TYPE_CHECKING:` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


def imports_of(path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import of a module of ours or of a third party."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                # `from pkg import mod` imports the module; `from mod import name` the module.
                child = f"{node.module}.{alias.name}"
                yield (child if child in MODULES else node.module), node.lineno


def graph() -> dict[str, set[str]]:
    return {
        name: {target for target, _ in imports_of(path) if target in MODULES and target != name}
        for name, path in MODULES.items()
    }


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_no_import_goes_up_a_layer() -> None:
    upward = []
    for name, path in MODULES.items():
        for target, line in imports_of(path):
            if target in MODULES and layer_of(target) > layer_of(name):
                upward.append(
                    f"{path.relative_to(ROOT)}:{line} {name} ({LAYERS[layer_of(name)][0]}) imports "
                    f"{target} ({LAYERS[layer_of(target)][0]})"
                )
    assert not upward, "\n".join(upward)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("llmpool")))
def test_the_core_never_imports_flask(name: str) -> None:
    assert not [t for t, _ in imports_of(MODULES[name]) if t.split(".")[0] in ("flask", "werkzeug")]


def test_an_upward_import_would_fail() -> None:
    assert layer_of("llmpool.pool") > layer_of("llmpool.backends.base")
    assert layer_of("blueprints.serving") > layer_of("llmpool.serving.pipeline") > layer_of("llmpool.pool")
    assert layer_of("llmpool.config.loader") > layer_of("llmpool.config.spec")


MAX_MODULE_LINES = 400


def test_no_module_outside_tests_is_above_400_lines() -> None:
    """Small files (STYLE.md): a module that grows past this mixes concerns; split it."""
    sources = [*ROOT.glob("llmpool/**/*.py"), *ROOT.glob("blueprints/**/*.py"), *ROOT.glob("bench/*.py")]
    sources += [*ROOT.glob("conf/*.py"), ROOT / "wsgi.py"]
    too_long = {
        str(p.relative_to(ROOT)): n
        for p in sources
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, too_long
