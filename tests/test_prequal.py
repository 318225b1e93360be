"""Prequal (`rl_lb.prequal`): the rule on hand-computed cases, its numba twin (`envs.nb_prequal`)
draw for draw, the simulator on the paper's set-up in small (half the backends 2× slower), and the
picker's kept candidates against a copy of the picker that rebuilt them per request (issue 15).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from envs import nb_prequal, nb_random
from envs.episode import run_episode
from envs.evaluate import evaluate
from rl_lb.availability import Availability
from rl_lb.balancers import make_balancer
from rl_lb.control import PrequalSettings
from rl_lb.prequal import (
    BUSY_PROBE_WEIGHT,
    REFUGE_LATENCY_RATIO,
    WEIGHTED_LATENCY_BAND,
    PrequalPicker,
    ProbePool,
    Prober,
    probe_count,
    relative_shares,
    reuse_budget,
    rif_threshold,
)
from rl_lb.prequal_answer import (
    FAILURE_WINDOW_S,
    LATENCY_RING,
    LatencyByRif,
    own_view_answer,
)
from rl_lb.scenarios import load_scenario, time_scaled
from rl_lb.types import Clock, NoBackendAvailable

HALF_SLOW = Path(__file__).parent / "scenarios" / "half-slow.toml"


def _pool(**settings: float) -> ProbePool:
    return ProbePool(PrequalSettings(**settings))  # type: ignore[arg-type]


ALL4 = [True] * 4
IDLE = [0] * 100
"""The proxy's requests in flight per backend, for choices that do not send (none, ever)."""


def _send(pool: ProbePool, candidate: Sequence[bool], load: list[int], now: float) -> int:
    """One choice whose request the proxy then sends (its in-flight count goes up)."""
    chosen = pool.choose(candidate, load, now)
    if chosen >= 0:
        load[chosen] += 1
    return chosen


# --- the rule, by hand ---------------------------------------------------------------------------


def test_theta_is_the_nearest_rank_quantile_of_the_rif_sample() -> None:
    assert rif_threshold(list(range(10)), 0.84) == 8  # ⌈8.4⌉ = 9th smallest
    assert rif_threshold([5, 1, 3], 0.5) == 3  # ⌈1.5⌉ = 2nd smallest
    assert rif_threshold([5, 1, 3], 0.0) == 1
    assert rif_threshold([5, 1, 3], 1.0) == 5
    assert rif_threshold([], 0.84) == math.inf


def test_theta_comes_from_every_answer_not_only_the_pool() -> None:
    pool = _pool(q_rif=0.5)
    for rif in (7, 1, 1, 9):  # backend 0 answers four times: one entry, four RIFs seen
        pool.add(0, rif, 0.01, 0.0, local=0)
    assert pool.entries() == 1
    assert pool.threshold() == 1  # ⌈2⌉ = 2nd smallest of [1, 1, 7, 9]


def test_cold_beats_hot_whatever_the_latency_and_the_lowest_latency_among_cold() -> None:
    pool = _pool(q_rif=0.5, removals=0)
    pool.add(0, 10, 0.001, 0.0, local=0)  # hot, fastest
    pool.add(1, 1, 1.0, 0.0, local=0)
    pool.add(2, 2, 2.0, 0.0, local=0)  # θ = 2nd smallest of [10, 1, 2] = 2: 1 and 2 cold
    assert pool.choose(ALL4, IDLE, 0.1) == 1


def test_all_hot_gives_the_lowest_rif() -> None:
    pool = _pool(q_rif=0.5, removals=0)
    for _ in range(3):
        pool.add(3, 0, 0.001, 0.0, local=0)
    pool.add(0, 7, 0.5, 0.0, local=0)
    pool.add(1, 5, 0.9, 0.0, local=0)  # history [0, 0, 0, 7, 5]: θ = 0, so both candidates are hot
    assert pool.choose([True, True, False, False], IDLE, 0.1) == 1


def test_a_backend_of_k_times_the_mean_weight_is_hot_only_above_k_times_theta() -> None:
    def pool_of_three() -> ProbePool:
        pool = _pool(q_rif=0.5, removals=0)
        pool.add(0, 4, 0.030, 0.0, local=0)  # fastest, RIF 4 (1 within 20x: a refuge)
        pool.add(1, 1, 0.5, 0.0, local=0)
        pool.add(2, 2, 0.9, 0.0, local=0)  # θ = 2nd smallest of [4, 1, 2] = 2
        return pool

    three = [True, True, True, False]
    assert pool_of_three().choose(three, IDLE, 0.1) == 1  # published: 0 hot, 1 and 2 cold
    share = relative_shares([0.6, 0.2, 0.2, 0.0], [0, 1, 2], 1.0)
    assert share == pytest.approx([1.8, 0.6, 0.6, 0.0])
    assert pool_of_three().choose(three, IDLE, 0.1, share) == 1  # 0 hot above 3.6, 2 above 1.2
    share = relative_shares([0.8, 0.1, 0.1, 0.0], [0, 1, 2], 1.0)
    assert pool_of_three().choose(three, IDLE, 0.1, share) == 0  # 0 cold up to 4.8; 1, 2 hot


