"""Trouble in a scenario has its effect: slowdowns, ramps, errors, downtime, pauses, timeouts,
queue limits, no live backend, outlier ejection; and a seed fixes the whole run."""

from __future__ import annotations

import numpy as np
import pytest

from envs import kernel
from envs.factory import NEVER, pool_scenario
from envs.simulator import Records, Simulator
from rl_lb.scenarios import Event, Pauses, ServiceDist

FAST = ServiceDist("exponential", 0.01)


def run(
    scenario_kwargs: dict, picker: str = "random", seed: int = 1, until: float | None = None
) -> Simulator:  # type: ignore[type-arg]
    kwargs = {"load": 0.6, "duration_s": 30.0, "concurrency": 2, "service": FAST, **scenario_kwargs}
    sim = Simulator(pool_scenario(4, **kwargs), seed)
    for p in range(sim.proxies):
        sim.set_decision(p, np.ones(4), picker)
    sim.run_until(until if until is not None else kwargs["duration_s"] + 2.0)
    return sim


def latency_on(r: Records, backend: int, start: float, stop: float) -> np.ndarray:
    chosen = (
        (r.backend == backend)
        & (r.arrival_s >= start)
        & (r.arrival_s < stop)
        & (r.outcome == kernel.OK)
    )
    return r.latency_s[chosen]


def test_deterministic_for_a_seed() -> None:
    trouble = {"events": [(1, Event(5.0, 15.0, error_rate=0.3))], "pauses": [(2, Pauses(3.0, 0.2))]}
    a, b, c = (run(trouble, "p2c", seed).records() for seed in (5, 5, 6))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert len(a.arrival_s) != len(c.arrival_s) or not np.array_equal(a.latency_s, c.latency_s)


def test_slowdown_and_ramp() -> None:
    slow = Event(10.0, 20.0, slowdown=5.0)
    ramp = Event(0.0, 30.0, slowdown=1.0, slowdown_to=5.0)
    r = run({"load": 0.15, "events": [(0, slow), (1, ramp)]}).records()
    before, during = latency_on(r, 0, 0.0, 10.0).mean(), latency_on(r, 0, 12.0, 20.0).mean()
    assert during > 3 * before
    early, late = latency_on(r, 1, 0.0, 5.0).mean(), latency_on(r, 1, 25.0, 30.0).mean()
    assert late > 2.5 * early
    assert latency_on(r, 2, 0.0, 30.0).mean() < 2 * FAST.mean_s


def test_error_window() -> None:
    # 20%: five failures in a row (an ejection, which would bias the count) stay rare
    r = run({"events": [(1, Event(5.0, 15.0, error_rate=0.2, error_latency_s=0.001))]}).records()
    errors = r.outcome == kernel.ERROR
    assert set(r.backend[errors].tolist()) == {1}
    assert r.arrival_s[errors].min() >= 5.0
    assert r.arrival_s[errors].max() < 15.0
    np.testing.assert_allclose(r.latency_s[errors], 0.001, rtol=1e-6)
    sent = (r.backend == 1) & (r.arrival_s >= 5.0) & (r.arrival_s < 15.0)
    assert errors.sum() / sent.sum() == pytest.approx(0.2, abs=0.03)


def test_down_backend_is_retried_ejected_then_marked_unhealthy() -> None:
    scenario = {"events": [(2, Event(5.5, 15.0, down=True))], "health_interval_s": 1.0}
    sim = run(scenario, until=5.9)
    snap = sim.snapshot(0)
    assert snap.ejected[2]
    assert snap.healthy[2]
    sim.run_until(10.0)
    assert not sim.snapshot(0).healthy[2]  # two failed checks (6 and 7 s)
    sim.run_until(20.0)
    assert sim.snapshot(0).live.all()  # a passing check ends both
    r = sim.records()
    assert r.retries.max() >= 1
    resolved = r.outcome != kernel.PENDING
    assert (r.outcome[resolved] == kernel.OK).all()  # every connect failure was retried elsewhere


