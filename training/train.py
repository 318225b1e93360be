"""One training run, top to bottom: environments, model, callbacks, learn, final evaluation, record.

    rl-lb train --config training/configs/shipped.toml --export rl_lb/policies/shipped

Everything lands in one MLflow run (params, git commit, metrics over time, artifacts) and in
`<out>/<run name>/` on disk: `latest.zip` to resume from, `best.zip` and `best_policy/` (the
numpy export of the best evaluation so far), the final tables and plots.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import operator
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import mlflow
import torch as th
from rich import box
from rich.console import Console
from rich.table import Table as RichTable
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from envs import ENV_ID
from envs.evaluate import EvaluationPool
from envs.record_cache import RecordCache
from envs.worlds import write_worlds
from rl_lb.errors import ConfigError
from rl_lb.features import FeatureEncoder
from rl_lb.policies.learned import RUN_POLICY_FOLDERS
from rl_lb.scenarios import load_scenario
from rl_lb.tracking_store import describe_store
from training import plots
from training.callbacks import (
    CheckpointCallback,
    EvalCallback,
    MlflowWriter,
    ProgressCallback,
    TrainMetricsCallback,
)
from training.checkpoint_eval import Evaluator, Report, policy_of, reporting
from training.config import TrainConfig
from training.evaluation import LEARNED, Table, eval_metrics, score, write_tables
from training.export import export_policy
from training.policy import SetActorCriticPolicy
from training.tracking import (
    POLICY_ARTIFACT_PATH,
    git_state,
    log_params,
    register_policy,
    setup_experiment,
)
from training.warm_start import ActorFreeze, import_actor, with_exported_picker

__all__ = ["RunResult", "run"]

ALGO_CLASSES: dict[str, type[PPO] | type[A2C]] = {"ppo": PPO, "a2c": A2C}


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: Path
    policy_dir: Path
    model_version: int
    score: float
    """Geometric-mean effective p99 ratio vs least-latency of the best policy, final seeds."""


def _make_env(
    scenarios: list[str], env_kwargs: dict[str, Any], reward_scale: float
) -> gym.Env[Any, Any]:
    """Module-level so SubprocVecEnv can pickle it; `ENV_ID` is registered by importing `envs`."""
    env = gym.make(ENV_ID, scenario=scenarios, **env_kwargs)
    return gym.wrappers.TransformReward(env, partial(operator.mul, reward_scale))


def _vec_env(config: TrainConfig, scenarios: list[str]) -> VecEnv:
    """`n_envs` environments, batched in this process or one process each (`config.vec`)."""
    from envs.batched_vec_env import BatchedVecEnv

    if config.vec == "batched":
        vec_env_cls: type[DummyVecEnv] | type[SubprocVecEnv] = BatchedVecEnv
    else:
        vec_env_cls = SubprocVecEnv if config.n_envs > 1 else DummyVecEnv
    return make_vec_env(
        partial(_make_env, scenarios, dict(config.env), config.reward_scale),
        n_envs=config.n_envs,
        seed=config.seed,
        vec_env_cls=vec_env_cls,
    )


TORCH_THREADS = 1
"""Threads torch computes with, whatever the vectorisation. The network is small (64 wide):
intra-op threads barely pay even on idle cores, and on a busy machine their spin-waits
collapse (measured with the shipped network, K = 8, 2 shared cores at load 16: one PPO update
1.4 s on one thread, 18.6 s on two). With `subproc` the environments own the other cores."""


def _build_model(config: TrainConfig, venv: VecEnv, resume: Path | None) -> BaseAlgorithm:
    algo = ALGO_CLASSES[config.algo]
    if resume is not None:
        if not resume.is_file():
            raise ConfigError(str(resume), "no such checkpoint", "give a latest.zip or best.zip")
        # The policy's parameters do not depend on the pool size (training/policy.py), so a
        # checkpoint resumes on environments padded to more slots (e.g. generated worlds of
        # hundreds of backends): its spaces are replaced by the environments'.
        spaces = {"observation_space": venv.observation_space, "action_space": venv.action_space}
        model = algo.load(resume, env=venv, device="cpu", custom_objects=spaces)
        # SB3 reseeds a loaded model with the checkpoint's seed; a resumed run follows its own.
        model.set_random_seed(config.seed)
        return model
    fresh = _new_model(config, venv)
    if config.init:
        import_actor(policy_of(fresh), config.init)
    return fresh


def _new_model(config: TrainConfig, venv: VecEnv) -> BaseAlgorithm:
    algo = ALGO_CLASSES[config.algo]
    accepted = inspect.signature(algo).parameters
    params = {k: v for k, v in dataclasses.asdict(config.algo_params).items() if k in accepted}
    if params.get("target_kl") == 0.0:
        params["target_kl"] = None
    policy_kwargs = dataclasses.asdict(config.policy)
    return algo(
        SetActorCriticPolicy,
        venv,
        seed=config.seed,
        device="cpu",
        policy_kwargs=policy_kwargs,
        **params,
    )


SHORT_NAMES = {
    "least-latency": "LL",
    "least-request": "LR",
    "round-robin": "RR",
    "inverse-latency": "inv-lat",
    "capacity": "cap",
    "prequal": "prequal",
    "jsq": "jsq",
    "random": "random",
}
"""Column headers for the balancers of the final table; others become `#k` (legend below)."""


def _print_table(console: Console, table: Table, baselines: list[str]) -> None:
    """Scenarios by balancers with short headers and a legend; a terminal too narrow for every
    baseline gets the compact form (the best heuristic per scenario), never cut cells. The full
    table is in the run's evaluation files either way."""
    scores = score(table, baselines)
    compact = console.width < 22 + 9 * (len(baselines) + 3)
    shown = RichTable(
        title="effective p99 (ms), mean over final seeds",
        title_justify="left",
        caption="eff p99: the 99th percentile with every failed request counted as the "
        "scenario's timeout; vs LL / vs best: learned's ratio to least-latency / to the best "
        "heuristic (< 1 is better)",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    legend: list[str] = ["best = the best heuristic"] if compact else []
    shown.add_column("scenario", overflow="fold")
    columns = ["best", "its p99", LEARNED] if compact else [*baselines, LEARNED]
    for name in columns:
        header = SHORT_NAMES.get(name, name if len(name) <= 8 or compact else "")
        if not header:
            header = f"#{len(legend) + 1}"
        if header != name:
            legend.append(f"{header} = {name}")
        shown.add_column(header, justify="right", no_wrap=True)
    shown.add_column("vs LL", justify="right", no_wrap=True)
    shown.add_column("vs best", justify="right", no_wrap=True)
    for scenario in scores.scenarios:
        p99 = {b: table[(scenario, b)]["effective_p99_ms"] for b in [*baselines, LEARNED]}
        if compact:
            best = min(baselines, key=lambda b: p99[b])
            short = SHORT_NAMES.get(best, best)
            if short != best and f"{short} = {best}" not in legend:
                legend.append(f"{short} = {best}")
            cells = [short, f"{p99[best]:.1f}", f"{p99[LEARNED]:.1f}"]
        else:
            cells = [f"{p99[b]:.1f}" for b in columns]
        ratios = [f"{scores.vs_reference[scenario]:.3f}", f"{scores.vs_best[scenario]:.3f}"]
        shown.add_row(scenario, *cells, *ratios)
    console.print(shown)
    if legend:
        console.print("  " + "; ".join(legend), highlight=False)
    console.print(
        f"geometric mean vs least-latency: [bold]{scores.geomean:.3f}[/bold]; "
        f"worst vs best heuristic: [bold]{scores.worst_vs_best:.3f}[/bold]"
    )


def _final_evaluation(
    config: TrainConfig,
    scenarios: list[str],
    policy_dir: Path,
    run_dir: Path,
    console: Console,
    cache: RecordCache | None,
    pool: EvaluationPool,
) -> float:
    """The best policy on fresh seeds: `final/…` metrics, tables and plots; returns its score."""
    console.print("[bold]final evaluation[/bold] of the best checkpoint on fresh seeds…")
    baselines = config.eval.baselines
    seeds = config.eval.final_seeds
    evaluator = Evaluator(scenarios, seeds, baselines, run_dir, cache=cache, executor=pool)
    table = evaluator.table(policy_dir)
    scores = score(table, baselines)
    metrics = eval_metrics(table, scores)
    mlflow.log_metrics({k.replace("eval/", "final/", 1): v for k, v in metrics.items()})
    _print_table(console, table, baselines)
    for path in write_tables(table, run_dir):
        mlflow.log_artifact(str(path), artifact_path="evaluation")
    seed = config.eval.final_seeds[0]
    plot_dir = plots.make_all(scenarios, baselines, policy_dir, seed, run_dir / "plots", pool)
    mlflow.log_artifacts(str(plot_dir), artifact_path="plots")
    return scores.geomean


def _describe_cache(cache: RecordCache | None) -> str:
    if cache is None:
        return "baseline evaluation records: not cached (RL_LB_RECORD_CACHE=off)"
    where = f"baseline evaluation records cached in {cache.folder}"
    return f"{where} (RL_LB_RECORD_CACHE=off disables it)"


def next_steps(policy_dir: Path, model_version: int | str) -> list[str]:
    """The exact commands that use the trained policy, to paste after a run."""
    return [
        "next steps:",
        f"  rl-lb evaluate --balancer learned --policy {policy_dir}",
        f"  rl-lb serve --balancer learned --policy {policy_dir} \\\n      --backend URL",
        f"  (or from the registry: --policy models:/rl-lb-policy/{model_version})",
    ]


def run(
    config: TrainConfig,
    resume: Path | None = None,
    console: Console | None = None,
    report: Report | None = None,
) -> RunResult:
    """Train, evaluate and record one policy as `config` says."""
    console = console or Console(stderr=True)
    config.check_start(resume)
    config = with_exported_picker(config)
    if config.init:
        console.print(
            f"starting from the actor of {config.init} with a new critic, picker {config.picker}",
            highlight=False,
        )
    th.set_num_threads(TORCH_THREADS)
    scenario_paths = config.scenario_paths()
    for path in scenario_paths:
        load_scenario(path)  # a bad file fails here, in one line, before any process starts
    scenarios = [str(p) for p in scenario_paths]
    eval_scenarios = config.eval.scenarios or scenarios

    console.print(f"opening the tracking store {describe_store()}…", highlight=False)
    # MLflow announces creating and upgrading a new SQLite store's tables at INFO, in its own
    # log format; the line above already says which store is opened.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    experiment_id = setup_experiment(config.experiment)
    run_name = f"{config.algo}-{datetime.now(UTC):%Y%m%d-%H%M%S}-s{config.seed}"
    run_dir = Path(config.out) / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as active,
        EvaluationPool() as pool,  # one set of evaluation workers for the run, stopped at its end
    ):
        run_id = active.info.run_id
        log_params(config.flat())
        mlflow.set_tags(
            {**git_state(), "resumed_from": str(resume or ""), "initialised_from": config.init}
        )
        for path in scenario_paths:
            mlflow.log_artifact(str(path), artifact_path="scenarios")
        if config.worlds:
            worlds_dir = run_dir / "worlds"
            written = write_worlds(config.worlds_seed, config.worlds, worlds_dir)
            scenarios = scenarios + [str(p) for p in written]  # evaluations keep the named ones
            mlflow.log_artifacts(str(worlds_dir), artifact_path="scenarios/worlds")
            console.print(
                f"generated {len(written)} worlds of generator seed {config.worlds_seed} "
                f"into {worlds_dir}",
                highlight=False,
            )
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
        mlflow.log_artifact(str(run_dir / "config.json"))

        console.print(
            f"starting {config.n_envs} simulator environment{'s' if config.n_envs > 1 else ''} "
            f"on {len(scenarios)} scenario{'s' if len(scenarios) > 1 else ''} "
            "(the first compiles the simulator)…",
            highlight=False,
        )
        venv = _vec_env(config, scenarios)
        model = _build_model(config, venv, resume)
        model.set_logger(Logger(folder=None, output_formats=[MlflowWriter()]))

        record_cache = RecordCache.from_env()
        console.print(_describe_cache(record_cache), highlight=False)
        evaluator = Evaluator(
            eval_scenarios,
            config.eval.seeds,
            config.eval.baselines,
            run_dir,
            config.eval.tolerance,
            picker=config.picker,
            cache=record_cache,
            executor=pool,
        )
        best_zip, best_policy = run_dir / "best.zip", run_dir / RUN_POLICY_FOLDERS[1]

        def keep(candidate: BaseAlgorithm) -> None:
            candidate.save(best_zip)
            shutil.copytree(evaluator.candidate, best_policy, dirs_exist_ok=True)

        progress = ProgressCallback(config.timesteps, console)
        callbacks = [
            progress,
            TrainMetricsCallback(),
            CheckpointCallback(run_dir / "latest.zip", config.checkpoint_every_steps),
            EvalCallback(config.eval.every_steps, reporting(evaluator, report), keep, progress),
        ]
        if config.init and config.critic_warmup_steps:
            callbacks.append(ActorFreeze(config.critic_warmup_steps))
        remaining = max(config.timesteps - model.num_timesteps, 1)
        model.learn(remaining, callback=callbacks, reset_num_timesteps=resume is None)
        venv.close()

        best = type(model).load(best_zip, device="cpu")
        version = f"{run_name}@{best.num_timesteps}"
        policy_dir = export_policy(
            policy_of(best),
            run_dir / POLICY_ARTIFACT_PATH,
            FeatureEncoder(),
            version,
            run_id,
            picker=config.picker,
        )
        final_score = _final_evaluation(
            config, eval_scenarios, policy_dir, run_dir, console, record_cache, pool
        )
        mlflow.log_artifact(str(best_zip), artifact_path="model")
        mlflow.log_artifacts(str(policy_dir), artifact_path=POLICY_ARTIFACT_PATH)
        model_version = register_policy(run_id, active.info.artifact_uri)

    if config.export:
        shutil.copytree(policy_dir, config.export, dirs_exist_ok=True)
        console.print(f"policy exported to {config.export}")
    console.print(
        f"run {run_id}: registered rl-lb-policy version {model_version}; files in {run_dir}"
    )
    for line in next_steps(policy_dir, model_version):
        console.print(line, highlight=False, soft_wrap=True)
    return RunResult(run_id, run_dir, policy_dir, model_version, final_score)
