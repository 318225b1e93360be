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
        m.slot_id[p, b, pos] = k
        m.hist[p, b, pos, :] = 0
        m.answers[p, b, pos] = 0
        m.errors[p, b, pos] = 0
    m.hist[p, b, pos, bucket_index(latency)] += 1
    m.answers[p, b, pos] += 1
    if error:
        m.errors[p, b, pos] += 1
    m.last[p, b] = now


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

    `counts` is scratch space of BUCKETS integers (kernels do not allocate).
    """
    slots = m.slot_id.shape[2]
    k_now = math.floor(now / m.slot_len)
    first = k_now - slots + 1
    span = now - max(m.created_at, first * m.slot_len)
    span = max(span, 1e-9)
    for b in range(m.est.shape[1]):
        counts[:] = 0
        answers = 0
        errors = 0
        for pos in range(slots):
            k = m.slot_id[p, b, pos]
            if first <= k <= k_now:
                for j in range(BUCKETS):
                    counts[j] += m.hist[p, b, pos, j]
                answers += m.answers[p, b, pos]
                errors += m.errors[p, b, pos]
        out[b, 0] = cost(m, p, b, now) if m.has[p, b] else np.nan
        out[b, 1] = _quantile(counts, answers, 0.5)
        out[b, 2] = _quantile(counts, answers, 0.95)
        out[b, 3] = _quantile(counts, answers, 0.99)
        out[b, 4] = errors / answers if answers > 0 else 0.0
        out[b, 5] = answers / span
        out[b, 6] = now - m.last[p, b]
