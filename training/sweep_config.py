"""The sweep file of `rl-lb sweep`: which training runs to try, and how to judge them.

    name = "lr-gamma"                  # the sweep's parent run in MLflow
    train = "training/configs/shipped.toml"   # optional: the base `rl-lb train --config`
    trials = 4                         # samples of the space (every grid value, trials times)
    concurrent = 2                     # trials at once
    grace_steps = 4096                 # ASHA stops no trial before this many steps
    reduction_factor = 2               # ASHA keeps the best 1/reduction_factor at each rung

    [overrides]                        # set for every trial (dotted training keys)
    timesteps = 20_000
    "eval.every_steps" = 4096

    [space]                            # drawn per trial
    "algo_params.learning_rate" = { loguniform = [1e-4, 1e-3] }
    "algo_params.gamma" = { choice = [0.9, 0.95] }
    seed = { grid = [1, 2, 3] }
    scenarios = { choice = [["steady", "park"], ["slow-backend"]] }   # a world family
    "env.error_weight" = { uniform = [10, 40] }

Keys are those of `training.config.TrainConfig` (`section.key` inside `[algo_params]`,
`[policy]`, `[eval]`; `env.KEY` for the environment's keyword arguments). Every key, type,
scenario and range is checked when the file is read, so a typo fails in one line before Ray
starts, not in every trial.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_lb.errors import ConfigError
from rl_lb.toml_file import read_toml
from training.config import _SECTIONS, TrainConfig, _fill, load_config

__all__ = ["DISTRIBUTIONS", "METRIC", "Dimension", "SweepConfig", "load_sweep"]

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
"""`{ choice = [...] }` one of the values; `grid` every value (each trial count times);
`uniform`/`loguniform` = [low, high] a float; `randint` = [low, high) an integer."""

METRIC = "score"
"""What a trial reports after each evaluation and ASHA minimises: the selection score of
`rl-lb train` (geometric mean over scenarios of the effective p99 / least-latency's)."""


@dataclass(frozen=True)
class Dimension:
    """One swept key: a distribution and its arguments (values, or [low, high])."""

    key: str
    kind: str
    values: tuple[Any, ...]


@dataclass
class SweepConfig:
    name: str
    train: Path | None = None
    trials: int = 1
    concurrent: int = 2
    grace_steps: int = 4096
    reduction_factor: int = 2
    overrides: dict[str, Any] = field(default_factory=dict)
    space: list[Dimension] = field(default_factory=list)

    def trial_config(self, params: dict[str, Any]) -> TrainConfig:
        """The training configuration of one trial: base file, overrides, then `params`."""
        config = load_config(self.train)
        for key, value in {**self.overrides, **params}.items():
            set_dotted(config, key, value, "sweep")
        return config


def set_dotted(config: TrainConfig, key: str, value: Any, where: str) -> None:
    """Set `section.key`, `env.key` or a top-level key of `config`, checked as the file is."""
    section, _, name = key.rpartition(".")
    if section == "env":
        config.env[name] = value
    elif section in _SECTIONS:
        _fill(getattr(config, section), {name: value}, where, section)
    elif section:
        raise ConfigError(where, f"unknown key {key!r}", f"sections: {', '.join(_SECTIONS)}, env")
    else:
        _fill(config, {name: value}, where, "")


def _dimension(where: str, key: str, spec: Any) -> Dimension:
    if not (isinstance(spec, dict) and len(spec) == 1):
        raise ConfigError(where, f"space {key} = {spec!r}", f"use {{ one of {DISTRIBUTIONS} }}")
    ((kind, values),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(where, f"space {key}: unknown {kind!r}", f"use one of {DISTRIBUTIONS}")
    if not isinstance(values, list) or not values:
        raise ConfigError(where, f"space {key}: {kind} needs a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        numbers = len(values) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
        low, high = values if numbers else (0, 0)
        if not numbers or not low < high or (kind == "loguniform" and low <= 0):
            raise ConfigError(
                where, f"space {key}: {kind} = {values!r}", "give two numbers, low < high"
            )
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise ConfigError(where, f"space {key}: randint bounds must be integers")
    return Dimension(key, kind, tuple(values))


def _positive(where: str, raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.pop(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(where, f"{key} = {value!r}", "use an integer >= 1")
    return value


def _samples(dimension: Dimension) -> list[Any]:
    """Values that stand for the dimension when the file is checked."""
    if dimension.kind in ("choice", "grid"):
        return list(dimension.values)
    low, high = dimension.values
    return [int(low)] if dimension.kind == "randint" else [float(low), float(high)]


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and check a sweep file; every error is one `ConfigError` line."""
    where = str(path)
    raw = read_toml(path)
    name = raw.pop("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(where, f"name = {name!r}", "give the sweep a name")
    train = raw.pop("train", None)
    if train is not None and not isinstance(train, str):
        raise ConfigError(where, f"train = {train!r}", "give the path of a training config")
    sweep = SweepConfig(
        name=name,
        train=Path(train) if train else None,
        trials=_positive(where, raw, "trials", 1),
        concurrent=_positive(where, raw, "concurrent", 2),
        grace_steps=_positive(where, raw, "grace_steps", 4096),
        reduction_factor=_positive(where, raw, "reduction_factor", 2),
    )
    overrides, space = raw.pop("overrides", {}), raw.pop("space", {})
    if not isinstance(overrides, dict) or not isinstance(space, dict):
        raise ConfigError(where, "overrides and space should be tables")
    if raw:
        known = [f.name for f in dataclasses.fields(SweepConfig)]
        raise ConfigError(where, f"unknown key {next(iter(raw))!r}", f"known: {', '.join(known)}")
    sweep.overrides = dict(overrides)
    sweep.space = [_dimension(where, key, spec) for key, spec in space.items()]
    base = sweep.trial_config({})
    for dimension in sweep.space:
        for value in _samples(dimension):
            config = dataclasses.replace(base, env=dict(base.env))
            config.algo_params = dataclasses.replace(base.algo_params)
            config.policy = dataclasses.replace(base.policy)
            config.eval = dataclasses.replace(base.eval)
            set_dotted(config, dimension.key, value, where)
            if dimension.key == "scenarios":
                config.scenario_paths()
    base.scenario_paths()
    return sweep
