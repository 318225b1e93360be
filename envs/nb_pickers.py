"""Numba twin of `rl_lb.pickers`: the same pickers, one call per simulated request.

Same rules as the Python pickers, so a policy trained here meets the same placement in the proxy:
unavailable backends are never picked, zero-weight ones only when every available backend has
weight 0 (then all count as 1). More than the same law: given the same uniform draws, each picker
makes the same choice as its Python reference, because it consumes the draws the same way (one
for `random`, two for the power-of-two-choices unless a single backend is left, one for a `jsq`
tie) and maps them with the same arithmetic (cumulative sums in backend order, load × 1/weight).
tests/test_sim_pickers.py replays one stream of draws into both and compares every pick.
As the Python pickers keep a `_Table` per weight update, the sums live in `PickTables`, one row
per proxy rebuilt only when its weights or availability change, so a weighted draw is a binary
search and a p2c-family pick costs O(log N), not O(N).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from envs.jit import jit
from envs.nb_metrics import MetricsState, cost
from envs.nb_random import uniform as _uniform
from rl_lb.types import FloatArray, IntArray

__all__ = [
    "JSQ",
    "P2C",
    "P2C_LATENCY",
    "PICKER_CODES",
    "PREQUAL",
    "RANDOM",
    "ROUND_ROBIN",
    "STALE",
    "TWIN_OF",
    "PickTables",
    "invalidate",
    "new_tables",
    "pick",
]

TWIN_OF = "rl_lb.pickers"

RANDOM, ROUND_ROBIN, P2C, P2C_LATENCY, JSQ, PREQUAL = 0, 1, 2, 3, 4, 5
"""PREQUAL is not picked here: the kernel calls `envs.nb_prequal`, which keeps a probe pool."""
PICKER_CODES: dict[str, int] = {
    "random": RANDOM,
    "round-robin": ROUND_ROBIN,
    "p2c": P2C,
    "p2c-latency": P2C_LATENCY,
    "jsq": JSQ,
    "prequal": PREQUAL,
}


STALE = -1
"""`PickTables.size` of a row to rebuild."""


class PickTables(NamedTuple):
    """Every proxy's draw table: the backends a weighted draw can return and their running
    total of shares, so a draw is a binary search rather than scans of the pool (a p2c pick
    must not cost O(N), issue 15). Row p is rebuilt at p's next pick after `invalidate(p)`,
    which every change of p's weights or availability calls (`Simulator.set_decision`, the
    kernel on ejections, health checks and a retry's excluded backends)."""

    order: IntArray
    """[proxy, backend]: the first size[p] entries of row p are the candidates (available, share
    > 0), in backend order."""
    cum: FloatArray
    """[proxy, backend]: cum[p, k] = shares of order[p, 0..k], added left to right as
    `rl_lb.pickers` does (bit for bit the running sums of a linear scan)."""
    size: IntArray
    """[proxy]: candidates in row p; STALE when the row must be rebuilt before its next pick."""
    flat: np.ndarray
    """[proxy]: every available backend has weight 0, so each counts as 1."""


def new_tables(proxies: int, backends: int) -> PickTables:
    """Tables for a fresh state: every row stale, so the first pick builds it."""
    return PickTables(
        order=np.zeros((proxies, backends), dtype=np.int64),
        cum=np.zeros((proxies, backends)),
        size=np.full(proxies, STALE, dtype=np.int64),
        flat=np.zeros(proxies, dtype=np.bool_),
    )


@jit
def invalidate(tables: PickTables, p: int) -> None:
    """Proxy p's weights or availability changed: rebuild its row before its next pick."""
    tables.size[p] = STALE


@jit
def _all_zero(w: FloatArray, avail: np.ndarray) -> bool:
    # a loop, not all(<generator>): numba does not compile generators inside all()
    for b in range(w.shape[0]):  # noqa: SIM110
        if avail[b] and w[b] > 0.0:
            return False
    return True


@jit
def _build(tables: PickTables, p: int, w: FloatArray, avail: np.ndarray) -> None:
    """Row p from the weights and availability: O(N), once per change instead of per pick."""
    flat = _all_zero(w, avail)
    count = 0
    total = 0.0
    for b in range(w.shape[0]):
        share = (1.0 if flat else w[b]) if avail[b] else 0.0
        if share > 0.0:
            total += share
            tables.order[p, count] = b
            tables.cum[p, count] = total
            count += 1
    tables.flat[p] = flat
    tables.size[p] = count


