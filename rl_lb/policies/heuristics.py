"""Heuristic weight policies: the baselines every learned policy is measured against."""

from __future__ import annotations

import numpy as np

from rl_lb.policies.base import normalise, uniform_weights
from rl_lb.types import FloatArray, PoolSnapshot

__all__ = ["CapacityPolicy", "InverseLatencyPolicy", "UniformPolicy"]


def _fill_unknown(latency: FloatArray, live: np.ndarray) -> FloatArray:
    """Backends without a latency estimate yet get the median of the others, so they get probed."""
    known = live & np.isfinite(latency) & (latency > 0)
    if not known.any():
        return np.full(latency.shape, np.nan)
    return np.where(known, latency, float(np.median(latency[known])))


class UniformPolicy:
    """Equal weights: what round-robin and least-request balancers assume."""

    name = "uniform"

    def weights(self, snapshot: PoolSnapshot) -> FloatArray:
        return uniform_weights(snapshot.live)

    def reset(self) -> None:
        """Stateless."""


class InverseLatencyPolicy:
    """Weights ∝ 1 / peak-EWMA latency: the classic "dynamic weights from monitoring".

    Errors already weigh in through the EWMA's penalty latency.
    """

    name = "inverse-latency"

    def weights(self, snapshot: PoolSnapshot) -> FloatArray:
        live = snapshot.live
        latency = _fill_unknown(snapshot.ewma_s, live)
        return normalise(1.0 / latency, live)

    def reset(self) -> None:
        """Stateless."""


class CapacityPolicy:
    """Weights ∝ estimated capacity: the good answers per second a backend sustains.

    By Little's law a backend holding L requests at latency W serves L / W requests per second;
    L is the larger of the in-flight count now and the window's mean concurrency
    (throughput × latency), at least 1 so an idle backend still counts with its latency. The
    share of errors is taken off, since a fast failure is no capacity.
    """

    name = "capacity"

    def weights(self, snapshot: PoolSnapshot) -> FloatArray:
        live = snapshot.live
        latency = _fill_unknown(snapshot.ewma_s, live)
        concurrency = np.maximum.reduce(
            [
                snapshot.in_flight.astype(np.float64),
                np.nan_to_num(snapshot.throughput_rps * latency),
                np.ones(len(snapshot)),
            ]
        )
        capacity = (1.0 - snapshot.error_rate) * concurrency / latency
        return normalise(capacity, live)

    def reset(self) -> None:
        """Stateless."""
