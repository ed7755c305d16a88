"""The layout stays one a newcomer can find their way in (issue 11): no import cycles among the
modules of gateway/ and publisher/, and no module of theirs over 400 lines.

The import graph is drawn from the source (the AST of every module), not from what Python
happens to load: an import inside a function counts as much as one at the top (a lazy import
only hides a cycle until the function runs). Imports under `if TYPE_CHECKING:` are left out:
Python never runs them, they only let two modules name each other's types (as
`delivery.ports` and `delivery.registry` do). Each failure names the files and lines to look at.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "publisher")
MAX_LINES = 400

# Modules over MAX_LINES that issue 11 has not split yet, with why they may stay for now. A
# module leaves this list when it is split (the test says so when one is no longer over);
# nothing joins it without a reason a reviewer accepted.
NOT_YET_SPLIT: dict[str, str] = {}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(module of ours that `name` imports, line), every import statement of the file."""
    is_package = path.name == "__init__.py"
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _ours(alias.name, known)
                if target:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, is_package, node.module, node.level)
            for alias in node.names:
                # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
                submodule = f"{base}.{alias.name}" if base else alias.name
                target = submodule if submodule in known else _ours(base, known)
                if target:
                    yield target, node.lineno


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of the tree, at any depth, except the bodies of `if TYPE_CHECKING:`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(name: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = name.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[:len(anchor) - (level - 1)]
    return ".".join([*anchor, module] if module else anchor)


def _ours(dotted: str, known: set[str]) -> str | None:
    """`dotted` if it is one of our modules, else its nearest enclosing one of ours (None: not ours)."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}; self-imports left out."""
    files = module_files()
    known = set(files)
    graph: dict[str, dict[str, int]] = {name: {} for name in files}
    for name, path in files.items():
        for target, line in imported_modules(name, path, known):
            if target != name:
                graph[name].setdefault(target, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm,
    iterative), as a path that starts and ends at the same module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
                        components.append(component)
    return [_cycle_within(graph, set(component)) for component in components]


def _cycle_within(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt not in component:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle within {sorted(component)}")


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    files = module_files()
    steps = [f"{a} imports {b} ({files[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join(cycle) + "\n    " + "\n    ".join(steps)


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, (
        "import cycles among gateway/ and publisher/ (a lazy import inside a function counts too): "
        "pass what the lower module needs as an argument, or move the shared part below both\n  "
        + "\n  ".join(describe(graph, cycle) for cycle in found)
    )


def test_no_module_over_the_line_limit() -> None:
    sizes = {str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
             for path in module_files().values()}
    over = {path: n for path, n in sizes.items() if n > MAX_LINES}
    offenders = sorted(set(over) - set(NOT_YET_SPLIT))
    assert not offenders, (
        f"modules over {MAX_LINES} lines: " + ", ".join(f"{p} ({over[p]} lines)" for p in offenders)
        + "; split each by job (one module per concern, a docstring saying why), keeping its import path "
        "as the one public entry if others import it"
    )
    split = sorted(p for p in NOT_YET_SPLIT if sizes.get(p, 0) <= MAX_LINES)
    assert not split, f"no longer over {MAX_LINES} lines (or gone): remove from NOT_YET_SPLIT: {split}"


# -- the checks above check something -------------------------------------------------------------

def test_a_cycle_is_found_and_reported_with_its_lines() -> None:
    graph = {"a": {"b": 3}, "b": {"c": 7}, "c": {"a": 12, "d": 1}, "d": {}, "e": {"e": 2}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b": 1}, "b": {}, "c": {"a": 1}}) == []


def test_function_level_relative_and_else_imports_are_edges_type_checking_ones_not(tmp_path: Path) -> None:
    pkg = tmp_path / "gateway" / "http"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    mod = pkg / "console.py"
    mod.write_text("def f():\n    from gateway import app\n\nfrom . import emit\nfrom ..config import X\n"
                   "if TYPE_CHECKING:\n    from gateway.http import jwks\nelse:\n    import gateway.http.jwks\n")
    known = {"gateway", "gateway.app", "gateway.config", "gateway.http", "gateway.http.emit",
             "gateway.http.console", "gateway.http.jwks"}
    edges = sorted(imported_modules("gateway.http.console", mod, known))
    assert edges == [("gateway.app", 2), ("gateway.config", 5), ("gateway.http.emit", 4),
                     ("gateway.http.jwks", 9)]


def test_the_cycle_check_sees_the_real_graph_and_finds_cycles() -> None:
    """Without this, an import graph drawn empty (a path or parsing mistake) would pass the
    cycle test vacuously."""
    graph = import_graph()
    assert len(graph) > 50, "every module of gateway/ and publisher/ is in the graph"
    assert "gateway.config" in graph["gateway.app"], "a known import is seen"
    assert sum(map(len, graph.values())) > 100, "the graph has its edges"
    made_up = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert cycles(made_up) == [["a", "b", "c", "a"]]
