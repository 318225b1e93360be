"""The numba pickers (`envs.nb_pickers`) make the choices of `rl_lb.pickers`, draw for draw.

One stream of uniform draws (the simulator's generator) is replayed into the Python picker, so
both see the same random numbers: every pick must be the same backend, and both must have used
the same number of draws. The pool changes between rounds of picks (weights with zeros or all
zero, backends unavailable, in-flight counts and costs with many ties), as it does between
control intervals.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from numba import njit

from envs import nb_metrics, nb_pickers, nb_random
from envs.factory import pool_scenario
from envs.simulator import Simulator
from rl_lb.pickers import PICKER_NAMES, make_picker
from rl_lb.scenarios import Event, MetricsSpec, ServiceDist
from rl_lb.types import NoBackendAvailable

ROUNDS, PICKS, BACKENDS = 300, 12, 6
LARGE, LARGE_ROUNDS = 1000, 40


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

    def error_rate(self, index: int) -> float:
        return 0.0


@njit
def _uniforms(rng, count):  # type: ignore[no-untyped-def]
    out = np.empty(count)
    for i in range(count):
        out[i] = nb_random.uniform(rng)
    return out


@njit
def _picks(kind, w, avail, load, rr, m, board_cost, use_board, tables, rng, count):  # type: ignore[no-untyped-def]
    """`count` picks of proxy 0 on a pool that just changed (so its draw table is rebuilt)."""
    nb_pickers.invalidate(tables, 0)
    out = np.empty(count, dtype=np.int64)
    for i in range(count):
        out[i] = nb_pickers.pick(
            kind, w, avail, load, rr, m, 0, 0.0, board_cost, use_board, tables, rng
        )
    return out


Pool = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _pool(rng: np.random.Generator, backends: int = BACKENDS) -> Pool:
    """Weights, availability, in-flight and costs of one round (ties and zeros on purpose)."""
    shape = rng.integers(4)
    if shape == 0:
        weights = np.full(backends, 1.0 / backends)
    elif shape == 1:
        weights = np.zeros(backends)
    else:
        weights = rng.choice([0.0, 0.1, 0.25, 0.3, 1.0 / 3.0], backends)
    available = rng.random(backends) < (0.3 if rng.random() < 0.2 else 0.85)
    in_flight = rng.integers(0, 3, backends)
    costs = rng.choice([0.0, 0.01, 0.02, 0.015], backends)
    return weights, available, in_flight, costs


def _large_pool(rng: np.random.Generator) -> Pool:
    """A pool of LARGE backends whose weights span 24 orders of magnitude (sums that round),
    with zeros and unavailable runs, so the draws land all over long cumulative tables."""
    weights, available, in_flight, costs = _pool(rng, LARGE)
    if rng.random() < 0.5:
        weights = 10.0 ** rng.uniform(-12.0, 12.0, LARGE) * (rng.random(LARGE) < 0.9)
    return weights, available, in_flight, costs


def _same_picks(name: str, use_board: bool, rounds: int, pool: Callable[..., Pool]) -> None:
    """Replay one stream of draws into both pickers over `rounds` pools; compare every pick."""
    pools = np.random.default_rng(PICKER_NAMES.index(name))
    rng = nb_random.new_rng(np.random.SeedSequence(11))
    draws = _uniforms(rng.copy(), 2 * rounds * PICKS + 1).tolist()
    replay = Replay(draws)
    picker = make_picker(name, rng=replay)
    backends = len(pool(np.random.default_rng(0))[0])
    m = nb_metrics.new_metrics(
        1, backends, window_s=10.0, slots=10, ewma_tau_s=10.0, error_penalty_s=5.0
    )
    rr = np.zeros(backends)
    tables = nb_pickers.new_tables(1, backends)
    kind = nb_pickers.PICKER_CODES[name]
    for _ in range(rounds):
        weights, available, in_flight, costs = pool(pools)
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
        board = costs if use_board else np.zeros(backends)
        ours = _picks(
            kind, weights, available, in_flight, rr, m, board, use_board, tables, rng, PICKS
        )
        assert ours.tolist() == theirs, (weights, available, in_flight, costs)
    assert (replay.used > rounds) == (name != "round-robin")  # round-robin draws nothing
    assert nb_random.uniform(rng) == draws[replay.used]  # both used the same number of draws


@pytest.mark.parametrize("use_board", [False, True])
@pytest.mark.parametrize("name", [n for n in PICKER_NAMES if n != "prequal"])  # test_prequal.py
def test_same_draws_same_picks(name: str, use_board: bool) -> None:
    _same_picks(name, use_board, ROUNDS, _pool)


@pytest.mark.parametrize("name", ["random", "p2c", "p2c-latency"])
def test_same_draws_same_picks_in_a_large_pool(name: str) -> None:
    """The binary searches of long draw tables stop where the Python picker's bisect does."""
    _same_picks(name, False, LARGE_ROUNDS, _large_pool)


