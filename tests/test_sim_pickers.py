"""The numba pickers choose like the Python pickers of `rl_lb.pickers` (same law)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
from numba import njit

from envs import nb_metrics, nb_pickers
from envs.nb_random import new_rng
from rl_lb.pickers import PICKER_NAMES, make_picker

N = 40_000

CASES = [
    # weights, available, in-flight, costs
    ([1.0, 1.0, 1.0, 1.0], [True] * 4, [0, 3, 1, 1], [0.01, 0.02, 0.0, 0.05]),
    (
        [0.5, 0.2, 0.0, 0.3, 0.0],
        [True, True, True, False, True],
        [2, 0, 0, 1, 4],
        [0.1, 0.3, 0.2, 0.1, 0.0],
    ),
    ([0.0, 0.0, 0.0], [True, False, True], [1, 0, 1], [0.2, 0.1, 0.2]),
    ([0.02, 0.9, 0.08], [True] * 3, [0, 5, 0], [1.0, 0.5, 2.0]),
]


@dataclass
class View:
    in_flight: list[int]
    available: list[bool]
    costs: list[float]

    def cost(self, index: int) -> float:
        return self.costs[index]


def _run_numba(name: str, case: tuple, count: int) -> np.ndarray:  # type: ignore[type-arg]
    weights, available, in_flight, costs = case
    n = len(weights)
    m = nb_metrics.new_metrics(1, n, window_s=10.0, slots=10, ewma_tau_s=10.0, error_penalty_s=5.0)
    m.est[0] = costs
    m.has[0] = True
    return _loop(
        nb_pickers.PICKER_CODES[name],
        np.array(weights, dtype=np.float64),
        np.array(available),
        np.array(in_flight, dtype=np.int64),
        np.zeros(n),
        m,
        count,
        new_rng(np.random.SeedSequence(3)),
    )


@njit
def _loop(kind, w, avail, load, rr, m, count, rng):  # type: ignore[no-untyped-def]
    picks = np.empty(count, dtype=np.int64)
    for i in range(count):
        picks[i] = nb_pickers.pick(kind, w, avail, load, rr, m, 0, 0.0, rr, False, rng)
    return picks


def _run_python(name: str, case: tuple, count: int) -> np.ndarray:  # type: ignore[type-arg]
    weights, available, in_flight, costs = case
    picker = make_picker(name, rng=random.Random(4))
    picker.update(np.array(weights))
    view = View(list(in_flight), list(available), list(costs))
    return np.array([picker.pick(view) for _ in range(count)])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", PICKER_NAMES)
def test_same_pick_distribution(name: str, case: tuple) -> None:  # type: ignore[type-arg]
    n = len(case[0])
    ours = np.bincount(_run_numba(name, case, N), minlength=n) / N
    theirs = np.bincount(_run_python(name, case, N), minlength=n) / N
    if name == "round-robin":  # deterministic: the same sequence, not just the same shares
        np.testing.assert_array_equal(_run_numba(name, case, 200), _run_python(name, case, 200))
    # 5 standard errors of a difference of two independent proportions
    bound = 5 * np.sqrt(2 * np.maximum(theirs, 1 / N) * (1 - theirs) / N)
    assert np.all(np.abs(ours - theirs) <= bound), (ours, theirs)
    unavailable = ~np.array(case[1])
    assert ours[unavailable].sum() == 0


def test_no_backend_available_gives_minus_one() -> None:
    case = ([1.0, 1.0], [False, False], [0, 0], [0.0, 0.0])
    for name in PICKER_NAMES:
        assert set(_run_numba(name, case, 10).tolist()) == {-1}
