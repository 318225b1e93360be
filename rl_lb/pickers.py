"""Per-request choice of a backend from the current weights and the live load.

Every picker follows the same weight rules: only available backends (healthy, not ejected) are
chosen; a backend of weight 0 is never chosen unless every available backend has weight 0, and then
the choice is uniform over the available ones. Before the first `update`, or whenever the installed
weights do not match the pool size (a backend was just added or removed), weights are uniform.

`pick` runs once per request in pure Python, so `update` precomputes a table (positions of the
candidate backends, their weights and cumulative sums) and `pick` only reads it. The table for
"everything available" is built once per update; when some backends are unavailable a table for
that availability pattern is built once and cached until the pattern changes.

Which table applies is itself O(1) when the view's `available` is an `Availability` list (as
`PoolMetrics` and the proxy's view keep it): the picker remembers the list and its `version` and
reuses the table until either moves. A plain list is still scanned on every pick (O(N): ~9 µs at
1,000 backends). Both paths choose the same table, so the picks are the same.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from operator import add
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from rl_lb.availability import Availability
from rl_lb.errors import ConfigError
from rl_lb.prequal import PrequalPicker
from rl_lb.types import LoadView, NoBackendAvailable, Picker

__all__ = [
    "PICKER_NAMES",
    "JoinShortestQueue",
    "PowerOfTwo",
    "PowerOfTwoLatency",
    "RoundRobin",
    "WeightedRandom",
    "make_picker",
]

PICKER_NAMES = ("random", "round-robin", "p2c", "p2c-latency", "jsq", "prequal")


class _Table(NamedTuple):
    """The candidates for one availability pattern, in backend order."""

    backend: list[int]
    """Backend index of each candidate."""
    weight: list[float]
    cum: list[float]
    """Cumulative weights, the last one replaced by inf so a draw never falls off the end."""
    start: list[float]
    """Cumulative weight before each candidate."""
    total: float
    inverse: list[float]
    """1 / weight, so that load per unit of weight is a multiplication."""
    dense: bool
    """Every backend is a candidate, in order: per-backend lists zip with the table's."""


def _table(weights: Sequence[float], available: Sequence[bool] | None) -> _Table:
    """Candidates among `available` (all when None) with positive weight, else all of them at 1."""
    candidates = [i for i in range(len(weights)) if available is None or available[i]]
    if not candidates:
        raise NoBackendAvailable("no backend is available (all unhealthy or ejected)")
    index = [i for i in candidates if weights[i] > 0] or candidates
    weight = [weights[i] for i in index] if weights[index[0]] > 0 else [1.0] * len(index)
    start = [0.0] * len(index)
    cum = [0.0] * len(index)
    total = 0.0
    for k, w in enumerate(weight):
        start[k] = total
        total += w
        cum[k] = total
    cum[-1] = math.inf
    inverse = [1.0 / w for w in weight]
    return _Table(index, weight, cum, start, total, inverse, len(index) == len(weights))


class _WeightedPicker:
    """Holds the weights and the tables that the concrete pickers read."""

    name = ""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._weights: list[float] = []
        self._n = -1
        """Pool size the tables are for; -1 (matching no view) until there is one."""
        self._full = _Table([], [], [], [], 0.0, [], dense=False)
        self._pattern: list[bool] = []
        self._partial = self._full
        self._seen = Availability()
        """The availability list of the last pick, when it was an `Availability`."""
        self._seen_version = -1
        """Its version when `_seen_table` was chosen; -1 (no version) after an update."""
        self._seen_table = self._full

    def update(self, weights: npt.ArrayLike) -> None:
        """Install new weights (≥ 0, finite, one per backend; they need not sum to 1)."""
        array = np.asarray(weights, dtype=np.float64)
        if array.ndim != 1 or not np.all(np.isfinite(array)) or np.any(array < 0):
            raise ValueError(f"weights must be a 1-D array of finite values >= 0, got {array!r}")
        self._use(array.tolist())

    def _use(self, weights: list[float]) -> None:
        if len(weights) != len(self._weights):
            self._resized(len(weights))
        self._weights = weights
        self._n = len(weights) if weights else -1
        self._full = _table(weights, None) if weights else self._full
        self._pattern = []
        self._seen_version = -1

    def _table_now(self, available: list[bool]) -> _Table:
        """The weight table for one pick: the one of the last pick while the view's
        `Availability` has not changed since, else the full one while every backend is
        available, else the one for the current pattern."""
        seen = self._seen
        if available is seen and seen.version == self._seen_version:
            return self._seen_table
        if len(available) == self._n and False not in available:
            table = self._full
        else:
            table = self._table_for(available)
        if isinstance(available, Availability):
            self._seen = available
            self._seen_version = available.version
            self._seen_table = table
        return table

    def _table_for(self, available: list[bool]) -> _Table:
        """The slow path of `pick`: a pool of a new size, or some backends unavailable."""
        n = len(available)
        if n == 0:
            raise NoBackendAvailable("the pool has no backend")
        if n != self._n:  # weights for another pool size would be misaligned: uniform until update
            self._use([1.0] * n)
        if False not in available:
            return self._full
        if available != self._pattern:
            self._partial = _table(self._weights, available)
            self._pattern = list(available)
        return self._partial

    def _resized(self, n: int) -> None:
        """Hook for pickers that keep per-backend state: the pool now has n backends."""


