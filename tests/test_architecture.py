"""The layering of docs/architecture.md, checked on the source: what may import what, and no cycles.

Imports are read with `ast` (module level and inside functions; `if TYPE_CHECKING:` blocks are not
run and are skipped), so the check needs no optional dependency and sees lazy imports too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> package name (pyproject.toml's package-dir).
PACKAGES = {"engine": "mvclam.engine", "kernels": "mvclam.kernels", "jobs": "mvclam.jobs"}
# The job modules: each runs one job; only the CLI layer may import them.
JOBS = {
    "mvclam.jobs.caption",
    "mvclam.jobs.caption_table",
    "mvclam.jobs.embed",
    "mvclam.jobs.evaluate",
    "mvclam.jobs.prepare_data",
    "mvclam.jobs.serve",
    "mvclam.jobs.train",
    "mvclam.jobs.demo",
}


def _module_files() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Product module -> the product modules it imports at run time."""
    modules = _module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # `from pkg import submodule` imports the submodule; `from pkg import name`, the package.
                targets = [
                    f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    return components


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_no_import_cycle_among_product_modules(graph):
    # Package __init__ modules count as modules: a submodule importing its own package's __init__,
    # which imports the submodule back, is a cycle too.
    assert _cycles(graph) == []


def test_engine_and_kernels_never_import_jobs(graph):
    offenders = {
        name: sorted(t for t in targets if t.startswith("mvclam.jobs"))
        for name, targets in graph.items()
        if name.startswith(("mvclam.engine", "mvclam.kernels"))
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_kernels_import_no_engine_and_triton_ops_not_their_op_modules(graph):
    kernels = {name: targets for name, targets in graph.items() if name.startswith("mvclam.kernels")}
    assert {n: sorted(t) for n, t in kernels.items() if any(x.startswith("mvclam.engine") for x in t)} == {}
    for name, targets in kernels.items():
        if name.rpartition(".")[2].startswith("triton_"):
            allowed = {"mvclam.kernels._checks", "mvclam.kernels.dispatch"}
            assert targets <= allowed, f"{name} imports {sorted(targets - allowed)}"


def test_no_job_imports_another_job(graph):
    offenders = {name: sorted(graph[name] & (JOBS - {name})) for name in JOBS if name in graph}
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_the_checker_sees_cycles_and_lazy_imports(tmp_path):
    """The graph code itself: a function-level import closing a loop is found."""
    tree = ast.parse("import os\ndef f():\n    from .b import g\nif TYPE_CHECKING:\n    from .c import h\n")
    names = [n.module for n in _runtime_imports(tree) if isinstance(n, ast.ImportFrom)]
    assert names == ["b"]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
