"""The outcome guard: the rules on hand-made snapshots, then the guarded learned policy simulated.

The shift world (tests/scenarios/fastest-slow.toml) is where the shipped policy fails: its fast
pair turns 6x slower for good at 35% load, and unguarded it ends near the 2 s timeout while
least-latency stays near 120 ms. The weight envelope keeps that shift from exploding within an
interval; the CUSUM catches it when the envelope is off.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from snapshots import make_snapshot

from envs.episode import EpisodeResult, run_episode, summarise
from rl_lb.balancers import UNGUARDED_SUFFIX, Balancer, GuardedBalancer, make_balancer
from rl_lb.control import ControlSpec, OutcomeGuardSettings
from rl_lb.errors import ConfigError
from rl_lb.outcome_guard import (
    OutcomeGuard,
    estimate,
    fallback_shares,
    forced_pair_share,
    pair_share_bound,
    ranked_shares,
    spread_weights,
)
from rl_lb.pickers import make_picker
from rl_lb.policies import make_policy
from rl_lb.scenarios import Scenario, load_scenario
from rl_lb.types import FloatArray, PoolSnapshot

SHIFT_WORLD = Path(__file__).parent / "scenarios" / "fastest-slow.toml"
COST_BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "outcome_guard_cost.py"
SETTINGS = OutcomeGuardSettings(pair_share=4.0)
"""The envelope on (it is off by default) at the multiple these tests were computed for."""
GOOD = [0.02] * 8
"""Eight backends at 20 ms (p99 60 ms)."""


def pool(ewma: list[float], share: list[float] | None = None, **kw: object) -> PoolSnapshot:
    """Eight backends, 100 answers/s in all split by `share`, as `make_snapshot` builds them."""
    share = share or [1 / len(ewma)] * len(ewma)
    kw.setdefault("in_flight", [0] * len(ewma))
    return make_snapshot(ewma, throughput_rps=[100 * s for s in share], **kw)  # type: ignore[arg-type]


def bad_shift(rng: np.random.Generator) -> PoolSnapshot:
    """Two backends 10x slower carrying 60% of the answers."""
    noise = rng.uniform(0.9, 1.1, 8)
    return pool(list(np.array([0.2, 0.2] + [0.02] * 6) * noise), [0.3, 0.3] + [0.4 / 6] * 6)


def feed(guard: OutcomeGuard, snapshots: list[PoolSnapshot], start: float = 0.0) -> list[bool]:
    return [guard.observe(s, start + t, served_by_policy=True) for t, s in enumerate(snapshots)]


# -- the rule --------------------------------------------------------------------------------


def test_the_fallback_estimate_is_least_latencys_routing() -> None:
    shares = fallback_shares(4)
    assert shares.sum() == pytest.approx(1.0)
    assert list(shares) == pytest.approx([3 / 6, 2 / 6, 1 / 6, 0.0])
    same = estimate(pool(GOOD), SETTINGS.min_answers)
    assert same is not None
    assert same.log_ratio == pytest.approx(0.0)
    assert estimate(pool([0.02, 0.02], [1.0, 0.0]), SETTINGS.min_answers) is None  # one known


def test_backends_of_equal_typical_cost_share_their_ranks() -> None:
    shares = ranked_shares(np.array([0.02, 0.01, 0.02, 0.03]))
    assert list(shares) == pytest.approx([1 / 4, 3 / 6, 1 / 4, 0.0])
    assert list(ranked_shares(np.array([0.05] * 4))) == pytest.approx([1 / 4] * 4)


def test_one_slow_answer_is_not_a_regression_the_fallback_would_have_avoided() -> None:
    """A tail on one backend (its p99 50x, its median as the others'), equal shares: least-
    latency could not have seen it coming, so the fallback is priced as exposed to it like the
    policy. Ranked by the p99 itself the fallback would dodge it: 7x, a trip at once. A backend
    whose median is slow too is slow for good, and the fallback is credited with avoiding it."""
    tail = pool(GOOD)
    tail = dataclasses.replace(tail, p99_s=np.where(np.arange(8) == 0, 3.0, tail.p99_s))
    once = estimate(tail, SETTINGS.min_answers)
    assert once is not None
    assert once.log_ratio == pytest.approx(0.0)
    slow_for_good = dataclasses.replace(tail, p50_s=np.where(np.arange(8) == 0, 1.0, tail.p50_s))
    assert estimate(slow_for_good, SETTINGS.min_answers).log_ratio > 1.0  # type: ignore[union-attr]


def test_one_request_in_service_is_no_queue() -> None:
    """Eight backends answering 2 a second each (one proxy of many), one request in flight on
    the first: priced by `in-flight / throughput` it waited 0.5 s, 8x its tail, and the guard
    read a regression; it is no queue. Three in flight at that rate still read as one (1 s)."""
    quiet = pool(GOOD, [1 / 8] * 8)
    quiet = dataclasses.replace(quiet, throughput_rps=np.full(8, 2.0))
    one = dataclasses.replace(quiet, in_flight=np.array([1.0] + [0.0] * 7))
    assert estimate(one, SETTINGS.min_answers).log_ratio == pytest.approx(0.0)  # type: ignore[union-attr]
    queue = dataclasses.replace(quiet, in_flight=np.array([3.0] + [0.0] * 7))
    queued = estimate(queue, SETTINGS.min_answers)
    assert queued is not None
    assert queued.policy_s == pytest.approx(1.0 / 8 + 7 / 8 * float(quiet.p99_s[1]))


def test_the_policy_is_judged_only_once_the_window_holds_its_own_traffic() -> None:
    guard = OutcomeGuard(OutcomeGuardSettings(backoff_s=10.0))
    bad = bad_shift(np.random.default_rng(4))
    assert guard.observe(bad, 0.0, served_by_policy=True)
    guard.observe(bad, 10.0, served_by_policy=False)  # the hold's last interval
    window = bad.window_s
    judged = [guard.observe(bad, 10.0 + t, served_by_policy=True) for t in range(1, 11)]
    assert judged == [False] * (int(window) - 1) + [True]
    assert guard.holding(10.0 + window)


def test_errors_count_at_the_penalty() -> None:
    failing = pool(GOOD, error_rate=[0.5, 0.5] + [0.0] * 6)
    assert estimate(failing, SETTINGS.min_answers).policy_s > 0.5  # type: ignore[union-attr]


def test_a_clear_regression_trips_within_two_intervals() -> None:
    rng = np.random.default_rng(0)
    guard = OutcomeGuard()
    trips = feed(guard, [pool(GOOD)] * 5 + [bad_shift(rng) for _ in range(5)])
    assert trips.index(True) <= 5 + 1
    assert guard.holding(trips.index(True) + 1.0)


def test_noise_below_the_threshold_never_trips() -> None:
    """Intervals at up to 0.9x the threshold, for a simulated hour."""
    rng = np.random.default_rng(1)
    guard = OutcomeGuard()
    snapshots = []
    for _ in range(3600):
        slow = 0.02 * rng.uniform(1.0, 0.9 * SETTINGS.threshold)
        snapshots.append(pool([slow, slow] + [0.02] * 6, [0.3, 0.3] + [0.4 / 6] * 6))
    assert not any(feed(guard, snapshots))


def test_the_backoff_doubles_then_caps_then_resets() -> None:
    settings = OutcomeGuardSettings(backoff_s=10.0, max_backoff_s=40.0)
    guard = OutcomeGuard(settings)
    bad = bad_shift(np.random.default_rng(2))
    holds = []
    now = 0.0
    for _ in range(5):
        assert guard.observe(bad, now, served_by_policy=True)
        holds.append(guard.hold_until - now)
        now = guard.hold_until
        guard.observe(bad, now, served_by_policy=False)  # the last fallback interval
        now += bad.window_s  # the policy is judged once the window is its own traffic
    assert holds == [10.0, 20.0, 40.0, 40.0, 40.0]
    for t in range(41):  # a clean stretch as long as the cap forgives the past
        assert not guard.observe(pool(GOOD), now + t, served_by_policy=True)
    assert guard.observe(bad, now + 41, served_by_policy=True)
    assert guard.hold_until - (now + 41) == 10.0


def test_it_does_not_flap() -> None:
    """A policy bad every other interval for an hour: switches at least a backoff apart."""
    guard = OutcomeGuard()
    rng = np.random.default_rng(3)
    trips = []
    for t in range(3600):
        if guard.holding(t):
            guard.observe(pool(GOOD), t, served_by_policy=False)
            continue
        snapshot = bad_shift(rng) if t % 2 else pool(GOOD)
        if guard.observe(snapshot, t, served_by_policy=True):
            trips.append(t)
    assert np.diff(trips).min() >= SETTINGS.backoff_s
    assert (
        len(trips)
        <= 3600 / SETTINGS.max_backoff_s
        + math.log2(SETTINGS.max_backoff_s / SETTINGS.backoff_s)
        + 1
    )


def hold_after_a_trip(fallback: PoolSnapshot) -> tuple[OutcomeGuard, list[bool]]:
    """A guard tripped at 0 s by `bad_shift`, then fed `fallback` as the fallback's intervals
    through its first hold: whether it still held after each."""
    guard = OutcomeGuard()
    assert guard.observe(bad_shift(np.random.default_rng(5)), 0.0, served_by_policy=True)
    held = []
    for t in range(1, int(guard.settings.backoff_s)):
        guard.observe(fallback, float(t), served_by_policy=False)
        held.append(guard.holding(float(t)))
    return guard, held


def test_a_hold_ends_a_window_after_its_trip_when_the_fallback_does_no_better() -> None:
    """The trip predicted the fallback's traffic would cost `threshold` x less; once the window
    holds only the fallback's traffic and it costs as much as the policy's did, the policy
    serves again (and the trip still doubles the next hold)."""
    tripping = bad_shift(np.random.default_rng(5))
    guard, held = hold_after_a_trip(tripping)
    window = int(tripping.window_s)
    assert held == [True] * (window - 1) + [False] * (len(held) - window + 1)
    assert guard.early_returns == 1
    assert guard.current_hold_s() == 2 * guard.settings.backoff_s


def test_a_fallback_that_does_better_keeps_its_hold() -> None:
    """Half the policy's cost at the trip is still above what the trip predicted (1 /
    threshold of it), but it is better: the hold stands."""
    tripping = bad_shift(np.random.default_rng(5))
    half = dataclasses.replace(
        tripping,
        **{name: getattr(tripping, name) * 0.5 for name in ("ewma_s", "p50_s", "p95_s", "p99_s")},
    )
    guard, held = hold_after_a_trip(half)
    assert all(held)
    assert guard.early_returns == 0
    guard, held = hold_after_a_trip(pool(GOOD))
    assert all(held)
    assert guard.early_returns == 0


def test_against_a_fallback_no_better_switches_are_two_windows_apart() -> None:
    """Policy and fallback alike bad for ten minutes: a hold ends a window after its trip, the
    policy is judged a window after it serves again, so they take turns no faster."""
    guard = OutcomeGuard()
    bad = bad_shift(np.random.default_rng(6))
    primary, trips, returns = True, [], []
    for t in range(600):
        if guard.observe(bad, float(t), served_by_policy=primary):
            trips.append(t)
        if guard.early_return is not None:
            returns.append(t)
        primary = not guard.holding(float(t))
    assert list(np.diff(trips)) == [2 * bad.window_s] * (len(trips) - 1)
    assert [r - t for r, t in zip(returns, trips, strict=False)] == [bad.window_s] * len(returns)


def test_unknown_backends_get_the_probe_floor() -> None:
    guard = OutcomeGuard()
    snapshot = pool([0.02] * 4, [1.0, 0.0, 0.0, 0.0])
    weights = guard.with_probes(np.array([1.0, 0.0, 0.0, 0.0]), snapshot)
    assert weights.sum() == pytest.approx(1.0)
    assert (weights[1:] >= SETTINGS.probe_share / 4 * 0.99).all()
    known = pool([0.02] * 4)
    assert list(guard.with_probes(np.array([0.7, 0.1, 0.1, 0.1]), known)) == [0.7, 0.1, 0.1, 0.1]


class Loaded:
    """A picker's view where the backends in `heavy` have a huge queue: a two-choices picker
    picks one of them only when both its candidates are heavy."""

    def __init__(self, n: int, heavy: set[int]) -> None:
        self.in_flight = [1000 if i in heavy else 0 for i in range(n)]
        self.available = [True] * n

    def cost(self, index: int) -> float:
        return 0.02

    def error_rate(self, index: int) -> float:
        return 0.0


@pytest.mark.parametrize("picker", ["p2c", "p2c-latency"])
def test_the_forced_pair_share_is_what_the_two_choices_pickers_force(picker: str) -> None:
    weights = np.array([0.33, 0.31] + [0.36 / 6] * 6)
    chooser = make_picker(picker, random.Random(4))
    chooser.update(weights)
    view = Loaded(8, {0, 1})
    draws = 40_000
    forced = sum(chooser.pick(view) in (0, 1) for _ in range(draws)) / draws
    expected = forced_pair_share(0.33, 0.31)
    assert expected == pytest.approx(0.30, abs=0.01)
    assert forced == pytest.approx(expected, abs=4 * math.sqrt(expected / draws))


def max_forced(weights: FloatArray) -> float:
    top = np.sort(weights)[::-1]
    return forced_pair_share(float(top[0]), float(top[1]))


def test_the_envelope_bounds_every_pair_and_leaves_spread_weights_alone() -> None:
    rng = np.random.default_rng(5)
    for _ in range(500):
        n = int(rng.integers(3, 17))
        live = rng.random(n) < 0.9
        live[:3] = True
        weights = np.where(live, rng.dirichlet(np.full(n, rng.choice([0.1, 0.5, 3.0]))), 0.0)
        weights /= weights.sum()
        spread = spread_weights(weights, live, SETTINGS.pair_share)
        bound = pair_share_bound(int(live.sum()), SETTINGS.pair_share)
        assert spread.sum() == pytest.approx(1.0)
        assert (spread >= 0).all()
        assert (spread[~live] == 0).all()
        top = int(np.argmax(weights))
        assert spread[top] == weights[top]  # the favourite keeps its weight
        assert spread.max() == weights.max()  # and stays the favourite
        even = (1 - weights[top]) / (int(live.sum()) - 1)  # the least its pairs can be forced
        assert max_forced(spread[live]) <= max(bound, forced_pair_share(weights[top], even)) + 1e-9
        if max_forced(weights[live]) <= bound:
            assert list(spread) == list(weights)
    uniform = np.full(8, 1 / 8)
    assert list(spread_weights(uniform, np.ones(8, bool), 1.0)) == list(uniform)
    pair = np.array([0.9, 0.1])
    assert list(spread_weights(pair, np.ones(2, bool), 1.0)) == list(pair)  # both always drawn
    alone = np.array([1.0] + [0.0] * 9)  # all on one: never forced, the CUSUM's to catch
    assert list(spread_weights(alone, np.ones(10, bool), 1.0)) == list(alone)
    favourite = np.array([0.9, 0.1] + [0.0] * 8)  # infeasible: the rest shared equally
    assert list(spread_weights(favourite, np.ones(10, bool), 4.0)) == pytest.approx(
        [0.9] + [0.1 / 9] * 9
    )


def test_the_envelope_keeps_the_favourite_and_spreads_its_partner() -> None:
    """The shipped policy's weights on the shift world before the shift."""
    weights = np.array([0.33, 0.31] + [0.36 / 6] * 6)
    spread = spread_weights(weights, np.ones(8, bool), SETTINGS.pair_share)
    assert spread[0] == pytest.approx(0.33)
    assert forced_pair_share(spread[0], spread[1]) == pytest.approx(4 * 2 / 56)
    assert spread[1] < 0.2
    assert np.ptp(spread[2:]) < 1e-12  # the rest keeps its (equal) proportions
    off = OutcomeGuard(OutcomeGuardSettings(pair_share=0.0))
    assert list(off.shape(weights, pool(GOOD))) == list(weights)


