"""The wings and who may import whom: the core (rl_lb) and the wings around it stay apart.

The import graph is read from the source with `ast`: nothing is imported or run. Every import
counts wherever it sits, at module level, inside a function (a lazy import still runs one day,
in the process that calls it) or under `if TYPE_CHECKING:` (it still ties the two modules
together), and `importlib.import_module("name")` / `__import__("name")` with a literal name too.

    rl_lb (the core)  no wing; the standard library, itself and CORE_THIRD_PARTY only
    serving           no envs, training, lab, torch, stable_baselines3, gymnasium; mlflow only
                      in REGISTRY_MODULE, and there only inside a function
    envs              no serving, no lab; ray (an optional extra) only inside a function
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "rl_lb"
WINGS = ("envs", "training", "serving", "lab")
PACKAGES = (CORE, *WINGS)

CORE_THIRD_PARTY: dict[str, str] = {
    # The only third-party packages the core may import, and why it needs each.
    "numpy": "metrics, features, policies and pickers compute on arrays",
    "typer": "the `rl-lb` command itself (rl_lb/cli.py) and the core's `scenario` commands",
    "rich": "the command's one-line red error on stderr (rl_lb/cli.py)",
    "threadpoolctl": "the policy's forward pass on one BLAS thread (rl_lb/policies/learned.py)",
}
SERVING_FORBIDDEN: dict[str, str] = {
    "envs": "the simulator is not the proxy",
    "training": "the proxy never trains",
    "lab": "the lab drives the proxy, not the reverse",
    "torch": "the proxy serves the numpy export",
    "stable_baselines3": "the proxy serves the numpy export",
    "gymnasium": "environments are built in envs/",
}
REGISTRY_MODULE = "serving/registry.py"
"""The one proxy module that may import mlflow (lazily), to resolve `models:/` URIs."""
ENVS_FORBIDDEN: dict[str, str] = {
    "serving": "the simulator must not depend on the proxy",
    "lab": "the lab drives the environments, not the reverse",
}


@dataclass(frozen=True)
class Import:
    file: str
    """Path relative to the tree's root, with forward slashes."""
    line: int
    module: str
    """Absolute dotted name (relative imports resolved)."""
    lazy: bool
    """Inside a function body: runs only when the function is called."""

    @property
    def top(self) -> str:
        return self.module.partition(".")[0]

    def where(self) -> str:
        return f"{self.file}:{self.line}"


class _ImportCollector(ast.NodeVisitor):
    """Every import of one module, each with its line and whether it sits in a function."""

    def __init__(self, file: str, package: str) -> None:
        self.file, self.package = file, package
        self.found: list[Import] = []
        self._depth = 0

    def _add(self, node: ast.stmt | ast.expr, module: str) -> None:
        self.found.append(Import(self.file, node.lineno, module, self._depth > 0))

    def visit(self, node: ast.AST) -> None:
        function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        self._depth += function
        super().visit(node)
        self._depth -= function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0:
            self._add(node, node.module or "")
            return
        parts = self.package.split(".")
        base = parts[: len(parts) - (node.level - 1)]
        self._add(node, ".".join([*base, *([node.module] if node.module else [])]))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        first = node.args[0] if node.args else None
        if (
            name in ("import_module", "__import__")
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
            and not first.value.startswith(".")
        ):
            self._add(node, first.value)
        self.generic_visit(node)


def read_imports(root: Path) -> list[Import]:
    """The imports of every module of PACKAGES under `root`."""
    found: list[Import] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            module = ".".join(relative.with_suffix("").parts)
            is_package = path.name == "__init__.py"
            dotted = module.removesuffix(".__init__") if is_package else module.rpartition(".")[0]
            collector = _ImportCollector(relative.as_posix(), dotted)
            collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
            found += collector.found
    return found


STANDARD = sys.stdlib_module_names | {"_typeshed"}
"""`_typeshed` is the standard library's stub-only module (importable under TYPE_CHECKING)."""


def _is_third_party(top: str) -> bool:
    return top not in STANDARD and top not in PACKAGES


def _rule(imp: Import) -> str | None:
    """Why `imp` breaks a rule, or None."""
    wing = imp.file.partition("/")[0]
    top = imp.top
    if wing == CORE:
        if top in WINGS:
            return f"the core imports the wing {top!r}"
        if _is_third_party(top) and top not in CORE_THIRD_PARTY:
            return f"the core imports {top!r}, not in CORE_THIRD_PARTY"
    if wing == "serving":
        if top in SERVING_FORBIDDEN:
            return f"serving imports {top!r} ({SERVING_FORBIDDEN[top]})"
        if top == "mlflow" and imp.file != REGISTRY_MODULE:
            return f"serving imports mlflow outside {REGISTRY_MODULE}"
        if top == "mlflow" and not imp.lazy:
            return f"{REGISTRY_MODULE} imports mlflow at module level (import it in a function)"
    if wing == "envs" and top in ENVS_FORBIDDEN:
        return f"envs imports {top!r} ({ENVS_FORBIDDEN[top]})"
    if wing == "envs" and top == "ray" and not imp.lazy:
        return "envs imports ray at module level (an optional extra: import it in a function)"
    return None