def test_under_unequal_weights_the_least_loaded_of_the_nearly_fastest_cold_answers_wins() -> None:
    def pool_of_four() -> ProbePool:
        pool = _pool(q_rif=1.0, removals=0)  # θ = the highest RIF answered: all cold
        pool.add(0, 3, 0.040, 0.0, local=0)  # the fastest, behind a queue of 3
        pool.add(1, 1, 0.070, 0.0, local=0)  # within 2x the fastest: as fast
        pool.add(2, 0, 0.200, 0.0, local=0)  # idle but 5x slower
        pool.add(3, 1, 0.075, 0.0, local=0)  # as fast, as loaded as 1, slower
        return pool

    assert WEIGHTED_LATENCY_BAND == 1.0
    assert pool_of_four().choose(ALL4, IDLE, 0.1) == 0  # published: the lowest latency
    even = relative_shares([0.3, 0.3, 0.3, 0.3], [0, 1, 2, 3], 1.2)
    assert pool_of_four().choose(ALL4, IDLE, 0.1, even) == 1  # 1 before 3: lower latency
    share = relative_shares([0.1, 0.1, 0.1, 0.7], [0, 1, 2, 3], 1.0)
    # 0 is hot now (3 > θ 3 x 0.4); 1 the fastest cold, 3 within 2x of it and 1 / 2.8 < 1 / 0.4
    assert pool_of_four().choose(ALL4, IDLE, 0.1, share) == 3


def test_a_failing_backend_s_cold_answer_slower_than_every_hot_one_is_no_refuge() -> None:
    """Under unequal weights only (`ProbePool._refuges`)."""

    def pool_of_four() -> ProbePool:
        pool = _pool(q_rif=0.5, removals=0)
        for _ in range(4):
            pool.add(4, 0, 0.001, 0.0, local=0)  # θ = 0 (and 4 is no candidate)
        pool.add(0, 5, 0.030, 0.0, local=0)  # hot
        pool.add(1, 4, 0.020, 0.0, local=0)  # hot, the fastest: the bar is 1 x 0.020 s
        pool.add(2, 0, 2.5, 0.0, local=0)  # cold: idle, priced for its failures
        pool.add(3, 0, 0.3, 0.0, local=0)  # cold: idle and slow
        return pool

    four = [True, True, True, True, False]
    share = relative_shares([0.3, 0.3, 0.2, 0.2, 0.0], [0, 1, 2, 3], 1.0)
    failing = [0, 0, 3, 0, 0]
    assert REFUGE_LATENCY_RATIO == 1.0
    # published, and without the proxy's failures: cold beats hot (3 before 2: faster)
    assert (
        pool_of_four().choose(four, IDLE, 0.1, error_rate=View([], [], [], failing).error_rate) == 3
    )
    assert pool_of_four().choose(four, IDLE, 0.1, share) == 3
    # 2 failing and slower than the bar: left out; 3 is slower still, but not failing
    only_2 = View([], [], [], failing).error_rate
    pool = pool_of_four()
    pool.backend[pool.backend.index(3)] = -1  # without 3
    assert pool.choose(four, IDLE, 0.1, share, only_2) == 1  # the hot one of lowest RIF / share
    assert pool_of_four().choose(four, IDLE, 0.1, share, only_2) == 3
    both = View([], [], [], [0, 0, 3, 1, 0]).error_rate
    assert pool_of_four().choose(four, IDLE, 0.1, share, both) == 1
    fast_enough = pool_of_four()
    fast_enough.latency_s[fast_enough.backend.index(2)] = 0.019  # within the bar: a refuge
    fast_enough.backend[fast_enough.backend.index(3)] = -1
    assert fast_enough.choose(four, IDLE, 0.1, share, both) == 2


def test_all_hot_gives_the_lowest_rif_per_share() -> None:
    pool = _pool(q_rif=0.5, removals=0)
    for _ in range(3):
        pool.add(3, 0, 0.001, 0.0, local=0)
    pool.add(0, 7, 0.5, 0.0, local=0)
    pool.add(1, 5, 0.9, 0.0, local=0)  # θ = 0: both hot; 7 / 2 < 5 / 1
    assert pool.choose([True, True, False, False], IDLE, 0.1, [2.0, 1.0, 0.0, 0.0]) == 0


def test_stale_entries_are_dropped_and_fewer_than_two_usable_is_no_choice() -> None:
    pool = _pool(max_age_s=1.0, removals=0)
    pool.add(0, 1, 0.01, 0.0, local=0)
    pool.add(1, 1, 0.02, 0.6, local=0)
    pool.add(2, 1, 0.03, 0.7, local=0)
    assert pool.choose(ALL4, IDLE, 1.05) == 1  # the answer of backend 0 is 1.05 s old: dropped
    assert pool.backend.count(0) == 0
    assert pool.choose(ALL4, IDLE, 1.65) == -1  # only backend 2's answer is younger than 1 s
    assert pool.entries() == 1


def test_the_reuse_budget_formula() -> None:
    default = PrequalSettings()
    assert reuse_budget(default, 8) == 16  # pool covers the backends: denominator < 0, max_reuse
    assert reuse_budget(default, 100) == 2  # ⌈1 + 1/((1 - 0.16)·3 - 1)⌉ = ⌈1.66⌉
    assert reuse_budget(default, 32) == 3  # ⌈1 + 1/((1 - 0.5)·3 - 1)⌉ = 3
    assert reuse_budget(PrequalSettings(max_reuse=4), 8) == 4


