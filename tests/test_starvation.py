"""training.starvation measures what it says: starved shares, returns, and nothing for a policy
that starves no one."""

from __future__ import annotations

import numpy as np
import pytest

from rl_lb.balancers import Balancer
from rl_lb.pickers import make_picker
from rl_lb.policies.base import normalise
from rl_lb.types import FloatArray, PoolSnapshot
from training.starvation import starvation


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
