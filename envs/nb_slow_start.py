"""Numba twin of `rl_lb.slow_start` (`weight_factor`, `SlowStart`), one row per proxy.

The simulator ramps a returning backend exactly as the proxy does, or a policy trained here would
meet another pool's shares behind the proxy. `State.ramp_since[p, b]` is `SlowStart.since` of
proxy p (`NOT_RAMPING`, imported from the reference, for the initial pool); the settings come
from the `Spec`, built from the same `rl_lb.control.SlowStartSettings` the proxy reads.
tests/test_slow_start.py feeds both the same returns and decisions and compares every factor and
weight, bit for bit.
"""

from __future__ import annotations

import math

from envs.jit import jit
from rl_lb.slow_start import NOT_RAMPING
from rl_lb.types import FloatArray

__all__ = ["NOT_RAMPING", "TWIN_OF", "factor", "on_return", "scale"]

TWIN_OF = "rl_lb.slow_start"


@jit
def factor(elapsed_s: float, window_s: float, aggression: float, min_percent: float) -> float:
    """`weight_factor`: the weight multiplier `elapsed_s` seconds after a return."""
    if window_s <= 0.0 or elapsed_s >= window_s:
        return 1.0
    time_factor = max(elapsed_s, 1.0) / window_s
    ramp = math.pow(time_factor, 1.0 / aggression)
    return max(min_percent / 100.0, ramp)


@jit
def on_return(since: FloatArray, p: int, b: int, now: float, window_s: float) -> None:
    """`SlowStart.on_return`: proxy p's ramp of backend b starts at `now`."""
    if window_s > 0.0:
        since[p, b] = now


@jit
def scale(
    weights: FloatArray,
    since: FloatArray,
    now: float,
    window_s: float,
    aggression: float,
    min_percent: float,
) -> bool:
    """`SlowStart.scale`, in place on one proxy's row; False (untouched) when nobody ramps."""
    n = weights.shape[0]
    lowest = 1.0
    for b in range(n):
        lowest = min(lowest, factor(now - since[b], window_s, aggression, min_percent))
    if lowest >= 1.0:
        return False
    before = 0.0
    after = 0.0
    for b in range(n):
        before += weights[b]
        after += weights[b] * factor(now - since[b], window_s, aggression, min_percent)
    if after <= 0.0:
        return False
    ratio = before / after
    for b in range(n):
        weights[b] = weights[b] * factor(now - since[b], window_s, aggression, min_percent) * ratio
    return True