def test_an_answer_serves_at_most_its_reuse_budget() -> None:
    pool = _pool(q_rif=1.0, removals=0)
    pool.add(3, 10, 0.0, 0.0, local=0)  # not a candidate below; θ = 10 keeps the others cold
    pool.add(0, 0, 0.1, 0.0, local=0)  # 0.2 s after its first use (RIF 1 now): still ahead of 1
    pool.add(1, 0, 0.3, 0.0, local=0)
    pool.add(2, 0, 0.9, 0.0, local=0)
    hundred = [b != 3 for b in range(100)]  # budget 2 (above)
    load = [0] * 100
    assert [_send(pool, hundred, load, 0.1) for _ in range(4)] == [0, 0, 1, 1]
    assert sorted(b for b in pool.backend if b >= 0) == [2, 3]


def test_removals_alternate_the_oldest_and_the_worst() -> None:
    pool = _pool(q_rif=1.0, removals=1)  # θ = the highest RIF: nothing hot, worst = slowest
    # 1's 50 ms is 100 then 150 ms after its uses (the +1 scales it): still the fastest
    for b, (at, latency) in enumerate([(0.0, 0.3), (0.1, 0.05), (0.2, 0.2), (0.3, 0.4)]):
        pool.add(b, 0, latency, at, local=0)
    pool.add(4, 10, 0.0, 0.4, local=0)  # not a candidate; θ = 10
    first4 = [True, True, True, True, False]
    assert pool.choose(first4, IDLE, 0.5) == 1
    assert sorted(b for b in pool.backend if b >= 0) == [1, 2, 3, 4]  # the oldest (0) went
    assert pool.choose(first4, IDLE, 0.5) == 1
    assert sorted(b for b in pool.backend if b >= 0) == [1, 2, 4]  # the worst (3, slowest) went
    assert pool.choose(first4, IDLE, 0.5) == 1
    assert sorted(b for b in pool.backend if b >= 0) == [2, 4]  # the oldest again (1)
    assert pool.choose(first4, IDLE, 0.5) == -1


def test_the_worst_is_the_hot_entry_with_the_highest_rif_before_any_latency() -> None:
    pool = _pool(q_rif=0.5, removals=2)
    pool.add(0, 1, 0.9, 0.0, local=0)  # the oldest, removed first
    pool.add(1, 1, 0.8, 0.1, local=0)  # slowest after 0, but cold
    pool.add(2, 4, 0.01, 0.2, local=0)  # hot: the worst
    pool.add(3, 1, 0.05, 0.3, local=0)  # θ = 2nd smallest of [1, 1, 4, 1] = 1
    assert pool.choose(ALL4, IDLE, 0.5) == 3
    assert sorted(b for b in pool.backend if b >= 0) == [1, 3]


def test_an_answer_is_read_moved_by_the_proxys_own_requests_since_it_came() -> None:
    pool = _pool(q_rif=0.0, removals=0)
    load = [3, 0, 0, 0]  # the proxy's requests in flight, per backend
    pool.add(0, 1, 0.1, 0.0, local=3)  # three of ours were at backend 0 when it answered 1
    pool.add(1, 1, 0.2, 0.0, local=0)  # θ = 1: both cold
    assert _send(pool, ALL4, load, 0.1) == 0
    assert pool.rif_now(load)[pool.backend.index(0)] == 2  # one more of ours: hot
    assert _send(pool, ALL4, load, 0.1) == 1
    load[0] -= 2  # two of ours answered since: 1 + 2 - 3 = 0, cold again
    slot = pool.backend.index(0)
    assert pool.rif_now(load)[slot] == 0
    assert pool.latency_now(slot, 0) == pytest.approx(0.05)  # 0.1 at RIF 1, × 1 / 2
    assert _send(pool, ALL4, load, 0.1) == 0
    load[0] = 0  # never below 0, whatever came back
    assert pool.rif_now(load)[slot] == 0


def test_the_chosen_answer_s_latency_moves_to_its_new_rif() -> None:
    """Kept as answered, the fastest answer drew every request until its RIF passed θ; scaled
    by (RIF now + 1) / (RIF + 1) as the backend scales its own, it yields to the next fastest."""
    pool = _pool(q_rif=1.0, removals=0)
    load = [0] * 4
    pool.add(2, 5, 1.0, 0.0, local=0)  # θ = 5: backends 0 and 1 stay cold for a while
    pool.add(0, 0, 0.010, 0.0, local=0)
    pool.add(1, 0, 0.015, 0.0, local=0)
    assert _send(pool, ALL4, load, 0.1) == 0
    assert pool.latency_now(1, pool.rif_now(load)[1]) == pytest.approx(0.020)  # slot 1: 0's
    assert _send(pool, ALL4, load, 0.1) == 1  # 15 ms against 0's 20 ms at RIF 1
    assert _send(pool, ALL4, load, 0.1) == 0  # 20 ms against 1's 30 ms
    assert pool.latency_now(1, pool.rif_now(load)[1]) == pytest.approx(0.030)  # 10 ms × 3 / 1
    assert pool.rif[:3] == [5, 0, 0]  # the answers themselves are kept as answered


