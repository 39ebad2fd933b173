"""No import cycles inside src/crosslm, read from the source with ``ast`` (nothing is imported).

Two graphs are checked. Module-level imports (the ones that run when a module is imported; those
under ``if TYPE_CHECKING:`` are left out, as they never run) must have no cycle at all. All imports,
function-level ones included, may only close a cycle through an edge in ``DEFERRED``: a function-level
import written to break a cycle, listed here so that a new one is a decision, not an accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "crosslm"

# (importer, imported): function-level imports that close a cycle, each with the cycle it breaks.
DEFERRED: set[tuple[str, str]] = set()

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, module_level_only: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements, skipping ``if TYPE_CHECKING:`` blocks and, if asked, function and class bodies."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_node(other)
                continue
            visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif not (module_level_only and isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)):
            visit(node)

    visit(tree)
    return found


def _targets(node: ast.Import | ast.ImportFrom, importer: str, modules: set[str],
             is_package: bool) -> set[str]:
    """The crosslm modules an import loads; ``from crosslm import x`` loads crosslm.x if that is a module."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    base = node.module or ""
    if node.level:
        anchor = importer.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    found = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules}
    if base in modules and len(found) < len(node.names):
        found.add(base)
    return found


def import_graph(module_level_only: bool) -> Graph:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: Graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = set()
        for node in _imports(tree, module_level_only):
            edges |= _targets(node, name, set(files), path.name == "__init__.py")
        graph[name] = edges - {name}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_module_level_imports_have_no_cycle():
    assert cycles(import_graph(module_level_only=True)) == []


def test_function_level_imports_close_a_cycle_only_where_listed():
    graph = import_graph(module_level_only=False)
    without_deferred = {name: {t for t in targets if (name, t) not in DEFERRED}
                        for name, targets in graph.items()}
    assert cycles(without_deferred) == []
    for edge in DEFERRED:  # an entry that no longer breaks a cycle should go
        importer, imported = edge
        assert imported in graph[importer], f"{importer} no longer imports {imported}"
        only_this = {name: {t for t in targets if (name, t) == edge or (name, t) not in DEFERRED}
                     for name, targets in graph.items()}
        assert any({importer, imported} <= set(cycle) for cycle in cycles(only_this)), (
            f"{importer} -> {imported} closes no cycle any more; remove it from DEFERRED")


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
