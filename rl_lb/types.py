"""The records and interfaces shared by the simulator, the proxy and the trainer.

Everything that crosses a boundary between `rl_lb`, `envs`, `serving` and `training` is defined
here, so the five contracts of the architecture stand in one module: `BackendStats` and
`PoolSnapshot` (what the monitor saw), `LoadView` (what a picker may read per request),
`WeightPolicy` (weights from a snapshot), `Picker` (one backend per request).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "SNAPSHOT_COLUMNS",
    "BackendStats",
    "Clock",
    "FloatArray",
    "LoadView",
    "NoBackendAvailable",
    "Picker",
    "PoolSnapshot",
    "WeightPolicy",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

Clock = Callable[[], float]
"""Seconds as a float. `time.monotonic` in the proxy, the event time in the simulator."""


class BackendStats(NamedTuple):
    """One backend's figures at one instant (a row of a `PoolSnapshot`)."""

    name: str
    in_flight: int
    ewma_s: float
    """Peak-EWMA latency in seconds, decayed to the snapshot time; errors count as the penalty."""
    p50_s: float
    p95_s: float
    p99_s: float
    """Window quantiles of latency (every answer, errors at their real latency); NaN if none."""
    error_rate: float
    """Errors / answers over the window; 0 when there were no answers."""
    throughput_rps: float
    """Answers per second over the window."""
    staleness_s: float
    """Seconds since the last answer from this backend; inf if it never answered."""
    healthy: bool
    ejected: bool
    weight: float
    """The weight the balancer applied during the interval that ends at this snapshot."""


def _frozen(values: npt.ArrayLike, dtype: type) -> npt.NDArray[Any]:
    array: npt.NDArray[Any] = np.array(values, dtype=dtype)
    array.setflags(write=False)
    return array


SNAPSHOT_COLUMNS: tuple[str, ...] = (
    "in_flight",
    "ewma_s",
    "p50_s",
    "p95_s",
    "p99_s",
    "error_rate",
    "throughput_rps",
    "staleness_s",
    "healthy",
    "ejected",
    "weights",
)
"""The per-backend columns of a `PoolSnapshot`, in order (its JSON form uses these names)."""


