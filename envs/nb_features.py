"""Twin of `rl_lb.features`: `FeatureEncoder.encode` for K environments' snapshots at once.

`rl_lb.features` is the one definition of the observation; `BatchedVecEnv` steps K pools per
call and encoding them one by one cost about as much Python as the kernel's whole step. This
module computes the same floats for all K in a handful of calls: the per-row arithmetic in
numba (`current_rows`, `assemble`), every logarithm in numpy, over all the batch's arguments in
one call, because numpy's vectorised `log`/`log1p` round differently from the C library's
(numba's) in the last bit of a few float64 values per thousand, and `encode` uses numpy's (the
float32 observation hides nearly all such differences; by construction, none reach it).
Medians, sums and means follow numpy's own order of operations (`envs.nb_reward.pairwise_sum`).
Column order, history features and clip bounds are read from `rl_lb.features` and passed to the
compiled code as arguments.

A declared twin of `rl_lb.features.FeatureEncoder.encode`: tests/test_nb_features.py feeds
random and simulated snapshots (with histories) to both and requires identical float32
observations; that test, not this docstring, is the contract. Change the encoder and this
module together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envs.nb_reward import compiled, pairwise_sum
from rl_lb.features import CLIP, FEATURES, HISTORY_FEATURES, LOG_CLIP
from rl_lb.types import FloatArray, IntArray, PoolSnapshot

__all__ = ["TWIN_OF", "assemble", "current_rows", "encode_batch"]

TWIN_OF = "rl_lb.features"

_NAMES = tuple(f.name for f in FEATURES)
_COMPUTED = (
    "present",
    "live",
    "ewma_rel",
    "p50_rel",
    "p99_rel",
    "p99_spread",
    "in_flight_rel",
    "error_rate",
    "throughput_share",
    "weight",
    "staleness",
    "no_data",
    "pool_size",
    "pool_in_flight",
)
"""What `current_rows` writes, in this order; it must be the layout of `rl_lb.features`."""
if set(_NAMES) != set(_COMPUTED) or len(_NAMES) != len(_COMPUTED):
    raise ImportError(f"envs.nb_features computes {_COMPUTED}, rl_lb.features has {_NAMES}")
_PLACE = np.array([_NAMES.index(name) for name in _COMPUTED], dtype=np.int64)
"""_PLACE[j]: the observation column of the j-th computed feature."""
_HISTORY = np.array([_NAMES.index(name) for name in HISTORY_FEATURES], dtype=np.int64)
_REL = [_NAMES.index(name) for name in ("ewma_rel", "p50_rel", "p99_rel")]
_LOG1P = _NAMES.index("pool_in_flight")

_jit = compiled


@_jit
def _median_of_known(values: FloatArray, live: np.ndarray, lo: int, hi: int) -> float:
    """`rl_lb.features._median`: median of the live, finite, positive values (NaN if none)."""
    chosen = np.empty(hi - lo)
    k = 0
    for i in range(lo, hi):
        v = values[i]
        if live[i] and np.isfinite(v) and v > 0:
            chosen[k] = v
            k += 1
    if k == 0:
        return np.nan
    ordered = np.sort(chosen[:k])
    if k % 2:
        return float(ordered[k // 2])
    return float((ordered[k // 2 - 1] + ordered[k // 2]) / 2.0)


@_jit
def current_rows(
    columns: FloatArray,
    live: np.ndarray,
    window_s: FloatArray,
    starts: IntArray,
    place: IntArray,
    in_flight_clip: float,
    out: FloatArray,
    log_at: IntArray,
    log_of: FloatArray,
) -> int:
    """The current-snapshot features of M snapshots, their rows stacked, logarithms pending.

    `columns` holds the snapshots' rows (starts[m]:starts[m + 1] for snapshot m) with columns
    in_flight, ewma, p50, p99, error rate, throughput, weight, staleness; `place` maps the
    computed features (`_COMPUTED`) to `out`'s columns. A feature that is a logarithm gets its
    argument in `log_of` and its flat index into `out` in `log_at`; returns how many. The
    caller takes the logarithms (`log1p` for pool_in_flight) and clips the relative ones.
    """
    width = out.shape[1]
    pending = 0
    for m in range(len(starts) - 1):
        lo, hi = starts[m], starts[m + 1]
        n_live = 0
        for i in range(lo, hi):
            n_live += live[i]
        scratch = np.empty(max(n_live, 1))
        k = 0
        for i in range(lo, hi):
            if live[i]:
                scratch[k] = columns[i, 0]
                k += 1
        mean_in_flight = pairwise_sum(scratch, 0, k) / k if k else 0.0
        n_live = max(n_live, 1)
        references = (
            _median_of_known(columns[:, 1], live, lo, hi),
            _median_of_known(columns[:, 2], live, lo, hi),
            _median_of_known(columns[:, 3], live, lo, hi),
        )
        total = pairwise_sum(columns[:, 5].copy(), lo, hi - lo)
        for i in range(lo, hi):
            row = out[i]
            row[place[0]] = 1.0
            row[place[1]] = 1.0 if live[i] else 0.0
            for j in range(3):
                row[place[2 + j]] = 0.0
                value = columns[i, 1 + j]
                if np.isfinite(references[j]) and np.isfinite(value) and value > 0:
                    log_at[pending] = i * width + place[2 + j]
                    log_of[pending] = value / references[j]
                    pending += 1
            p50, p99 = columns[i, 2], columns[i, 3]
            row[place[5]] = 0.0
            row[place[11]] = 0.0 if np.isfinite(p50) else 1.0
            if np.isfinite(p50):
                log_at[pending] = i * width + place[5]
                log_of[pending] = p99 / p50
                pending += 1
            row[place[6]] = (
                min(columns[i, 0] / mean_in_flight, in_flight_clip) if mean_in_flight > 0 else 0.0
            )
            row[place[7]] = columns[i, 4]
            row[place[8]] = columns[i, 5] * n_live / total if total > 0 else 0.0
            row[place[9]] = columns[i, 6] * n_live
            row[place[10]] = min(columns[i, 7] / window_s[m], 1.0)
            log_at[pending] = i * width + place[12]
            log_of[pending] = float(n_live)
            pending += 1
            row[place[13]] = mean_in_flight  # log1p by the caller
    return pending


@_jit
def assemble(
    table: FloatArray,
    current: IntArray,
    rows: IntArray,
    lagged: IntArray,
    history_columns: IntArray,
    clip: float,
    obs: np.ndarray,
) -> None:
    """obs[e] = environment e's observation: rows of its current snapshot (table rows from
    current[e], rows[e] of them) then, for each lag j, the history columns of the snapshot at
    table row lagged[e, j] (zeros where -1), clipped to ±clip as float32; padding stays 0."""
    n_current = table.shape[1]
    n_history = len(history_columns)
    for e in range(obs.shape[0]):
        for r in range(rows[e]):
            for c in range(n_current):
                obs[e, r, c] = min(max(table[current[e] + r, c], -clip), clip)
            for j in range(lagged.shape[1]):
                if lagged[e, j] < 0:
                    continue
                base = n_current + j * n_history
                for h in range(n_history):
                    value = table[lagged[e, j] + r, history_columns[h]]
                    obs[e, r, base + h] = min(max(value, -clip), clip)


def _table(snapshots: Sequence[PoolSnapshot]) -> tuple[FloatArray, IntArray]:
    """The current-feature rows of `snapshots`, stacked, and each one's first row."""
    starts = np.zeros(len(snapshots) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in snapshots], out=starts[1:])
    columns = np.stack(
        [
            np.concatenate([getattr(s, name) for s in snapshots]).astype(np.float64)
            for name in (
                "in_flight",
                "ewma_s",
                "p50_s",
                "p99_s",
                "error_rate",
                "throughput_rps",
                "weights",
                "staleness_s",
            )
        ],
        axis=1,
    )
    live = np.concatenate([s.healthy for s in snapshots]) & ~np.concatenate(
        [s.ejected for s in snapshots]
    )
    window_s = np.array([s.window_s for s in snapshots], dtype=np.float64)
    rows = int(starts[-1])
    table = np.zeros((rows, len(_NAMES)))
    log_at = np.empty(5 * rows, dtype=np.int64)
    log_of = np.empty(5 * rows)
    pending = current_rows(columns, live, window_s, starts, _PLACE, CLIP, table, log_at, log_of)
    # numpy's logarithms, on contiguous arrays as `encode` takes them (its SIMD loops).
    flat = table.reshape(-1)
    flat[log_at[:pending]] = np.log(log_of[:pending])
    table[:, _LOG1P] = np.log1p(np.ascontiguousarray(table[:, _LOG1P]))
    table[:, _REL] = np.clip(table[:, _REL], -LOG_CLIP, LOG_CLIP)
    return table, starts


