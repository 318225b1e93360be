"""PoolMetrics: the exact equations the simulator's numba kernels reproduce."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rl_lb.errors import ConfigError
from rl_lb.metrics import BUCKETS, GROWTH, LOWEST, PoolMetrics, bucket_index, bucket_value
from rl_lb.types import SNAPSHOT_COLUMNS, LoadView, PoolSnapshot

RESOLUTION = math.sqrt(GROWTH)
"""A bucket midpoint is within a factor √GROWTH (4.4%) of any value in the bucket."""


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(names: tuple[str, ...] = ("a",), t: float = 0.0, **kwargs: float) -> PoolMetrics:
    return PoolMetrics(names, FakeClock(t), **kwargs)  # type: ignore[arg-type]


def at(metrics: PoolMetrics, t: float) -> PoolMetrics:
    """The same pool with its fake clock set to t."""
    clock: FakeClock = metrics._clock  # type: ignore[assignment]
    clock.t = t
    return metrics


def snap(metrics: PoolMetrics, t: float) -> PoolSnapshot:
    return at(metrics, t).snapshot(np.ones(len(metrics)) / len(metrics))


def test_constants_and_buckets() -> None:
    assert (LOWEST, GROWTH, BUCKETS) == (1e-5, 2 ** (1 / 8), 256)
    assert bucket_index(0.0) == 0
    assert bucket_index(LOWEST / 3) == 0
    assert bucket_index(LOWEST * GROWTH**10 * 1.000001) == 10
    assert bucket_index(LOWEST * GROWTH**10 * 0.999999) == 9
    assert bucket_index(1e9) == BUCKETS - 1
    assert bucket_index(math.inf) == BUCKETS - 1
    for x in np.geomspace(2e-5, 1e4, 997):
        assert 1 / RESOLUTION <= bucket_value(bucket_index(float(x))) / x <= RESOLUTION


def test_peak_ewma_jumps_on_a_slow_answer_and_decays_as_configured() -> None:
    tau = 10.0
    m = make(ewma_tau_s=tau)
    assert m.cost(0) == 0.0
    assert math.isnan(snap(m, 0.0).ewma_s[0])
    m.record(0, 0.1, error=False, now=0.0)
    assert m.cost(0) == 0.1
    assert at(m, 1.0).cost(0) == 0.1 * math.exp(-1.0 / tau)
    m.record(0, 2.0, error=False, now=1.0)
    assert m.cost(0) == 2.0  # the peak is taken at once
    assert at(m, 6.0).cost(0) == 2.0 * math.exp(-5.0 / tau)
    m.record(0, 0.1, error=False, now=6.0)
    w = math.exp(-5.0 / tau)
    expected = 2.0 * w + 0.1 * (1 - w)
    assert m.cost(0) == expected
    assert snap(m, 9.0).ewma_s[0] == expected * math.exp(-3.0 / tau)


def test_an_error_counts_as_the_penalty_in_the_ewma_only() -> None:
    m = make(error_penalty_s=5.0)
    for t in (0.0, 0.1, 0.2):
        m.record(0, 0.002, error=False, now=t)
    m.record(0, 0.001, error=True, now=0.3)
    assert at(m, 0.3).cost(0) == 5.0
    s = snap(m, 0.3)
    assert s.ewma_s[0] == 5.0
    assert s.p99_s[0] < 0.003  # the histogram keeps the real latency
    assert s.error_rate[0] == 0.25


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_window_quantiles_match_numpy_within_the_bucket_resolution(sigma: float) -> None:
    data = np.random.default_rng(int(sigma * 10)).lognormal(mean=-4.0, sigma=sigma, size=20_000)
    m = make()
    for k, x in enumerate(data):
        m.record(0, float(x), error=k % 7 == 0, now=k * 4e-4)
    s = snap(m, 8.0)
    for q, column in ((0.5, s.p50_s), (0.95, s.p95_s), (0.99, s.p99_s)):
        truth = np.quantile(data, q, method="inverted_cdf")
        assert 1 / RESOLUTION <= column[0] / truth <= RESOLUTION, (q, column[0], truth)


def test_quantile_picks_the_bucket_that_reaches_the_rank() -> None:
    m = make()
    for k in range(100):
        m.record(0, 0.001 if k < 95 else 1.0, error=False, now=0.0)
    s = snap(m, 0.0)
    assert s.p50_s[0] == s.p95_s[0] == bucket_value(bucket_index(0.001))
    assert s.p99_s[0] == bucket_value(bucket_index(1.0))


def test_old_samples_leave_the_window() -> None:
    m = make(window_s=10.0, slots=10)
    m.record(0, 1.0, error=True, now=0.5)  # sub-window 0
    m.record(0, 0.01, error=False, now=5.5)  # sub-window 5
    s = snap(m, 9.99)  # window = sub-windows 0..9
    assert s.error_rate[0] == 0.5
    assert s.p99_s[0] == bucket_value(bucket_index(1.0))
    s = snap(m, 10.0)  # window = sub-windows 1..10
    assert s.error_rate[0] == 0.0
    assert s.p99_s[0] == s.p50_s[0] == bucket_value(bucket_index(0.01))
    assert s.throughput_rps[0] == 1 / 9.0
    s = snap(m, 15.5)  # window = sub-windows 6..15
    assert np.isnan([s.p50_s[0], s.p95_s[0], s.p99_s[0]]).all()
    assert (s.error_rate[0], s.throughput_rps[0]) == (0.0, 0.0)


def test_a_reused_ring_entry_drops_what_it_held() -> None:
    m = make(window_s=10.0, slots=10)
    m.record(0, 1.0, error=True, now=0.5)  # sub-window 0, ring entry 0
    m.record(0, 0.01, error=False, now=10.5)  # sub-window 10, ring entry 0 again
    s = snap(m, 10.5)
    assert s.error_rate[0] == 0.0
    assert s.p99_s[0] == bucket_value(bucket_index(0.01))


def test_a_long_run_counts_only_the_last_window() -> None:
    m = make(window_s=10.0, slots=10)
    for k in range(10_000):  # 10 answers per second for 1000 s, one error in five
        m.record(0, 0.01 if k % 2 else 0.05, error=k % 5 == 0, now=k / 10)
    s = snap(m, 999.95)
    # the window holds sub-windows 990..999: 100 answers over 9.95 s
    assert s.throughput_rps[0] == pytest.approx(100 / 9.95)
    assert s.error_rate[0] == pytest.approx(0.2)


def test_running_window_totals_equal_a_recount_of_the_window() -> None:
    """The running totals (added on record, subtracted on expiry or ring reuse) against a
    recount of every answer whose sub-window is in the window, through idle gaps longer than
    the window, removed backends and an answer recorded after a snapshot expired its
    sub-window (which must not count)."""
    rng = np.random.default_rng(3)
    m = make(("a", "b", "c", "d"), window_s=2.0, slots=4)
    answers: list[list[tuple[int, float, bool]]] = [[] for _ in range(4)]
    t = 0.0
    for step in range(3000):
        t += 7.0 if step % 700 == 699 else float(rng.exponential(0.01))
        i = int(rng.integers(len(m)))
        latency, error = float(rng.lognormal(-4.0, 1.0)), bool(rng.random() < 0.2)
        m.record(i, latency, error, now=t)
        answers[i].append((math.floor(t / m.slot_len), latency, error))
        if step == 1500:
            m.remove_backend(1)
            del answers[1]
        if step % 97 == 96:
            s = snap(m, t + float(rng.uniform(0.0, 0.5)))
            current = math.floor(s.taken_at / m.slot_len)
            for b, history in enumerate(answers):
                kept = [(x, e) for k, x, e in history if current - m.slots < k <= current]
                span = s.taken_at - max(0.0, (current - m.slots + 1) * m.slot_len)
                assert s.throughput_rps[b] * span == pytest.approx(len(kept))
                assert s.error_rate[b] == (sum(e for _, e in kept) / len(kept) if kept else 0.0)
                rank = max(1, math.ceil(0.95 * len(kept)))
                expected = (
                    bucket_value(sorted(bucket_index(x) for x, _ in kept)[rank - 1])
                    if kept
                    else math.nan
                )
                np.testing.assert_equal(s.p95_s[b], expected)
    # an answer timed in a sub-window that a snapshot already found out of the window
    k = math.ceil(t / m.slot_len) + 20
    m.record(0, 0.01, False, now=(k + 0.1) * m.slot_len)
    assert snap(m, (k + 6) * m.slot_len).throughput_rps[0] == 0.0
    m.record(0, 5.0, True, now=(k + 0.2) * m.slot_len)
    after = snap(m, (k + 6) * m.slot_len)
    assert (after.error_rate[0], after.throughput_rps[0]) == (0.0, 0.0)
    assert math.isnan(after.p99_s[0])


def test_throughput_span_starts_at_creation_and_staleness_counts_from_the_last_answer() -> None:
    m = make(("a",), t=0.0)
    at(m, 3.0).add_backend("late")
    for t in (3.5, 4.0, 4.5, 5.0):
        m.record(0, 0.01, error=False, now=t)
        m.record(1, 0.01, error=t == 5.0, now=t)
    s = snap(m, 8.0)
    assert s.throughput_rps.tolist() == [4 / 8.0, 4 / 5.0]
    assert s.error_rate.tolist() == [0.0, 0.25]
    assert s.staleness_s.tolist() == [3.0, 3.0]
    s = snap(m, 25.0)  # the window starts at sub-window 16, long after both creations
    assert s.throughput_rps.tolist() == [0.0, 0.0]
    assert s.staleness_s.tolist() == [20.0, 20.0]
    at(m, 25.0).add_backend("silent")
    assert snap(m, 26.0).staleness_s[2] == math.inf


def test_in_flight_accounting_and_the_clock_decides_latency() -> None:
    m = make(("a", "b"))
    started = at(m, 1.0).start(1)
    m.start(1)
    assert started == 1.0
    assert m.in_flight == [0, 2]
    latency = at(m, 1.25).finish(1, started, error=False)
    assert latency == 0.25
    assert m.in_flight == [0, 1]
    at(m, 2.0).finish(1, started, error=True)
    assert m.in_flight == [0, 0]
    m.record(0, 0.1, error=False)  # no in-flight accounting, time from the clock
    assert m.in_flight == [0, 0]
    s = snap(m, 2.0)
    assert s.staleness_s.tolist() == [0.0, 0.0]
    assert s.error_rate.tolist() == [0.0, 0.5]
    assert s.ewma_s[1] == 5.0  # the error at the penalty, peak taken at once
    assert s.in_flight.tolist() == [0, 0]


def test_snapshot_is_immutable_and_detached_from_the_trackers() -> None:
    m = make(("a", "b"))
    m.start(0)
    m.record(0, 0.02, error=False, now=0.0)
    weights = np.array([0.25, 0.75])
    s = at(m, 1.0).snapshot(weights)
    before = {c: getattr(s, c).copy() for c in SNAPSHOT_COLUMNS}
    weights[0] = 9.0
    m.start(0)
    m.record(0, 3.0, error=True, now=1.0)
    m.set_health(1, False)
    for column, values in before.items():
        array = getattr(s, column)
        assert not array.flags.writeable
        np.testing.assert_array_equal(array, values)
    assert s.taken_at == 1.0
    assert s.window_s == m.window_s
    assert s.weights.tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match="read-only"):
        s.in_flight[0] = 5


def test_health_and_ejection_set_availability() -> None:
    m = make(("a", "b", "c"))
    assert isinstance(m, LoadView)
    m.set_health(0, False)
    m.set_ejected(1, True)
    assert m.available == [False, False, True]
    m.set_health(1, False)
    m.set_ejected(1, False)
    assert m.available == [False, False, True]
    m.set_health(1, True)
    assert m.available == [False, True, True]
    s = snap(m, 0.0)
    assert s.healthy.tolist() == [False, True, True]
    assert s.ejected.tolist() == [False, False, False]
    assert s.live.tolist() == m.available


def test_add_and_remove_backends_keep_the_lists_in_place() -> None:
    m = make(("a", "b", "c"))
    in_flight, available = m.in_flight, m.available
    for i, latency in enumerate((0.1, 0.2, 0.3)):
        m.record(i, latency, error=False, now=0.0)
        m.start(i)
    m.set_ejected(0, True)
    assert at(m, 1.0).add_backend("d") == 3
    assert m.cost(3) == 0.0
    m.remove_backend(1)
    assert m.in_flight is in_flight
    assert m.available is available
    assert m.names == ["a", "c", "d"]
    assert m.in_flight == [1, 1, 0]
    assert m.available == [False, True, True]
    assert m.cost(1) == 0.3 * math.exp(-0.1)
    s = snap(m, 1.0)
    assert s.names == ("a", "c", "d")
    assert s.throughput_rps[2] == 0.0
    assert s.staleness_s[2] == math.inf
    with pytest.raises(ConfigError, match="twice"):
        m.add_backend("c")


@pytest.mark.parametrize(
    "kwargs",
    [{"window_s": 0.0}, {"slots": 0}, {"ewma_tau_s": -1.0}, {"error_penalty_s": math.nan}],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        make(("a",), **kwargs)