def test_an_answer_replaces_the_backends_entry_else_the_oldest_when_full() -> None:
    pool = _pool(pool_size=2)
    pool.add(0, 3, 0.1, 0.0, local=0)
    pool.add(1, 3, 0.1, 0.1, local=0)
    pool.add(0, 5, 0.2, 0.2, local=0)  # replaces backend 0's entry, uses reset
    assert pool.backend == [0, 1]
    assert pool.rif == [5, 3]
    pool.add(2, 1, 0.3, 0.3, local=0)  # full: the oldest (backend 1's, at 0.1) goes
    assert pool.backend == [0, 2]


def test_latency_estimate_is_the_median_near_the_current_rif() -> None:
    estimate = LatencyByRif()
    assert estimate.estimate(3, 0.0) == 0.0  # no answer yet: looks fast, so it gets tried
    for latency in (0.030, 0.090, 0.060):
        estimate.record(2, latency, failed=False, now=0.0)
    assert estimate.estimate(2, 0.0) == pytest.approx(0.060)
    assert estimate.estimate(5, 0.0) == pytest.approx(0.120)  # scaled by (5 + 1) / (2 + 1)
    for _ in range(10):
        estimate.record(0, 1.0, failed=False, now=0.0)
    for _ in range(7):
        estimate.record(9, 0.5, failed=False, now=0.0)
    assert estimate.estimate(9, 0.0) == pytest.approx(0.5)  # the 7 nearest in RIF are at 9


def test_recent_failures_add_their_price_spread_over_the_ring() -> None:
    """A backend failing fast in 2 of 8 requests: the median (of 7) stays at 10 ms, the answer
    is 10 ms + 2/8 × the 5 s penalty; once FAILURE_WINDOW_S has passed, 10 ms again."""
    estimate = LatencyByRif()
    for k in range(8):
        if k in (2, 5):
            estimate.record(0, 5.0, failed=True, now=100.0)
        else:
            estimate.record(0, 0.010, failed=False, now=100.0)
    assert estimate.estimate(0, 100.0) == pytest.approx(0.010 + 1.25)
    assert estimate.estimate(0, 100.0 + FAILURE_WINDOW_S) == pytest.approx(1.26)
    assert estimate.estimate(0, 100.1 + FAILURE_WINDOW_S) == pytest.approx(0.010)


def test_the_latency_ring_forgets_the_oldest() -> None:
    estimate = LatencyByRif()
    for _ in range(LATENCY_RING):
        estimate.record(1, 9.0, failed=False, now=0.0)
    for _ in range(LATENCY_RING):
        estimate.record(1, 0.1, failed=False, now=0.0)
    assert estimate.estimate(1, 0.0) == pytest.approx(0.1)


# --- the picker ----------------------------------------------------------------------------------


@dataclass
class View:
    in_flight: list[int]
    available: list[bool]
    costs: list[float]
    errors: list[int] | None = None
    """Failures in the window per backend (none without)."""

    def cost(self, index: int) -> float:
        return self.costs[index]

    def error_rate(self, index: int) -> float:
        return 0.0 if self.errors is None else min(self.errors[index] / 10, 1.0)


def test_probes_serve_later_requests_never_the_current_one() -> None:
    sent: list[list[int]] = []
    picker = PrequalPicker(random.Random(1), clock=lambda: 0.0)
    picker.prober = lambda targets: sent.append(list(targets))
    view = View([0, 0, 0, 0, 0], [True, True, False, True, True], [0.01] * 5)
    picker.pick(view)
    assert len(sent) == 1
    assert len(set(sent[0])) == 3
    assert 2 not in sent[0]
    assert picker.pool.entries() == 0  # nothing answered yet


def test_without_a_prober_it_answers_from_its_own_view() -> None:
    clock = [0.0]
    settings = PrequalSettings(probes=4, q_rif=0.25)
    picker = PrequalPicker(random.Random(2), settings, clock=lambda: clock[0])
    view = View([9, 0, 9, 9], [True] * 4, [0.2, 0.05, 0.01, 0.3])
    picker.pick(view)  # empty pool: a random choice, then all four probed from the view
    assert picker.pool.entries() == 4
    clock[0] = 0.01
    assert picker.pick(view) == 1  # θ = 0 (1st of [0, 9, 9, 9]): 1 is the only cold one


def test_an_own_view_answer_is_its_cost_at_the_current_rif() -> None:
    """Scaled by (RIF + 1), as p2c-latency weighs the peak-EWMA: a backend busy with one
    request at 0.1 s answers 0.2 s, slower than an idle one at 0.15 s (unscaled it was faster,
    and on a live pool of 1-, 2- and 4-worker servers the one-worker server drew the queue)."""
    assert own_view_answer(0, 0.1) == (0, 0.1)
    assert own_view_answer(3, 0.1) == (3, pytest.approx(0.4))
    assert own_view_answer(0, 0.02, 0.5, 5.0) == (0, pytest.approx(2.52))  # failures priced
    clock = [0.0]
    settings = PrequalSettings(probes=2, q_rif=1.0)  # θ: the largest RIF seen, both cold
    picker = PrequalPicker(random.Random(2), settings, clock=lambda: clock[0])
    view = View([1, 0], [True, True], [0.1, 0.15])
    picker.pick(view)  # empty pool: both answered from the view
    clock[0] = 0.01
    assert picker.pick(view) == 1


