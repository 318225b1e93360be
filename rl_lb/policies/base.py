"""What every weight policy shares: the output rule (≥ 0, sums to 1 over live backends)."""

from __future__ import annotations

import numpy as np

from rl_lb.types import BoolArray, FloatArray

__all__ = ["normalise", "uniform_weights"]


def uniform_weights(live: BoolArray) -> FloatArray:
    """1/k on each of the k live backends, 0 elsewhere (all zero when none is live)."""
    weights = live.astype(np.float64)
    total = weights.sum()
    return weights / total if total > 0 else weights


def normalise(raw: FloatArray, live: BoolArray) -> FloatArray:
    """Scale `raw` to sum to 1 over live backends; non-finite or negative entries count as 0.

    Heuristics feed it estimates that can be missing (NaN) for a backend with no data yet;
    when nothing usable is left the answer is uniform, never all zeros.
    """
    weights = np.where(live & np.isfinite(raw) & (raw > 0), raw, 0.0)
    total = weights.sum()
    if total <= 0 or not np.isfinite(total):
        return uniform_weights(live)
    return np.asarray(weights / total, dtype=np.float64)