@dataclass(frozen=True, eq=False)
class PoolSnapshot:
    """Every backend of a pool at one instant, as the monitor saw it. Immutable.

    Stored column-wise (one read-only numpy array per figure) because the feature encoder and
    the policies work on whole columns; `backends` gives the row view.
    """

    taken_at: float
    """Clock time at which the figures were measured."""
    names: tuple[str, ...]
    in_flight: IntArray
    ewma_s: FloatArray
    p50_s: FloatArray
    p95_s: FloatArray
    p99_s: FloatArray
    error_rate: FloatArray
    throughput_rps: FloatArray
    staleness_s: FloatArray
    healthy: BoolArray
    ejected: BoolArray
    weights: FloatArray
    window_s: float = 10.0
    """Length of the sliding window behind the quantiles, error rate and throughput."""

    def __post_init__(self) -> None:
        n = len(self.names)
        dtypes = {"in_flight": np.int64, "healthy": np.bool_, "ejected": np.bool_}
        for column in SNAPSHOT_COLUMNS:
            array = _frozen(getattr(self, column), dtypes.get(column, np.float64))
            if array.shape != (n,):
                raise ValueError(
                    f"PoolSnapshot.{column} has shape {array.shape}, expected ({n},) "
                    f"for {n} backends"
                )
            object.__setattr__(self, column, array)

    @classmethod
    def from_backends(
        cls, taken_at: float, backends: Sequence[BackendStats], window_s: float = 10.0
    ) -> PoolSnapshot:
        """Build a snapshot from rows (handy in tests and for remote views)."""
        # Lists here; __post_init__ turns each into a frozen array of its column's dtype.
        columns: dict[str, Any] = {
            "in_flight": [b.in_flight for b in backends],
            "ewma_s": [b.ewma_s for b in backends],
            "p50_s": [b.p50_s for b in backends],
            "p95_s": [b.p95_s for b in backends],
            "p99_s": [b.p99_s for b in backends],
            "error_rate": [b.error_rate for b in backends],
            "throughput_rps": [b.throughput_rps for b in backends],
            "staleness_s": [b.staleness_s for b in backends],
            "healthy": [b.healthy for b in backends],
            "ejected": [b.ejected for b in backends],
            "weights": [b.weight for b in backends],
        }
        return cls(
            taken_at=taken_at,
            names=tuple(b.name for b in backends),
            window_s=window_s,
            **columns,
        )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def live(self) -> BoolArray:
        """Backends a picker may choose: healthy and not ejected."""
        return self.healthy & ~self.ejected

    @property
    def backends(self) -> tuple[BackendStats, ...]:
        return tuple(
            BackendStats(
                name=self.names[i],
                in_flight=int(self.in_flight[i]),
                ewma_s=float(self.ewma_s[i]),
                p50_s=float(self.p50_s[i]),
                p95_s=float(self.p95_s[i]),
                p99_s=float(self.p99_s[i]),
                error_rate=float(self.error_rate[i]),
                throughput_rps=float(self.throughput_rps[i]),
                staleness_s=float(self.staleness_s[i]),
                healthy=bool(self.healthy[i]),
                ejected=bool(self.ejected[i]),
                weight=float(self.weights[i]),
            )
            for i in range(len(self))
        )

    def age(self, now: float) -> float:
        """How old these figures are at clock time `now`."""
        return now - self.taken_at

    def permuted(self, order: Sequence[int]) -> PoolSnapshot:
        """The same pool with its backends listed in `order` (for equivariance tests)."""
        index = np.asarray(order, dtype=np.int64)
        return PoolSnapshot(
            taken_at=self.taken_at,
            names=tuple(self.names[i] for i in index),
            window_s=self.window_s,
            **{c: getattr(self, c)[index] for c in SNAPSHOT_COLUMNS},
        )

    def replace(self, **changes: object) -> PoolSnapshot:
        """A copy with some columns (or `taken_at`) replaced."""
        fields = {c: getattr(self, c) for c in SNAPSHOT_COLUMNS}
        fields.update(taken_at=self.taken_at, names=self.names, window_s=self.window_s)
        fields.update(changes)
        return PoolSnapshot(**fields)


@runtime_checkable
class LoadView(Protocol):
    """What a picker reads for each request: the live per-backend state, O(1) per backend.

    `PoolMetrics` implements it in the proxy and in the Python simulator; the lists are the
    tracker's own, so reading them costs no copy.
    """

    in_flight: list[int]
    available: list[bool]
    """Healthy and not ejected."""

    def cost(self, index: int) -> float:
        """Peak-EWMA latency (s) of one backend decayed to now; errors count as the penalty."""
        ...

    def error_rate(self, index: int) -> float:
        """Failed share of one backend's answers in the metrics window (0 without answers)."""
        ...


@runtime_checkable
class WeightPolicy(Protocol):
    """Sets the traffic weights once per control interval.

    Returns non-negative weights, one per backend of the snapshot, summing to 1 over the live
    backends and 0 on the others. Heuristic policies and the learned policy implement it alike.
    """

    name: str

    def weights(self, snapshot: PoolSnapshot) -> FloatArray: ...

    def reset(self) -> None:
        """Forget any history (a new episode, a new pool)."""
        ...


@runtime_checkable
class Picker(Protocol):
    """Chooses one backend per request from the current weights and the live state."""

    name: str

    def update(self, weights: FloatArray) -> None:
        """Install new weights (called once per control interval, off the request path)."""
        ...

    def pick(self, view: LoadView) -> int:
        """Index of the chosen backend, never one that `view.available` marks unavailable.

        Raises `NoBackendAvailable` when none is available.
        """
        ...


class NoBackendAvailable(RuntimeError):  # noqa: N818 (a condition, not a bug)
    """Every backend is down, unhealthy or ejected: the request cannot be placed."""
