"""`rl-lb sweep`: many training runs on Ray Tune, early-stopped by their evaluations.

    rl-lb sweep --config sweep.toml [--ray-address ADDRESS] [--out sweeps]

Each trial is one `rl-lb train` run (training.train.run) in a Ray worker. After every periodic
evaluation it reports the evaluation's metrics to Tune, whose ASHA scheduler stops the trials
that fall behind at each rung. The best trial (lowest final score on fresh seeds) is registered
as a new version of `rl-lb-policy`.

Tracking: only this process, the driver, writes the MLflow store. A SQLite store takes one
writer at a time, and trials on other machines may not even reach it; so a trial's own
`training.train.run` records into a scratch store in its trial folder, and a Tune callback
here turns what the trials report into one MLflow run per trial, each a child of the sweep's
parent run (params, the metrics at each evaluation, then the trial's tables, policy and log).

Ray: local by default (`ray.init` with this machine's cores, no dashboard, loopback only), or
an existing cluster with `--ray-address`. Ctrl-C stops every trial, then Ray itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from rich.console import Console

from envs.ray_runs import LOCAL, init_ray
from rl_lb.tracking_store import ENV_VAR
from training.sweep_config import METRIC, Dimension, SweepConfig
from training.tracking import (
    POLICY_ARTIFACT_PATH,
    git_state,
    register_policy,
    setup_experiment,
)
from training.train import run

__all__ = ["SweepResult", "search_space", "sweep"]

PARENT_TAG = "mlflow.parentRunId"
"""The tag by which the MLflow UI nests a run under its parent."""


def search_space(dimensions: list[Dimension]) -> dict[str, Any]:
    """Tune's sampling objects for the swept keys."""
    space: dict[str, Any] = {}
    for d in dimensions:
        if d.kind == "choice":
            space[d.key] = tune.choice(list(d.values))
        elif d.kind == "grid":
            space[d.key] = tune.grid_search(list(d.values))
        elif d.kind == "uniform":
            space[d.key] = tune.uniform(*d.values)
        elif d.kind == "loguniform":
            space[d.key] = tune.loguniform(*d.values)
        else:
            space[d.key] = tune.randint(*d.values)
    return space


def trial(params: dict[str, Any], sweep: SweepConfig, trials_dir: str) -> None:
    """One trial, in a Ray worker: a training run reporting each evaluation to Tune.

    The run records into a scratch MLflow store of its own (see the module docstring); its
    output goes to `train.log` in the trial's folder.
    """
    work = Path(trials_dir) / tune.get_context().get_trial_id()
    work.mkdir(parents=True, exist_ok=True)
    os.environ[ENV_VAR] = f"sqlite:///{work / 'scratch-mlruns.db'}"
    config = sweep.trial_config(params)
    config.out, config.export = str(work / "runs"), ""
    best = float("inf")
    last: dict[str, Any] = {"timesteps": config.timesteps}

    def report(steps: int, metrics: dict[str, float], key: tuple[bool, float]) -> None:
        nonlocal best, last
        best = min(best, key[1])
        last = {"timesteps": steps, METRIC: key[1], "best_score": best, **metrics}
        # The run's last evaluation goes with the final report: ASHA may stop a trial at any
        # report, and one stopped there would lose its final evaluation for nothing.
        if steps < config.timesteps:
            tune.report(last)

    with (work / "train.log").open("w", encoding="utf-8") as log:
        result = run(config, console=Console(file=log, width=100), report=report)
    tune.report({**last, "final_score": result.score, "run_dir": str(result.run_dir)})


