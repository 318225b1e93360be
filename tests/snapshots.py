"""Building `PoolSnapshot`s by hand for tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rl_lb.types import PoolSnapshot


def make_snapshot(
    ewma_s: Sequence[float],
    *,
    taken_at: float = 100.0,
    in_flight: Sequence[int] | None = None,
    error_rate: Sequence[float] | None = None,
    throughput_rps: Sequence[float] | None = None,
    healthy: Sequence[bool] | None = None,
    ejected: Sequence[bool] | None = None,
    weights: Sequence[float] | None = None,
    p99_factor: float = 3.0,
    window_s: float = 10.0,
) -> PoolSnapshot:
    """A pool whose quantiles follow its EWMA latencies (p50 = EWMA, p99 = p99_factor × EWMA)."""
    n = len(ewma_s)
    ewma = np.asarray(ewma_s, dtype=np.float64)
    return PoolSnapshot(
        taken_at=taken_at,
        names=tuple(f"b{i}" for i in range(n)),
        in_flight=np.asarray(in_flight if in_flight is not None else [2] * n),
        ewma_s=ewma,
        p50_s=ewma,
        p95_s=ewma * (1 + p99_factor) / 2,
        p99_s=ewma * p99_factor,
        error_rate=np.asarray(error_rate if error_rate is not None else [0.0] * n),
        throughput_rps=np.asarray(throughput_rps if throughput_rps is not None else [100.0] * n),
        staleness_s=np.full(n, 0.01),
        healthy=np.asarray(healthy if healthy is not None else [True] * n),
        ejected=np.asarray(ejected if ejected is not None else [False] * n),
        weights=np.asarray(weights if weights is not None else [1.0 / n] * n),
        window_s=window_s,
    )