def encode_batch(
    snapshots: Sequence[PoolSnapshot],
    histories: Sequence[Sequence[PoolSnapshot]],
    history: int,
    slots: int,
) -> np.ndarray:
    """`FeatureEncoder(history).encode(snapshots[e], histories[e], slots)` for every e, as one
    (K, slots, features) float32 array; `histories[e]` oldest first, as `encode` takes it."""
    unique: dict[int, int] = {}
    order: list[PoolSnapshot] = []

    def index(s: PoolSnapshot) -> int:
        found = unique.get(id(s))
        if found is None:
            found = unique[id(s)] = len(order)
            order.append(s)
        return found

    k = len(snapshots)
    current = np.empty(k, dtype=np.int64)
    lagged = np.full((k, max(history - 1, 0)), -1, dtype=np.int64)
    for e, (snapshot, past) in enumerate(zip(snapshots, histories, strict=True)):
        n = len(snapshot)
        if not 1 <= n <= slots:
            raise ValueError(f"a pool of {n} backends does not fit 1 to {slots} slots")
        current[e] = index(snapshot)
        if history > 1:
            same_pool = [s for s in past if len(s) == n][-(history - 1) :]
            for j, s in enumerate(reversed(same_pool)):
                lagged[e, j] = index(s)
    table, starts = _table(order)
    rows = np.array([len(s) for s in snapshots], dtype=np.int64)
    lagged_rows = np.where(lagged >= 0, starts[np.maximum(lagged, 0)], -1)
    n_features = len(_NAMES) + (history - 1) * len(HISTORY_FEATURES)
    obs = np.zeros((k, slots, n_features), dtype=np.float32)
    assemble(table, starts[current], rows, lagged_rows, _HISTORY, CLIP, obs)
    return obs