class FastPair:
    """The shipped policy's weights on the shift world before the shift, every interval."""

    name = "fast-pair"

    def weights(self, snapshot: PoolSnapshot) -> FloatArray:
        return np.array([0.33, 0.31] + [0.36 / 6] * 6)

    def reset(self) -> None:
        """Stateless."""


def test_the_guarded_balancer_serves_the_spread_weights() -> None:
    primary = Balancer("fast-pair", FastPair(), make_picker("p2c-latency"))
    guarded = GuardedBalancer(primary, outcome_guard=OutcomeGuard(SETTINGS))
    decision = guarded.decide(pool(GOOD), 0.0)
    assert decision.mode == "primary"
    assert max_forced(decision.weights) == pytest.approx(pair_share_bound(8, SETTINGS.pair_share))
    assert decision.picker is primary.picker
    unguarded = GuardedBalancer(
        Balancer("fast-pair", FastPair(), make_picker("p2c-latency")), outcome_guard=None
    )
    assert max_forced(unguarded.decide(pool(GOOD), 0.0).weights) == pytest.approx(0.30, abs=0.01)


def test_settings_are_checked_and_in_the_control_spec() -> None:
    assert ControlSpec().outcome_guard == OutcomeGuardSettings()
    assert ControlSpec().outcome_guard.pair_share == 0.0  # the envelope is opt-in
    assert "outcome-guard-threshold" in ControlSpec().flags()
    with pytest.raises(ConfigError, match="outcome-guard-threshold"):
        OutcomeGuardSettings(threshold=1.0)
    with pytest.raises(ConfigError, match="outcome-guard-max-backoff"):
        OutcomeGuardSettings(backoff_s=60.0, max_backoff_s=30.0)
    with pytest.raises(ConfigError, match="outcome-guard-pair-share"):
        OutcomeGuardSettings(pair_share=0.5)


