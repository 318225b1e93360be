"""Numba twin of `rl_lb.pickers`: the same pickers, one call per simulated request.

Same rules as the Python pickers, so a policy trained here meets the same placement in the proxy:
unavailable backends are never picked, zero-weight ones only when every available backend has
weight 0 (then all count as 1). More than the same law: given the same uniform draws, each picker
makes the same choice as its Python reference, because it consumes the draws the same way (one
for `random`, two for the power-of-two-choices unless a single backend is left, one for a `jsq`
tie) and maps them with the same arithmetic (cumulative sums in backend order, load × 1/weight).
tests/test_sim_pickers.py replays one stream of draws into both and compares every pick.
"""

from __future__ import annotations

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
    "TWIN_OF",
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


@jit
def _all_zero(w: FloatArray, avail: np.ndarray) -> bool:
    # a loop, not all(<generator>): numba does not compile generators inside all()
    for b in range(w.shape[0]):  # noqa: SIM110
        if avail[b] and w[b] > 0.0:
            return False
    return True


@jit
def _draw(w: FloatArray, avail: np.ndarray, flat: bool, rng: np.ndarray) -> int:
    """One candidate drawn by weight, as `WeightedRandom`: the first whose cumulative weight
    exceeds u × total (the last one catches the rest); -1 if there is none."""
    total = 0.0
    last = -1
    for b in range(w.shape[0]):
        share = (1.0 if flat else w[b]) if avail[b] else 0.0
        if share > 0.0:
            total += share
            last = b
    if last < 0:
        return -1
    x = _uniform(rng) * total
    running = 0.0
    for b in range(last):
        share = (1.0 if flat else w[b]) if avail[b] else 0.0
        if share > 0.0:
            running += share
            if running > x:
                return b
    return last


@jit
def _draw_two(w: FloatArray, avail: np.ndarray, flat: bool, rng: np.ndarray) -> tuple[int, int]:
    """`rl_lb.pickers._draw_two`: two distinct candidates, the second by weight without the
    first; (c, -1) when c is the only candidate (no draw), (-1, -1) when there is none."""
    total = 0.0
    count = 0
    last = -1
    for b in range(w.shape[0]):
        share = (1.0 if flat else w[b]) if avail[b] else 0.0
        if share > 0.0:
            total += share
            count += 1
            last = b
    if count < 2:
        return last, -1
    x = _uniform(rng) * total
    first = last
    start = 0.0  # the cumulative weight before `first`
    running = 0.0
    for b in range(last):
        share = (1.0 if flat else w[b]) if avail[b] else 0.0
        if share > 0.0:
            if running + share > x:
                first = b
                start = running
                break
            running += share
    else:
        start = running
    weight = 1.0 if flat else w[first]
    u = _uniform(rng) * (start if first == last else total - weight)
    if u >= start:
        u += weight
    running = 0.0
    second = last
    for b in range(last):
        share = (1.0 if flat else w[b]) if avail[b] else 0.0
        if share > 0.0:
            running += share
            if b != first and running > u:
                second = b
                break
    return first, second


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
    rng: np.ndarray,
) -> int:
    """Backend index for one request of proxy p; -1 when no backend is available.

    `load` is the in-flight count the picker sees (live, or the bulletin board when the
    scenario refreshes it only every `picker_refresh_s`); `board_cost` likewise for costs.
    """
    flat = _all_zero(w, avail)
    if kind == RANDOM:
        return _draw(w, avail, flat, rng)
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
    first, second = _draw_two(w, avail, flat, rng)
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
