"""Numba twin of `rl_lb.retry_budget.RetryBudget`: one budget per simulated proxy.

The simulator retries a failed connect exactly when the proxy would, so the budget is the
proxy's rule step for step: the same `SLOTS` sub-windows (imported, never re-defined), the same
reset of a slot the clock reaches again, the same inequality in the same floating-point order.
`count_request` runs on every arrival and is O(1); `try_retry` sums the slots, but only runs after
a failed connect. tests/test_sim_retry_budget.py feeds both the same timeline and compares every
decision.

numba's on-disk cache is keyed on this file only: after changing a constant in
`rl_lb.retry_budget`, delete `envs/__pycache__` (the equivalence test fails on a stale cache).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from envs.jit import jit
from rl_lb.retry_budget import NEVER, SLOTS
from rl_lb.types import IntArray

__all__ = ["TWIN_OF", "BudgetState", "count_request", "new_budget", "try_retry"]

TWIN_OF = "rl_lb.retry_budget"


class BudgetState(NamedTuple):
    """Every proxy's budget; arrays are indexed [proxy, slot]."""

    ids: IntArray
    """Absolute sub-window index held by each slot."""
    requests: IntArray
    retries: IntArray


def new_budget(proxies: int) -> BudgetState:
    shape = (proxies, SLOTS)
    return BudgetState(
        ids=np.full(shape, NEVER, dtype=np.int64),
        requests=np.zeros(shape, dtype=np.int64),
        retries=np.zeros(shape, dtype=np.int64),
    )


@jit
def _slot(bs: BudgetState, p: int, now: float, window_s: float) -> int:
    s = math.floor(now / (window_s / SLOTS))
    r = s % SLOTS
    if bs.ids[p, r] != s:
        bs.ids[p, r] = s
        bs.requests[p, r] = 0
        bs.retries[p, r] = 0
    return int(r)


@jit
def count_request(bs: BudgetState, p: int, now: float, window_s: float) -> None:
    """`RetryBudget.request` of proxy p at `now`."""
    bs.requests[p, _slot(bs, p, now, window_s)] += 1


@jit
def try_retry(
    bs: BudgetState, p: int, now: float, budget: float, window_s: float, min_retries_per_s: float
) -> bool:
    """`RetryBudget.try_retry` of proxy p at `now`: True takes one retry from the budget."""
    r = _slot(bs, p, now, window_s)
    oldest = bs.ids[p, r] - SLOTS
    requests = 0
    retries = 0
    for k in range(SLOTS):
        if bs.ids[p, k] > oldest:
            requests += bs.requests[p, k]
            retries += bs.retries[p, k]
    if retries + 1 > budget * requests + min_retries_per_s * window_s:
        return False
    bs.retries[p, r] += 1
    return True