def test_make_balancer_turns_it_on_for_learned_policies_only() -> None:
    learned = make_balancer("learned")
    assert isinstance(learned, GuardedBalancer)
    assert learned.outcome_guard is not None
    for off in (
        make_balancer("learned", outcome_guard=False),
        make_balancer("learned", outcome_guard=OutcomeGuardSettings(enabled=False)),
        make_balancer("learned" + UNGUARDED_SUFFIX),
    ):
        assert isinstance(off, GuardedBalancer)
        assert off.outcome_guard is None
    assert not isinstance(make_balancer("least-latency"), GuardedBalancer)


# -- simulated -------------------------------------------------------------------------------


class SlowestOnly:
    """A deliberately bad policy: all the weight on the backend named `slow`."""

    name = "slowest-only"

    def weights(self, snapshot: PoolSnapshot) -> FloatArray:
        return np.array([float(n == "slow") for n in snapshot.names])

    def reset(self) -> None:
        """Stateless."""


def sample(path: Path | str, seed: int, duration_s: float | None = None) -> Scenario:
    scenario = load_scenario(path).sample(np.random.default_rng(seed))
    if duration_s is not None:
        scenario = dataclasses.replace(scenario, duration_s=duration_s)
    return scenario


def interval_p99(result: EpisodeResult, k: int) -> float:
    start = result.interval_start_s[k]
    end = start + (result.interval_start_s[1] - result.interval_start_s[0])
    mask = (result.arrival_s >= start) & (result.arrival_s < end)
    return float(np.quantile(result.effective_latency_s[mask], 0.99))


