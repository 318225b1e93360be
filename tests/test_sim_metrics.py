"""The numba metrics (`envs.nb_metrics`) reproduce `rl_lb.metrics.PoolMetrics` bit for bit.

Fed the same records, the twin gives the same peak-EWMA cost after every record (the same
jump-or-decay decision and the same float) and the same snapshot columns (bucket choices and
quantiles, rates, staleness), exactly.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from envs import build, nb_metrics
from envs.factory import pool_scenario
from envs.simulator import Simulator
from rl_lb import metrics
from rl_lb.control import ControlSpec, MetricsSettings
from rl_lb.scenarios import Event, ServiceDist
from rl_lb.types import PoolSnapshot

COLUMNS = ("ewma_s", "p50_s", "p95_s", "p99_s", "error_rate", "throughput_rps", "staleness_s")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _numba_columns(m: nb_metrics.MetricsState, now: float, n: int) -> np.ndarray:
    out = np.empty((n, 7))
    nb_metrics.snapshot_columns(m, 0, now, out, np.empty(nb_metrics.BUCKETS, dtype=np.int64))
    return out


def _assert_same(snapshot: PoolSnapshot, columns: np.ndarray, *, exact: bool = True) -> None:
    for k, name in enumerate(COLUMNS):
        if exact:
            np.testing.assert_array_equal(columns[:, k], getattr(snapshot, name), err_msg=name)
        else:
            np.testing.assert_allclose(
                columns[:, k], getattr(snapshot, name), rtol=1e-9, atol=1e-12, err_msg=name
            )


def test_the_simulator_keeps_as_many_sub_windows_as_the_proxy() -> None:
    defaults = inspect.signature(metrics.PoolMetrics).parameters
    assert defaults["slots"].default == build.SLOTS


def test_bucket_index_matches() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [[0.0, 1e-9, 1e-5, 1.0, 1e6, np.inf], np.exp(rng.uniform(-14, 12, 20000))]
    )
    assert [nb_metrics.bucket_index(x) for x in values] == [metrics.bucket_index(x) for x in values]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_records_same_snapshots(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, window, slots, tau, penalty = 5, 4.0, 8, 3.0, 2.0
    clock = Clock()
    py = metrics.PoolMetrics(
        [f"b{i}" for i in range(n)],
        clock,
        window_s=window,
        slots=slots,
        ewma_tau_s=tau,
        error_penalty_s=penalty,
    )
    nb = nb_metrics.new_metrics(
        1, n, window_s=window, slots=slots, ewma_tau_s=tau, error_penalty_s=penalty
    )
    t = 0.0
    snapshot_at = 0.0  # snapshots never go back in time (a monotonic clock); records may lag
    for step in range(6000):
        # bursts and gaps longer than the window, so sub-windows expire and get reused
        t += rng.exponential(0.01) if step % 1500 else 7.0
        clock.now = t
        i = int(rng.integers(n - 1))  # the last backend never answers: NaN and inf columns
        latency = float(rng.lognormal(np.log(0.02), 1.0))
        error = bool(rng.random() < 0.1)
        py.record(i, latency, error, now=t)
        nb_metrics.record(nb, 0, i, latency, error, t)
        assert nb_metrics.cost(nb, 0, i, t) == py.cost(i)
        if step % 500 == 499:
            snapshot_at = max(snapshot_at, t + float(rng.uniform(0, 2 * window)))
            clock.now = snapshot_at
            _assert_same(py.snapshot(np.ones(n)), _numba_columns(nb, clock.now, n))
            for b in range(n):
                assert nb_metrics.cost(nb, 0, b, clock.now) == py.cost(b)


def test_simulator_snapshot_equals_pool_metrics_fed_its_requests() -> None:
    """End to end: every resolved request of a run is one `record` of the proxy's tracker (to
    1e-9: the replay recomputes each answer time as arrival + latency)."""
    scenario = pool_scenario(
        4,
        load=0.9,
        duration_s=30.0,
        concurrency=2,
        timeout_s=0.2,
        queue_limit=5,
        service=ServiceDist("lognormal", 0.02, cv=1.5),
        events=[(1, Event(5.0, 20.0, error_rate=0.3, error_latency_s=0.002))],
        control=ControlSpec(metrics=MetricsSettings(window_s=5.0)),
    )
    sim = Simulator(scenario, 7)
    sim.run_until(30.0)
    clock = Clock()
    py = metrics.PoolMetrics(sim.names, clock, window_s=5.0)
    st = sim.state
    for r in sim.resolved(0, sim.resolved_count):
        t = st.r_arrival[r] + st.r_latency[r]
        py.record(int(st.r_backend[r]), float(st.r_latency[r]), bool(st.r_outcome[r] != 0), now=t)
    outcomes = set(st.r_outcome[: sim.requests].tolist())
    assert {0, 1, 2, 3} <= outcomes  # ok, error, timeout and rejected all took part
    clock.now = sim.now
    expected = py.snapshot(np.ones(4))
    _assert_same(expected, _numba_columns(sim.state.m, sim.now, 4), exact=False)
    pending = st.r_backend[: sim.requests][st.r_outcome[: sim.requests] == -1]
    np.testing.assert_array_equal(sim.snapshot(0).in_flight, np.bincount(pending, minlength=4))
