"""Numba twin of `rl_lb.metrics` (`PoolMetrics`): peak-EWMA and the window histogram.

The simulator records ~10^6 answers per second, far beyond what the Python tracker can take, so
the same equations are written again here over flat arrays, one row per (proxy, backend), with
the histogram's constants imported from the reference. `tests/test_sim_metrics.py` feeds
identical records to both and compares costs, bucket indices and snapshots: that test, not this
docstring, is the contract.

numba's on-disk cache is keyed on this file only: after changing a constant in `rl_lb.metrics`,
delete `envs/__pycache__` (the equivalence test fails on a stale cache).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from envs.jit import jit
from rl_lb.metrics import BUCKETS, GROWTH, LOWEST
from rl_lb.types import FloatArray, IntArray

__all__ = [
    "BUCKETS",  # re-exported: the size of the scratch `snapshot_columns` takes
    "TWIN_OF",
    "MetricsState",
    "bucket_index",
    "cost",
    "new_metrics",
    "record",
    "restart_estimate",
    "snapshot_columns",
]

TWIN_OF = "rl_lb.metrics"
_LOG_GROWTH = math.log(GROWTH)


class MetricsState(NamedTuple):
    """Every proxy's view of every backend; arrays are indexed [proxy, backend, ...]."""

    est: FloatArray
    stamp: FloatArray
    has: np.ndarray
    last: FloatArray
    hist: IntArray
    """[proxy, backend, sub-window slot, bucket] latency counts."""
    answers: IntArray
    errors: IntArray
    slot_id: IntArray
    """Absolute sub-window index held in each ring slot (stale slots are cleared on reuse)."""
    counted: np.ndarray
    """[proxy, backend, slot]: the slot is in the running window totals below (from its first
    record until a snapshot finds it expired or a record reuses it)."""
    window_hist: IntArray
    """[proxy, backend, bucket]: the histograms of the counted slots, summed."""
    window_answers: IntArray
    window_errors: IntArray
    slot_len: float
    tau: float
    penalty: float
    created_at: float


def new_metrics(
    proxies: int,
    backends: int,
    *,
    window_s: float,
    slots: int,
    ewma_tau_s: float,
    error_penalty_s: float,
    created_at: float = 0.0,
) -> MetricsState:
    shape = (proxies, backends)
    return MetricsState(
        est=np.zeros(shape),
        stamp=np.zeros(shape),
        has=np.zeros(shape, dtype=np.bool_),
        last=np.full(shape, -np.inf),
        hist=np.zeros((*shape, slots, BUCKETS), dtype=np.int64),
        answers=np.zeros((*shape, slots), dtype=np.int64),
        errors=np.zeros((*shape, slots), dtype=np.int64),
        slot_id=np.full((*shape, slots), np.iinfo(np.int64).min, dtype=np.int64),
        counted=np.zeros((*shape, slots), dtype=np.bool_),
        window_hist=np.zeros((*shape, BUCKETS), dtype=np.int64),
        window_answers=np.zeros(shape, dtype=np.int64),
        window_errors=np.zeros(shape, dtype=np.int64),
        slot_len=window_s / slots,
        tau=ewma_tau_s,
        penalty=error_penalty_s,
        created_at=created_at,
    )


@jit
def bucket_index(x: float) -> int:
    if x <= 0.0:
        return 0
    if x == np.inf:
        return BUCKETS - 1
    k = math.floor(math.log(x / LOWEST) / _LOG_GROWTH)
    if k < 0:
        return 0
    if k > BUCKETS - 1:
        return BUCKETS - 1
    return int(k)


@jit
def record(m: MetricsState, p: int, b: int, latency: float, error: bool, now: float) -> None:
    """One answer (or failure) seen by proxy p from backend b at time `now`."""
    x = m.penalty if error else latency
    if not m.has[p, b] or x > m.est[p, b]:
        m.est[p, b] = x
    else:
        w = math.exp(-(now - m.stamp[p, b]) / m.tau)
        m.est[p, b] = m.est[p, b] * w + x * (1.0 - w)
    m.stamp[p, b] = now
    m.has[p, b] = True
    k = math.floor(now / m.slot_len)
    slots = m.slot_id.shape[2]
    pos = k % slots
    if m.slot_id[p, b, pos] != k:
        if m.counted[p, b, pos]:
            _forget(m, p, b, pos)
        m.slot_id[p, b, pos] = k
        m.hist[p, b, pos, :] = 0
        m.answers[p, b, pos] = 0
        m.errors[p, b, pos] = 0
        m.counted[p, b, pos] = True
    bucket = bucket_index(latency)
    m.hist[p, b, pos, bucket] += 1
    m.answers[p, b, pos] += 1
    if error:
        m.errors[p, b, pos] += 1
    if m.counted[p, b, pos]:  # else a snapshot already found this sub-window expired
        m.window_hist[p, b, bucket] += 1
        m.window_answers[p, b] += 1
        if error:
            m.window_errors[p, b] += 1
    m.last[p, b] = now