def test_weight_zero_excludes_a_backend_unless_all_are_zero() -> None:
    picker = PrequalPicker(random.Random(3))
    view = View([0, 0, 0], [True, True, True], [0.01, 0.05, 0.01])
    picker.update(np.array([0.0, 1.0, 0.0]))
    assert {picker.pick(view) for _ in range(50)} == {1}
    picker.update(np.zeros(3))
    assert {picker.pick(view) for _ in range(50)} - {1}  # 0 and 2 are candidates again
    with pytest.raises(NoBackendAvailable):
        picker.pick(View([0, 0, 0], [False] * 3, [0.0] * 3))


def test_a_fractional_probe_count_is_a_probability() -> None:
    sent: list[int] = []
    picker = PrequalPicker(random.Random(4), PrequalSettings(probes=0.5))
    picker.prober = lambda targets: sent.append(len(targets))
    view = View([0] * 8, [True] * 8, [0.01] * 8)
    for _ in range(2000):
        picker.pick(view)
    assert set(sent) == {0, 1}
    assert 0.45 < sum(sent) / len(sent) < 0.55


def test_unequal_weights_steer_the_probes_in_proportion_and_equal_ones_draw_uniformly() -> None:
    sent: list[int] = []
    settings = PrequalSettings(probes=1.0)
    view = View([0] * 4, [True] * 4, [0.01] * 4)
    picker = PrequalPicker(random.Random(6), settings)
    picker.prober = sent.extend
    picker.update(np.array([1.0, 1.0, 2.0, 4.0]))
    for _ in range(4000):
        picker.pick(view)
    shares = [sent.count(b) / len(sent) for b in range(4)]
    assert shares == pytest.approx([0.125, 0.125, 0.25, 0.5], abs=0.03)
    # equal weights consume the draws exactly as the published algorithm's partial shuffle
    uniform: list[int] = []
    rng, same = random.Random(8), random.Random(8)
    picker = PrequalPicker(rng, PrequalSettings(probes=2.0))
    picker.prober = uniform.extend
    picker.update(np.full(5, 0.2))
    picker.pick(View([0] * 5, [True] * 5, [0.01] * 5))
    order = list(range(5))
    same.random()  # the pick without answers
    for k in range(2):
        j = k + int(same.random() * (5 - k))
        order[k], order[j] = order[j], order[k]
    assert uniform == order[:2]


def test_under_unequal_weights_a_backend_the_proxy_sends_to_is_probed_at_a_fraction() -> None:
    """The proxy's own requests in flight say a backend is busy; probes go mostly where they
    may find an idle one (`BUSY_PROBE_WEIGHT`). Equal weights keep the published uniform draws
    whatever the proxy has in flight."""

    def probe_shares(weights: list[float], in_flight: list[int]) -> list[float]:
        sent: list[int] = []
        picker = PrequalPicker(random.Random(7), PrequalSettings(probes=1.0))
        picker.prober = sent.extend
        picker.update(np.array(weights))
        view = View(in_flight, [True] * 4, [0.01] * 4)
        for _ in range(4000):
            picker.pick(view)
        return [sent.count(b) / len(sent) for b in range(4)]

    assert BUSY_PROBE_WEIGHT == 0.25
    busy = [3, 0, 1, 0]
    total = 1.0 * 0.25 + 1.0 + 2.0 * 0.25 + 4.0
    expected = [0.25 / total, 1.0 / total, 0.5 / total, 4.0 / total]
    assert probe_shares([1.0, 1.0, 2.0, 4.0], busy) == pytest.approx(expected, abs=0.03)
    assert probe_shares([1.0] * 4, busy) == pytest.approx([0.25] * 4, abs=0.03)


def test_the_prequal_preset() -> None:
    balancer = make_balancer("prequal")
    assert isinstance(balancer.picker, PrequalPicker)
    assert balancer.policy.name == "uniform"


# --- the numba twin ------------------------------------------------------------------------------