@jit
def _first_above(cum: FloatArray, x: float, hi: int) -> int:
    """The first k < hi with cum[k] > x, else hi (`bisect_right` of x in the sorted cum[:hi])."""
    lo = 0
    while lo < hi:
        mid = (lo + hi) >> 1
        if cum[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


@jit
def _draw(tables: PickTables, p: int, rng: np.ndarray) -> int:
    """One candidate drawn by weight, as `WeightedRandom`: the first whose cumulative weight
    exceeds u × total (the last one catches the rest); -1 if there is none."""
    count = tables.size[p]
    if count == 0:
        return -1
    cum = tables.cum[p]
    x = _uniform(rng) * cum[count - 1]
    return int(tables.order[p, _first_above(cum, x, count - 1)])


@jit
def _draw_two(tables: PickTables, p: int, w: FloatArray, rng: np.ndarray) -> tuple[int, int]:
    """`rl_lb.pickers._draw_two`: two distinct candidates, the second by weight without the
    first; (c, -1) when c is the only candidate (no draw), (-1, -1) when there is none."""
    count = tables.size[p]
    if count < 2:
        return (int(tables.order[p, 0]) if count == 1 else -1), -1
    cum, order = tables.cum[p], tables.order[p]
    total = cum[count - 1]
    k = _first_above(cum, _uniform(rng) * total, count - 1)
    first = order[k]
    start = cum[k - 1] if k > 0 else 0.0  # the cumulative weight before `first`
    weight = 1.0 if tables.flat[p] else w[first]
    u = _uniform(rng) * (start if k == count - 1 else total - weight)
    if u >= start:
        u += weight  # now u >= start + weight = cum[k] (rounding is monotonic): past `first`
    # so the search never stops at k, as the scan's `b != first` (but for k = count - 1 with u
    # rounded up to start, where both end on the last candidate, `first` itself)
    return int(first), int(order[_first_above(cum, u, count - 1)])


@jit
def pick(
    kind: int,
    w: FloatArray,
    avail: np.ndarray,
    load: IntArray,
    rr: FloatArray,
    m: MetricsState,
    p: int,
    now: float,
    board_cost: FloatArray,
    use_board: bool,
    tables: PickTables,
    rng: np.ndarray,
) -> int:
    """Backend index for one request of proxy p; -1 when no backend is available.

    `w` and `avail` are p's rows, which `tables` row p reflects (rebuilt here when stale).
    `load` is the in-flight count the picker sees (live, or the bulletin board when the
    scenario refreshes it only every `picker_refresh_s`); `board_cost` likewise for costs.
    `round-robin` and `jsq` visit every backend: O(N) per pick (docs/benchmarks.md).
    """
    if tables.size[p] == STALE:
        _build(tables, p, w, avail)
    flat = tables.flat[p]
    if kind == RANDOM:
        return _draw(tables, p, rng)
    if kind == ROUND_ROBIN:
        total = 0.0
        best = -1
        for b in range(w.shape[0]):
            if not avail[b]:
                continue
            share = 1.0 if flat else w[b]
            if share <= 0.0:
                continue
            rr[b] += share
            total += share
            if best < 0 or rr[b] > rr[best]:
                best = b
        if best >= 0:
            rr[best] -= total
        return best
    if kind == JSQ:
        best = -1
        best_score = np.inf
        ties = 0
        for b in range(w.shape[0]):
            if not avail[b]:
                continue
            share = 1.0 if flat else w[b]
            if share <= 0.0:
                continue
            score = (load[b] + 1.0) * (1.0 / share)
            if best < 0 or score < best_score:
                best, best_score, ties = b, score, 1
            elif score == best_score:
                ties += 1
        if ties <= 1:
            return best
        k = int(_uniform(rng) * ties)  # the k-th of the tied backends, in backend order
        for b in range(best, w.shape[0]):
            if avail[b]:
                share = 1.0 if flat else w[b]
                if share > 0.0 and (load[b] + 1.0) * (1.0 / share) == best_score:
                    if k == 0:
                        return b
                    k -= 1
        return best
    first, second = _draw_two(tables, p, w, rng)
    if second < 0:
        return first
    # scores as in `PowerOfTwo(Latency).pick`: [cost ×] (in-flight + 1) × 1/weight, left to right
    s1, s2 = load[first] + 1.0, load[second] + 1.0
    if kind == P2C_LATENCY:
        c1 = board_cost[first] if use_board else cost(m, p, first, now)
        c2 = board_cost[second] if use_board else cost(m, p, second, now)
        s1, s2 = c1 * s1, c2 * s2
    s1 *= 1.0 / (1.0 if flat else w[first])
    s2 *= 1.0 / (1.0 if flat else w[second])
    return first if s1 <= s2 else second
