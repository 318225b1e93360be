"""Slow start (Envoy's definition): a backend that joins or returns ramps up to its full weight.

A backend back from an ejection or from unhealthy, or newly added, often cannot take its full
share at once (cold caches, a JIT, a connection pool to refill), and a pool that sends it its full
share the instant it returns can knock it straight back out. So for `window_s` seconds after its
return its weight is multiplied by

    max(min_weight_percent / 100, time_factor ** (1 / aggression)),
    time_factor = max(t, 1) / window_s,

t being the seconds since it returned (Envoy's `slow_start_config`, same names and defaults). The
scaled weights are renormalised to the same total, so only the ramping backends' shares change.

Weights are scaled where they reach the picker, once per control decision, with the time of that
decision: the proxy's controller and the simulator's `set_decision` both call `scale` (but for the
pickers in `RAMPS_ITSELF`). A backend that returns between two decisions is not lost by this:
every weight policy gives an unavailable backend weight 0, so it gets no traffic until the next
decision, which already ramps it. The backends a proxy starts with (and the simulator's pool at
t = 0) are not in slow start: with everyone ramping together nobody's share would change.

This is the reference: the simulator's numba twin (`envs/nb_slow_start.py`) follows it, and
tests/test_slow_start.py feeds both the same returns and decisions and compares every weight.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from rl_lb.control import SlowStartSettings
from rl_lb.types import FloatArray

__all__ = ["NOT_RAMPING", "RAMPS_ITSELF", "SlowStart", "weight_factor"]

NOT_RAMPING = -math.inf
"""The return time of a backend that is not in slow start (t = inf is past every window)."""
RAMPS_ITSELF = frozenset({"prequal"})
"""Pickers whose weights are not scaled: Prequal ramps a returning backend by its probes (it is
chosen only while it answers cold and fast), and since its unequal weights steer the probes, a
scaled weight would add a second ramp the published algorithm does not have."""


def weight_factor(elapsed_s: float, settings: SlowStartSettings) -> float:
    """What a backend's weight is multiplied by `elapsed_s` seconds after it returned."""
    window = settings.window_s
    if window <= 0.0 or elapsed_s >= window:
        return 1.0
    time_factor = max(elapsed_s, 1.0) / window
    return max(
        settings.min_weight_percent / 100.0, math.pow(time_factor, 1.0 / settings.aggression)
    )


class SlowStart:
    """When each backend of one pool returned, and the weights that follow from it.

    Indices follow the pool's (`add_backend` appends, `remove_backend` shifts the later ones
    down), as in `rl_lb.metrics.PoolMetrics` and `rl_lb.health`.
    """

    def __init__(self, n: int, settings: SlowStartSettings | None = None) -> None:
        self.settings = settings if settings is not None else SlowStartSettings()
        self.since: list[float] = [NOT_RAMPING] * n
        """Time each backend returned (or was added); NOT_RAMPING for the initial pool."""

    def on_return(self, i: int, now: float) -> None:
        """Backend i is back in rotation (or just joined) at `now`: its ramp starts."""
        if self.settings.window_s > 0.0:
            self.since[i] = now

    def add_backend(self, now: float | None) -> int:
        """Track one more backend; ramping from `now`, or not at all (None: the initial pool)."""
        self.since.append(NOT_RAMPING)
        i = len(self.since) - 1
        if now is not None:
            self.on_return(i, now)
        return i

    def remove_backend(self, i: int) -> None:
        del self.since[i]

    def factor(self, i: int, now: float) -> float:
        return weight_factor(now - self.since[i], self.settings)

    def ramping(self, now: float) -> list[bool]:
        """Which backends are in slow start at `now`."""
        return [self.factor(i, now) < 1.0 for i in range(len(self.since))]

    def scale(self, weights: npt.ArrayLike, now: float) -> FloatArray:
        """`weights` with every ramping backend's scaled down, renormalised to the same total.

        Returns the very same array when no backend is ramping (or the weights are all 0), so a
        caller can tell whether anything changed with `is`.
        """
        given = np.asarray(weights, dtype=np.float64)
        if len(given) != len(self.since):
            return given  # weights for another pool (a backend came or went since the decision)
        factors = [self.factor(i, now) for i in range(len(given))]
        if min(factors, default=1.0) >= 1.0:
            return given
        before = 0.0
        after = 0.0
        scaled = [0.0] * len(factors)
        for i, f in enumerate(factors):
            w = float(given[i])
            before += w
            scaled[i] = w * f
            after += scaled[i]
        if after <= 0.0:
            return given
        ratio = before / after
        return np.array([w * ratio for w in scaled], dtype=np.float64)
