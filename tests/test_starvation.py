"""training.starvation measures what it says: starved shares, returns, and nothing for a policy
that starves no one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest

from rl_lb.balancers import Balancer
from rl_lb.features import FeatureEncoder
from rl_lb.pickers import make_picker
from rl_lb.policies.base import normalise
from rl_lb.policies.learned import LearnedPolicy
from rl_lb.types import FloatArray, PoolSnapshot
from training.starvation import probe, starvation


class StarvesOneForAWhile:
    """Uniform, except backend 0 gets 1% of its share from 5 s to 12 s and backend 1 from 5 s on."""

    name = "starves-one"

    def weights(self, snapshot: PoolSnapshot) -> FloatArray:
        raw = np.ones(len(snapshot))
        if snapshot.taken_at >= 5.0:
            raw[1] = 0.01
            if snapshot.taken_at < 12.0:
                raw[0] = 0.01
        return normalise(raw, snapshot.live)

    def reset(self) -> None:
        """Stateless."""


def test_a_policy_that_starves_no_one_scores_zero() -> None:
    row = starvation("round-robin", 8, 15.0, 0)
    assert row["ever"] == row["at the end"] == row["after 10 s"] == 0.0


def test_starved_backends_and_returns_are_counted() -> None:
    balancer = Balancer("starves-one", StarvesOneForAWhile(), make_picker("random"))
    row = starvation(balancer, 8, 20.0, 0)
    assert row["after 10 s"] == pytest.approx(2 / 8)
    assert row["at the end"] == pytest.approx(1 / 8)
    assert row["ever"] == pytest.approx(2 / 8)
    assert row["came back"] == pytest.approx(1 / 2)


class _ScoresThroughput:
    """A network whose score is a backend's throughput share (current lag) minus 1."""

    def __init__(self, column: int) -> None:
        self.column = column

    def scores(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation[:, self.column] - 1.0, dtype=np.float32)


def test_the_probe_rewrites_only_the_named_columns_of_one_backend() -> None:
    encoder = FeatureEncoder(history=2)
    network = _ScoresThroughput(encoder.names.index("throughput_share"))
    stub = SimpleNamespace(picker="p2c", encoder=encoder, network=network)
    answers = probe(cast(LearnedPolicy, stub), backends=16)
    # 0.1 of a fair share scores -0.9 against ~0 for the others: 4 x -0.9 in log-weight.
    assert answers["throughput share 0.1"] == pytest.approx(-3.6, abs=0.6)
    assert answers["all three"] == pytest.approx(answers["throughput share 0.1"])
    assert abs(answers["last weight 0.01 x 1/N"]) < 0.6  # that column is not scored