class Replay(random.Random):
    """A `random.Random` whose `random()` returns the given draws, in order."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__(0)
        self._draws: Iterator[float] = iter(draws)
        self.used = 0

    def random(self) -> float:
        self.used += 1
        return next(self._draws)


SETTINGS = {
    "defaults": PrequalSettings(),
    "small-pool": PrequalSettings(pool_size=3, removals=2, q_rif=0.6, max_reuse=2, probes=1.5),
    "no-removal": PrequalSettings(pool_size=5, removals=0, q_rif=0.3, max_age_s=0.05),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_the_twin_makes_the_same_choices_from_the_same_draws(name: str) -> None:
    settings, backends = SETTINGS[name], 7
    events = np.random.default_rng(sum(map(ord, name)))
    rng = nb_random.new_rng(np.random.SeedSequence(5))
    copy = rng.copy()
    draws = [nb_random.uniform(copy) for _ in range(20000)]
    replay = Replay(draws)
    now = [0.0]
    sent: list[int] = []
    picker = PrequalPicker(replay, settings, clock=lambda: now[0])
    picker.prober = sent.extend
    twin = nb_prequal.new_prequal(1, backends, settings)
    in_flight = np.zeros(backends, dtype=np.int64)  # the proxy's own requests, per backend
    for _ in range(1500):
        now[0] += float(events.exponential(0.004))
        if events.random() < 0.5:  # probe answers, and some of the proxy's requests answered
            for _ in range(int(events.integers(1, 4))):
                b, rif = int(events.integers(backends)), int(events.integers(0, 6))
                latency = float(events.choice([0.01, 0.02, 0.015, 0.03, 2.5]))  # 2.5: failing
                local = int(in_flight[b])
                picker.pool.add(b, rif, latency, now[0], local=local)
                nb_prequal.add(twin, 0, b, rif, latency, now[0], local)
                done = int(events.integers(backends))
                in_flight[done] = max(in_flight[done] - int(events.integers(0, 3)), 0)
            continue
        kind = events.random()
        if kind < 0.2:  # some excluded, two levels: weighted draws among the rest
            w = events.choice([0.0, 0.2, 1.0], backends)
        elif kind < 0.4:  # a learned policy's softmax: every draw by weight
            w = events.dirichlet(np.ones(backends))
        else:  # the preset's equal weights: Prequal's uniform draws
            w = np.ones(backends)
        available = events.random(backends) < 0.85
        errors = (events.random(backends) < 0.3) * events.integers(1, 4, backends)  # failing
        picker.update(w)
        sent.clear()
        try:
            view = View(in_flight.tolist(), available.tolist(), [0.0] * backends, errors.tolist())
            theirs = picker.pick(view)
        except NoBackendAvailable:
            theirs = -1
        ours = nb_prequal.pick(twin, 0, w, available, in_flight, errors, now[0], rng)
        count = nb_prequal.targets(twin, w, available, in_flight, rng) if ours >= 0 else 0
        assert ours == theirs
        if ours >= 0:
            in_flight[ours] += 1
        assert twin.order[:count].tolist() == sent
        assert twin.slot_backend[0].tolist() == picker.pool.backend
        assert twin.slot_rif[0].tolist() == picker.pool.rif
        assert twin.slot_uses[0].tolist() == picker.pool.uses
        assert twin.slot_local[0].tolist() == picker.pool.local
    assert nb_random.uniform(rng) == draws[replay.used]  # both used the same number of draws


def test_the_twin_estimates_latency_as_the_reference() -> None:
    events = np.random.default_rng(9)
    reference = LatencyByRif()
    twin = nb_prequal.new_prequal(1, 2, PrequalSettings())
    t = 0.0
    priced = 0
    for _ in range(400):
        t += float(events.exponential(0.5))
        rif, latency = int(events.integers(0, 12)), float(events.exponential(0.02))
        failed = bool(events.random() < 0.1)
        if failed:
            latency = 5.0
        reference.record(rif, latency, failed=failed, now=t)
        nb_prequal.record_latency(twin, 1, rif, latency, failed, t)
        rif_now = int(events.integers(0, 14))
        estimate = reference.estimate(rif_now, t)
        assert nb_prequal.latency_estimate(twin, 1, rif_now, t) == estimate
        priced += reference.failure_price(t) > 0
    assert 50 < priced < 400  # failures priced, and forgotten after FAILURE_WINDOW_S
    assert nb_prequal.latency_estimate(twin, 0, 3, t) == LatencyByRif().estimate(3, t) == 0.0


def test_the_twin_threshold_is_the_references() -> None:
    events = np.random.default_rng(10)
    pool = ProbePool(PrequalSettings(q_rif=0.84))
    twin = nb_prequal.new_prequal(1, 4, PrequalSettings(q_rif=0.84))
    assert nb_prequal.threshold(twin, 0) == pool.threshold() == math.inf
    for _ in range(300):
        b, rif = int(events.integers(4)), int(events.integers(0, 40))
        pool.add(b, rif, 0.01, 0.0, local=0)
        nb_prequal.add(twin, 0, b, rif, 0.01, 0.0, 0)
        assert nb_prequal.threshold(twin, 0) == pool.threshold()


# --- the simulator -------------------------------------------------------------------------------


def test_prequal_beats_least_request_and_least_latency_when_half_the_pool_is_slow() -> None:
    """The paper's set-up in small: 4 proxies, 8 backends, 4 of them 2× slower, 90% load."""
    balancers = ["prequal", "least-request", "least-latency"]
    records = evaluate([HALF_SLOW], balancers, 3, workers=1)
    p99 = {
        b: float(np.mean([r["p99_ms"] for r in records if r["balancer"] == b])) for b in balancers
    }
    assert p99["prequal"] < p99["least-request"], p99
    assert p99["prequal"] < p99["least-latency"], p99
    assert all(r["errors"] == 0 for r in records if r["balancer"] == "prequal")


def test_a_backend_that_fails_fast_does_not_draw_prequals_requests() -> None:
    """fast-failure.toml: one backend of five answers half its requests with a 1 ms 503. Its
    failures count at the error penalty in its probe answers, so prequal sends it no more than
    round-robin's share (failed requests within 1.4x round-robin's, 2 seeds). Recorded at their
    own latency, or not at all, they made it the fastest and idlest: 2.5x round-robin's."""
    library = Path(__file__).parents[1] / "scenarios" / "fast-failure.toml"
    records = evaluate([library], ["prequal", "round-robin"], 2, workers=1)
    errors = {
        b: sum(r["errors"] for r in records if r["balancer"] == b)
        for b in ("prequal", "round-robin")
    }
    assert errors["prequal"] <= 1.4 * errors["round-robin"], errors


