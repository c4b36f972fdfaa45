"""No import circles among the engine's modules: each module can be read, tested and changed knowing
only what it imports. Imports made only for type checking and imports inside functions count too (a
circle hidden in a function is still a circle). Every module of the package counts, the SIP core and the
service included."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

#: Edges allowed for a while, each with the reason and what removes it: none.
TRANSITIONAL: set[tuple[str, str]] = set()


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports (``from a import b`` counts ``a.b`` when it is a module)."""
    files = {module_name(root, p): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def engine_graph() -> dict[str, set[str]]:
    return import_graph(SRC, "swml_engine")


def test_no_import_circles_among_the_engine_modules() -> None:
    graph = engine_graph()
    for source, target in TRANSITIONAL:
        graph[source].discard(target)
    found = cycles(graph)
    shown = "\n".join(
        " <-> ".join(c) + "\n    " + "\n    ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found
    )
    assert not found, f"import circles (break one edge: a Protocol, or pass the object in):\n{shown}"


def test_each_transitional_edge_still_exists() -> None:
    """An allowed edge that is gone is removed from TRANSITIONAL, so it cannot come back unnoticed."""
    graph = engine_graph()
    gone = {(s, t) for s, t in TRANSITIONAL if t not in graph.get(s, set())}
    assert not gone, f"no longer imported, remove from TRANSITIONAL: {gone}"


def test_the_walker_finds_circles_through_type_checking_and_function_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    (pkg / "b.py").write_text("from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("def f():\n    from .. import a\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.c"] == {"pkg", "pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_the_sip_core_and_the_service_are_walked() -> None:
    graph = engine_graph()
    assert "swml_engine.transports.sip.call" in graph["swml_engine.service.server"]
    assert "swml_engine.transports.sip.message" in graph["swml_engine.transports.sip.useragent"]
