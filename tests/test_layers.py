"""The house: imports run one way (entrypoints -> training -> evaluation -> config -> rewards and models ->
answers, conversations and coordinates -> data -> core), rewards import no models, there is no import
cycle between modules (imports inside functions included), and pyproject lists every package."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skinderm"
PYPROJECT = PACKAGE.parent / "pyproject.toml"

ENTRYPOINTS = ("train", "evaluate", "predict", "annotate", "synthesize", "export", "compare")
# Lowest first. A module may import modules of its own layer or of layers below it, never above.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("skinderm", "skinderm.core", "skinderm.progress", "skinderm.geometry")),
    ("data", ("skinderm.data",)),
    ("answers", ("skinderm.answers", "skinderm.conversations", "skinderm.coordinates")),
    ("models and rewards", ("skinderm.models", "skinderm.rewards")),
    ("config", ("skinderm.config",)),
    ("evaluation", ("skinderm.evaluation",)),
    ("training", ("skinderm.training",)),
    ("entrypoints", tuple(f"skinderm.{name}" for name in ENTRYPOINTS)),
)
# Pairs within one layer that must stay apart.
FORBIDDEN: tuple[tuple[str, str], ...] = (("skinderm.rewards", "skinderm.models"),)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> Iterator[str]:
    """Every skinderm module `path` imports, at the top or inside a function (`from x import y` counts
    as importing x.y when that is a module, else x)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if not name.startswith("skinderm"):
                continue
            while name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in known:
                yield name
                break


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "skinderm" and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    return best[0]


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    graph = {name: set(imported_modules(path, known)) - {name} for name, path in found.items()}
    # Importing skinderm.x.y runs skinderm/x/__init__.py first: that is not an upward import.
    return {name: {dep for dep in deps if not name.startswith(dep + ".")} for name, deps in graph.items()}


def test_every_import_points_to_the_same_or_a_lower_layer() -> None:
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for name, deps in import_graph().items()
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(name)
    ]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN)
def test_forbidden_pairs_stay_apart(importer: str, imported: str) -> None:
    bad = [
        f"{name} imports {dep}"
        for name, deps in import_graph().items()
        if name == importer or name.startswith(importer + ".")
        for dep in deps
        if dep == imported or dep.startswith(imported + ".")
    ]
    assert not bad, "\n".join(bad)


def test_no_module_imports_training_from_a_lower_layer() -> None:
    """The acceptance of issue 11, spelled out: evaluation, rewards, models and data never import training."""
    lower = ("skinderm.evaluation", "skinderm.rewards", "skinderm.models", "skinderm.data", "skinderm.core")
    bad = [
        f"{name} imports {dep}"
        for name, deps in import_graph().items()
        if name.startswith(lower)
        for dep in deps
        if dep.startswith("skinderm.training")
    ]
    assert not bad, "\n".join(bad)


def test_there_is_no_import_cycle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_pyproject_lists_every_package() -> None:
    listed = set(tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"])
    packages = {module_name(init) for init in PACKAGE.rglob("__init__.py")}
    assert packages - listed == set(), f"add {sorted(packages - listed)} to [tool.setuptools] packages"
    assert re.search(r'"skinderm\.conf"', PYPROJECT.read_text())
