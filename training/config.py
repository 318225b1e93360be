"""Every hyper-parameter of a training run, in one dataclass that a TOML file and flags fill in.

The file mirrors the dataclass: top-level keys for the run, `[algo_params]` for the algorithm,
`[policy]` for the network, `[eval]` for the periodic evaluation, `[env]` for keyword arguments
of the Gymnasium environment. An unknown key or a value of the wrong type is a `ConfigError`,
because a typo in a hyper-parameter would otherwise train the defaults without a word.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs.worlds import HELDOUT_SEED, MAX_COUNT
from rl_lb.errors import ConfigError
from rl_lb.policies.learned import DEFAULT_PICKER
from rl_lb.scenarios import library_scenarios, resolve_scenario
from rl_lb.toml_file import read_toml

__all__ = [
    "ALGOS",
    "VEC_ENVS",
    "AlgoConfig",
    "EvalConfig",
    "PolicyConfig",
    "TrainConfig",
    "load_config",
]

ALGOS = ("ppo", "a2c")
VEC_ENVS = ("batched", "subproc")
"""How the environments run: `batched` in this process, their simulators advanced together
(envs/batched_vec_env.py); `subproc` one process each (SB3's SubprocVecEnv)."""


@dataclass
class AlgoConfig:
    """SB3 on-policy hyper-parameters; those the chosen algorithm does not take are ignored."""

    learning_rate: float = 3e-4
    n_steps: int = 256
    batch_size: int = 256
    n_epochs: int = 10
    gamma: float = 0.9
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float = 0.0
    """0 disables the early stop on KL divergence."""


@dataclass
class PolicyConfig:
    slot_net: list[int] = field(default_factory=lambda: [64, 64])
    head_net: list[int] = field(default_factory=lambda: [64])
    critic_net: list[int] = field(default_factory=lambda: [64])
    activation: str = "tanh"
    log_std_init: float = -0.5


@dataclass
class EvalConfig:
    every_steps: int = 50_000
    """Evaluate (and maybe keep a new best checkpoint) every this many environment steps."""
    seeds: list[int] = field(default_factory=lambda: [10_001, 10_002, 10_003])
    """Held-out seeds: training environments are seeded from `seed`, far below these."""
    baselines: list[str] = field(
        default_factory=lambda: ["least-latency", "round-robin", "inverse-latency", "capacity"]
    )
    scenarios: list[str] = field(default_factory=list)
    """Scenario files to evaluate on; empty means the training scenarios."""
    tolerance: float = 1.05
    """A checkpoint within this factor of the best heuristic on every scenario is preferred."""
    final_seeds: list[int] = field(default_factory=lambda: [20_001, 20_002, 20_003, 20_004])
    """Seeds of the final evaluation table of the best checkpoint."""


@dataclass
class TrainConfig:
    scenarios: list[str] = field(default_factory=list)
    """Scenario files or library names; empty means the whole library (`scenarios/`)."""
    worlds: int = 0
    """Also train on this many generated worlds (`rl-lb scenario generate --seed worlds_seed`),
    written into the run's folder and logged with the run. Evaluations use the named scenarios
    only (or `[eval] scenarios`): the worlds are many, and the held-out ones are never trained."""
    worlds_seed: int = 1
    """The generator seed of those worlds; below `HELDOUT_SEED`, which is the held-out set's."""
    algo: str = "ppo"
    timesteps: int = 200_000
    n_envs: int = 2
    vec: str = "batched"
    """One of VEC_ENVS."""
    seed: int = 0
    reward_scale: float = 1.0
    """Multiplies the environment's reward, to bring the critic's targets to a friendlier scale."""
    out: str = "runs"
    experiment: str = "rl-lb"
    export: str = ""
    """Also copy the best policy's numpy export here (e.g. rl_lb/policies/shipped)."""
    checkpoint_every_steps: int = 25_000
    init: str = ""
    """Start from this exported policy's actor (a folder such as rl_lb/policies/shipped, or
    `models:/rl-lb-policy/N`) with a new critic instead of from scratch (training/warm_start)."""
    critic_warmup_steps: int = 0
    """With `init`: train the new critic alone for this many steps before the actor moves."""
    algo_params: AlgoConfig = field(default_factory=AlgoConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def picker(self) -> str:
        """The environment's picker (`[env] picker`), which the exported policy records."""
        return str(self.env.get("picker", DEFAULT_PICKER))

    def check_start(self, resume: Path | None) -> None:
        """How the run starts: from scratch, `resume`, or `init` (which a critic warm-up needs).

        Not part of loading: a recipe's file may leave `init` to the command line (`make
        policy` gives its stage 4 the export of its stage 3)."""
        if resume is not None and self.init:
            raise ConfigError(
                "init", "both a checkpoint to resume and a policy to start from", "give one of them"
            )
        if self.critic_warmup_steps and not self.init:
            raise ConfigError(
                "critic_warmup_steps",
                f"{self.critic_warmup_steps} steps of critic warm-up but no policy to start from",
                "give --init POLICY (a new critic for an imported actor), or 0 steps",
            )

    def scenario_paths(self) -> list[Path]:
        """The scenario files: those named (paths or library names), else the whole library."""
        if self.scenarios:
            return [resolve_scenario(s) for s in self.scenarios]
        return library_scenarios()

    def flat(self) -> dict[str, Any]:
        """Dotted parameter names (`algo_params.gamma`, `policy.slot_net`…) for the tracker."""
        out: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out


_SECTIONS = ("algo_params", "policy", "eval")


def _check_type(where: str, key: str, value: Any, default: Any) -> Any:
    """`value` if it has the default's type (an int is accepted for a float), else ConfigError."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, float) and number:
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool):
        ok = number and isinstance(value, int)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(where, f"{key} = {value!r} should be a {type(default).__name__}")
    return value


def _fill(target: Any, values: dict[str, Any], where: str, section: str) -> None:
    names = {f.name for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in names or key in _SECTIONS:
            label = f"[{section}] " if section else ""
            raise ConfigError(
                where, f"unknown key {label}{key!r}", f"known: {', '.join(sorted(names))}"
            )
        setattr(target, key, _check_type(where, key, value, getattr(target, key)))


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The defaults, then the TOML file, then the flags that were given (not None)."""
    config = TrainConfig()
    if path is not None:
        where = str(path)
        raw = read_toml(path)
        for section in _SECTIONS:
            table = raw.pop(section, {})
            if not isinstance(table, dict):
                raise ConfigError(where, f"[{section}] should be a table")
            _fill(getattr(config, section), table, where, section)
        env = raw.pop("env", {})
        if not isinstance(env, dict):
            raise ConfigError(where, "[env] should be a table")
        config.env = env
        _fill(config, raw, where, "")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    _fill(config, given, "command line", "")
    if config.algo not in ALGOS:
        raise ConfigError(
            "algo", f"unknown algorithm {config.algo!r}", f"choose {', '.join(ALGOS)}"
        )
    if config.vec not in VEC_ENVS:
        raise ConfigError(
            "vec", f"unknown vectorisation {config.vec!r}", f"use {' or '.join(VEC_ENVS)}"
        )
    if not 0 <= config.worlds <= MAX_COUNT:
        raise ConfigError("worlds", f"{config.worlds} generated worlds", f"give 0 to {MAX_COUNT}")
    if not 0 <= config.worlds_seed < HELDOUT_SEED:
        raise ConfigError(
            "worlds_seed",
            f"generator seed {config.worlds_seed} is not a training seed",
            f"give 0 to {HELDOUT_SEED - 1}: seeds from {HELDOUT_SEED} on are the held-out worlds",
        )
    if config.critic_warmup_steps < 0:
        raise ConfigError(
            "critic_warmup_steps", f"{config.critic_warmup_steps} steps", "give 0 or more"
        )
    if config.n_envs < 1 or config.timesteps < 1:
        raise ConfigError("config", "n_envs and timesteps must be at least 1")
    return config
