"""Arrival processes (Poisson rate steps, MMPP, traces) and the proxy's retry budget."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from envs import kernel
from envs.factory import NEVER, pool_scenario
from envs.simulator import Simulator
from rl_lb.scenarios import Arrivals, Event, RateStep, ServiceDist

FAST = ServiceDist("exponential", 0.001)


def arrivals_of(arrivals: Arrivals, duration: float = 100.0, seed: int = 1) -> np.ndarray:
    base = pool_scenario(4, load=0.1, duration_s=duration, service=FAST, concurrency=8)
    sim = Simulator(dataclasses.replace(base, arrivals=arrivals), seed)
    sim.run_until(duration + 1.0)
    return sim.records().arrival_s


def test_rate_profile_steps() -> None:
    times = arrivals_of(
        Arrivals("poisson", 100.0, profile=(RateStep(40.0, 400.0), RateStep(70.0, 0.0)))
    )
    counts = np.histogram(times, bins=[0, 40, 70, 100])[0]
    rates = counts / np.array([40, 30, 30])
    assert rates[0] == pytest.approx(100, rel=0.1)
    assert rates[1] == pytest.approx(400, rel=0.05)
    assert rates[2] == 0


def test_mmpp_alternates_between_phase_rates() -> None:
    times = arrivals_of(
        Arrivals("mmpp", 550.0, mmpp_rates=(100.0, 1000.0), mmpp_dwell_s=(5.0, 5.0)), 400.0
    )
    per_second = np.bincount(times.astype(int), minlength=400)
    assert len(times) / 400 == pytest.approx(550, rel=0.15)
    # seconds cluster around the two phase rates, not around the mean
    assert np.mean(per_second < 300) > 0.3
    assert np.mean(per_second > 700) > 0.3


def test_trace_is_replayed_exactly() -> None:
    trace = tuple(np.sort(np.random.default_rng(3).uniform(0, 50, 2000)).tolist())
    times = arrivals_of(Arrivals("trace", 40.0, trace=trace), 50.0)
    np.testing.assert_array_equal(times, trace)


def test_retries_stay_within_the_budget() -> None:
    """Three of four backends refuse connections and nothing takes them out of rotation:
    without a budget every request could retry twice."""
    down = [(i, Event(0.0, 60.0, down=True)) for i in range(3)]
    scenario = pool_scenario(
        4, load=0.2, duration_s=60.0, service=FAST, events=down, health_interval_s=NEVER
    )
    sim = Simulator(scenario, 2)
    for p in range(sim.proxies):
        sim.set_decision(p, np.ones(4), "random")
    sim.run_until(61.0)
    r = sim.records()
    assert r.retries.max() == 2
    assert r.retries.sum() / len(r.retries) == pytest.approx(0.2, abs=0.02)
    assert (r.outcome == kernel.ERROR).mean() > 0.3  # the budget ran out: connect errors surface
