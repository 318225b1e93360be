"""numpy's own float arithmetic in numba, and an interval's latency figures for K pools at once.

`BatchedVecEnv` must give the very rewards `BackendPoolEnv` gives (`DummyVecEnv` equality is
its contract), and the reward reads `np.quantile` and `ndarray.mean` of each interval's
latencies. A loop sum or a different interpolation differs in the last bits, so the two
reductions are written here as numpy performs them: `pairwise_sum` is numpy's pairwise
summation (blocks of 8 partial sums up to 128 values, halves above), `linear_quantile` its
default ("linear") quantile with its `_lerp`. tests/test_nb_features.py compares both with
numpy on arrays of every size class, and `interval_stats` with `BackendPoolEnv`'s own figures.

Only the statistics are here: the reward itself stays `envs.env.interval_reward`, one
definition, applied to these figures.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

import envs.jit  # noqa: F401  (first: it points numba's cache at its directory, see below)
from rl_lb.types import BoolArray, FloatArray, IntArray

__all__ = [
    "STATS",
    "batch_interval_stats",
    "compiled",
    "interval_stats",
    "linear_quantile",
    "pairwise_sum",
]

STATS = ("p50_s", "p99_s", "effective_p99_s", "mean_s", "errors")
"""Columns of `interval_stats`'s output, one row per pool (NaN figures when it had no request)."""

_BLOCK = 128
"""numpy's PW_BLOCKSIZE: up to this many values are summed in 8 interleaved partial sums."""

compiled = njit(cache=True)
"""The decorator of the batched twins (here and in envs.nb_features): plain numba, with its
reference counting, because they allocate their sort buffers and take arrays, not the kernel's
state tuples (the trade-off of `envs.jit.jit` does not apply). Their cache is in `envs.jit`'s
directory, keyed on a digest of every nb_ module and what it imports: numba's own key (the
file alone) kept envs.nb_features' compiled code, with an old `pairwise_sum` inside, after
this file changed."""
_jit = compiled


@_jit
def _block_sum(a: FloatArray, lo: int, n: int) -> float:
    """numpy's pairwise summation of at most `_BLOCK` values: a loop below 8, else 8 partial
    sums combined as a tree, then the remainder."""
    if n < 8:
        res = -0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - (n % 8):
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return float(res)


@_jit
def pairwise_sum(a: FloatArray, lo: int, n: int) -> float:
    """Sum of a[lo:lo + n] exactly as `np.sum` of a contiguous float64 array computes it.

    numpy recurses: above `_BLOCK` values, sum of the first half (rounded down to a multiple
    of 8) plus sum of the rest. The same tree is walked here with an explicit stack, because
    numba's cache cannot reload a self-recursive function (the reloaded code crashes).
    """
    if n <= _BLOCK:
        return _block_sum(a, lo, n)
    starts, sizes = np.empty(64, dtype=np.int64), np.empty(64, dtype=np.int64)
    phase, left = np.zeros(64, dtype=np.int64), np.empty(64)
    depth, starts[0], sizes[0] = 0, lo, n
    value, returning = 0.0, False
    while True:
        if returning:  # `value` is the sum of node depth + 1, a child of node `depth`
            if depth < 0:
                return value
            if phase[depth] == 1:  # the left half is done: keep it, go right
                left[depth] = value
                phase[depth] = 2
                half = sizes[depth] // 2
                half -= half % 8
                depth += 1
                starts[depth], sizes[depth], phase[depth] = starts[depth - 1] + half, 0, 0
                sizes[depth] = sizes[depth - 1] - half
                returning = False
            else:  # both halves done
                value = left[depth] + value
                depth -= 1
            continue
        size = sizes[depth]
        if size <= _BLOCK:
            value = _block_sum(a, starts[depth], size)
            depth -= 1
            returning = True
            continue
        half = size // 2
        half -= half % 8
        phase[depth] = 1
        depth += 1
        starts[depth], sizes[depth], phase[depth] = starts[depth - 1], half, 0


@_jit
def linear_quantile(ordered: FloatArray, n: int, q: float) -> float:
    """`np.quantile(x, q)` (method "linear") of the n values of `ordered`, sorted ascending."""
    virtual = (n - 1) * q
    below = math.floor(virtual)
    if virtual >= n - 1:  # numpy takes the last value and computes gamma from index -1
        a = b = ordered[n - 1]
        gamma = virtual + 1.0
    else:
        a, b = ordered[int(below)], ordered[int(below) + 1]
        gamma = virtual - below
    diff = b - a
    if gamma >= 0.5:
        return float(b - diff * (1 - gamma))
    return float(a + diff * gamma)


@_jit
def interval_stats(
    latency: FloatArray, failed: BoolArray, starts: IntArray, timeout: FloatArray, out: FloatArray
) -> None:
    """out[k] = `STATS` of the requests latency[starts[k]:starts[k + 1]] of pool k.

    As `BackendPoolEnv` computes them: p50 and p99 of the latencies, p99 of the effective
    latencies (a failure counts as `timeout[k]`), their mean and the number of failures.
    """
    for k in range(len(starts) - 1):
        lo, n = starts[k], starts[k + 1] - starts[k]
        errors = 0
        for i in range(lo, lo + n):
            errors += failed[i]
        out[k, 4] = errors
        if n == 0:
            out[k, :4] = np.nan
            continue
        ordered = np.sort(latency[lo : lo + n])
        out[k, 0] = linear_quantile(ordered, n, 0.5)
        out[k, 1] = linear_quantile(ordered, n, 0.99)
        effective = np.where(failed[lo : lo + n], timeout[k], latency[lo : lo + n])
        effective.sort()
        out[k, 2] = linear_quantile(effective, n, 0.99)
        out[k, 3] = pairwise_sum(latency, lo, n) / n


def batch_interval_stats(
    latencies: list[FloatArray], failures: list[BoolArray], timeouts: list[float]
) -> FloatArray:
    """`interval_stats` of K pools given as lists (one array per pool): a (K, 5) array."""
    starts = np.zeros(len(latencies) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in latencies], out=starts[1:])
    out = np.empty((len(latencies), len(STATS)))
    if not latencies:
        return out
    interval_stats(
        np.concatenate(latencies).astype(np.float64, copy=False),
        np.concatenate(failures).astype(np.bool_, copy=False),
        starts,
        np.asarray(timeouts, dtype=np.float64),
        out,
    )
    return out
