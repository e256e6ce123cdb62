"""The import graph of ``dicom_node``, drawn from the code: imports point down and never go round.

``docs/architecture.md`` draws the same layers. Every top-level module or package of
``dicom_node`` has a layer in :data:`LAYERS`; an import may only go to the same layer or
a lower one, and the module graph (every ``import`` of a ``dicom_node`` module, at module
level, inside functions or under ``TYPE_CHECKING``) has no cycle. A new package must be
given a layer here, so its place is a decision rather than an accident.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dicom_node"

#: Layer of each top-level module or package of ``dicom_node`` (higher imports lower).
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("__init__", "errors", "validators", "logs", "progress", "synthetic"),
    1: ("net", "pixels", "dicomweb", "spool"),
    2: ("config", "index", "objects", "spool_objects"),
    3: ("scp", "ingest", "staging", "assembler", "background", "routing", "jobs", "invocations", "writers",
        "validation", "delivery", "sources", "registry", "workqueue", "archive", "aiaa", "annotation"),
    4: ("services", "node"),
    5: ("api", "commands", "cli", "__main__"),
}
RANK = {name: layer for layer, names in LAYERS.items() for name in names}

#: Modules that may import project modules inside functions: the CLI's commands load the
#: node and the pixel stack only when they run, so ``dicom-node --help`` and ``status`` start fast.
DEFERRED_IMPORTS_ALLOWED = ("dicom_node.commands",)


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _target(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(known: dict[str, Path]) -> Iterator[tuple[str, str, int, bool]]:
    """``(importer, imported, line, inside_function)`` for every import of a project module."""
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        stack: list[tuple[ast.AST, bool]] = [(tree, False)]
        while stack:
            node, in_function = stack.pop()
            for child in ast.iter_child_nodes(node):
                names: list[str] = []
                if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                    names = [f"{child.module}.{alias.name}" for alias in child.names]
                elif isinstance(child, ast.Import):
                    names = [alias.name for alias in child.names]
                for name in names:
                    if name == "dicom_node" or name.startswith("dicom_node."):
                        target = _target(name, known)
                        if target and target != module:
                            yield module, target, child.lineno, in_function
                nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                stack.append((child, nested))


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_top_level_module_has_a_layer() -> None:
    tops = {_top(m) for m in modules()}
    assert not tops - RANK.keys(), f"give these a layer in LAYERS (and docs/architecture.md): {sorted(tops - RANK.keys())}"


def test_imports_point_down() -> None:
    known = modules()
    upward = [f"{a} (layer {RANK[_top(a)]}) -> {b} (layer {RANK[_top(b)]}) line {line}"
              for a, b, line, _ in imports(known) if RANK.get(_top(b), -1) > RANK.get(_top(a), 99)]
    assert upward == []


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for a, b, _, _ in imports(modules()):
        edges[a].add(b)
    assert _cycles(edges) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_project_imports_inside_functions_only_where_deferred_on_purpose() -> None:
    hidden = [f"{a}:{line} imports {b}" for a, b, line, inside in imports(modules())
              if inside and not a.startswith(DEFERRED_IMPORTS_ALLOWED)]
    assert hidden == [], "import at module level (a cycle is fixed by moving code, not by hiding the import)"