def test_in_overload_prequal_spreads_by_capacity_rather_than_herding() -> None:
    """At 1.1× capacity prequal loses more requests than least-request (docs/baselines.md), and
    not because its proxies herd: each backend still gets its capacity's share (a fast one 2/12,
    a slow one 1/12), so every queue passes the timeout at once. Least-request piles onto some
    backends (whose full queues then shed); prequal's largest deviation must stay below its."""
    base = load_scenario(HALF_SLOW).nominal()
    overloaded = dataclasses.replace(time_scaled(base, 1.0, 1.1 / 0.9), duration_s=60.0)
    deviation = {}
    for balancer in ("prequal", "least-request"):
        result = run_episode(overloaded, balancer, 0)
        counts = np.bincount(result.backend[result.backend >= 0], minlength=8)
        capacity = np.array([2.0 if n.startswith("fast") else 1.0 for n in result.backend_names])
        expected = counts.sum() * capacity / capacity.sum()
        deviation[balancer] = float(np.max(np.abs(counts / expected - 1.0)))
    assert deviation["prequal"] < 0.1, deviation
    assert deviation["prequal"] < deviation["least-request"], deviation


BIG_AND_SMALL = """
name = "big-and-small"
duration_s = 40
[arrivals]
process = "poisson"
load = 0.6
[[backends]]
name = "big"
count = 2
concurrency = 8
service = { dist = "exponential", mean_s = 0.01 }
[[backends]]
name = "small"
count = 4
concurrency = 1
service = { dist = "exponential", mean_s = 0.04 }
"""


def test_weights_tell_prequal_which_backends_are_big(tmp_path: Path) -> None:
    """Two 8-worker backends and four 1-worker ones 4× slower (94% of the capacity is the big
    two). Published Prequal calls a big one hot at the RIF it is built for and sends the request
    to an idle small one. Steered by capacity's weights, each backend is hot only above its
    share of θ: the pair's p99 was 0.13× published Prequal's (52 vs 402 ms, 3 seeds); with the
    hot rule blind to the weights it was 0.47× (190 ms)."""
    world = tmp_path / "big-and-small.toml"
    world.write_text(BIG_AND_SMALL)
    balancers = ["prequal", "capacity+prequal"]
    records = evaluate([world], balancers, 3, workers=1)
    p99 = {
        b: float(np.mean([r["effective_p99_ms"] for r in records if r["balancer"] == b]))
        for b in balancers
    }
    assert p99["capacity+prequal"] < 0.3 * p99["prequal"], p99


# --- the kept candidates: the same picks as rebuilding them on every request ---------------------


class RebuildingPicker:
    """The picker as it was before it kept its candidates (issue 15): every request rebuilds the
    candidate mask and list and shuffles a fresh copy. The reference for the kept ones."""

    def __init__(self, rng: random.Random, settings: PrequalSettings, clock: Clock) -> None:
        self._rng = rng
        self.pool = ProbePool(settings)
        self.clock = clock
        self.prober: Prober | None = None
        self._weights: list[float] = []
        self._backends = -1

    def update(self, weights: np.ndarray) -> None:
        self._weights = np.asarray(weights, dtype=np.float64).tolist()

    def pick(self, view: View) -> int:
        if len(view.available) != self._backends:
            if self._backends >= 0:
                self.pool = ProbePool(self.pool.settings)
            self._backends = len(view.available)
        weights = self._weights
        if len(weights) != len(view.available):
            candidate = list(view.available)
        else:
            positive = [a and w > 0 for a, w in zip(view.available, weights, strict=True)]
            candidate = positive if any(positive) else list(view.available)
        backends = [b for b, ok in enumerate(candidate) if ok]
        if not backends:
            raise NoBackendAvailable("none")
        now = self.clock()
        share = None
        if len(weights) == self._backends and any(
            weights[b] != weights[backends[0]] for b in backends
        ):
            total = 0.0
            for b in backends:
                total += weights[b]
            share = [
                weights[b] * len(backends) / total if candidate[b] else 0.0
                for b in range(len(weights))
            ]
        chosen = self.pool.choose(candidate, view.in_flight, now, share)
        if chosen < 0:
            chosen = backends[self._draw_index(backends, 0)]
        count = probe_count(self.pool.settings.probes, len(backends), self._rng.random)
        order = list(backends)
        probe_weights = self._weights
        if share is not None:  # unequal: the backends it sends to drawn at a fraction
            probe_weights = [
                w * BUSY_PROBE_WEIGHT if view.in_flight[b] > 0 else w
                for b, w in enumerate(self._weights)
            ]
        for k in range(count):
            j = self._draw_index(order, k, probe_weights)
            order[k], order[j] = order[j], order[k]
        if self.prober is not None:
            self.prober(order[:count])
        else:
            for b in order[:count]:
                rif = view.in_flight[b]
                self.pool.add(b, *own_view_answer(rif, view.cost(b)), now, local=rif)
        return chosen

    def _draw_index(
        self, backends: list[int], start: int, weights: list[float] | None = None
    ) -> int:
        u = self._rng.random()
        weights = self._weights if weights is None else weights
        if len(weights) != self._backends or all(
            weights[b] == weights[backends[start]] for b in backends[start + 1 :]
        ):
            return start + int(u * (len(backends) - start))
        total = 0.0
        for b in backends[start:]:
            total += weights[b]
        x = u * total
        acc = 0.0
        for j in range(start, len(backends)):
            acc += weights[backends[j]]
            if x < acc:
                return j
        return len(backends) - 1