def test_every_picker_has_a_twin() -> None:
    assert list(nb_pickers.PICKER_CODES) == list(PICKER_NAMES)


def test_no_backend_available_gives_minus_one() -> None:
    m = nb_metrics.new_metrics(1, 2, window_s=10.0, slots=10, ewma_tau_s=10.0, error_penalty_s=5.0)
    rng = nb_random.new_rng(np.random.SeedSequence(3))
    for code in nb_pickers.PICKER_CODES.values():
        nothing = np.zeros(2, dtype=np.bool_)
        load = np.zeros(2, dtype=np.int64)
        tables = nb_pickers.new_tables(1, 2)
        picks = _picks(
            code, np.ones(2), nothing, load, np.zeros(2), m, np.zeros(2), False, tables, rng, 10
        )
        assert set(picks.tolist()) == {-1}


def _table_of(weights: np.ndarray, available: np.ndarray) -> tuple[list[int], list[float], bool]:
    """The draw table of a pool as the linear scan of `rl_lb.pickers` sums it: candidates in
    backend order and their running totals, added left to right."""
    flat = not any(a and w > 0.0 for w, a in zip(weights, available, strict=True))
    order, cum, total = [], [], 0.0
    for b, (w, a) in enumerate(zip(weights.tolist(), available.tolist(), strict=True)):
        share = (1.0 if flat else w) if a else 0.0
        if share > 0.0:
            total += share
            order.append(b)
            cum.append(total)
    return order, cum, flat


def test_draw_tables_follow_every_change_of_the_pool() -> None:
    """In the simulator a proxy's draw table is never stale without saying so: after ejections,
    health-check flips, a retry's excluded backend and new decisions, any row not marked STALE
    is exactly the table of the proxy's weights and availability at that moment."""
    trouble = [
        (1, Event(2.0, 6.0, down=True)),  # retries skip it, checks take it out, then back
        (4, Event(1.0, 9.0, error_rate=0.5)),  # ejected by failure streaks, back at a passing check
        (6, Event(5.0, 7.0, down=True)),
    ]
    scenario = pool_scenario(
        8,
        load=0.6,
        duration_s=10.0,
        concurrency=2,
        service=ServiceDist("exponential", 0.01),
        timeout_s=1.0,
        events=trouble,
        health_interval_s=1.0,
        metrics=MetricsSpec(proxies=2),
    )
    sim = Simulator(scenario, 5)
    decisions = np.random.default_rng(5)
    checked = partial = ejected = 0
    for step in range(1, 201):
        if step % 10 == 0:  # a new decision every 0.5 s, zeros included
            for p in range(sim.proxies):
                sim.set_decision(p, decisions.choice([0.0, 0.5, 1.0, 2.0], 8), "p2c")
        sim.run_until(step * 0.05)
        st = sim.state
        for p in range(sim.proxies):
            count = int(st.picks.size[p])
            if count == nb_pickers.STALE:
                continue
            order, cum, flat = _table_of(st.weights[p], st.avail[p])
            assert st.picks.order[p, :count].tolist() == order, (step, p)
            assert st.picks.cum[p, :count].tolist() == cum, (step, p)
            assert bool(st.picks.flat[p]) == flat, (step, p)
            checked += 1
            partial += not st.avail[p].all()
            ejected += st.ejected[p].any()
    assert checked > 300  # most rows were in use (built by a pick), not waiting stale
    assert partial > 100  # many of them with backends out of rotation
    assert ejected > 100  # among them ejected ones (so an ejection must invalidate)
