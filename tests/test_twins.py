"""Declared twins: every rule the proxy runs in Python and the simulator in numba.

Each numba module of `envs/` that re-implements a rule declares its reference in `rl_lb` with a
module-level `TWIN_OF` and names it in its docstring; this table says which test feeds both the
same events and compares their decisions. A twin without a row here, a row without its test, or
a twin that re-defines a constant of its reference instead of importing it fails below.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import envs

ROOT = Path(__file__).resolve().parent.parent

TWINS = {
    # numba twin: (reference, equivalence test)
    "envs.nb_metrics": ("rl_lb.metrics", "tests/test_sim_metrics.py"),
    "envs.nb_pickers": ("rl_lb.pickers", "tests/test_sim_pickers.py"),
    "envs.nb_health": ("rl_lb.health", "tests/test_sim_health.py"),
    "envs.nb_retry_budget": ("rl_lb.retry_budget", "tests/test_sim_retry_budget.py"),
    "envs.nb_prequal": ("rl_lb.prequal", "tests/test_prequal.py"),
    "envs.nb_slow_start": ("rl_lb.slow_start", "tests/test_slow_start.py"),
    "envs.nb_features": ("rl_lb.features", "tests/test_nb_features.py"),
}


def _declared() -> dict[str, str]:
    """{module: TWIN_OF} for every module of `envs` that declares one."""
    found = {}
    for info in pkgutil.iter_modules(envs.__path__, "envs."):
        module = importlib.import_module(info.name)
        if hasattr(module, "TWIN_OF"):
            found[info.name] = module.TWIN_OF
    return found


def _imported_modules(tree: ast.Module) -> set[str]:
    """Modules a file imports, as dotted names (`from a import b` counts as a and a.b)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _public_constants(module: ModuleType) -> set[str]:
    return {name for name in vars(module) if name.isupper() and not name.startswith("_")}


def test_the_table_lists_exactly_the_declared_twins() -> None:
    declared = _declared()
    assert declared == {twin: reference for twin, (reference, _) in TWINS.items()}


@pytest.mark.parametrize("twin", TWINS)
def test_a_twin_names_its_reference_in_its_docstring(twin: str) -> None:
    reference, _ = TWINS[twin]
    assert f"`{reference}`" in (importlib.import_module(twin).__doc__ or "")


@pytest.mark.parametrize("twin", TWINS)
def test_each_pair_has_its_equivalence_test(twin: str) -> None:
    reference, test_file = TWINS[twin]
    tree = ast.parse((ROOT / test_file).read_text(encoding="utf-8"))
    imported = _imported_modules(tree)
    assert {twin, reference} <= imported, f"{test_file} must import {twin} and {reference}"
    tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert tests, f"{test_file} has no test"


@pytest.mark.parametrize("twin", TWINS)
def test_a_twin_imports_its_references_constants(twin: str) -> None:
    """A shared constant written twice could drift; the twin must take the reference's."""
    reference = importlib.import_module(TWINS[twin][0])
    module = importlib.import_module(twin)
    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    assigned = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    assigned.add(name.id)
    shared = _public_constants(reference) & _public_constants(module)
    assert not (assigned & _public_constants(reference)), "re-defined: import it instead"
    for name in shared:
        assert getattr(module, name) is getattr(reference, name), name
