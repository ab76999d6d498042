"""Imports point one way: pure math → methods and data → callbacks → pipelines → command line, with no cycle.

The imports are read from the source (every ``import`` statement, inside functions too), so a lazy
import cannot hide a cycle. A new module must be given its layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdlightning"

LAYERS: dict[int, tuple[str, ...]] = {
    0: (  # pure: tensors, arrays, files, signals; no Lightning module or callback
        "kdlightning.losses",
        "kdlightning.fingerprint",
        "kdlightning.statekey",
        "kdlightning.errors",
        "kdlightning.atomic",
        "kdlightning.interrupt",
        "kdlightning.reporting",
        "kdlightning.stats",
        "kdlightning.data._partitioning",
        "kdlightning.data.partitioners",
        "kdlightning.data.shards",
        "kdlightning.data.partition_sizes",
        "kdlightning.data.strategies",
        "kdlightning.data.natural",
        "kdlightning.data.feature_skew",
        "kdlightning.data.data_strategies",
        "kdlightning.data.label_mix",
        "kdlightning.federated.aggregate",
    ),
    1: (  # methods, data, networks
        "kdlightning",
        "kdlightning.methods",
        "kdlightning.data",
        "kdlightning.models",
        "kdlightning.hf",
    ),
    2: (  # callbacks, the teacher-output cache, trainers, the LightningCLI of methods and data
        "kdlightning.cache",
        "kdlightning.callbacks",
        "kdlightning.trainers",
        "kdlightning.lightning_cli",
        "kdlightning.batching",
        "kdlightning.tracking",
    ),
    3: (  # pipelines
        "kdlightning.pipeline",
        "kdlightning.tuning",
        "kdlightning.study",
        "kdlightning.federated",
    ),
    4: ("kdlightning.cli", "kdlightning.__main__"),  # the command line
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of ``module``: that of the longest entry of :data:`LAYERS` it is, or lies under."""
    best = max(
        (
            entry
            for entries in LAYERS.values()
            for entry in entries
            if module == entry or module.startswith(entry + ".")
        ),
        key=len,
        default=None,
    )
    if best is None:
        raise KeyError(f"{module} has no layer: add it to LAYERS in {__file__}.")
    return next(number for number, entries in LAYERS.items() if best in entries)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) - {name} for name, path in paths.items()}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that point up a layer, and import cycles."""
    found = [
        f"{module} (layer {layer(module)}) imports {imported} (layer {layer(imported)})"
        for module, imported_set in sorted(graph.items())
        for imported in sorted(imported_set)
        if layer(imported) > layer(module)
    ]
    return found + [" -> ".join(cycle) for cycle in cycles(graph)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each module that lies on one (depth-first search)."""
    found, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                found.append([*stack[stack.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*stack, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_every_module_has_a_layer() -> None:
    for module in import_graph():
        layer(module)


def test_imports_point_down_and_never_in_a_circle() -> None:
    assert violations(import_graph()) == []


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("kdlightning.losses", "kdlightning.methods.base"),  # pure math reaching up
        ("kdlightning.cache", "kdlightning.study"),  # a callback reaching a pipeline
        ("kdlightning.methods.base", "kdlightning.methods.kd"),  # a cycle within one layer
    ],
)
def test_an_injected_upward_import_or_cycle_is_caught(importer: str, imported: str) -> None:
    graph = import_graph()
    assert importer in graph and imported in graph
    graph[importer] = graph[importer] | {imported}
    assert violations(graph), f"{importer} -> {imported} went unnoticed"


def test_a_lazy_import_counts(tmp_path: Path) -> None:
    path = tmp_path / "lazy.py"
    path.write_text("def f():\n    from kdlightning.study import Study\n    import kdlightning.cache\n")
    assert imports_of(path, {"kdlightning.study", "kdlightning.cache", "kdlightning.losses"}) == {
        "kdlightning.study",
        "kdlightning.cache",
    }
