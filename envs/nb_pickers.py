"""The proxy's pickers (`rl_lb.pickers`) as numba kernels, one call per simulated request.

Same rules as the Python pickers, so a policy trained here meets the same placement in the proxy:
unavailable backends are never picked, zero-weight ones only when every available backend has
weight 0 (then all count as 1). Statistical equivalence with `rl_lb.pickers` is tested in
tests/test_sim_pickers.py.
"""

from __future__ import annotations

import numpy as np

from envs.jit import jit
from envs.nb_metrics import MetricsState, cost
from envs.nb_random import uniform as _uniform
from rl_lb.types import FloatArray, IntArray

__all__ = ["JSQ", "P2C", "P2C_LATENCY", "PICKER_CODES", "RANDOM", "ROUND_ROBIN", "pick"]

RANDOM, ROUND_ROBIN, P2C, P2C_LATENCY, JSQ = 0, 1, 2, 3, 4
PICKER_CODES: dict[str, int] = {
    "random": RANDOM,
    "round-robin": ROUND_ROBIN,
    "p2c": P2C,
    "p2c-latency": P2C_LATENCY,
    "jsq": JSQ,
}


@jit
def _all_zero(w: FloatArray, avail: np.ndarray) -> bool:
    # a loop, not all(<generator>): numba does not compile generators inside all()
    for b in range(w.shape[0]):  # noqa: SIM110
        if avail[b] and w[b] > 0.0:
            return False
    return True


@jit
def _draw(w: FloatArray, avail: np.ndarray, skip: int, flat: bool, rng: np.ndarray) -> int:
    """One backend drawn by weight among the available ones except `skip`; -1 if none."""
    total = 0.0
    for b in range(w.shape[0]):
        if avail[b] and b != skip:
            total += 1.0 if flat else w[b]
    if total <= 0.0:
        return -1
    u = _uniform(rng) * total
    last = -1
    for b in range(w.shape[0]):
        if avail[b] and b != skip:
            share = 1.0 if flat else w[b]
            if share <= 0.0:
                continue
            last = b
            u -= share
            if u < 0.0:
                return b
    return last


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
        return _draw(w, avail, -1, flat, rng)
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
            score = (load[b] + 1.0) / share
            if best < 0 or score < best_score:
                best, best_score, ties = b, score, 1
            elif score == best_score:
                ties += 1
                if _uniform(rng) * ties < 1.0:
                    best = b
        return best
    first = _draw(w, avail, -1, flat, rng)
    if first < 0:
        return -1
    second = _draw(w, avail, first, flat, rng)
    if second < 0:
        return first
    w1 = 1.0 if flat else w[first]
    w2 = 1.0 if flat else w[second]
    if w2 <= 0.0:
        return first
    s1 = (load[first] + 1.0) / w1
    s2 = (load[second] + 1.0) / w2
    if kind == P2C_LATENCY:
        if use_board:
            s1 *= board_cost[first]
            s2 *= board_cost[second]
        else:
            s1 *= cost(m, p, first, now)
            s2 *= cost(m, p, second, now)
    return second if s2 < s1 else first