class WeightedRandom(_WeightedPicker):
    """Weighted random choice, restricted to the available backends (the exact conditional law)."""

    name = "random"

    def pick(self, view: LoadView) -> int:
        table = self._table_now(view.available)
        return table.backend[bisect_right(table.cum, self._rng.random() * table.total)]


class RoundRobin(_WeightedPicker):
    """nginx's smooth weighted round-robin over the available backends.

    The running `current` values survive weight updates: resetting them every control interval
    would hand the first request of each interval to the heaviest backend, which skews the shares
    when an interval holds few requests. A backend that is unavailable keeps its value, as a down
    peer does in nginx.

    For speed the values of the candidates of the table in use are kept in table order (one
    `map` per pick, no per-backend loop) and written back per backend only when the table changes.
    """

    name = "round-robin"

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._stored: list[float] = []
        """Current value per backend, valid for backends outside the table in use."""
        self._active: _Table | None = None
        self._current: list[float] = []
        """Current value per candidate of `_active`, in table order."""

    def _resized(self, n: int) -> None:
        self._stored = [0.0] * n
        self._active = None

    def _use(self, weights: list[float]) -> None:
        self._switch(None)
        super()._use(weights)

    def _switch(self, table: _Table | None) -> None:
        if self._active is not None:
            for i, c in zip(self._active.backend, self._current, strict=True):
                self._stored[i] = c
        if table is not None:
            self._current = [self._stored[i] for i in table.backend]
        self._active = table

    def pick(self, view: LoadView) -> int:
        table = self._table_now(view.available)
        if table is not self._active:
            self._switch(table)
        current = list(map(add, self._current, table.weight))
        high = max(current)
        position = current.index(high)
        current[position] = high - table.total
        self._current = current
        return table.backend[position]


def _draw_two(table: _Table, rng: random.Random) -> tuple[int, int]:
    """Two distinct candidate positions, the second drawn by weight with the first removed."""
    cum = table.cum
    total = table.total
    first = bisect_right(cum, rng.random() * total)
    last = len(cum) - 1
    w = table.weight[first]
    if first == last:
        return first, bisect_right(cum, rng.random() * table.start[first], 0, first)
    u = rng.random() * (total - w)
    if u < table.start[first]:
        return first, bisect_right(cum, u, 0, first)
    return first, bisect_right(cum, u + w, first + 1, last + 1)


class PowerOfTwo(_WeightedPicker):
    """Two distinct draws by weight; the lower (in-flight + 1) / weight wins, ties to the first."""

    name = "p2c"

    def pick(self, view: LoadView) -> int:
        table = self._table_now(view.available)
        index = table.backend
        if len(index) == 1:
            return index[0]
        a, b = _draw_two(table, self._rng)
        in_flight = view.in_flight
        inverse = table.inverse
        i = index[a]
        j = index[b]
        if (in_flight[i] + 1) * inverse[a] <= (in_flight[j] + 1) * inverse[b]:
            return i
        return j


class PowerOfTwoLatency(_WeightedPicker):
    """As `PowerOfTwo`, scored by peak-EWMA cost × (in-flight + 1) / weight.

    A backend that never answered costs 0, so it wins its draws until it has a latency: new and
    returning backends are probed instead of starved.
    """

    name = "p2c-latency"

    def pick(self, view: LoadView) -> int:
        table = self._table_now(view.available)
        index = table.backend
        if len(index) == 1:
            return index[0]
        a, b = _draw_two(table, self._rng)
        in_flight = view.in_flight
        inverse = table.inverse
        cost = view.cost
        i = index[a]
        j = index[b]
        if cost(i) * (in_flight[i] + 1) * inverse[a] <= cost(j) * (in_flight[j] + 1) * inverse[b]:
            return i
        return j


class JoinShortestQueue(_WeightedPicker):
    """Lowest (in-flight + 1) / weight over all available backends; ties broken uniformly."""

    name = "jsq"

    def pick(self, view: LoadView) -> int:
        table = self._table_now(view.available)
        in_flight = view.in_flight
        index = table.backend
        if table.dense:
            load = [(f + 1) * v for f, v in zip(in_flight, table.inverse, strict=True)]
        else:
            load = [(in_flight[i] + 1) * v for i, v in zip(index, table.inverse, strict=True)]
        low = min(load)
        ties = load.count(low)
        if ties == 1:
            return index[load.index(low)]
        tied = [i for i, x in zip(index, load, strict=True) if x == low]
        return tied[int(self._rng.random() * ties)]


_PICKERS: dict[str, Callable[[random.Random | None], Picker]] = {
    cls.name: cls
    for cls in (
        WeightedRandom,
        RoundRobin,
        PowerOfTwo,
        PowerOfTwoLatency,
        JoinShortestQueue,
        PrequalPicker,
    )
}


def make_picker(name: str, rng: random.Random | None = None) -> Picker:
    """A picker by name (one of `PICKER_NAMES`); `rng` makes its random choices reproducible."""
    try:
        cls = _PICKERS[name]
    except KeyError:
        raise ConfigError(
            "picker", f"unknown picker {name!r}", f"use one of {', '.join(PICKER_NAMES)}"
        ) from None
    return cls(rng)