class _ChildRuns(tune.Callback):
    """On the driver: one MLflow child run per trial, written as the trial reports."""

    def __init__(self, sweep: SweepConfig, experiment_id: str, parent_id: str, trials_dir: Path):
        self.sweep, self.experiment_id, self.parent_id = sweep, experiment_id, parent_id
        self.trials_dir = trials_dir
        self.client = MlflowClient()
        self.runs: dict[str, str] = {}
        """Trial id → MLflow run id."""
        self.last: dict[str, dict[str, Any]] = {}
        """Trial id → its last result."""
        self.closed: set[str] = set()
        """Run ids already marked as ended."""
        self.interrupted = False

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        if trial.trial_id in self.runs:
            return
        created = self.client.create_run(
            self.experiment_id,
            run_name=f"{self.sweep.name}-{trial.trial_id}",
            tags={PARENT_TAG: self.parent_id, "sweep": self.sweep.name, **git_state()},
        )
        self.runs[trial.trial_id] = created.info.run_id
        flat = self.sweep.trial_config(dict(trial.config)).flat()
        params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in flat.items()]
        self.client.log_batch(created.info.run_id, params=params)
        self.client.set_tag(created.info.run_id, "swept", ", ".join(sorted(trial.config)))

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        self.last[trial.trial_id] = result
        step = int(result.get("timesteps", 0))
        metrics = [
            mlflow.entities.Metric(
                key, float(value), int(datetime.now(UTC).timestamp() * 1e3), step
            )
            for key, value in result.items()
            if _is_metric(key, value)
        ]
        self.client.log_batch(self.runs[trial.trial_id], metrics=metrics)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._finish(trial, "FAILED")

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        """Keep our Ctrl-C handler in place: Ray and Tune install theirs along the way, and
        theirs would end the sweep as if it were done."""
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) != self.interrupt:
            signal.signal(signal.SIGINT, self.interrupt)

    def interrupt(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT: from now on trials that end were stopped, not finished."""
        self.interrupted = True
        raise KeyboardInterrupt

    def close_open_runs(self, status: str) -> None:
        """Mark the runs of trials still going (the sweep was interrupted) as `status`."""
        for run_id in self.runs.values():
            if run_id not in self.closed:
                self.client.set_terminated(run_id, status)
                self.closed.add(run_id)

    def _finish(self, trial: Trial, status: str) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or run_id in self.closed:
            return
        self.closed.add(run_id)
        last = self.last.get(trial.trial_id, {})
        stopped = "final_score" not in last
        self.client.set_tag(run_id, "early_stopped", str(stopped and status == "FINISHED").lower())
        work = self.trials_dir / trial.trial_id
        if (work / "train.log").is_file():
            self.client.log_artifact(run_id, str(work / "train.log"))
        run_dir = Path(str(last.get("run_dir", "")))
        for folder in ("evaluation", POLICY_ARTIFACT_PATH):
            if last.get("run_dir") and (run_dir / folder).is_dir():
                self.client.log_artifacts(run_id, str(run_dir / folder), artifact_path=folder)
        for name in ("evaluation.csv", "evaluation.md"):
            if last.get("run_dir") and (run_dir / name).is_file():
                self.client.log_artifact(run_id, str(run_dir / name), artifact_path="evaluation")
        self.client.set_terminated(run_id, "KILLED" if self.interrupted else status)


def _is_metric(key: str, value: Any) -> bool:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return numeric and (key.startswith(("eval/", "final")) or key in (METRIC, "best_score"))


class SweepResult:
    """The sweep's parent run, its trials' runs, and the registered best (None if none ended)."""

    def __init__(self, parent_id: str, trial_runs: dict[str, str], best: tuple[str, int] | None):
        self.parent_id, self.trial_runs, self.best = parent_id, trial_runs, best


def sweep(
    config: SweepConfig,
    source: Path,
    out: Path,
    ray_address: str | None = None,
    console: Console | None = None,
) -> SweepResult:
    """Run the sweep of `config` (read from `source`) and record it; Ray is shut down after."""
    import ray

    console = console or Console(stderr=True)
    base = config.trial_config({})
    experiment_id = setup_experiment(base.experiment)
    client = MlflowClient()
    stamp = f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
    parent = client.create_run(
        experiment_id, run_name=f"sweep-{config.name}-{stamp}", tags={"sweep": config.name}
    )
    parent_id = parent.info.run_id
    client.log_artifact(parent_id, str(source))
    trials_dir = (out / f"{config.name}-{stamp}").resolve()
    trials_dir.mkdir(parents=True, exist_ok=True)
    callback = _ChildRuns(config, experiment_id, parent_id, trials_dir)
    # Tune's own Ctrl-C handler would stop the trials and return as if the sweep were done.
    # Ours marks the sweep interrupted and raises; `finally` then stops every trial by
    # shutting Ray down, and the interruption goes on up (exit status 130).
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        init_ray(ray_address or LOCAL)
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise
    previous = signal.signal(signal.SIGINT, callback.interrupt)  # after ray.init, which sets one
    try:
        tuner = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(trial, sweep=config, trials_dir=str(trials_dir)), {"cpu": 1}
            ),
            param_space=search_space(config.space),
            tune_config=tune.TuneConfig(
                num_samples=config.trials,
                max_concurrent_trials=config.concurrent,
                scheduler=ASHAScheduler(
                    time_attr="timesteps",
                    metric=METRIC,
                    mode="min",
                    max_t=max(base.timesteps, config.grace_steps),
                    grace_period=config.grace_steps,
                    reduction_factor=config.reduction_factor,
                ),
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(trials_dir),
                callbacks=[callback],
                verbose=0,
            ),
        )
        console.print(f"sweep {config.name}: trials in {trials_dir}; parent run {parent_id}")
        tuner.fit()
    finally:
        ray.shutdown()
        signal.signal(signal.SIGINT, previous)
        callback.close_open_runs("KILLED")
        client.set_terminated(parent_id, "KILLED" if callback.interrupted else "FINISHED")
    if callback.interrupted:
        raise KeyboardInterrupt
    best = _register_best(client, callback, parent_id)
    remove_scratch(trials_dir)
    if best is not None:
        console.print(f"best trial {best[0]}: registered rl-lb-policy version {best[1]}")
    else:
        console.print("no trial finished: nothing registered")
    return SweepResult(parent_id, dict(callback.runs), best)


def _register_best(
    client: MlflowClient, runs: _ChildRuns, parent_id: str
) -> tuple[str, int] | None:
    """Register the policy of the finished trial with the lowest final score."""
    finished = {
        trial_id: result["final_score"]
        for trial_id, result in runs.last.items()
        if isinstance(result.get("final_score"), float)
    }
    if not finished:
        return None
    trial_id = min(finished, key=lambda t: finished[t])
    run_id = runs.runs[trial_id]
    version = register_policy(run_id, client.get_run(run_id).info.artifact_uri)
    client.log_metric(parent_id, "best_final_score", finished[trial_id])
    client.set_tag(parent_id, "best_trial", trial_id)
    client.set_tag(parent_id, "best_run_id", run_id)
    client.set_tag(parent_id, "registered_version", str(version))
    return trial_id, version


def remove_scratch(trials_dir: Path) -> None:
    """Drop the trials' scratch stores once their runs are in the shared one."""
    for scratch in trials_dir.glob("*/scratch-mlruns.db"):
        scratch.unlink()
    for artifacts in trials_dir.glob("*/mlartifacts"):
        shutil.rmtree(artifacts)