@jit
def _forget(m: MetricsState, p: int, b: int, pos: int) -> None:
    """Subtract ring slot `pos` from the running window totals of (p, b)."""
    for j in range(BUCKETS):
        m.window_hist[p, b, j] -= m.hist[p, b, pos, j]
    m.window_answers[p, b] -= m.answers[p, b, pos]
    m.window_errors[p, b] -= m.errors[p, b, pos]
    m.counted[p, b, pos] = False


@jit
def cost(m: MetricsState, p: int, b: int, now: float) -> float:
    """Peak-EWMA decayed to `now`; 0 for a backend that never answered (so it gets tried)."""
    if not m.has[p, b]:
        return 0.0
    return float(m.est[p, b] * math.exp(-(now - m.stamp[p, b]) / m.tau))


@jit
def _ranked(m: MetricsState, p: int, b: int, peers: np.ndarray, now: float, rank: int) -> float:
    """The cost of rank `rank` (0 = lowest) among b's peers with an estimate (no sort: kernels
    do not allocate; pools are small and returns rare)."""
    for j in range(m.est.shape[1]):
        if j == b or not peers[j] or not m.has[p, j]:
            continue
        value = m.est[p, j] * math.exp(-(now - m.stamp[p, j]) / m.tau)
        below = 0
        level = 0
        for k in range(m.est.shape[1]):
            if k == b or not peers[k] or not m.has[p, k]:
                continue
            other = m.est[p, k] * math.exp(-(now - m.stamp[p, k]) / m.tau)
            if other < value:
                below += 1
            if other <= value:
                level += 1
        if below <= rank < level:
            return float(value)
    return np.nan


@jit
def restart_estimate(m: MetricsState, p: int, b: int, peers: np.ndarray, now: float) -> None:
    """`PoolMetrics.restart_estimate`: b's peak-EWMA restarts at the median of its peers'."""
    count = 0
    for j in range(m.est.shape[1]):
        if j != b and peers[j] and m.has[p, j]:
            count += 1
    if count == 0:
        m.has[p, b] = False
        return
    half = count // 2
    if count % 2:
        median = _ranked(m, p, b, peers, now, half)
    else:
        median = 0.5 * (_ranked(m, p, b, peers, now, half - 1) + _ranked(m, p, b, peers, now, half))
    m.est[p, b] = median
    m.stamp[p, b] = now
    m.has[p, b] = True


@jit
def _quantile(counts: IntArray, total: int, q: float) -> float:
    if total == 0:
        return np.nan
    need = max(1, math.ceil(q * total))
    running = 0
    for k in range(counts.shape[0]):
        running += counts[k]
        if running >= need:
            return float(LOWEST * GROWTH ** (k + 0.5))
    return float(LOWEST * GROWTH ** (counts.shape[0] - 0.5))


@jit
def snapshot_columns(
    m: MetricsState, p: int, now: float, out: FloatArray, counts: IntArray
) -> None:
    """Fill out[backend, :] with ewma, p50, p95, p99, error rate, throughput, staleness.

    `counts` is scratch space of BUCKETS integers (kernels do not allocate). Reads the running
    window totals, after dropping the slots that expired (for good: `now` does not decrease
    between snapshots) and leaving out any recorded ahead of `now`.
    """
    slots = m.slot_id.shape[2]
    k_now = math.floor(now / m.slot_len)
    first = k_now - slots + 1
    span = now - max(m.created_at, first * m.slot_len)
    span = max(span, 1e-9)
    for b in range(m.est.shape[1]):
        for pos in range(slots):
            if m.counted[p, b, pos] and m.slot_id[p, b, pos] < first:
                _forget(m, p, b, pos)
        for j in range(BUCKETS):
            counts[j] = m.window_hist[p, b, j]
        answers = m.window_answers[p, b]
        errors = m.window_errors[p, b]
        for pos in range(slots):
            if m.counted[p, b, pos] and m.slot_id[p, b, pos] > k_now:
                for j in range(BUCKETS):
                    counts[j] -= m.hist[p, b, pos, j]
                answers -= m.answers[p, b, pos]
                errors -= m.errors[p, b, pos]
        out[b, 0] = cost(m, p, b, now) if m.has[p, b] else np.nan
        out[b, 1] = _quantile(counts, answers, 0.5)
        out[b, 2] = _quantile(counts, answers, 0.95)
        out[b, 3] = _quantile(counts, answers, 0.99)
        out[b, 4] = errors / answers if answers > 0 else 0.0
        out[b, 5] = answers / span
        out[b, 6] = now - m.last[p, b]
