"""Emulated backends behave like their scenario spec, in real time, over real sockets."""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp
import numpy as np
import pytest

from lab.backends import (
    EmulatedPool,
    FifoServers,
    PauseSchedule,
    _slowdown,
    draw_service_time,
)
from rl_lb.control import PROBE_PATH
from rl_lb.errors import ConfigError
from rl_lb.metrics import DEFAULT_ERROR_PENALTY_S
from rl_lb.scenarios import (
    Arrivals,
    BackendSpec,
    Event,
    MetricsSpec,
    Pauses,
    Scenario,
    ServiceDist,
)


def scenario(*backends: BackendSpec) -> Scenario:
    return Scenario(
        name="test",
        duration_s=60.0,
        control_interval_s=1.0,
        arrivals=Arrivals(process="poisson", rate=10.0),
        metrics=MetricsSpec(),
        backends=backends,
    )


def backend(
    mean_s: float = 0.005, concurrency: int = 4, dist: str = "constant", **kwargs: object
) -> BackendSpec:
    return BackendSpec(
        name="b0",
        concurrency=concurrency,
        service=ServiceDist(dist, mean_s, cv=0.1),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


async def timed(session: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    start = time.monotonic()
    async with session.get(url) as response:
        await response.read()
        return response.status, time.monotonic() - start


@pytest.mark.parametrize(
    ("service", "cv"),
    [
        (ServiceDist("exponential", 0.02), 1.0),
        (ServiceDist("lognormal", 0.02, cv=2.0), 2.0),
        (ServiceDist("pareto", 0.02, shape=3.0), math.sqrt(1 / (3 * (3 - 2)))),
        (ServiceDist("constant", 0.02), 0.0),
    ],
)
def test_service_time_distributions_have_the_scenario_mean_and_cv(
    service: ServiceDist, cv: float
) -> None:
    rng = np.random.default_rng(7)
    draws = np.array([draw_service_time(service, rng) for _ in range(40_000)])
    standard_error = service.mean_s * max(cv, 1e-9) / math.sqrt(len(draws))
    assert abs(draws.mean() - service.mean_s) < 5 * standard_error + 1e-12
    if service.dist in ("exponential", "constant"):
        assert draws.std() / draws.mean() == pytest.approx(cv, abs=0.03)
    if service.dist == "pareto":
        assert draws.min() >= service.mean_s * (service.shape - 1) / service.shape


async def test_latency_over_http_matches_the_service_mean() -> None:
    spec = backend(mean_s=0.05, concurrency=20, dist="lognormal")
    async with EmulatedPool(scenario(spec), seed=3) as pool, aiohttp.ClientSession() as session:
        results: list[tuple[int, float]] = []
        for _ in range(10):
            results += await asyncio.gather(*(timed(session, pool.urls[0]) for _ in range(20)))
    latencies = np.array([latency for _, latency in results])
    assert all(status == 200 for status, _ in results)
    # No queueing (20 slots, 20 at a time): latency = service + loopback overhead, which can
    # reach several ms on a loaded machine, hence the median (robust to its stalls) above.
    # The lower bound is 4 standard errors of the mean (cv 0.1).
    assert latencies.mean() > 0.05 * 0.97
    assert np.median(latencies) < 0.05 + 0.015


async def test_concurrency_limit_queues_in_arrival_order() -> None:
    spec = backend(mean_s=0.1, concurrency=1)
    async with EmulatedPool(scenario(spec)) as pool, aiohttp.ClientSession() as session:
        done: list[int] = []

        async def send(i: int) -> float:
            await asyncio.sleep(0.02 * i)
            _, latency = await timed(session, pool.urls[0])
            done.append(i)
            return latency

        latencies = await asyncio.gather(*(send(i) for i in range(3)))
    assert done == [0, 1, 2]
    assert latencies[0] < 0.18
    assert latencies[1] > 0.15  # waited for the first one's 100 ms
    assert latencies[2] > 0.23


def test_fifo_servers_schedule_first_come_first_served() -> None:
    servers = FifoServers(2)
    ends = []
    for arrival, work in ((0.0, 1.0), (0.1, 1.0), (0.2, 0.5), (0.3, 0.1), (5.0, 0.1)):
        start = servers.start(arrival)
        servers.occupy(start + work)
        ends.append(start + work)
        if arrival == 0.3:
            assert servers.waiting(0.3) == 2  # the 0.2 and 0.3 arrivals wait for a slot
            assert servers.waiting(1.05) == 1  # the 0.2 one has started at 1.0
    assert ends == pytest.approx([1.0, 1.1, 1.5, 1.2, 5.1])
    assert servers.waiting(5.0) == 0


def test_fifo_servers_are_an_mm1_queue() -> None:
    """Mean wait in queue of M/M/1 at load 0.7: rho / (mu - lambda) (queueing.md)."""
    rng = np.random.default_rng(4)
    servers, t, waits = FifoServers(1), 0.0, []
    for _ in range(200_000):
        t += rng.exponential(1 / 0.7)
        start = servers.start(t)
        servers.occupy(start + rng.exponential(1.0))
        waits.append(start - t)
    assert np.mean(waits) == pytest.approx(0.7 / (1.0 - 0.7), rel=0.05)


def test_pause_schedule_delays_work_by_the_pauses_it_spans() -> None:
    schedule = PauseSchedule(0.05, 0.1, np.random.default_rng(2), origin=0.0)
    rng = np.random.default_rng(3)
    for _ in range(200):
        start, work = rng.uniform(0, 20), rng.exponential(0.1)
        end = schedule.work_end(start, work)
        schedule.resume_time(end + 1)  # draws every pause up to there
        pauses = list(zip(schedule._begins, schedule._ends, strict=True))
        overlap = sum(max(0.0, min(e, end) - max(b, start)) for b, e in pauses)
        assert end - start == pytest.approx(work + overlap)
        assert not any(b < end <= e for b, e in pauses) or work == 0
        assert schedule.resume_time(end) == end


async def test_full_queue_answers_503_at_once() -> None:
    spec = backend(mean_s=0.2, concurrency=1, queue_limit=1)
    async with EmulatedPool(scenario(spec)) as pool, aiohttp.ClientSession() as session:

        async def send(i: int) -> tuple[int, float]:
            await asyncio.sleep(0.03 * i)
            return await timed(session, pool.urls[0])

        results = await asyncio.gather(*(send(i) for i in range(3)))
    assert [status for status, _ in results] == [200, 200, 503]
    assert results[2][1] < 0.1


async def test_error_window_fails_about_error_rate_of_requests() -> None:
    window = Event(at_s=0.0, until_s=1000.0, error_rate=0.3, error_latency_s=0.001)
    spec = backend(mean_s=0.001, concurrency=8, events=(window,))
    async with EmulatedPool(scenario(spec), seed=11) as pool, aiohttp.ClientSession() as session:
        statuses: list[int] = []
        for _ in range(15):
            batch = await asyncio.gather(*(timed(session, pool.urls[0]) for _ in range(20)))
            statuses += [status for status, _ in batch]
    errors = statuses.count(503)
    assert set(statuses) <= {200, 503}
    assert abs(errors - 90) < 4 * math.sqrt(300 * 0.3 * 0.7)


async def test_slowdown_multiplies_service_time_and_ramps() -> None:
    ramp = Event(at_s=1.0, until_s=3.0, slowdown=1.0, slowdown_to=5.0)
    assert _slowdown(ramp, 1.0) == 1.0
    assert _slowdown(ramp, 2.0) == pytest.approx(3.0)
    assert _slowdown(ramp, 3.0) == pytest.approx(5.0)
    spec = backend(mean_s=0.01, events=(Event(at_s=0.0, until_s=100.0, slowdown=6.0),))
    async with EmulatedPool(scenario(spec)) as pool, aiohttp.ClientSession() as session:
        _, latency = await timed(session, pool.urls[0])
    assert latency > 0.055


async def test_down_window_refuses_connections_then_recovers() -> None:
    # time_scale 0.5 puts the scenario's [0.4 s, 1.2 s) window at [0.2 s, 0.6 s) real time.
    spec = backend(events=(Event(at_s=0.4, until_s=1.2, down=True),))
    async with EmulatedPool(scenario(spec), time_scale=0.5) as pool:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            assert (await timed(session, pool.urls[0]))[0] == 200
            await asyncio.sleep(pool.started_at + 0.35 - time.monotonic())
            assert not pool.backends[0].up
            with pytest.raises(aiohttp.ClientConnectorError):
                await timed(session, pool.urls[0] + "/health")
            await asyncio.sleep(pool.started_at + 0.75 - time.monotonic())
            assert (await timed(session, pool.urls[0] + "/health"))[0] == 200
            assert (await timed(session, pool.urls[0]))[0] == 200


async def test_pauses_stall_processing() -> None:
    paused = backend(mean_s=0.02, pauses=Pauses(every_s=0.02, duration_s=0.05))
    async with EmulatedPool(scenario(paused), seed=5) as pool, aiohttp.ClientSession() as session:
        latencies = [(await timed(session, pool.urls[0]))[1] for _ in range(25)]
    # Paused about 5/7 of the time: 20 ms of work takes about 70 ms on average.
    assert np.mean(latencies) > 0.035


async def test_health_and_echo() -> None:
    async with EmulatedPool(scenario(backend())) as pool, aiohttp.ClientSession() as session:
        async with session.get(pool.urls[0] + "/health") as response:
            assert response.status == 200
        async with session.post(pool.urls[0] + "/any/path", data=b"x" * 100_000) as response:
            assert response.status == 200
            assert (await response.text()).startswith("POST b0")
        assert pool.urls[0].startswith("http://127.0.0.1:")


async def test_stop_closes_everything() -> None:
    pool = EmulatedPool(scenario(backend(), backend()))
    async with pool:
        urls = pool.urls
    async with aiohttp.ClientSession() as session:
        for url in urls:
            with pytest.raises(aiohttp.ClientConnectorError):
                await timed(session, url)


def test_bad_time_scale_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--time-scale"):
        EmulatedPool(scenario(backend()), time_scale=0.0)


async def test_a_failed_request_counts_at_the_error_penalty_in_probe_answers() -> None:
    """As in the simulator: a backend that fails fast must not answer Prequal's probes as the
    fastest (rl_lb.prequal)."""
    window = Event(at_s=0.0, until_s=1000.0, error_rate=1.0, error_latency_s=0.001)
    spec = backend(mean_s=0.001, events=(window,))
    async with EmulatedPool(scenario(spec), seed=3) as pool, aiohttp.ClientSession() as session:
        assert [(await timed(session, pool.urls[0]))[0] for _ in range(3)] == [503] * 3
        async with session.get(pool.urls[0] + PROBE_PATH) as response:
            answer = await response.json()
    # the median of its answers (all failed: the penalty) and its failed share (all) × it
    assert answer == {"rif": 0, "latency_ms": 2 * DEFAULT_ERROR_PENALTY_S * 1000.0}
