"""The simulator against queueing theory (reference values: /work/shared/reference/queueing.md).

Time unit: the mean service time (1 s). Each run completes ≥ 5×10^5 requests after a 10%
warm-up; runs take well under a second each once the kernels are compiled.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from envs.factory import pool_scenario
from envs.simulator import Simulator
from rl_lb.scenarios import MetricsSpec

REQUESTS = 600_000


@cache
def mean_sojourn(
    n: int, load: float, picker: str, concurrency: int = 1, refresh_s: float = 0.0, seed: int = 1
) -> float:
    duration = REQUESTS / (load * n * concurrency)
    scenario = pool_scenario(
        n,
        load=load,
        duration_s=duration,
        concurrency=concurrency,
        metrics=MetricsSpec(picker_refresh_s=refresh_s),
    )
    sim = Simulator(scenario, seed)
    sim.set_decision(0, np.ones(n), picker)
    sim.run_until(duration)
    records = sim.records()
    done = (records.outcome == 0) & (records.arrival_s > 0.1 * duration)
    assert done.sum() >= 500_000
    return float(records.latency_s[done].mean())


@pytest.mark.parametrize(("load", "expected", "tolerance"), [(0.5, 2.0, 0.03), (0.9, 10.0, 0.08)])
def test_mm1_mean_sojourn(load: float, expected: float, tolerance: float) -> None:
    assert mean_sojourn(1, load, "random") == pytest.approx(expected, rel=tolerance)


def test_mm4_erlang_c() -> None:
    assert mean_sojourn(1, 0.5, "random", concurrency=4) == pytest.approx(1.087, rel=0.05)
    assert mean_sojourn(1, 0.9, "random", concurrency=4, seed=2) == pytest.approx(2.969, rel=0.05)


def test_random_dispatch_is_mm1() -> None:
    assert mean_sojourn(100, 0.9, "random") == pytest.approx(10.0, rel=0.08)


def test_power_of_two_choices_finite_n() -> None:
    assert mean_sojourn(100, 0.9, "p2c") == pytest.approx(2.664, rel=0.04)
    assert mean_sojourn(100, 0.5, "p2c") == pytest.approx(1.273, rel=0.04)


def test_join_shortest_queue() -> None:
    assert mean_sojourn(100, 0.9, "jsq") == pytest.approx(1.067, rel=0.04)


def test_fresh_information_ordering() -> None:
    jsq, p2c, rand = (mean_sojourn(100, 0.9, p) for p in ("jsq", "p2c", "random"))
    assert jsq < p2c < rand


@pytest.mark.parametrize(
    ("refresh_s", "jsq_ref", "p2c_ref"), [(1.0, 4.01, 2.97), (5.0, 12.0, 4.01)]
)
def test_stale_information_herds_jsq(refresh_s: float, jsq_ref: float, p2c_ref: float) -> None:
    """Mitzenmacher's bulletin board: greedy JSQ herds onto the servers that looked short."""
    jsq = mean_sojourn(100, 0.9, "jsq", refresh_s=refresh_s)
    p2c = mean_sojourn(100, 0.9, "p2c", refresh_s=refresh_s)
    assert p2c < jsq
    assert jsq == pytest.approx(jsq_ref, rel=0.05)
    assert p2c == pytest.approx(p2c_ref, rel=0.05)


SUPERMARKET_FILE = """
name = "supermarket-100"
description = "100 identical M/M/1 servers at 90% load, service 10 ms (the reference's unit)."
duration_s = 70
control_interval_s = 1.0

[arrivals]
process = "poisson"
load = 0.9

[health]
interval_s = 3600  # no probe in the run: the references have none

[[backends]]
count = 100
concurrency = 1
queue_limit = 1000000
timeout_s = 3600
service = { dist = "exponential", mean_s = 0.010 }
"""
"""Through a scenario file and `rl-lb evaluate`'s code path (balancers, control loop, records),
not only the kernel: 70 s × 9,000 req/s ≈ 630,000 requests per run, from empty queues (the
warm-up of a few hundred milliseconds weighs under 1% of the mean)."""


@cache
def evaluated_mean_ms(path: str) -> dict[str, float]:
    from envs.evaluate import evaluate

    records = evaluate([path], ["random", "least-request", "jsq"], [1], workers=1)
    assert all(r["requests"] >= 600_000 for r in records)
    return {r["balancer"]: r["mean_ms"] for r in records}


@pytest.fixture(scope="module")
def supermarket_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("queueing") / "supermarket-100.toml"
    path.write_text(SUPERMARKET_FILE)
    return str(path)


@pytest.mark.parametrize(
    ("balancer", "reference", "tolerance"),
    [("random", 10.0, 0.08), ("least-request", 2.664, 0.04), ("jsq", 1.067, 0.04)],
)
def test_references_at_n_100_through_a_scenario_file(
    supermarket_file: str, balancer: str, reference: float, tolerance: float
) -> None:
    """Random dispatch is M/M/1; `least-request` is uniform weights with p2c (the supermarket
    model, d = 2); `jsq` is join-the-shortest-queue on fresh counts. Means in units of 10 ms."""
    mean = evaluated_mean_ms(supermarket_file)[balancer] / 10.0
    assert mean == pytest.approx(reference, rel=tolerance)
