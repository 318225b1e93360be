from __future__ import annotations

import heapq
import logging
import random

import numpy as np
import pytest
from snapshots import make_snapshot

from rl_lb.balancers import (
    BALANCER_NAMES,
    FALLBACK_REASONS,
    Balancer,
    GuardedBalancer,
    make_balancer,
)
from rl_lb.errors import ConfigError
from rl_lb.metrics import PoolMetrics
from rl_lb.pickers import make_picker
from rl_lb.types import FloatArray, PoolSnapshot

HEURISTIC_PRESETS = [name for name in BALANCER_NAMES if name != "learned"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedPolicy:
    """A policy whose next output the test sets: weights, or an exception to raise."""

    name = "scripted"

    def __init__(self) -> None:
        self.output: FloatArray | Exception = np.array([0.5, 0.5])

    def weights(self, snapshot: PoolSnapshot) -> FloatArray:
        if isinstance(self.output, Exception):
            raise self.output
        return self.output

    def reset(self) -> None:
        """Stateless."""


def guarded() -> tuple[GuardedBalancer, ScriptedPolicy]:
    policy = ScriptedPolicy()
    primary = Balancer("scripted", policy, make_picker("p2c", rng=random.Random(1)))
    return GuardedBalancer(primary, max_staleness_s=2.0), policy


def run_pool(
    balancer: Balancer,
    serve: list,
    *,
    requests: int = 20_000,
    rate: float = 1000.0,
    seed: int = 0,
    control_interval: float = 1.0,
) -> np.ndarray:
    """Drive `balancer` with Poisson arrivals; serve[i](rng) -> (latency, error). Returns picks."""
    rng = random.Random(seed)
    clock = FakeClock()
    metrics = PoolMetrics([f"b{i}" for i in range(len(serve))], clock)
    weights = np.full(len(serve), 1 / len(serve))
    balancer.decide(metrics.snapshot(weights), clock.now)
    next_control = control_interval
    completions: list[tuple[float, int, float, bool]] = []
    picks = np.zeros(len(serve), dtype=int)
    t = 0.0
    for _ in range(requests):
        t += rng.expovariate(rate)
        while completions and completions[0][0] <= t:
            done, i, started, error = heapq.heappop(completions)
            clock.now = done
            metrics.finish(i, started, error=error)
        if t >= next_control:
            clock.now = next_control
            weights = balancer.decide(metrics.snapshot(weights), clock.now).weights
            next_control += control_interval
        clock.now = t
        i = balancer.pick(metrics)
        picks[i] += 1
        started = metrics.start(i)
        latency, error = serve[i](rng)
        heapq.heappush(completions, (t + latency, i, started, error))
    return picks


def healthy_20ms(rng: random.Random) -> tuple[float, bool]:
    return rng.uniform(0.015, 0.025), False


def half_errors_in_1ms(rng: random.Random) -> tuple[float, bool]:
    return (0.001, True) if rng.random() < 0.5 else healthy_20ms(rng)


def slow_200ms(rng: random.Random) -> tuple[float, bool]:
    return rng.uniform(0.15, 0.25), False


@pytest.mark.parametrize("name", HEURISTIC_PRESETS)
def test_every_preset_places_requests(name: str) -> None:
    balancer = make_balancer(name, rng=random.Random(3))
    picks = run_pool(balancer, [healthy_20ms] * 4, requests=2_000)
    assert picks.sum() == 2_000
    assert (picks > 0).all()


def test_least_latency_avoids_the_fast_failing_backend() -> None:
    serve = [healthy_20ms] * 4 + [half_errors_in_1ms]
    picks = run_pool(make_balancer("least-latency", rng=random.Random(7)), serve)
    assert picks[4] / picks.sum() < 0.05
    # the trap is real: least-request (in-flight only) sends it more than its fair share
    naive = run_pool(make_balancer("least-request", rng=random.Random(7)), serve)
    assert naive[4] / naive.sum() > 0.2


def test_least_latency_starves_a_slow_backend_compared_with_round_robin() -> None:
    serve = [healthy_20ms] * 4 + [slow_200ms]
    smart = run_pool(make_balancer("least-latency", rng=random.Random(2)), serve)
    plain = run_pool(make_balancer("round-robin", rng=random.Random(2)), serve)
    assert plain[4] / plain.sum() == pytest.approx(0.2, abs=0.01)
    assert smart[4] / smart.sum() < 0.1


def test_inverse_latency_weights_follow_speed() -> None:
    balancer = make_balancer("inverse-latency", rng=random.Random(4))
    picks = run_pool(balancer, [healthy_20ms, healthy_20ms, slow_200ms], control_interval=0.5)
    assert picks[2] < picks[0] / 3


def test_same_seed_same_picks() -> None:
    serve = [healthy_20ms, slow_200ms, half_errors_in_1ms]
    for name in ("least-latency", "random", "jsq"):
        a = run_pool(make_balancer(name, rng=random.Random(5)), serve, requests=3_000)
        b = run_pool(make_balancer(name, rng=random.Random(5)), serve, requests=3_000)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (RuntimeError("model blew up"), "exception"),
        (np.array([0.2, 0.3, 0.5]), "shape"),
        (np.array([np.nan, 1.0]), "nan"),
        (np.array([np.inf, 1.0]), "nan"),
        (np.array([-0.5, 1.5]), "negative"),
        (np.array([0.0, 0.0]), "all-zero"),
    ],
)
def test_guard_falls_back_on_bad_output_and_returns(
    output: FloatArray | Exception, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    balancer, policy = guarded()
    snap = make_snapshot([0.01, 0.02])
    assert balancer.decide(snap, 100.0).mode == "primary"
    policy.output = output
    with caplog.at_level(logging.INFO, logger="rl_lb.balancer"):
        decision = balancer.decide(snap, 100.0)
    assert (decision.mode, decision.reason) == ("fallback", reason)
    assert (balancer.mode, balancer.reason) == ("fallback", reason)
    assert decision.picker.name == "p2c-latency"
    np.testing.assert_allclose(decision.weights, [0.5, 0.5])
    assert balancer.fallback_counts[reason] == 1
    assert reason in caplog.text
    assert reason in FALLBACK_REASONS
    policy.output = np.array([0.9, 0.1])
    back = balancer.decide(snap, 100.0)
    assert (back.mode, back.reason) == ("primary", "")
    np.testing.assert_allclose(back.weights, [0.9, 0.1])
    assert back.picker.name == "p2c"
    assert balancer.switches == 2


def test_guard_falls_back_on_stale_metrics() -> None:
    balancer, _ = guarded()
    snap = make_snapshot([0.01, 0.02], taken_at=100.0)
    assert balancer.decide(snap, 101.9).mode == "primary"
    assert balancer.decide(snap, 102.5).reason == "stale"
    assert balancer.decide(snap.replace(taken_at=102.4), 102.5).mode == "primary"


def test_guard_without_primary_stays_on_fallback() -> None:
    balancer = GuardedBalancer(None, missing_reason="load-failed", name="learned")
    for _ in range(3):
        decision = balancer.decide(make_snapshot([0.01, 0.02]), 100.0)
    assert (decision.mode, decision.reason) == ("fallback", "load-failed")
    assert balancer.fallback_counts["load-failed"] == 3


def test_guard_zeroes_weights_of_dead_backends() -> None:
    balancer, policy = guarded()
    policy.output = np.array([0.5, 0.5])
    decision = balancer.decide(make_snapshot([0.01, 0.02], ejected=[False, True]), 100.0)
    np.testing.assert_allclose(decision.weights, [1.0, 0.0])


def test_policy_plus_picker_names_combine() -> None:
    balancer = make_balancer("capacity+p2c-latency")
    assert (balancer.policy.name, balancer.picker.name) == ("capacity", "p2c-latency")


@pytest.mark.parametrize("name", ["fastest", "capacity+teleport", "magic+p2c"])
def test_unknown_names_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError):
        make_balancer(name)
