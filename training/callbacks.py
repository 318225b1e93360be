"""What happens during `model.learn`: progress, training metrics, checkpoints, periodic evaluation.

Each callback does one thing so `train.py` can read as a list of them. Metrics go to MLflow
with the environment step as the MLflow step, namespaced `train/…` and `eval/…`; SB3's own
logger (losses, KL, entropy) is bridged by `MlflowWriter` under the names SB3 gives them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, filter_excluded_keys

__all__ = [
    "CheckpointCallback",
    "EvalCallback",
    "MlflowWriter",
    "ProgressCallback",
    "TrainMetricsCallback",
]


class MlflowWriter(KVWriter):
    """SB3 logger output → MLflow metrics (numbers only; SB3 also logs strings and timings)."""

    def write(
        self,
        key_values: dict[str, Any],
        key_excluded: dict[str, tuple[str, ...]],
        step: int = 0,
    ) -> None:
        numbers = filter_excluded_keys(key_values, key_excluded, "mlflow")
        metrics = {
            key: float(value)
            for key, value in numbers.items()
            if isinstance(value, int | float | np.number) and not isinstance(value, bool)
        }
        if metrics:
            mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        """Nothing held open: MLflow owns the run."""


class ProgressCallback(BaseCallback):
    """A rich progress bar over environment steps, with the latest evaluation score."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        super().__init__()
        self.total = total
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[score]}"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total, score="")

    def note(self, score: str) -> None:
        self.progress.update(self.task, score=score)

    def _on_training_start(self) -> None:
        # On-policy algorithms collect whole rollouts (n_steps per environment) and stop at the
        # first rollout boundary at or past the target: the bar's total is where they stop, so
        # a short run does not show 512/256.
        rollout = int(getattr(self.model, "n_steps", 1)) * self.model.n_envs
        start, target = self.num_timesteps, self.model._total_timesteps
        self.total = start + math.ceil(max(target - start, 0) / rollout) * rollout
        self.progress.update(self.task, total=self.total, completed=start)
        self.progress.start()

    def _on_step(self) -> bool:
        self.progress.update(self.task, completed=self.num_timesteps)
        return True

    def _on_training_end(self) -> None:
        self.progress.update(self.task, completed=self.num_timesteps)
        self.progress.stop()


class TrainMetricsCallback(BaseCallback):
    """`train/episode_reward`, `train/episode_length` and `train/sps` after every rollout."""

    def __init__(self) -> None:
        super().__init__()
        self.rewards: list[float] = []
        self.lengths: list[int] = []
        self.started = time.perf_counter()
        self.steps_at_start = 0

    def _on_rollout_start(self) -> None:
        self.started = time.perf_counter()
        self.steps_at_start = self.num_timesteps

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            episode = info.get("episode")
            if episode is not None:
                self.rewards.append(float(episode["r"]))
                self.lengths.append(int(episode["l"]))
        return True

    def _on_rollout_end(self) -> None:
        elapsed = time.perf_counter() - self.started
        metrics = {"train/sps": (self.num_timesteps - self.steps_at_start) / max(elapsed, 1e-9)}
        if self.rewards:
            metrics["train/episode_reward"] = float(np.mean(self.rewards))
            metrics["train/episode_length"] = float(np.mean(self.lengths))
            self.rewards.clear()
            self.lengths.clear()
        mlflow.log_metrics(metrics, step=self.num_timesteps)


class CheckpointCallback(BaseCallback):
    """Overwrite `latest.zip` every `every_steps` so an interrupted run can `--resume` from it."""

    def __init__(self, path: Path, every_steps: int) -> None:
        super().__init__()
        self.path, self.every_steps = path, every_steps
        self.last = 0

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps  # a resumed run counts from its checkpoint

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last >= self.every_steps:
            self.last = self.num_timesteps
            self.model.save(self.path)
        return True

    def _on_training_end(self) -> None:
        self.model.save(self.path)


class EvalCallback(BaseCallback):
    """Every `every_steps`, score the current policy; keep it when it beats the best so far.

    `evaluate(model)` returns the metrics to log (`eval/…`) and the selection key, smaller
    being better (see `Scores.selection_key`); `keep(model)` stores a new best.
    """

    def __init__(
        self,
        every_steps: int,
        evaluate: Callable[[Any], tuple[dict[str, float], tuple[bool, float]]],
        keep: Callable[[Any], None],
        progress: ProgressCallback | None = None,
    ) -> None:
        super().__init__()
        self.every_steps, self.evaluate, self.keep = every_steps, evaluate, keep
        self.progress = progress
        self.last = 0
        self.best = (True, float("inf"))

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last >= self.every_steps:
            self.run()
        return True

    def _on_training_end(self) -> None:
        if self.num_timesteps > self.last:
            self.run()

    def run(self) -> None:
        self.last = self.num_timesteps
        metrics, key = self.evaluate(self.model)
        if key < self.best:
            self.best = key
            self.keep(self.model)
        misses, score = self.best
        best = {"eval/best_score": score, "eval/best_meets_targets": float(not misses)}
        mlflow.log_metrics({**metrics, **best}, step=self.num_timesteps)
        if self.progress is not None:
            self.progress.note(f"score {key[1]:.3f} (best {score:.3f})")
