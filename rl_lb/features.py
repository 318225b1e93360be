"""The single definition of the policy's observation and action, for the simulator and the proxy.

Every figure is made relative to the pool (latency over the pool median, in-flight over the pool
mean, share of throughput…) so that a policy trained on 10 ms backends reads the same numbers on
200 ms backends, and nothing is divided by a fixed maximum pool size (the size enters as
log N), so that one policy reads pools of 2 and of 1,000 backends alike. The list `FEATURES` is
the one place the layout is written; docs/features.md describes it and a test keeps the two in
step. The simulator's batched environment encodes K snapshots at once with a declared twin of
`FeatureEncoder.encode` (`envs.nb_features`, held to the same float32 observations by
tests/test_nb_features.py): change the two together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from rl_lb.types import BoolArray, FloatArray, PoolSnapshot

__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "HISTORY_FEATURES",
    "LAYOUT_VERSION",
    "SCORE_SCALE",
    "ArraySpec",
    "Feature",
    "FeatureEncoder",
]

LAYOUT_VERSION = 2
"""2: any pool size (`pool_size` is log N, no slot maximum). 1 (at most 16 slots) is refused."""
SCORE_SCALE = 4.0
"""Scores in [-1, 1] become weights ∝ exp(SCORE_SCALE × score): a 2981:1 range, enough to starve."""
CLIP = 10.0
LOG_CLIP = 5.0
"""Relative latencies are log-ratios clipped to ±5 (e^5 ≈ 150× the pool median)."""


class ArraySpec(NamedTuple):
    """Shape, dtype and bounds of the array the policy reads (observation) or writes (action).

    Exactly what a Gymnasium `Box` needs, written without Gymnasium: the core serves policies
    in a proxy that has no use for it, so the spaces themselves are built in envs/
    (`envs.env.policy_spaces`).
    """

    shape: tuple[int, ...]
    low: float
    high: float
    dtype: type[np.float32] = np.float32


class Feature(NamedTuple):
    name: str
    doc: str


FEATURES: tuple[Feature, ...] = (
    Feature("present", "1 for a backend slot in use, 0 for padding (the mask)"),
    Feature("live", "1 when healthy and not ejected: the picker may choose it"),
    Feature("ewma_rel", "log(peak-EWMA latency / pool median of it), errors at the penalty"),
    Feature("p50_rel", "log(window p50 / pool median of the p50s)"),
    Feature("p99_rel", "log(window p99 / pool median of the p99s)"),
    Feature("p99_spread", "log(window p99 / own p50): the backend's own tail"),
    Feature("in_flight_rel", "in-flight / pool mean in-flight (1 = average), clipped to 10"),
    Feature("error_rate", "errors / answers over the window"),
    Feature("throughput_share", "answers/s × live backends / pool total answers/s (1 = fair)"),
    Feature("weight", "weight applied in the last interval × live backends (1 = uniform)"),
    Feature("staleness", "seconds since the last answer / window length, clipped to 1"),
    Feature("no_data", "1 when the window holds no answer from this backend"),
    Feature("pool_size", "log(live backends) (the same for every slot)"),
    Feature("pool_in_flight", "log1p(pool mean in-flight) (the same for every slot: load level)"),
)
"""Features of the current snapshot, per backend slot."""

HISTORY_FEATURES: tuple[str, ...] = (
    "ewma_rel",
    "p99_rel",
    "error_rate",
    "throughput_share",
    "weight",
)
"""Features repeated for each of the previous `history - 1` snapshots (newest first)."""


def _names(history: int) -> tuple[str, ...]:
    current = tuple(f.name for f in FEATURES)
    past = tuple(f"{name}@-{lag}" for lag in range(1, history) for name in HISTORY_FEATURES)
    return current + past


FEATURE_NAMES: tuple[str, ...] = _names(4)
"""The column names of the default encoder (history = 4)."""


def _check_slots(slots: int) -> int:
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    return int(slots)


def _median(values: FloatArray, mask: BoolArray) -> float:
    chosen = values[mask & np.isfinite(values) & (values > 0)]
    return float(np.median(chosen)) if chosen.size else float("nan")


def _log_rel(values: FloatArray, mask: BoolArray) -> FloatArray:
    """log(value / median of the pool's values); 0 where unknown."""
    reference = _median(values, mask)
    out = np.zeros(values.shape)
    if not np.isfinite(reference):
        return out
    known = np.isfinite(values) & (values > 0)
    out[known] = np.log(values[known] / reference)
    return np.clip(out, -LOG_CLIP, LOG_CLIP)


class FeatureEncoder:
    """Turns a `PoolSnapshot` (plus the previous ones) into the policy's observation.

    The observation is an `(N, len(names))` float32 array, one row per backend, for a pool of
    any size N. A consumer that needs a fixed shape (an SB3 policy) asks for `slots` rows: rows
    past the pool size are zero (their `present` column is the mask). The action is one score in
    [-1, 1] per row; `decode` turns scores into weights.
    """

    def __init__(self, history: int = 4) -> None:
        if history < 1:
            raise ValueError("history must be at least 1 (the current snapshot)")
        self.history = history
        self.names = _names(history)
        self.n_features = len(self.names)
        self._cache: dict[int, tuple[PoolSnapshot, FloatArray]] = {}

    def layout(self) -> dict[str, Any]:
        """What a model file must match to be served with this encoder."""
        return {
            "version": LAYOUT_VERSION,
            "features": list(self.names),
            "history": self.history,
            "score_scale": SCORE_SCALE,
        }

    def observation_spec(self, slots: int) -> ArraySpec:
        """The observation padded to `slots` rows (what a fixed-shape consumer declares)."""
        return ArraySpec((_check_slots(slots), self.n_features), -CLIP, CLIP)

    @staticmethod
    def action_spec(slots: int) -> ArraySpec:
        """One score per row of an observation padded to `slots` rows."""
        return ArraySpec((_check_slots(slots),), -1.0, 1.0)

    def encode(
        self,
        snapshot: PoolSnapshot,
        history: Sequence[PoolSnapshot] = (),
        slots: int | None = None,
    ) -> np.ndarray:
        """Observation for `snapshot`; `history` holds earlier snapshots, oldest first.

        One row per backend, or `slots` rows (zero past the pool) when a fixed shape is wanted.
        Earlier snapshots of a different pool size (a backend added or removed) are ignored,
        as are any beyond `history - 1`.
        """
        n = len(snapshot)
        if n < 1:
            raise ValueError("an empty pool has no observation: give at least one backend")
        rows_out = n if slots is None else _check_slots(slots)
        if n > rows_out:
            raise ValueError(
                f"a pool of {n} backends does not fit {rows_out} slots: "
                "pad to the largest pool (the environment sizes itself from its scenarios)"
            )
        rows = self._current(snapshot)
        same_pool = [s for s in history if len(s) == n]
        past = same_pool[max(0, len(same_pool) - (self.history - 1)) :] if self.history > 1 else []
        lagged = [self._lagged_rows(s) for s in reversed(past)]
        self._cache = {id(s): self._cache[id(s)] for s in past if id(s) in self._cache}
        blank = np.zeros((n, len(HISTORY_FEATURES)))
        lagged += [blank] * (self.history - 1 - len(lagged))
        spec = self.observation_spec(rows_out)
        observation = np.zeros(spec.shape, dtype=spec.dtype)
        observation[:n] = np.concatenate([rows, *lagged], axis=1)
        return np.clip(observation, spec.low, spec.high)

    def _current(self, s: PoolSnapshot) -> FloatArray:
        live = s.live
        n_live = max(int(live.sum()), 1)
        in_flight = s.in_flight.astype(np.float64)
        mean_in_flight = float(in_flight[live].mean()) if live.any() else 0.0
        no_data = ~np.isfinite(s.p50_s)
        spread = np.zeros(len(s))
        spread[~no_data] = np.log(s.p99_s[~no_data] / s.p50_s[~no_data])
        columns = {
            "present": np.ones(len(s)),
            "live": live.astype(np.float64),
            "ewma_rel": _log_rel(s.ewma_s, live),
            "p50_rel": _log_rel(s.p50_s, live),
            "p99_rel": _log_rel(s.p99_s, live),
            "p99_spread": spread,
            "in_flight_rel": np.minimum(in_flight / mean_in_flight, CLIP)
            if mean_in_flight > 0
            else np.zeros(len(s)),
            "error_rate": s.error_rate,
            "throughput_share": self._share(s.throughput_rps, n_live),
            "weight": s.weights * n_live,
            "staleness": np.minimum(s.staleness_s / s.window_s, 1.0),
            "no_data": no_data.astype(np.float64),
            "pool_size": np.full(len(s), np.log(n_live)),
            "pool_in_flight": np.full(len(s), np.log1p(mean_in_flight)),
        }
        return np.stack([columns[f.name] for f in FEATURES], axis=1)

    def _lagged_rows(self, s: PoolSnapshot) -> FloatArray:
        """`_lagged(s)`, computed once per snapshot: a step re-reads the same past snapshots
        `history - 1` times, and snapshots are immutable. The cache holds only the snapshots of
        the last call's history (and a reference to each, so an id is never reused)."""
        cached = self._cache.get(id(s))
        if cached is None or cached[0] is not s:
            cached = self._cache[id(s)] = (s, self._lagged(s))
        return cached[1]

    def _lagged(self, s: PoolSnapshot) -> FloatArray:
        live = s.live
        n_live = max(int(live.sum()), 1)
        columns = {
            "ewma_rel": _log_rel(s.ewma_s, live),
            "p99_rel": _log_rel(s.p99_s, live),
            "error_rate": s.error_rate,
            "throughput_share": self._share(s.throughput_rps, n_live),
            "weight": s.weights * n_live,
        }
        return np.stack([columns[name] for name in HISTORY_FEATURES], axis=1)

    @staticmethod
    def _share(throughput: FloatArray, n_live: int) -> FloatArray:
        total = float(throughput.sum())
        if total <= 0:
            return np.zeros(throughput.shape)
        return throughput * n_live / total

    def decode(self, action: np.ndarray, snapshot: PoolSnapshot) -> FloatArray:
        """Scores (one per slot) → weights: a softmax over live backends, 0 elsewhere.

        Non-finite scores are a policy failure, so they come out as NaN weights for the guard
        to catch rather than being silently repaired here.
        """
        n = len(snapshot)
        scores = np.asarray(action, dtype=np.float64).reshape(-1)
        if scores.shape[0] < n:
            raise ValueError(f"expected at least {n} scores, got {scores.shape[0]}")
        scores = scores[:n]
        if not np.all(np.isfinite(scores)):
            return np.full(n, np.nan)
        live = snapshot.live
        weights = np.zeros(n)
        if not live.any():
            return weights
        logits = SCORE_SCALE * np.clip(scores[live], -1.0, 1.0)
        exp = np.exp(logits - logits.max())
        weights[live] = exp / exp.sum()
        return weights
