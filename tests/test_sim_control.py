"""The control loop: delayed snapshots, several proxies, whole episodes with a balancer."""

from __future__ import annotations

import numpy as np
import pytest

from envs import kernel
from envs.episode import run_episode, summarise
from envs.factory import pool_scenario
from envs.simulator import ControlLoop, Simulator
from rl_lb.balancers import make_balancer
from rl_lb.scenarios import MetricsSpec, ServiceDist

FAST = ServiceDist("exponential", 0.01)


@pytest.mark.parametrize("delay", [0.0, 0.5, 2.5])
def test_each_decision_sees_the_snapshot_taken_delay_earlier(delay: float) -> None:
    scenario = pool_scenario(
        3, load=0.5, duration_s=6.0, service=FAST, metrics=MetricsSpec(delay_s=delay)
    )
    loop = ControlLoop(Simulator(scenario, 1))
    seen = []
    while not loop.done:
        seen.append(loop.visible()[0].taken_at)
        loop.step()
    assert seen == [max(0.0, k - delay) for k in range(6)]


def test_proxies_split_traffic_and_keep_their_own_views() -> None:
    scenario = pool_scenario(
        4, load=0.7, duration_s=20.0, service=FAST, metrics=MetricsSpec(proxies=3)
    )
    sim = Simulator(scenario, 2)
    sim.run_until(20.0)
    r = sim.records()
    shares = np.bincount(r.proxy, minlength=3) / len(r.proxy)
    np.testing.assert_allclose(shares, 1 / 3, atol=0.02)
    pending = r.outcome == kernel.PENDING
    for p in range(3):
        mine = np.bincount(r.backend[pending & (r.proxy == p)], minlength=4)
        np.testing.assert_array_equal(sim.snapshot(p).in_flight, mine)
        assert sim.snapshot(p).throughput_rps.sum() == pytest.approx(
            sim.snapshot(0).throughput_rps.sum(), rel=0.15
        )


def test_run_episode_records_every_request_and_the_weights() -> None:
    scenario = pool_scenario(
        3, load=0.6, duration_s=5.0, service=FAST, timeout_s=0.5, metrics=MetricsSpec(proxies=2)
    )
    result = run_episode(scenario, "capacity", seed=3)
    assert (result.outcome != kernel.PENDING).all()  # drained
    assert result.weights.shape == (5, 3)
    np.testing.assert_allclose(result.weights.sum(axis=1), 1.0)
    assert set(result.proxy.tolist()) == {0, 1}
    summary = summarise(result)
    assert summary["requests"] == len(result.arrival_s)
    assert summary["p50_ms"] <= summary["p99_ms"] <= summary["p999_ms"]
    assert summary["effective_p99_ms"] >= summary["p99_ms"] - 1e-9
    again = run_episode(scenario, make_balancer("capacity"), seed=3)
    np.testing.assert_array_equal(again.latency_s, result.latency_s)


def test_effective_latency_counts_failures_as_the_timeout() -> None:
    scenario = pool_scenario(
        2, load=2.0, duration_s=5.0, service=FAST, timeout_s=0.3, queue_limit=3
    )
    result = run_episode(scenario, "random", seed=1)
    failed = result.failed
    assert failed.any()
    np.testing.assert_array_equal(result.effective_latency_s[failed], 0.3)
    assert summarise(result)["errors"] == failed.sum()