KEPT = {
    "defaults, answers from its own view": (PrequalSettings(), False),
    "defaults, probes sent": (PrequalSettings(), True),
    "small pool, fractional probes": (
        PrequalSettings(pool_size=4, removals=1, probes=2.5, max_reuse=3),
        False,
    ),
}


def _weights_event(events: np.random.Generator, n: int) -> np.ndarray:
    """Equal, unequal, some zero, all zero, or of another pool size (uniform until corrected)."""
    kind = int(events.integers(6))
    if kind == 0:
        return np.full(n, 1.0 / n)
    if kind == 1:
        return events.dirichlet(np.ones(n))
    if kind == 2:
        return events.choice([0.0, 0.5, 2.0], n)
    if kind == 3:  # a few unequal among many equal: the rest of a draw may become all equal
        w = np.full(n, 0.1)  # not a binary fraction: a sum of them is not a multiple of one
        w[events.integers(n, size=2)] = 0.3
        return w
    if kind == 4:
        return np.zeros(n)
    return np.ones(n + 1)


class Edgy(random.Random):
    """Draws that are often j/m exactly: where a uniform index int(u·m) and a running sum of m
    equal weights can part (the rest of a weighted draw that became all equal is uniform)."""

    def random(self) -> float:
        u = super().random()
        if u < 0.3:
            m = int(super().random() * 12) + 1
            return int(super().random() * m) / m
        return u


@pytest.mark.parametrize("name", KEPT)
def test_kept_candidates_pick_and_probe_exactly_as_rebuilding_them(name: str) -> None:
    """Availability flipped in place, new weights of every kind, pools of new sizes: the picker
    that keeps its candidates (fed an `Availability`, whose version it trusts) makes the same
    picks, sends the same probes and uses the same draws as the one rebuilding them (fed a plain
    copy), request after request."""
    settings, send = KEPT[name]
    events = np.random.default_rng(sum(map(ord, name)))
    now = [0.0]
    kept = PrequalPicker(Edgy(11), settings, clock=lambda: now[0])
    reference = RebuildingPicker(Edgy(11), settings, clock=lambda: now[0])
    sent: tuple[list[list[int]], list[list[int]]] = ([], [])
    if send:
        kept.prober = lambda targets: sent[0].append(list(targets))
        reference.prober = lambda targets: sent[1].append(list(targets))
    n = 9
    available = Availability([True] * n)
    in_flight = [0] * n
    costs = [0.01] * n
    picks = 0
    for _ in range(4000):
        now[0] += float(events.exponential(0.003))
        event = events.random()
        if event < 0.03:  # the pool changes size: a new list, as after adding or removing
            n = int(events.choice([1, 2, 9, 40, 200]))
            available = Availability(events.random(n) < 0.9)
            in_flight, costs = [0] * n, [0.01] * n
        elif event < 0.1:
            available[int(events.integers(n))] = bool(events.random() < 0.7)
        elif event < 0.14:
            w = _weights_event(events, n)
            kept.update(w)
            reference.update(w)
        elif event < 0.3 and send:  # answers to earlier probes, to both
            for _ in range(int(events.integers(1, 4))):
                b, rif = int(events.integers(n)), int(events.integers(0, 6))
                latency = float(events.choice([0.01, 0.02, 0.03]))
                kept.pool.add(b, rif, latency, now[0], local=in_flight[b])
                reference.pool.add(b, rif, latency, now[0], local=in_flight[b])
        b = int(events.integers(n))
        in_flight[b] = int(events.integers(0, 8))
        costs[b] = float(events.exponential(0.02))
        outcomes = []
        for picker, view_available in ((kept, available), (reference, list(available))):
            try:
                outcomes.append(picker.pick(View(in_flight, view_available, costs)))
            except NoBackendAvailable:
                outcomes.append(-1)
        assert outcomes[0] == outcomes[1]
        assert sent[0] == sent[1]
        assert kept.pool.backend == reference.pool.backend
        assert kept.pool.rif == reference.pool.rif
        picks += outcomes[0] >= 0
    assert picks > 3000
    assert kept._rng.random() == reference._rng.random()  # the same number of draws


class CountingPicker(PrequalPicker):
    """Counts how often the candidates are built."""

    built = 0

    def candidates(self, available: Sequence[bool]) -> list[bool]:
        self.built += 1
        return super().candidates(available)


def test_candidates_are_rebuilt_only_when_availability_or_weights_change() -> None:
    """With an `Availability` the check is its version (O(1)); a change shows at the next pick."""
    picker = CountingPicker(random.Random(12), clock=lambda: 0.0)
    available = Availability([True] * 50)
    view = View([0] * 50, available, [0.01] * 50)
    picker.update(np.ones(50))
    for _ in range(100):
        picker.pick(view)
    assert picker.built == 1
    available[7] = False
    assert all(picker.pick(view) != 7 for _ in range(200))
    assert picker.built == 2
    available[7] = False  # the same value again: no change, no rebuild
    available[8] = False
    available[8] = True  # changed and back: the version moved, the contents did not
    picker.pick(view)
    assert picker.built == 2
    picker.update(np.where(np.arange(50) == 3, 0.0, 1.0))
    assert all(picker.pick(view) != 3 for _ in range(200))
    assert picker.built == 3
