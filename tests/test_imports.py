"""The package's import structure: every module imports on its own, and no selfrec_ft module depends
on itself through other selfrec_ft modules (no import cycle, deferred imports inside functions
included: a cycle hidden in a function is still a tangle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "selfrec_ft"


def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: selfrec_ft modules it imports}`` from every import statement in its source, at
    module level or inside functions. ``from pkg import name`` counts as importing ``pkg.name`` when
    that is a module, else ``pkg``; relative imports are resolved against the module's package.
    Imports under ``if TYPE_CHECKING:`` count too: two modules that need each other's names, even only
    for annotations, belong together or need a third module below both."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                dep = owner(target) if target.split(".")[0] == "selfrec_ft" else None
                if dep and dep != name:
                    deps.add(dep)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the graph, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_deferred_and_relative_imports(tmp_path):
    pkg = tmp_path / "selfrec_ft"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from selfrec_ft.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import a\nfrom .a import f\n")
    modules = {name: path for name, path in (
        ("selfrec_ft", pkg / "__init__.py"), ("selfrec_ft.sub", pkg / "sub" / "__init__.py"),
        ("selfrec_ft.sub.a", pkg / "sub" / "a.py"), ("selfrec_ft.sub.b", pkg / "sub" / "b.py"))}
    graph = import_graph(modules)
    assert graph["selfrec_ft.sub.a"] == {"selfrec_ft.sub.b"}
    assert graph["selfrec_ft.sub.b"] == {"selfrec_ft.sub.a"}
    assert find_cycle(graph) in (["selfrec_ft.sub.a", "selfrec_ft.sub.b", "selfrec_ft.sub.a"],)


def test_the_graph_counts_imports_made_only_for_type_checking(tmp_path):
    pkg = tmp_path / "selfrec_ft"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from selfrec_ft.b import B\n")
    (pkg / "b.py").write_text("from selfrec_ft.a import f\n")
    modules = {"selfrec_ft": pkg / "__init__.py", "selfrec_ft.a": pkg / "a.py", "selfrec_ft.b": pkg / "b.py"}
    assert find_cycle(import_graph(modules)) == ["selfrec_ft.a", "selfrec_ft.b", "selfrec_ft.a"]


def layer_violations(graph: dict[str, set[str]], lower: str, upper: str, allowed=()) -> list[str]:
    """``"module -> imported"`` for every module inside package ``lower`` (or, with ``lower`` ""
    every module outside ``upper``) that imports a module of package ``upper``."""

    def inside(name: str, pkg: str) -> bool:
        return name == pkg or name.startswith(pkg + ".")

    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                  if inside(d, upper) and not inside(m, upper) and m not in allowed
                  and (not lower or inside(m, lower)))


def test_layer_violations_are_found_in_a_planted_graph():
    graph = {"selfrec_ft.cli": {"selfrec_ft.cmdline"}, "selfrec_ft.cli.x": {"selfrec_ft.cli"},
             "selfrec_ft.scripts.sft": {"selfrec_ft.cli.x", "selfrec_ft.cmdline"},
             "selfrec_ft.data.p1": {"selfrec_ft.scoring.report"}, "selfrec_ft.__main__": {"selfrec_ft.cli"}}
    assert layer_violations(graph, "", "selfrec_ft.cli", allowed={"selfrec_ft.__main__"}) == [
        "selfrec_ft.scripts.sft -> selfrec_ft.cli.x"]
    assert layer_violations(graph, "selfrec_ft.data", "selfrec_ft.scoring") == [
        "selfrec_ft.data.p1 -> selfrec_ft.scoring.report"]


def test_nothing_below_the_command_line_imports_it():
    """The ``selfrec`` command line is the top layer: library modules, the recipes' entry points
    (``scripts/``), sweeps and training share its helpers through :mod:`selfrec_ft.cmdline`, below it.
    ``python -m selfrec_ft`` (``__main__``) is the one module above it."""
    graph = import_graph(module_files())
    assert layer_violations(graph, "", "selfrec_ft.cli", allowed={"selfrec_ft.__main__"}) == []


def test_data_import_does_not_depend_on_scoring():
    graph = import_graph(module_files())
    assert layer_violations(graph, "selfrec_ft.data", "selfrec_ft.scoring") == []


def test_no_import_cycle_among_selfrec_ft_modules():
    graph = import_graph(module_files())
    assert len(graph) > 50
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(module_files())
    code = ("import importlib, sys\nfailed = []\nfor name in sys.argv[1:]:\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except Exception as exc:\n        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
            "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=600,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
