"""A run's evaluator simulates the baselines once however many checkpoints it scores, files the
candidate's records under `learned`, and a sweep's report hears every evaluation. (The whole
path, export included, runs in tests/test_training_run.py.)"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from stable_baselines3.common.base_class import BaseAlgorithm

from training.checkpoint_eval import Evaluation, Evaluator, policy_of, reporting
from training.evaluation import LEARNED, METRIC_KEYS

SCENARIOS = ["steady", "slow-backend"]
BASELINES = ["least-latency", "round-robin"]


class RecordingEvaluator(Evaluator):
    """Answers `records` from a table of effective p99s instead of simulating, and counts how
    often each balancer was asked for."""

    def __init__(self, work: Path) -> None:
        super().__init__(SCENARIOS, [0, 1], BASELINES, work)
        self.asked: list[str] = []

    def records(self, balancers: Sequence[str]) -> list[dict[str, Any]]:
        self.asked += balancers
        p99 = {"least-latency": 100.0, "round-robin": 200.0}
        return [
            {
                "scenario": scenario,
                "balancer": balancer,
                "seed": seed,
                **dict.fromkeys(METRIC_KEYS, 1.0),
                "effective_p99_ms": p99.get(balancer, 50.0 + seed * 10.0),
            }
            for scenario in self.scenarios
            for balancer in balancers
            for seed in self.seeds
        ]


def test_the_baselines_are_simulated_once_and_the_candidate_is_filed_as_learned(
    tmp_path: Path,
) -> None:
    evaluator = RecordingEvaluator(tmp_path)
    first = evaluator.table(tmp_path / "a")
    second = evaluator.table(tmp_path / "b")
    assert evaluator.asked == [*BASELINES, f"learned:{tmp_path / 'a'}", f"learned:{tmp_path / 'b'}"]
    assert first == second
    assert set(first) == {(s, b) for s in SCENARIOS for b in [*BASELINES, LEARNED]}
    assert first[("steady", LEARNED)]["effective_p99_ms"] == 55.0  # the mean of the two seeds
    assert evaluator.candidate == tmp_path / "candidate"


def test_a_report_hears_each_evaluation_with_the_steps_it_was_made_at(tmp_path: Path) -> None:
    class Fixed(RecordingEvaluator):
        def __call__(self, model: BaseAlgorithm) -> Evaluation:
            return {"eval/p99_ratio_vs_least_latency": model.num_timesteps / 1000}, (False, 0.5)

    evaluator = Fixed(tmp_path)
    assert reporting(evaluator, None) is evaluator
    heard: list[tuple[int, dict[str, float], tuple[bool, float]]] = []
    evaluate = reporting(evaluator, lambda *told: heard.append(told))
    for steps in (1000, 3000):
        found = evaluate(cast(BaseAlgorithm, SimpleNamespace(num_timesteps=steps)))
        assert found == evaluator(cast(BaseAlgorithm, SimpleNamespace(num_timesteps=steps)))
    assert heard == [
        (1000, {"eval/p99_ratio_vs_least_latency": 1.0}, (False, 0.5)),
        (3000, {"eval/p99_ratio_vs_least_latency": 3.0}, (False, 0.5)),
    ]


def test_only_a_set_actor_critic_policy_can_be_exported() -> None:
    with pytest.raises(TypeError, match="SetActorCriticPolicy"):
        policy_of(cast(BaseAlgorithm, SimpleNamespace(policy=object())))
