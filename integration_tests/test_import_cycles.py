"""No import cycles inside any package, every module imports in a fresh interpreter, Triton stays lazy.

(a) is static (AST): every ``import``/``from ... import`` of a module of the same package counts,
including imports inside functions (an import moved into a function still is a cycle, only a
hidden one). A package's ``__init__`` importing its own submodules is not an edge: re-exporting
is what ``__init__`` is for, and Python runs it before any submodule anyway.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC_ROOTS = [ROOT / "shared" / "src", *sorted((ROOT / "packages").glob("*/src"))]


def _packages() -> list[tuple[str, Path]]:
    found = []
    for src in SRC_ROOTS:
        for init in sorted(src.glob("*/__init__.py")):
            found.append((init.parent.name, init.parent))
    return found


PACKAGES = _packages()
IDS = [name for name, _ in PACKAGES]


def _module_name(pkg: str, pkg_dir: Path, path: Path) -> str:
    parts = [pkg, *path.relative_to(pkg_dir).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(pkg: str, pkg_dir: Path) -> dict[str, Path]:
    return {_module_name(pkg, pkg_dir, p): p for p in sorted(pkg_dir.rglob("*.py"))}


def _resolve(current: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(pkg: str, pkg_dir: Path) -> dict[str, set[str]]:
    """module -> modules of the same package it imports (anywhere in the file)."""
    modules = _modules(pkg, pkg_dir)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        if is_pkg:
            continue  # __init__ re-exporting its submodules is not a cycle
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for name in names:
                if name != pkg and not name.startswith(pkg + "."):
                    continue
                target = _target(name, modules)
                if target is not None and target != mod and target != pkg:
                    graph[mod].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _example_path(comp: list[str], graph: dict[str, set[str]]) -> str:
    """One concrete loop through the component, for the failure message."""
    members = set(comp)
    path = [comp[0]]
    while True:
        nxt = sorted(graph[path[-1]] & members)
        step = next((n for n in nxt if n not in path), None)
        if step is None:
            back = next(n for n in nxt if n in path)
            return " -> ".join([*path[path.index(back) :], back])
        path.append(step)


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert find_cycles(graph) == [["p.a", "p.b", "p.c"]]
    assert _example_path(["p.a", "p.b", "p.c"], graph) == "p.a -> p.b -> p.c -> p.a"


@pytest.mark.parametrize(("pkg", "pkg_dir"), PACKAGES, ids=IDS)
def test_no_import_cycles(pkg: str, pkg_dir: Path) -> None:
    graph = import_graph(pkg, pkg_dir)
    cycles = find_cycles(graph)
    assert not cycles, f"{pkg} has {len(cycles)} import cycle(s) (imports inside functions count):\n" + "\n".join(
        f"  {_example_path(c, graph)}   [{', '.join(c)}]" for c in cycles
    )


_IMPORT_ALL = """
import importlib, json, sys, traceback
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
print(json.dumps(failed))
"""


@pytest.mark.parametrize(("pkg", "pkg_dir"), PACKAGES, ids=IDS)
def test_every_module_imports_in_a_fresh_interpreter(pkg: str, pkg_dir: Path) -> None:
    names = sorted(_modules(pkg, pkg_dir))
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, json.dumps(names)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    failed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


@pytest.mark.parametrize(("pkg", "pkg_dir"), PACKAGES, ids=IDS)
def test_import_does_not_load_triton(pkg: str, pkg_dir: Path) -> None:
    code = f"import sys, {pkg}; print('triton' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False", f"`import {pkg}` imports triton: kernels must be built lazily"
