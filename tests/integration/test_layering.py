"""The package's layers, read from its source: who may import whom.

The imports of every module under ``adamax_onnx/`` are read with ``ast`` (nothing is imported)
into a graph of edges between the package's own modules. An import at module level (class
bodies and ``try``/``if`` blocks included) runs when the module is imported; one inside a
function is lazy and runs on first call; one under ``if TYPE_CHECKING:`` never runs. The rules:

* no import cycle among module-level imports (lazy imports may close a loop: they are listed in
  the test's output and its ``lazy_imports`` / ``lazy_imports_closing_a_loop`` properties);
* ``adamax_onnx.passes`` (graph passes, ModelProto in and out) never imports the runtime/API
  layer (api, runtime, trainable, cli, federated, or the package's ``__init__``), not even
  lazily;
* only the CLI and ``adamax_onnx.federated`` use the example builders of ``adamax_onnx.models``;
* ``import adamax_onnx`` loads none of the heavy optional packages (checked in a fresh
  interpreter).

Each rule is a small function of the graph, run here on tiny synthetic graphs where it must
fail, so a rule that can never fire is caught.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "adamax_onnx"

#: The runtime/API layer that graph passes must not import.
RUNTIME_LAYER = tuple(
    f"{PACKAGE}.{name}" for name in ("api", "runtime", "trainable", "cli", "federated")
)
#: The modules allowed to import the example builders (adamax_onnx.models).
MODELS_USERS = (f"{PACKAGE}.cli", f"{PACKAGE}.federated", f"{PACKAGE}.models")
#: Packages ``import adamax_onnx`` must not load (tests, examples, Flower, the ortt build;
#: onnx_ir and its sympy, ~0.25 s, load with the first build, session or probe).
HEAVY = (
    "onnx_ir",
    "sympy",
    "torch",
    "torchvision",
    "transformers",
    "flwr",
    "sklearn",
    "onnxruntime.training",
    "onnxruntime_training",
)


@dataclass(frozen=True)
class Import:
    """``importer`` imports ``target`` at ``line``; ``lazy`` when inside a function."""

    importer: str
    target: str
    line: int
    lazy: bool


# --------------------------------------------------------------------------- reading the source
def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root / package``."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(nodes, lazy: bool = False):
    """Yield ``(import statement, lazy)`` under ``nodes``, skipping ``if TYPE_CHECKING:`` bodies."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, lazy
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _statements(node.orelse, lazy)
        else:
            inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _statements(ast.iter_child_nodes(node), inner)


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]
) -> list[str]:
    """The modules of ``known`` that an import statement in ``module`` loads by name."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
            base = ".".join(anchor + ([base] if base else []))
        # ``from pkg import name``: the submodule pkg.name when there is one, else pkg itself.
        candidates = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
            for alias in node.names
        ]
    found = []
    for name in candidates:
        while name and name not in known:  # ``import a.b.attr`` -> a.b
            name = name.rpartition(".")[0]
        if name and name != module and name not in found:
            found.append(name)
    return found


def read_imports(root: Path, package: str) -> list[Import]:
    """Every import between the modules of ``package`` (under ``root``), in file order."""
    modules = module_names(root, package)
    known = set(modules)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, lazy in _statements(tree.body):
            for target in _targets(node, module, is_package, known):
                edges.append(Import(module, target, node.lineno, lazy))
    return edges


# --------------------------------------------------------------------------- the rules
def import_cycles(edges: list[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def closes_a_loop(eager: list[tuple[str, str]], lazy: Import) -> bool:
    """Whether ``lazy`` would make an import cycle if it were at module level."""
    return any(lazy.importer in c for c in import_cycles([*eager, (lazy.importer, lazy.target)]))


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def forbidden(
    imports: list[Import],
    importers: tuple[str, ...],
    targets: tuple[str, ...],
    allowed: tuple[str, ...] = (),
) -> list[str]:
    """``importer:line -> target`` for each import from ``importers`` (outside ``allowed``)
    into ``targets``, lazy imports included."""
    return [
        f"{i.importer}:{i.line} -> {i.target}"
        for i in imports
        if _within(i.importer, importers)
        and not _within(i.importer, allowed)
        and _within(i.target, targets)
    ]


def loaded_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def heavy_modules(loaded: set[str]) -> list[str]:
    return sorted(m for m in loaded if _within(m, HEAVY))


# --------------------------------------------------------------------------- the rules can fail
def test_cycle_finder_on_a_synthetic_graph():
    edges = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d"), ("f", "a")]
    assert import_cycles(edges) == [["a", "b", "c"], ["d", "e"]]
    assert import_cycles([("a", "b"), ("b", "c"), ("a", "c")]) == []  # a diamond is no cycle
    assert closes_a_loop([("a", "b")], Import("b", "a", 1, lazy=True))
    assert not closes_a_loop([("a", "b")], Import("a", "c", 1, lazy=True))


SYNTHETIC = {
    "pkg/__init__.py": "from .api import run\n",
    "pkg/api.py": "from . import passes\nfrom .passes import util\n",
    "pkg/passes/__init__.py": "",
    "pkg/passes/util.py": (
        "from typing import TYPE_CHECKING\n"
        "import pkg.models.mlp as mlp\n"
        "if TYPE_CHECKING:\n    from ..api import run\n"
        "def f():\n    from .. import api\n    return api\n"
    ),
    "pkg/models/__init__.py": "",
    "pkg/models/mlp.py": "from ..passes.util import f\n",
}


@pytest.fixture
def synthetic_imports(tmp_path) -> list[Import]:
    for name, text in SYNTHETIC.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return read_imports(tmp_path, "pkg")


def test_reader_resolves_relative_lazy_and_type_checking_imports(synthetic_imports):
    got = {(i.importer, i.target, i.lazy) for i in synthetic_imports}
    assert got == {
        ("pkg", "pkg.api", False),
        ("pkg.api", "pkg.passes", False),
        ("pkg.api", "pkg.passes.util", False),
        ("pkg.passes.util", "pkg.models.mlp", False),
        ("pkg.passes.util", "pkg.api", True),  # the TYPE_CHECKING import is not an edge
        ("pkg.models.mlp", "pkg.passes.util", False),
    }


def test_rules_fire_on_a_synthetic_package(synthetic_imports):
    eager = [(i.importer, i.target) for i in synthetic_imports if not i.lazy]
    assert import_cycles(eager) == [["pkg.models.mlp", "pkg.passes.util"]]
    assert forbidden(synthetic_imports, ("pkg.passes",), ("pkg.api",)) == [
        "pkg.passes.util:6 -> pkg.api"
    ]
    assert forbidden(synthetic_imports, ("pkg",), ("pkg.models",), ("pkg.models",)) == [
        "pkg.passes.util:2 -> pkg.models.mlp"
    ]


def test_heavy_import_check_sees_an_import():
    assert heavy_modules({"numpy", "torch", "torch.nn", "onnxruntime", "flwr"}) == [
        "flwr",
        "torch",
        "torch.nn",
    ]
    assert "json" in loaded_after("import json")


# --------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = read_imports(ROOT, PACKAGE)
    # A reader that silently found nothing would pass every rule below.
    assert {(i.importer, i.target) for i in found} >= {
        (PACKAGE, f"{PACKAGE}.runtime"),
        (f"{PACKAGE}.federated.prepare", f"{PACKAGE}.models.mlp"),
    }, "the import reader no longer sees the package's known imports"
    return found


def test_no_import_cycle(imports, record_property):
    eager = [(i.importer, i.target) for i in imports if not i.lazy]
    cycles = import_cycles(eager)
    assert not cycles, "module-level import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)
    lazy = sorted((i for i in imports if i.lazy), key=lambda i: (i.importer, i.line))
    report = [f"{i.importer}:{i.line} -> {i.target}" for i in lazy]
    closing = [f"{i.importer}:{i.line} -> {i.target}" for i in lazy if closes_a_loop(eager, i)]
    record_property("lazy_imports", report)
    record_property("lazy_imports_closing_a_loop", closing)
    print("lazy imports inside the package:", *report, sep="\n  ")
    print("of which close a loop (would be a cycle at module level):", *closing, sep="\n  ")


def test_passes_never_import_the_runtime_layer(imports):
    bad = forbidden(imports, (f"{PACKAGE}.passes",), RUNTIME_LAYER)
    # ``from ... import X`` of a name of adamax_onnx/__init__.py loads api and runtime too.
    bad += [
        f"{i.importer}:{i.line} -> {i.target}"
        for i in imports
        if i.importer.startswith(f"{PACKAGE}.passes") and i.target == PACKAGE
    ]
    assert not bad, "adamax_onnx.passes imports the runtime/API layer: " + ", ".join(bad)


def test_only_cli_and_federated_use_the_example_models(imports):
    bad = forbidden(imports, (PACKAGE,), (f"{PACKAGE}.models",), MODELS_USERS)
    assert not bad, "library code imports the example builders: " + ", ".join(bad)


def test_import_adamax_onnx_loads_no_heavy_package():
    loaded = loaded_after("import adamax_onnx")
    assert "adamax_onnx.api" in loaded  # the interpreter did import the package
    assert not heavy_modules(loaded), heavy_modules(loaded)