def test_pauses_stall_every_server() -> None:
    r = run({"pauses": [(0, Pauses(every_s=2.0, duration_s=0.5))]}).records()
    paused, steady = latency_on(r, 0, 0.0, 30.0), latency_on(r, 1, 0.0, 30.0)
    assert paused.max() > 0.3
    assert np.quantile(paused, 0.99) > 5 * np.quantile(steady, 0.99)


def test_timeouts_are_counted_at_the_timeout() -> None:
    # checks pass (a slow backend answers them), so each second ends the ejection timeouts cause
    trouble = {"events": [(0, Event(5.0, 25.0, slowdown=30.0))], "timeout_s": 0.1}
    sim = run({**trouble, "load": 0.3, "health_interval_s": 1.0})
    r = sim.records()
    timeouts = r.outcome == kernel.TIMEOUT
    assert timeouts.sum() > 50
    assert (r.backend[timeouts] == 0).mean() > 0.95
    np.testing.assert_array_equal(r.latency_s[timeouts], 0.1)
    assert (r.outcome == kernel.PENDING).sum() == 0


def test_queue_limit_rejects_at_once() -> None:
    r = run({"load": 1.5, "queue_limit": 2, "duration_s": 10.0}).records()
    rejected = r.outcome == kernel.REJECTED
    assert rejected.mean() > 0.1
    np.testing.assert_array_equal(r.latency_s[rejected], 0.0)


def test_no_live_backend() -> None:
    down = [(i, Event(5.0, 15.0, down=True)) for i in range(4)]
    r = run({"events": down, "health_interval_s": 1.0}).records()
    none = r.outcome == kernel.NO_BACKEND
    assert none.sum() > 100
    assert r.arrival_s[none].min() >= 5.0
    assert r.arrival_s[none].max() < 16.0
    np.testing.assert_array_equal(r.backend[none], -1)


def test_fast_failing_backend_is_ejected_within_the_max_ejection_share() -> None:
    failing = [(i, Event(2.0, 30.0, error_rate=1.0, error_latency_s=0.001)) for i in (1, 3)]
    sim = run({"events": failing, "health_interval_s": NEVER}, until=3.0)
    snap = sim.snapshot(0)
    assert snap.ejected.sum() == 1
    assert snap.ejected[1] or snap.ejected[3]
    ejected = int(np.flatnonzero(snap.ejected)[0])
    sim.run_until(30.0)
    r = sim.records()
    late = r.arrival_s > 3.0
    assert (r.backend[late] == ejected).sum() == 0


def test_a_paused_backend_answers_prequals_probes_only_after_its_pause() -> None:
    """A probe reaching a paused backend waits out the pause, as everything sent to it does
    (lab.backends; a real GC pause): no answer from it is stamped inside a pause, and answers
    that come later than `max_age_s` after their probe were given up (the proxy's timeout)."""
    scenario = pool_scenario(
        4,
        load=0.6,
        duration_s=20.0,
        concurrency=2,
        service=FAST,
        pauses=[(0, Pauses(every_s=2.0, duration_s=0.5))],
    )
    sim = Simulator(scenario, 1)
    for p in range(sim.proxies):
        sim.set_decision(p, np.ones(4), "prequal")
    spec, pool = sim.spec, sim.state.pq
    starts = spec.pz_start[spec.pz_ptr[0] : spec.pz_ptr[1]]
    ends = spec.pz_end[spec.pz_ptr[0] : spec.pz_ptr[1]]
    half_rtt = 0.5 * pool.probe_rtt_s
    stamps: set[float] = set()
    pauses = list(zip(starts, ends, strict=True))
    t = 0.0
    while t < 20.0:
        t += 0.005
        sim.run_until(t)
        pool = sim.state.pq
        slots = zip(pool.slot_backend[0], pool.slot_at[0], strict=True)
        stamps.update(float(at) for b, at in slots if b == 0)
    assert len(pauses) >= 5
    assert len(stamps) > 50
    inside = [s for s in stamps if any(a + half_rtt < s < e + half_rtt for a, e in pauses)]
    assert inside == []
    after = [s for s in stamps if any(abs(s - (e + half_rtt)) < 1e-9 for e in ends)]
    assert after, "the probes a pause held are answered when it ends"
