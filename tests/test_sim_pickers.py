"""The numba pickers (`envs.nb_pickers`) make the choices of `rl_lb.pickers`, draw for draw.

One stream of uniform draws (the simulator's generator) is replayed into the Python picker, so
both see the same random numbers: every pick must be the same backend, and both must have used
the same number of draws. The pool changes between rounds of picks (weights with zeros or all
zero, backends unavailable, in-flight counts and costs with many ties), as it does between
control intervals.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from numba import njit

from envs import nb_metrics, nb_pickers, nb_random
from rl_lb.pickers import PICKER_NAMES, make_picker
from rl_lb.types import NoBackendAvailable

ROUNDS, PICKS, BACKENDS = 300, 12, 6


class Replay(random.Random):
    """A `random.Random` whose `random()` returns the given draws, in order."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__(0)
        self._draws: Iterator[float] = iter(draws)
        self.used = 0

    def random(self) -> float:
        self.used += 1
        return next(self._draws)


@dataclass
class View:
    in_flight: list[int]
    available: list[bool]
    costs: list[float]

    def cost(self, index: int) -> float:
        return self.costs[index]


@njit
def _uniforms(rng, count):  # type: ignore[no-untyped-def]
    out = np.empty(count)
    for i in range(count):
        out[i] = nb_random.uniform(rng)
    return out


@njit
def _picks(kind, w, avail, load, rr, m, board_cost, use_board, rng, count):  # type: ignore[no-untyped-def]
    out = np.empty(count, dtype=np.int64)
    for i in range(count):
        out[i] = nb_pickers.pick(kind, w, avail, load, rr, m, 0, 0.0, board_cost, use_board, rng)
    return out


def _pool(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights, availability, in-flight and costs of one round (ties and zeros on purpose)."""
    shape = rng.integers(4)
    if shape == 0:
        weights = np.full(BACKENDS, 1.0 / BACKENDS)
    elif shape == 1:
        weights = np.zeros(BACKENDS)
    else:
        weights = rng.choice([0.0, 0.1, 0.25, 0.3, 1.0 / 3.0], BACKENDS)
    available = rng.random(BACKENDS) < (0.3 if rng.random() < 0.2 else 0.85)
    in_flight = rng.integers(0, 3, BACKENDS)
    costs = rng.choice([0.0, 0.01, 0.02, 0.015], BACKENDS)
    return weights, available, in_flight, costs


@pytest.mark.parametrize("use_board", [False, True])
@pytest.mark.parametrize("name", [n for n in PICKER_NAMES if n != "prequal"])  # test_prequal.py
def test_same_draws_same_picks(name: str, use_board: bool) -> None:
    pools = np.random.default_rng(PICKER_NAMES.index(name))
    rng = nb_random.new_rng(np.random.SeedSequence(11))
    draws = _uniforms(rng.copy(), 2 * ROUNDS * PICKS + 1).tolist()
    replay = Replay(draws)
    picker = make_picker(name, rng=replay)
    m = nb_metrics.new_metrics(
        1, BACKENDS, window_s=10.0, slots=10, ewma_tau_s=10.0, error_penalty_s=5.0
    )
    rr = np.zeros(BACKENDS)
    kind = nb_pickers.PICKER_CODES[name]
    for _ in range(ROUNDS):
        weights, available, in_flight, costs = _pool(pools)
        picker.update(weights)
        view = View(in_flight.tolist(), available.tolist(), costs.tolist())
        theirs = []
        for _ in range(PICKS):
            try:
                theirs.append(picker.pick(view))
            except NoBackendAvailable:
                theirs.append(-1)
        m.est[0] = 0.0 if use_board else costs  # the other source must not be read
        m.has[0] = True
        board = costs if use_board else np.zeros(BACKENDS)
        ours = _picks(kind, weights, available, in_flight, rr, m, board, use_board, rng, PICKS)
        assert ours.tolist() == theirs, (weights, available, in_flight, costs)
    assert (replay.used > ROUNDS) == (name != "round-robin")  # round-robin draws nothing
    assert nb_random.uniform(rng) == draws[replay.used]  # both used the same number of draws


def test_every_picker_has_a_twin() -> None:
    assert list(nb_pickers.PICKER_CODES) == list(PICKER_NAMES)


def test_no_backend_available_gives_minus_one() -> None:
    m = nb_metrics.new_metrics(1, 2, window_s=10.0, slots=10, ewma_tau_s=10.0, error_penalty_s=5.0)
    rng = nb_random.new_rng(np.random.SeedSequence(3))
    for code in nb_pickers.PICKER_CODES.values():
        nothing = np.zeros(2, dtype=np.bool_)
        load = np.zeros(2, dtype=np.int64)
        picks = _picks(code, np.ones(2), nothing, load, np.zeros(2), m, np.zeros(2), False, rng, 10)
        assert set(picks.tolist()) == {-1}
