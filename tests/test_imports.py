"""The package's import graph: no cycles among gqsa modules, and the library never imports the
benchmarks (gqsa.kernels -> gqsa.bench). Imports inside functions count as edges too.

The graph is read from the source with ``ast`` (nothing is imported): an edge A -> B for every
``import gqsa.B`` / ``from gqsa.B import x`` in A, and A -> gqsa.B.x when ``x`` is a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gqsa

ROOT = Path(gqsa.__file__).parent


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module under the package folder ``root``."""
    out = {}
    for f in root.rglob("*.py"):
        parts = (root.name,) + f.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source."""
    files = module_files(root)
    graph = {}
    for mod, f in files.items():
        pkg = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: climb from the module's package
                    up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[mod] = {t for t in targets if t in files and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (each holds a cycle), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_cycle_finder_finds_a_cycle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_graph_reads_function_level_and_from_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import a\nimport pkg\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.sub.a", "pkg"}
    assert cycles(graph) == [["pkg.sub.a", "pkg.sub.b"]]


def test_no_import_cycles_among_gqsa_modules():
    graph = import_graph()
    assert len(graph) > 40 and "gqsa.kernels.ops" in graph["gqsa.layer"]
    assert cycles(graph) == []


def test_kernels_never_import_the_benchmarks():
    arrows = [(m, t) for m, ts in import_graph().items() if m.startswith("gqsa.kernels")
              for t in ts if t.startswith("gqsa.bench")]
    assert arrows == []
