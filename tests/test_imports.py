"""The package's import structure: modules import in the direction of the data flow, and no cycles.

The graph is read from the source with `ast` (nothing is imported): one node per module of `videopanda`
(a package is its `__init__.py`), and an edge for each name an `import` / `from ... import` statement
brings in from another module of the package, at any depth (module level, inside functions, under
`TYPE_CHECKING`).
`from videopanda.a import b` is an edge to the module `videopanda.a.b` when that is a module, else to
`videopanda.a`; relative imports are resolved against the importing module's package.

Layers (docs/DESIGN.md, "Structure"): the lower layer (`data/`, `model/` and the small shared modules)
is what the command layer (`cli`, `train/`, `eval/`, `serve/`, `bench/`, `quickstart/`, the lmms-eval
plugin) is built on, and never imports it.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "videopanda"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

LOWER_LAYER = {"data", "model", "io", "log", "constants", "argparsing"}
COMMAND_LAYER = {"cli", "train", "eval", "serve", "bench", "quickstart", "lmms_eval_plugin"}
SUBPACKAGES_WITHOUT_CYCLES = ("serve", "train", "eval")


@dataclass(frozen=True)
class Import:
    """One import statement's edge: `source` imports `target` at `path`:`line`."""

    source: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(PACKAGE_DIR.parent)}:{self.line}: {self.source} imports {self.target}"


def package_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under the package."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _containing_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of the dotted `name` that is a module of the package (None: outside it)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in modules:
            return prefix
    return None


def _from_base(node: ast.ImportFrom, module: str, path: Path) -> str:
    """The absolute module a `from X import ...` statement reads from (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every edge from `module` to another module of the package, one per imported name."""
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, module, path)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _containing_module(name, modules)
            if target is not None and target != module:
                edges.append(Import(module, target, path, node.lineno))
    return edges


def import_graph(modules: dict[str, Path]) -> list[Import]:
    return [edge for module, path in modules.items() for edge in imports_of(module, path, modules)]


def layer(module: str) -> str:
    """The package's top-level part a module belongs to: `videopanda.data.frames` -> "data"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The nodes a path of one edge or more leads to from `start` (itself only when it is on a cycle)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for successor in graph[todo.pop()] - seen:
            seen.add(successor)
            todo.append(successor)
    return seen


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of nodes on a common cycle (each reaches every other), each sorted, in sorted order."""
    reach = {node: reachable(graph, node) for node in graph}
    groups = {tuple(sorted(other for other in reach[node] if node in reach[other]))
              for node in graph if node in reach[node]}
    return sorted(list(group) for group in groups)


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str]:
    """The shortest path start -> ... -> start (breadth first), as the list of its nodes, start twice."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node]):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if successor not in previous:
                    previous[successor] = node
                    following.append(successor)
        frontier = following
    return []


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Per strongly connected component: its members and the shortest cycle through its first member."""
    found = []
    for component in strongly_connected(graph):
        members = set(component)
        inside = {node: graph[node] & members for node in component}
        found.append((component, shortest_cycle(inside, component[0])))
    return found


def cycle_report(found: list[tuple[list[str], list[str]]], edges: list[Import]) -> str:
    """Readable lines: each component, one cycle through it, and the import statements that close it."""
    lines = []
    for component, cycle in found:
        lines.append(f"{', '.join(component)}, for example {' -> '.join(cycle)}, through:")
        inside = {edge for edge in edges if edge.source in component and edge.target in component}
        lines += [f"  {edge}" for edge in sorted(inside, key=lambda e: (e.path, e.line, e.target))]
    return "\n".join(lines)


def test_the_walk_resolves_every_form_of_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "a.py": "import pkg.sub.b\nfrom pkg.sub import c\nfrom pkg import sub\n",
        "sub/__init__.py": "from . import b\nfrom .c import name\n",
        "sub/b.py": "def later():\n    from ..a import thing\n    import os\n",
        "sub/c.py": "from .. import a\nfrom pkg.sub.b import later, other\n",
    }
    for name, text in sources.items():
        (package / name).write_text(text)
    modules = package_modules(package)
    edges = {(e.source, e.target, e.line) for e in import_graph(modules)}
    assert edges == {("pkg.a", "pkg.sub.b", 1), ("pkg.a", "pkg.sub.c", 2), ("pkg.a", "pkg.sub", 3),
                     ("pkg.sub", "pkg.sub.b", 1), ("pkg.sub", "pkg.sub.c", 2), ("pkg.sub.b", "pkg.a", 2),
                     ("pkg.sub.c", "pkg.a", 1), ("pkg.sub.c", "pkg.sub.b", 2)}


def test_cycles_are_found_and_shown_as_a_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert cycles(graph) == [(["a", "b", "c"], ["a", "b", "c", "a"]), (["d", "e"], ["d", "e", "d"])]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_data_and_model_import_nothing_from_the_command_layer():
    upward = [str(edge) for edge in import_graph(package_modules())
              if layer(edge.source) in LOWER_LAYER and layer(edge.target) in COMMAND_LAYER]
    assert not upward, ("modules below the command layer import from it (move the shared code down, or the "
                        "importing code up):\n" + "\n".join(upward))


def graph_of(edges: list[Import], nodes) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {node: set() for node in nodes}
    for edge in edges:
        graph[edge.source].add(edge.target)
    return graph


def test_no_import_cycle_between_modules():
    modules = package_modules()
    edges = import_graph(modules)
    found = cycles(graph_of(edges, modules))
    assert not found, "modules that import each other:\n" + cycle_report(found, edges)


def test_no_import_cycle_between_serve_train_and_eval():
    edges = [Import(layer(e.source), layer(e.target), e.path, e.line) for e in import_graph(package_modules())]
    edges = [e for e in edges if e.source != e.target
             and e.source in SUBPACKAGES_WITHOUT_CYCLES and e.target in SUBPACKAGES_WITHOUT_CYCLES]
    found = cycles(graph_of(edges, SUBPACKAGES_WITHOUT_CYCLES))
    assert not found, "subpackages that import each other:\n" + cycle_report(found, edges)