def violations(root: Path) -> list[str]:
    """`file:line: what` for every import under `root` that breaks a rule."""
    return [
        f"{imp.where()}: {why} ({imp.module})"
        for imp in read_imports(root)
        if (why := _rule(imp)) is not None
    ]


def test_the_packages_obey_the_import_rules() -> None:
    imports = read_imports(ROOT)
    read_from = {imp.file.partition("/")[0] for imp in imports}
    assert read_from == set(PACKAGES), "the rules read no import from some package"
    found = violations(ROOT)
    assert not found, "import rules broken:\n" + "\n".join(found)


def test_every_allowed_core_package_is_still_needed() -> None:
    """An entry no core module uses any more is a door left open: remove it."""
    used = {imp.top for imp in read_imports(ROOT) if imp.file.startswith(f"{CORE}/")}
    assert set(CORE_THIRD_PARTY) <= used


# -- the rules themselves, on planted trees ---------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for package in PACKAGES:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").touch()
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


CLEAN = {
    "rl_lb/policies/__init__.py": "from . import base\nfrom .base import x\n",
    "rl_lb/policies/base.py": "import numpy as np\nimport os.path\nfrom ..errors import E\n",
    "rl_lb/cli.py": "import typer\nfrom rich.console import Console\n"
    "from importlib.metadata import entry_points\n",
    "envs/env.py": "import gymnasium\nfrom rl_lb.features import FeatureEncoder\n",
    "training/train.py": "import mlflow\nimport torch\nfrom envs.env import Env\n",
    "serving/admin.py": "from typing import TYPE_CHECKING\n"
    "if TYPE_CHECKING:\n    from serving.app import ProxyServer\n",
    "serving/registry.py": "import os\n\ndef resolve(uri):\n    import mlflow\n    return mlflow\n",
    "lab/demo.py": "import mlflow\nfrom serving.app import ProxyServer\nfrom envs import env\n",
}


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    root = _tree(tmp_path, CLEAN)
    assert len(read_imports(root)) == 20  # every import of the tree was read
    assert violations(root) == []


PLANTED = {
    "rl_lb/features.py": "import numpy as np\n\nfrom envs.env import Env\n",  # line 3
    "rl_lb/policies/learned.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from gymnasium import spaces\n"  # line 3: a third-party package, even for types
        "def load():\n"
        "    import mlflow\n"  # line 5: lazily, still the core
        "    from .. import errors\n"
    ),
    "rl_lb/balancers.py": "import importlib\nimportlib.import_module('serving.registry')\n",
    "serving/controller.py": "import numpy\n\n\ndef net():\n    import torch.nn\n",  # line 5
    "serving/proxy.py": "def f():\n    from training import policy\n",  # line 2
    "serving/app.py": "import os\n\nasync def fetch():\n    import mlflow.artifacts\n",  # 4
    "serving/registry.py": "import mlflow\n",  # line 1: not lazy
    "envs/live.py": "import gymnasium\n\n\ndef f():\n    from lab.backends import serve\n",  # 5
    "envs/env.py": "from serving import admin\n",  # line 1
    "envs/ray_runs.py": "import ray\n",  # line 1: not lazy
}
EXPECTED = {
    "rl_lb/features.py:3": "wing 'envs'",
    "rl_lb/policies/learned.py:3": "'gymnasium', not in CORE_THIRD_PARTY",
    "rl_lb/policies/learned.py:5": "'mlflow', not in CORE_THIRD_PARTY",
    "rl_lb/balancers.py:2": "wing 'serving'",
    "serving/controller.py:5": "serving imports 'torch'",
    "serving/proxy.py:2": "serving imports 'training'",
    "serving/app.py:4": "mlflow outside serving/registry.py",
    "serving/registry.py:1": "mlflow at module level",
    "envs/live.py:5": "envs imports 'lab'",
    "envs/env.py:1": "envs imports 'serving'",
    "envs/ray_runs.py:1": "ray at module level",
}


def test_each_planted_violation_is_reported_with_file_and_line(tmp_path: Path) -> None:
    found = violations(_tree(tmp_path, PLANTED))
    by_place = {line.split(": ", 1)[0]: line for line in found}
    assert sorted(by_place) == sorted(EXPECTED), "\n".join(found)
    assert len(found) == len(EXPECTED)
    for place, phrase in EXPECTED.items():
        assert phrase in by_place[place]


@pytest.mark.parametrize(
    ("source", "module", "lazy"),
    [
        ("import a.b as c\n", "a.b", False),
        ("def f():\n    from x import y\n", "x", True),
        ("class C:\n    import z\n", "z", False),
        ("async def f():\n    __import__('q')\n", "q", True),
    ],
)
def test_where_an_import_sits_is_read(tmp_path: Path, source: str, module: str, lazy: bool) -> None:
    imports = read_imports(_tree(tmp_path, {"lab/m.py": source}))
    assert [(imp.module, imp.lazy) for imp in imports] == [(module, lazy)]
