"""A training run's checkpoints, evaluated: exported as a candidate policy, run on held-out seeds
beside the baselines, scored (`training.evaluation`).

`training.train` calls an `Evaluator` after every `eval.every_steps` steps (through
`callbacks.EvalCallback`, which keeps the best checkpoint by the selection key) and once more on
the best policy with the final seeds. The baselines do not change during a run, so they are run
once per evaluator and their records reused; with a `RecordCache` (the trainer passes the one
`RL_LB_RECORD_CACHE` names) they are not run again in the next stage or run either. The trainer
also hands every evaluator of a run one `envs.evaluate.EvaluationPool`, so the worker processes
start once per run rather than once per evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from envs.record_cache import RecordCache
from rl_lb.features import FeatureEncoder
from rl_lb.policies.learned import DEFAULT_PICKER
from training.evaluation import LEARNED, Table, eval_metrics, mean_table, score
from training.export import export_policy
from training.policy import SetActorCriticPolicy

__all__ = ["Evaluation", "Evaluator", "Report", "policy_of", "reporting"]

Evaluation = tuple[dict[str, float], tuple[bool, float]]
"""What one evaluation of a checkpoint found: its `eval/…` metrics and its selection key
(`Scores.selection_key`)."""

Report = Callable[[int, dict[str, float], tuple[bool, float]], None]
"""Told (steps, `eval/…` metrics, selection key) after each periodic evaluation: a sweep's
trial forwards them to Ray Tune, which early-stops on them."""


def policy_of(model: BaseAlgorithm) -> SetActorCriticPolicy:
    """The model's policy, which only a `SetActorCriticPolicy` can be exported as."""
    if not isinstance(model.policy, SetActorCriticPolicy):
        raise TypeError(f"expected a SetActorCriticPolicy, the model has {type(model.policy)}")
    return model.policy


class Evaluator:
    """Scores candidate policies on held-out seeds; the baselines run once, their table cached."""

    def __init__(
        self,
        scenarios: list[str],
        seeds: list[int],
        baselines: list[str],
        work: Path,
        tolerance: float = 1.05,
        picker: str = DEFAULT_PICKER,
        cache: RecordCache | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.scenarios, self.seeds, self.baselines, self.work = scenarios, seeds, baselines, work
        self.tolerance = tolerance
        self.picker = picker
        """The environment's picker, recorded in each candidate so it is evaluated with it."""
        self.encoder = FeatureEncoder()
        self.cache = cache
        """Where the baselines' records are kept between processes (learned ones never are)."""
        self.executor = executor
        """The run's `EvaluationPool`: its workers serve every evaluation (None: one pool each)."""
        self._baseline_records: list[dict[str, Any]] | None = None

    def records(self, balancers: Sequence[str]) -> list[dict[str, Any]]:
        from envs.evaluate import evaluate

        return evaluate(
            self.scenarios, list(balancers), self.seeds, cache=self.cache, executor=self.executor
        )

    def table(self, policy_dir: Path) -> Table:
        if self._baseline_records is None:
            self._baseline_records = self.records(self.baselines)
        learned = [{**r, "balancer": LEARNED} for r in self.records([f"learned:{policy_dir}"])]
        return mean_table(self._baseline_records + learned)

    @property
    def candidate(self) -> Path:
        return self.work / "candidate"

    def __call__(self, model: BaseAlgorithm) -> Evaluation:
        # Named like the final export (run name @ steps), so a best_policy/ served before the
        # run ends says which checkpoint it is.
        version = f"{self.work.name}@{model.num_timesteps}"
        export_policy(policy_of(model), self.candidate, self.encoder, version, picker=self.picker)
        table = self.table(self.candidate)
        scores = score(table, self.baselines)
        return eval_metrics(table, scores), scores.selection_key(self.tolerance)


def reporting(evaluator: Evaluator, report: Report | None) -> Callable[[BaseAlgorithm], Evaluation]:
    """`evaluator`, also telling `report` what each evaluation found."""
    if report is None:
        return evaluator

    def evaluate(model: BaseAlgorithm) -> Evaluation:
        metrics, key = evaluator(model)
        report(model.num_timesteps, metrics, key)
        return metrics, key

    return evaluate
