"""The layout shows the pipeline: every import (function-level ones included) goes from a stage to
itself or an earlier one, scale-out plumbing uses no stage, nothing imports in a circle, and no
module outgrows a sitting's reading."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fmnist_exp.params import FAMILIES

PACKAGE = Path(__file__).resolve().parent.parent / "fmnist_exp"
# Lowest first: a module may import its own layer and the layers before it. The bottom holds what
# every stage shares (parameters, metric names, statistics, the console); scale-out is used by the
# study stage and the commands and uses no stage; the commands and the CLI sit on top of all.
LAYERS = [
    {"__init__", "console", "metrics", "stats", "params"},
    {"data"},
    {"model"},
    {"classifier"},
    {"train"},
    {"scale"},
    {"study"},
    {"registry"},
    {"serving"},
    {"commands"},
    {"cli", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """The package modules an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name.removeprefix("fmnist_exp.") for a in node.names if a.name.startswith("fmnist_exp.")]
    if node.level == 0:
        if not (node.module or "").startswith("fmnist_exp"):
            return []
        base = (node.module or "").removeprefix("fmnist_exp").lstrip(".")
    else:
        parts = module.split(".")
        parts = parts if is_package else parts[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    known = _modules()
    out = []
    for alias in node.names:  # `from . import x` names a module; `from .x import y` names x
        sub = f"{base}.{alias.name}" if base else alias.name
        out.append(sub if sub in known or f"{sub}.__init__" in known else base)
    return [o for o in out if o]


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in _modules().items():
        is_package = path.name == "__init__.py"
        module = name.removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets.update(t.removesuffix(".__init__") for t in _resolve(module, node, is_package))
        graph[module] = targets - {module}
    return graph


def _top(module: str) -> str:
    return module.split(".")[0]


def test_every_import_goes_to_the_same_or_an_earlier_stage():
    later = sorted(f"{m} -> {t}" for m, targets in _imports().items() for t in targets
                   if RANK[_top(t)] > RANK[_top(m)])
    assert later == [], "a stage imports a later one"


def test_scale_out_uses_no_stage():
    stages = {"data", "model", "classifier", "train", "study", "registry", "serving", "commands", "cli"}
    used = sorted(f"{m} -> {t}" for m, targets in _imports().items() if _top(m) == "scale"
                  for t in targets if _top(t) in stages)
    assert used == []


def test_the_networks_stage_imports_no_mlflow():
    """model/ is networks: Keras, numpy and the parameters. What MLflow logs and loads (the classifier
    format) is the stage above it."""
    found = sorted(f"{path.relative_to(PACKAGE)}: {alias.name if isinstance(node, ast.Import) else node.module}"
                   for name, path in _modules().items() if _top(name) == "model"
                   for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
                   for alias in node.names[:1]
                   if (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0] == "mlflow")
    assert found == []


def test_no_import_circle():
    graph = _imports()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []


NETWORK_CLASSES = {"MlpParams", "CnnParams", "CustomParams", "BuiltinParams", "NetworkParams", "BaselineParams"}


def _kind_branches(tree: ast.AST) -> list[str]:
    """Where ``tree`` asks which kind of network it holds: isinstance or issubclass on a network's parameter
    class, type() compared, a FAMILY or a family's name compared, or hasattr standing in for one of these."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "") for a in node.args[1:]
                     for n in ast.walk(a)}
            if node.func.id in ("isinstance", "issubclass") and names & NETWORK_CLASSES:
                found.append(f"line {node.lineno}: {node.func.id}(..., {', '.join(sorted(names & NETWORK_CLASSES))})")
            if node.func.id == "hasattr":
                found.append(f"line {node.lineno}: hasattr")
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "FAMILY" for s in sides) or any(
                    isinstance(s, ast.Call) and getattr(s.func, "id", "") == "type" for s in sides):
                found.append(f"line {node.lineno}: FAMILY or type() compared")
            named = {c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)} & set(FAMILIES)
            if named:
                found.append(f"line {node.lineno}: {', '.join(sorted(named))} compared")
    return found


def test_nothing_above_the_builders_branches_on_the_kind_of_network():
    """Issue 53: every network is made by its builder (model/networks.py built) and trained by one path; what
    differs between networks lives in their builders and fits, so train/, study/, registry/ and commands/
    never ask which kind they hold (the baseline, no network, is its own command: cli._command)."""
    found = sorted(f"{path.relative_to(PACKAGE)} {where}" for name, path in _modules().items()
                   if _top(name) in ("train", "study", "registry", "commands")
                   for where in _kind_branches(ast.parse(path.read_text())))
    assert found == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_are_short(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


def test_the_layers_cover_the_package():
    assert {_top(m) for m in _modules()} <= set(RANK)


def test_pointers_to_documents_name_sections_that_exist():
    """Messages and manifests send people to "docs/x.md, 'Section'": the section must be there."""
    import re

    root = Path(__file__).resolve().parents[1]
    pointer = re.compile(r"(docs/[\w-]+\.md|README(?:\.md)?|BENCHMARKS\.md),? (?:section )?'([^']+)'")
    files = [*root.glob("fmnist_exp/**/*.py"), *root.glob("deploy/**/*.yaml"), root / "Dockerfile",
             *root.glob("scripts/*"), *root.glob("experiments/*.yaml")]
    found, broken = 0, []
    for f in files:
        for doc, section in pointer.findall(f.read_text(errors="replace")):
            doc = "README.md" if doc.startswith("README") else doc
            headings = [h.lstrip("#").strip() for h in (root / doc).read_text().splitlines() if h.startswith("#")]
            found += 1
            if not any(h.startswith(section) for h in headings):
                broken.append(f"{f.relative_to(root)}: {doc}, '{section}'")
    assert found >= 5 and broken == [], broken