def first_fallback(result: EpisodeResult) -> int | None:
    return next((k for k, m in enumerate(result.modes) if m == "fallback: regression"), None)


def first_bad_interval(guarded: EpisodeResult, reference: EpisodeResult) -> int | None:
    """The first interval whose p99 exceeds the reference's (least-latency) by the threshold."""
    return next(
        (
            k
            for k in range(len(guarded.modes))
            if interval_p99(guarded, k) > SETTINGS.threshold * interval_p99(reference, k)
        ),
        None,
    )


def reaction_intervals(guarded: EpisodeResult, reference: EpisodeResult) -> int:
    """Intervals from the first bad one to the first one the fallback serves (0 when no
    interval was bad: nothing to react to)."""
    bad = first_bad_interval(guarded, reference)
    if bad is None:
        return 0
    switched = first_fallback(guarded)
    assert switched is not None, f"interval {bad} was bad and the fallback never served"
    return switched - bad


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def test_the_shift_world_stays_within_10_percent_of_least_latency() -> None:
    """Target: over 5 paired seeds the guarded policy's effective p99 is at most 1.10x
    least-latency's, and any interval whose p99 is the threshold times least-latency's is
    followed by the fallback within 5 intervals. The policy retrained for any pool size (4
    December 2026) no longer breaks here even unguarded (the earlier one was 10-17x worse):
    both are held to the bar."""
    guarded_ratios, unguarded_ratios = [], []
    for seed in range(5):
        scenario = sample(SHIFT_WORLD, seed)
        guarded = run_episode(scenario, "learned", seed)
        unguarded = run_episode(scenario, "learned" + UNGUARDED_SUFFIX, seed)
        fallback = run_episode(scenario, "least-latency", seed)
        on, off, reference = (
            summarise(r)["effective_p99_ms"] for r in (guarded, unguarded, fallback)
        )
        assert reaction_intervals(guarded, fallback) <= 5
        guarded_ratios.append(on / reference)
        unguarded_ratios.append(off / reference)
    assert geomean(guarded_ratios) <= 1.10
    assert geomean(unguarded_ratios) <= 1.10


