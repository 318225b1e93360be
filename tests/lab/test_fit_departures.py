"""The fit's service times read off the departures of a FIFO queue (lab/fit/backend_fit.py):
exact on a queue simulated here, unbiased where the queue factor is not (a near-constant
service time, the gunicorn case of issue 18), refused when requests overtake the queue, and
telling a concurrency one too high from the right one."""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from lab.fit.backend_fit import fit_backend, refine_concurrency, service_times


def _fifo_queue(arrival: np.ndarray, service: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Latencies and in-flight counts at dispatch (itself counted) of a FIFO queue of c servers,
    computed independently of the code under test: each request takes the earliest free server."""
    free_at = [0.0] * c
    finish = np.empty(len(arrival))
    for i, (a, s) in enumerate(zip(arrival, service, strict=True)):
        start = max(a, heapq.heappop(free_at))
        finish[i] = start + s
        heapq.heappush(free_at, float(finish[i]))
    in_flight = np.array(
        [int(np.sum((arrival <= a) & (finish > a))) for a in arrival], dtype=np.int64
    )
    return finish - arrival, in_flight


def _loaded(
    c: int, service: np.ndarray, load: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson arrivals at `load` times the queue's capacity, then its latencies and in-flight."""
    rate = load * c / float(service.mean())
    arrival = np.cumsum(rng.exponential(1 / rate, len(service)))
    latency, in_flight = _fifo_queue(arrival, service, c)
    return arrival, latency, in_flight


@pytest.mark.parametrize("c", [1, 2, 4])
def test_each_service_time_is_recovered_from_the_departures(c: int) -> None:
    rng = np.random.default_rng(c)
    service = rng.lognormal(np.log(0.1), 0.6, 3000)
    arrival, latency, in_flight = _loaded(c, service, 0.97, rng)
    assert in_flight.max() > 3 * c, "the load must queue for the test to mean anything"
    np.testing.assert_allclose(service_times(arrival, latency, c), service, rtol=1e-9)


@pytest.mark.parametrize("c", [1, 4])
def test_a_near_constant_service_time_is_fitted_within_one_percent(c: int) -> None:
    """A fixed 100 ms with ±2 ms of jitter at 98 % load: the departures give the mean; the
    queue factor (a sampled recording's fallback) reads it low, the request in service having
    half a service left rather than a whole one."""
    rng = np.random.default_rng(10 + c)
    service = 0.1 + rng.uniform(0.0, 0.004, 4000)
    arrival, latency, in_flight = _loaded(c, service, 0.98, rng)
    failed = np.zeros(len(arrival), dtype=bool)
    args = ("b", arrival, latency, failed, in_flight, float(arrival[-1]))
    fit = fit_backend(*args)
    assert fit.concurrency == c
    assert abs(fit.service.mean_s / service.mean() - 1) < 0.01, fit.service
    assert fit.service.dist == "constant"
    sampled = fit_backend(*args, complete=False)
    assert sampled.service.mean_s < 0.985 * service.mean(), sampled.service


def test_requests_that_overtake_the_queue_fall_back_to_the_queue_factor() -> None:
    """A processor-sharing server (every request in progress at once, slowed by the others) is
    no FIFO queue: short requests finish before the long ones dispatched ahead of them."""
    rng = np.random.default_rng(5)
    n = 2000
    arrival = np.cumsum(rng.exponential(0.05, n))
    in_flight = rng.integers(1, 8, n)
    latency = rng.exponential(0.05, n) * in_flight
    fit = fit_backend("ps", arrival, latency, np.zeros(n, dtype=bool), in_flight, 100.0)
    assert any("FIFO" in note for note in fit.notes), fit.notes
    assert fit.service.mean_s > 0


@pytest.mark.parametrize(("c", "cv"), [(2, 1.0), (4, 1.0), (2, 0.01), (4, 0.01)])
def test_a_concurrency_one_too_high_is_brought_down_and_the_right_one_kept(
    c: int, cv: float
) -> None:
    """A variable service time (cv 1, the emulated backends') gives itself away by requests
    overtaking the queue with one server less; a near-constant one (cv 0.01, gunicorn's) by a
    service time that depends on the in-flight count."""
    rng = np.random.default_rng(20 + c)
    sigma = np.sqrt(np.log(1 + cv * cv))
    service = rng.lognormal(np.log(0.1) - sigma**2 / 2, sigma, 3000)
    arrival, latency, in_flight = _loaded(c, service, 0.97, rng)
    assert refine_concurrency(arrival, latency, in_flight, c + 1) == c
    assert refine_concurrency(arrival, latency, in_flight, c) == c
