"""Every public name a core module promises in `__all__` exists (httpx-style)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import rl_lb

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(rl_lb.__path__, prefix="rl_lb.")
    if not name.rsplit(".", 1)[-1].startswith("_")
)


@pytest.mark.parametrize("module_name", MODULES)
def test_all_names_exist_and_are_sorted(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module_name} has no __all__"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names missing objects: {missing}"
    assert len(set(exported)) == len(exported)


def test_importing_the_core_loads_no_web_torch_mlflow_or_gymnasium() -> None:
    import subprocess
    import sys

    code = (
        "import sys, importlib, pkgutil, rl_lb\n"
        "for m in pkgutil.walk_packages(rl_lb.__path__, prefix='rl_lb.'):\n"
        "    if m.name != 'rl_lb.cli': importlib.import_module(m.name)\n"
        "heavy = ('torch', 'aiohttp', 'mlflow', 'stable_baselines3', 'gymnasium')\n"
        "print(sorted(k for k in heavy if k in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]"
