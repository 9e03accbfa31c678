"""Imports point one way (DESIGN.md, "Layers"), read from the source: nothing is imported.

- no import cycle among the modules of ``vlbench``, ``architectures`` and ``feature_extractors``
  (function-level imports count: an import moved into a function to dodge a cycle is still one);
- the model packages never import the harness;
- the read side (results, store, export, compare, gate, tables, reports, ...) reaches neither
  torch nor the model packages, however many modules lie between: a report renders on a machine
  without them, and shows only what was stored with the run.

Imports under ``if TYPE_CHECKING:`` are left out: they never run. A package's ``__init__`` runs
whenever one of its modules is imported, so the reachability check follows those edges too.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vlbench", "architectures", "feature_extractors")
MODEL_PACKAGES = ("architectures", "feature_extractors")
#: torch, and the libraries that import it
TORCH = ("torch", "torchvision", "timm", "transformers")
#: the read side: these, and every module of READER_PACKAGES
READERS = tuple(f"vlbench.{name}" for name in (
    "results", "stats", "paper", "store", "store_schema", "runs", "case_keys", "upgrade",
    "export", "read_export", "compare", "rank_test", "gate", "table", "rounds", "fit",
    "retrieval_cost", "retrieval_fit", "devices", "contention", "waterfall",
))
READER_PACKAGES = ("vlbench.report",)


@dataclass(frozen=True)
class Graph:
    """Modules of the packages, what each imports among them and what it imports outside."""

    modules: dict[str, Path]
    internal: dict[str, set[str]]
    external: dict[str, set[str]]  # top-level names of other distributions (torch, numpy, ...)


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, function bodies included, ``if TYPE_CHECKING:`` bodies not."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif _is_type_checking(child):
            assert isinstance(child, ast.If)
            for other in child.orelse:
                yield from _import_nodes(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def imported_modules(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """Absolute names of what ``module`` imports: a submodule where ``from pkg import name``
    names one, else the package; relative imports resolved."""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
            continue
        if node.level:
            anchor = base[: len(base) - (node.level - 1)]
            source = ".".join([*anchor, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            yield sub if sub in known else source


def build_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES,
                exclude: Iterable[str] = ()) -> Graph:
    packages = tuple(packages)
    modules = {m: p for m, p in module_files(root, packages).items() if m not in set(exclude)}
    known = set(module_files(root, packages))
    internal: dict[str, set[str]] = {m: set() for m in modules}
    external: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name in imported_modules(module, path, known):
            top = name.split(".")[0]
            if top not in packages:
                external[module].add(top)
                continue
            while name and name not in known:  # 'pkg.module.attribute' -> 'pkg.module'
                name = name.rpartition(".")[0]
            if name in modules and name != module:
                internal[module].add(name)
    return Graph(modules, internal, external)


def cycles(edges: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Per strongly connected component of more than one module: one concrete cycle through it,
    and the component's other members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[tuple[list[str], list[str]]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while (w := stack.pop()) != v:
                component.add(w)
            if component:
                cycle = _cycle_through(v, component | {v}, edges)
                found.append((cycle, sorted(component - set(cycle))))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _cycle_through(start: str, component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """The shortest path from ``start`` back to itself inside its component."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(edges[v] & component):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if w not in previous:
                previous[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")


def _runs_with(module: str, graph: Graph) -> set[str]:
    """What importing ``module`` runs directly: its imports and its packages' ``__init__``."""
    parents = {module.rsplit(".", depth)[0] for depth in range(1, module.count(".") + 1)}
    return graph.internal[module] | (parents & set(graph.modules))


def forbidden_chain(start: str, graph: Graph,
                    model_packages: Iterable[str] = MODEL_PACKAGES) -> list[str] | None:
    """The shortest import chain from ``start`` to torch or a model package, or None."""
    model_packages = tuple(model_packages)
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        bad = sorted(graph.external[v] & set(TORCH))
        if bad or v.split(".")[0] in model_packages:
            chain = [*bad[:1]]
            step: str | None = v
            while step is not None:
                chain.append(step)
                step = previous[step]
            return list(reversed(chain))
        for w in sorted(_runs_with(v, graph)):
            if w not in previous:
                previous[w] = v
                queue.append(w)
    return None


def readers(graph: Graph) -> list[str]:
    return sorted(m for m in graph.modules
                  if m in READERS or any(m == p or m.startswith(p + ".") for p in READER_PACKAGES))


GRAPH = build_graph()


# -- the layers ---------------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    found = [" -> ".join(cycle) + (f" (and through {', '.join(rest)})" if rest else "")
             for cycle, rest in cycles(GRAPH.internal)]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_model_packages_do_not_import_the_harness() -> None:
    offending = [f"{m} -> {t}" for m in GRAPH.modules if m.split(".")[0] in MODEL_PACKAGES
                 for t in sorted(GRAPH.internal[m]) if t.split(".")[0] == "vlbench"]
    assert not offending, "a model package imports vlbench:\n" + "\n".join(offending)


def test_every_reader_is_in_the_tree() -> None:
    assert set(READERS) <= set(GRAPH.modules)
    assert len(readers(GRAPH)) >= len(READERS) + 5  # and the report package's modules


@pytest.mark.parametrize("reader", readers(GRAPH))
def test_readers_reach_neither_torch_nor_the_model_packages(reader: str) -> None:
    chain = forbidden_chain(reader, GRAPH)
    assert chain is None, f"{reader} imports torch or model code: {' -> '.join(chain or [])}"


# -- the checker itself, on small trees ---------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "app/__init__.py": "",
        "app/a.py": "from . import b\n",
        "app/b.py": "def late():\n    from app.c import thing\n",
        "app/c.py": "from .a import x\n",
        "app/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app import a\n",
    })
    graph = build_graph(root, ["app"])
    assert graph.internal["app.b"] == {"app.c"} and graph.internal["app.d"] == set()
    assert cycles(graph.internal) == [(["app.a", "app.b", "app.c", "app.a"], [])]
    assert cycles(build_graph(root, ["app"], exclude=["app.c"]).internal) == []


def test_checker_names_the_chain_to_torch(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "app/__init__.py": "",
        "app/read.py": "from app.util import helper\n",
        "app/util.py": "import numpy\nfrom app.sub import heavy\n",
        "app/sub/__init__.py": "import torch.nn\n",
        "app/sub/heavy.py": "",
        "app/clean.py": "import numpy\n",
        "model/__init__.py": "",
        "app/uses_model.py": "from model import layers\n",
        "model/layers.py": "",
    })
    graph = build_graph(root, ["app", "model"])
    assert graph.external["app.util"] == {"numpy"}
    assert graph.internal["app.uses_model"] == {"model.layers"}
    # app.sub.heavy imports nothing, but importing it runs app/sub/__init__.py
    assert forbidden_chain("app.read", graph, ["model"]) == [
        "app.read", "app.util", "app.sub.heavy", "app.sub", "torch"]
    assert forbidden_chain("app.clean", graph, ["model"]) is None
    assert forbidden_chain("app.uses_model", graph, ["model"]) == [
        "app.uses_model", "model.layers"]
