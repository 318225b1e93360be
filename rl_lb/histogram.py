"""The latency histogram of `rl_lb.metrics.PoolMetrics`: log-spaced buckets and their quantiles.

These equations are part of the metrics contract: the simulator's numba kernels
(`envs/nb_metrics.py`) import the constants (through `rl_lb.metrics`, which re-exports them) and
reproduce `bucket_index` bit for bit, so a policy reads the same quantiles in simulation and
behind the proxy.
"""

from __future__ import annotations

import math

import numpy as np

from rl_lb.types import FloatArray, IntArray

__all__ = ["BUCKETS", "GROWTH", "LOWEST", "bucket_index", "bucket_value", "window_quantiles"]

LOWEST = 1e-5
"""Lower edge of histogram bucket 0, in seconds; anything faster lands in bucket 0."""
GROWTH = 2.0 ** (1.0 / 8.0)
"""Ratio of consecutive bucket edges: a bucket's midpoint is within 4.4% of any value in it."""
BUCKETS = 256
"""LOWEST × GROWTH**256 ≈ 11.9 h: the last bucket catches everything slower."""

_LOG_GROWTH = math.log(GROWTH)


def bucket_index(x: float) -> int:
    """Histogram bucket of a latency of x seconds: clamp(floor(log(x/LOWEST)/log(GROWTH)))."""
    if x <= 0.0:
        return 0
    if x == math.inf:
        return BUCKETS - 1
    k = math.floor(math.log(x / LOWEST) / _LOG_GROWTH)
    if k < 0:
        return 0
    return min(k, BUCKETS - 1)


def bucket_value(k: int) -> float:
    """The latency a quantile reports for bucket k: its geometric midpoint."""
    return LOWEST * math.pow(GROWTH, k + 0.5)


_BUCKET_VALUES = np.array([bucket_value(k) for k in range(BUCKETS)] + [math.nan])
"""`bucket_value` by index (the same floats), then NaN for an empty window."""


def window_quantiles(running: IntArray, totals: IntArray, before: IntArray, q: float) -> FloatArray:
    """Per backend, the smallest bucket whose cumulative count reaches max(1, ceil(q·total));
    NaN when the window is empty.

    `running` is the cumulative sum of all the histograms end to end (backend-major), so one
    binary search serves every backend: backend i's counts start after `before[i]` answers of
    the earlier ones, and its bucket is where `running` first reaches before[i] + need[i]
    (need ≤ total, so that lies inside backend i's histogram).
    """
    need = np.maximum(np.ceil(q * totals), 1).astype(np.int64)
    position = np.searchsorted(running, before + need, side="left")
    index = position - np.arange(len(totals)) * BUCKETS
    index[totals == 0] = BUCKETS
    values: FloatArray = _BUCKET_VALUES[index]
    return values
