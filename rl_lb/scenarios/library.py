"""The scenario library (`scenarios/*.toml`) and loading a scenario by path or library name."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path

from rl_lb.errors import ScenarioError
from rl_lb.scenarios.sample import ScenarioFamily
from rl_lb.toml_file import read_toml

__all__ = [
    "LIBRARY_ENV",
    "library_scenarios",
    "load_scenario",
    "load_scenarios",
    "resolve_scenario",
    "scenario_library_dir",
]

LIBRARY_ENV = "RL_LB_SCENARIOS"


def load_scenario(path: str | Path) -> ScenarioFamily:
    """Parse and validate one scenario: a file path, or a library name such as `slow-backend`."""
    file = resolve_scenario(path)
    raw = read_toml(file, ScenarioError, "give a path or a name from `rl-lb scenario list`")
    return ScenarioFamily(raw, file)


def load_scenarios(paths: Iterable[str | Path]) -> list[ScenarioFamily]:
    return [load_scenario(p) for p in paths]


def scenario_library_dir() -> Path:
    """The repository's `scenarios/` folder; RL_LB_SCENARIOS when the package is installed alone."""
    beside_package = Path(__file__).resolve().parents[2] / "scenarios"
    if beside_package.is_dir():
        return beside_package
    configured = os.environ.get(LIBRARY_ENV)
    if configured:
        return Path(configured)
    raise ScenarioError(
        LIBRARY_ENV, "scenario library not found", f"set {LIBRARY_ENV} to the scenarios/ folder"
    )


def library_scenarios() -> list[Path]:
    """Every scenario file in the library, sorted by name."""
    return sorted(scenario_library_dir().glob("*.toml"))


def resolve_scenario(name_or_path: str | Path) -> Path:
    """A path is taken as is; a bare name (no folder, no `.toml`) is looked up in the library."""
    path = Path(name_or_path)
    if isinstance(name_or_path, Path) or path.is_file():
        return path
    if len(path.parts) != 1 or path.suffix == ".toml":
        return path
    candidate = scenario_library_dir() / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    names = [p.stem for p in library_scenarios()]
    close = difflib.get_close_matches(str(name_or_path), names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ScenarioError(
        str(name_or_path),
        "no such scenario file or library name",
        f"{hint}library: {', '.join(names)}",
    )