def _self_confirming() -> Balancer:
    """A policy the shift breaks for good: weights by measured throughput (`capacity`), which
    keep sending the fastest backends their share after they turn slow (issue 17's finding)."""
    return Balancer("capacity", make_policy("capacity"), make_picker("p2c-latency"))


@pytest.mark.parametrize("seed", range(5))
def test_without_the_envelope_the_cusum_catches_the_shift(seed: int) -> None:
    """The fallback serves within 5 intervals of the first interval whose p99 is the threshold
    times least-latency's, for a policy the shift does break (the shipped one no longer does)."""
    scenario = sample(SHIFT_WORLD, seed)
    cusum_only = OutcomeGuardSettings(pair_share=0.0)
    guarded = run_episode(
        scenario, GuardedBalancer(_self_confirming(), outcome_guard=OutcomeGuard(cusum_only)), seed
    )
    unguarded = run_episode(scenario, _self_confirming(), seed)
    fallback = run_episode(scenario, "least-latency", seed)
    assert summarise(unguarded)["effective_p99_ms"] > 3 * summarise(fallback)["effective_p99_ms"]
    assert first_bad_interval(guarded, fallback) is not None
    assert reaction_intervals(guarded, fallback) <= 5
    assert summarise(unguarded)["fallback_share"] == 0.0
    assert 0.0 < summarise(guarded)["fallback_share"] < 1.0


