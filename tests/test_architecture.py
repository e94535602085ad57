"""The package's structure: layers that import only downwards (docs/architecture.md), no import cycle, and a light
root import (no torch, no timm) for `snapvit --help`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = "snapvit_cli"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """Every package module imported anywhere in ``tree`` (function-level imports included, TYPE_CHECKING not)."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
        stack.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in modules}


def _packages_of(module: str) -> set[str]:
    """The sub-packages whose ``__init__`` runs before ``module`` (not the root, whose imports are all lazy)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts))}


def import_graph() -> dict[str, set[str]]:
    """Module -> modules it imports. Importing ``a.b.c`` from outside ``a.b`` also runs ``a.b``'s ``__init__``."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        edges = _imports(ast.parse(path.read_text(), str(path)), modules)
        own_packages = _packages_of(name)  # already being imported when ``name`` runs
        implied = {pkg for target in edges for pkg in _packages_of(target)} - own_packages
        graph[name] = (edges | implied) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


# The package's layers, lowest first (drawn in docs/architecture.md). A unit is a sub-package or a top-level module; a
# unit may import only units of a lower rank (function-level imports included), so every package-level cycle, even
# one hidden inside a function, fails here. ``elastic`` is the format-and-I/O core: nothing it imports knows a
# feature (scoring, correction, evaluation, publishing) built on it.
RANKS: list[set[str]] = [
    {"_version", "errors"},
    {"fileio", "schema", "devices", "hashing", "scoreset", "hub_client", "launcher", "seeds"},  # leaves
    {"models", "export_metadata"},  # resolving and loading the dense source model; what exported files say
    {"adapters", "data", "export"},  # model families' unit layout; images; export of a built model
    {"elastic"},  # the bundle and sliced-model formats: cut, read, write
    {"scoring", "correction", "evaluation", "reference", "latency", "info"},  # features built on the format
    {"slicing", "hub"},  # compositions: corrected slicing; publishing
    {"api"},  # the public loaders and evaluation
    {"cli"},  # commands: parse -> one library call -> present
    {"__main__", ""},  # `python -m snapvit_cli`; the package root, whose imports are all lazy
]


def unit_of(module: str) -> str:
    """``snapvit_cli.elastic.bundle`` -> ``elastic``; ``snapvit_cli.api`` -> ``api``; the root -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rank_violations(graph: dict[str, set[str]], ranks: list[set[str]]) -> list[str]:
    """Every import of a unit by a unit not ranked above it, as ``module -> module``; units must all be ranked."""
    rank = {unit: i for i, units in enumerate(ranks) for unit in units}
    unranked = sorted({unit_of(m) for m in graph} - set(rank))
    if unranked:
        return [f"unranked: {', '.join(unranked)}"]
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = unit_of(module), unit_of(target)
            if a != b and rank[b] >= rank[a]:
                bad.append(f"{module} -> {target}")
    return bad


def test_rank_rule_sees_an_upward_import():
    graph = {"p.low.a": {"p.high.b"}, "p.high.b": set()}
    assert rank_violations(graph, [{"low"}, {"high"}]) == ["p.low.a -> p.high.b"]
    assert rank_violations({"p.low.a": {"p.peer.b"}}, [{"low", "peer"}]) == ["p.low.a -> p.peer.b"]
    assert rank_violations({"p.new.a": set()}, [{"low"}]) == ["unranked: new"]
    assert rank_violations({"p.high.a": {"p.low.b"}}, [{"low"}, {"high"}]) == []


def test_packages_import_only_lower_ranks():
    violations = rank_violations(import_graph(), RANKS)
    assert not violations, "imports against the ranks in docs/architecture.md:\n" + "\n".join(violations)


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "snapvit_cli.elastic.bundle" in graph  # the walk found the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_root_import_and_help_stay_light():
    code = (
        "import sys, snapvit_cli\n"
        "from snapvit_cli.cli import app\n"  # what `snapvit --help` imports
        "heavy = sorted(m for m in ('torch', 'timm', 'safetensors', 'huggingface_hub') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_library_errors_name_parameters_and_the_cli_names_flags():
    import pytest
    import torch

    from snapvit_cli.adapters.cost import CostTerms
    from snapvit_cli.cli._output import flag_message
    from snapvit_cli.elastic.budget import plan_slice
    from snapvit_cli.errors import SnapvitError
    from snapvit_cli.evaluation.settings import EvalSettings

    with pytest.raises(SnapvitError) as caught:
        EvalSettings(k=0)
    assert str(caught.value) == "k must be at least 1, got 0" and caught.value.param == "k"
    assert flag_message(caught.value) == "--knn-k must be at least 1, got 0"
    with pytest.raises(SnapvitError) as caught:
        cost = CostTerms(32, 17, 1000, 10, 20, 500, 5, 9)
        plan_slice(torch.rand(2, 8), torch.rand(2, 4), cost, flops=2.0)
    assert str(caught.value).startswith("flops must lie in (0, 1]") and "--" not in str(caught.value)
    assert flag_message(caught.value).startswith("--flops must lie in (0, 1]")
    custom = flag_message(SnapvitError("samples must be at least 1", param="samples"), {"samples": "--correct-samples"})
    assert custom == "--correct-samples must be at least 1"
