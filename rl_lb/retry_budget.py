"""The retry budget of Linkerd and Finagle: retries may add a share of the recent requests.

Retries multiply the load exactly when backends are failing, so they are bounded per proxy, not
per request: over a sliding window of `budget_window_s`, a retry is allowed while

    retries + 1 <= budget × requests + min_retries_per_s × budget_window_s

The floor (the second term) keeps a quiet proxy able to retry at all: a proxy serving 5 requests
per second must still get past one dead backend. The window is `SLOTS` sub-windows; a sub-window
starts empty when the clock reaches it again, so counts leave the window one sub-window at a time.

This is THE rule: the proxy runs this class; the simulator's numba twin
(`envs/nb_retry_budget.py`) imports `SLOTS` and `NEVER` from here and follows it step for step, and
`tests/test_sim_retry_budget.py` feeds both the same timeline and asserts the same decisions.
"""

from __future__ import annotations

import math

from rl_lb.control import RetrySettings
from rl_lb.types import Clock

__all__ = ["NEVER", "SLOTS", "RetryBudget"]

SLOTS = 10
"""Sub-windows of the budget's window (Finagle's default granularity, 1 s of a 10 s window)."""
NEVER = -(2**62)
"""Sub-window id of a slot that was never used: outside every window."""


class RetryBudget:
    """One proxy's budget; `request` on every request, `try_retry` before every retry.

    Times from `clock` must not decrease (a monotonic clock, or simulated time).
    """

    def __init__(self, settings: RetrySettings, clock: Clock) -> None:
        self.settings = settings
        self._clock = clock
        self.slot_s = settings.budget_window_s / SLOTS
        self.floor = settings.min_retries_per_s * settings.budget_window_s
        """Retries per window allowed whatever the traffic."""
        self._ids = [NEVER] * SLOTS
        """Absolute sub-window index held by each slot."""
        self._requests = [0] * SLOTS
        self._retries = [0] * SLOTS

    def _slot(self, now: float) -> int:
        """The slot of the sub-window holding `now`, emptied if it held an older one."""
        s = math.floor(now / self.slot_s)
        r = s % SLOTS
        if self._ids[r] != s:
            self._ids[r] = s
            self._requests[r] = 0
            self._retries[r] = 0
        return r

    def request(self) -> None:
        """Count one request (retries are not requests)."""
        self._requests[self._slot(self._clock())] += 1

    def try_retry(self) -> bool:
        """Take one retry from the budget if there is room; False leaves the budget unchanged."""
        r = self._slot(self._clock())
        oldest = self._ids[r] - SLOTS
        requests = 0
        retries = 0
        for k in range(SLOTS):
            if self._ids[k] > oldest:
                requests += self._requests[k]
                retries += self._retries[k]
        if retries + 1 > self.settings.budget * requests + self.floor:
            return False
        self._retries[r] += 1
        return True