def test_a_policy_on_the_slowest_backend_is_caught_within_the_bound() -> None:
    scenario = sample("slow-backend", 0, duration_s=20.0)
    primary = Balancer("slowest-only", SlowestOnly(), make_picker("p2c-latency"))
    guarded = GuardedBalancer(primary, outcome_guard=OutcomeGuard())
    result = run_episode(scenario, guarded, 0)
    reference = run_episode(scenario, "least-latency", 0)
    assert first_bad_interval(result, reference) is not None  # it is a bad policy
    assert reaction_intervals(result, reference) <= 5


def test_a_good_policy_keeps_serving_for_30_simulated_minutes() -> None:
    scenario = sample("steady", 0, duration_s=1800.0)
    balancer = make_balancer("learned", rng=random.Random(0))
    result = run_episode(scenario, balancer, 0)
    assert set(result.modes) == {"primary"}
    assert summarise(result)["fallback_share"] == 0.0


@pytest.mark.slow
def test_the_guard_costs_a_good_policy_little_where_the_envelope_binds(tmp_path: Path) -> None:
    """A slice of benchmarks/outcome_guard_cost.py (the whole library, 10 seeds, is the
    benchmark): heterogeneous, where the shipped policy's weights are concentrated enough for
    the envelope to change them, and steady, where they are not."""
    figures = tmp_path / "cost.json"
    command = [sys.executable, str(COST_BENCHMARK), "--seeds", "2", "--json", str(figures)]
    command += ["--scenario", "heterogeneous", "--scenario", "steady"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    cost = json.loads(figures.read_text())
    assert cost["overall"]["p99_ratio"] <= 1.02
    assert cost["overall"]["fallback_share"] <= 0.05
    assert cost["scenarios"]["steady"]["p99_ratio"] == pytest.approx(1.0, abs=0.01)
