"""The arrival schedule a live run's load generator follows: the simulator's law, its own draw.

`time_scaled` (in `rl_lb.scenarios.scaling`) makes the one scenario object both sides of a
sim-to-real comparison run; this module turns it into send times.
"""

from __future__ import annotations

import numpy as np

from rl_lb.scenarios import Arrivals, Scenario
from rl_lb.types import FloatArray

__all__ = ["arrival_schedule"]


def _segments(
    a: Arrivals, duration: float, rng: np.random.Generator
) -> list[tuple[float, float, float]]:
    """(start, end, rate) pieces of a piecewise-constant arrival rate over [0, duration)."""
    if a.process == "mmpp":
        dwell = np.asarray(a.mmpp_dwell_s, dtype=np.float64)
        phase = int(rng.choice(len(dwell), p=dwell / dwell.sum()))
        pieces, t = [], 0.0
        while t < duration:
            end = min(t + float(rng.exponential(dwell[phase])), duration)
            pieces.append((t, end, a.mmpp_rates[phase]))
            t, phase = end, (phase + 1) % len(dwell)
        return pieces
    bounds, rates = [0.0], [a.rate]
    for step in sorted(a.profile, key=lambda s: s.at_s):
        if step.at_s <= 0.0:
            rates[0] = step.rate
        elif step.at_s < duration:
            bounds.append(step.at_s)
            rates.append(step.rate)
    bounds.append(duration)
    return [(bounds[i], bounds[i + 1], rates[i]) for i in range(len(rates))]


def arrival_schedule(scenario: Scenario, seed: int) -> FloatArray:
    """Send times (s from second 0) of a Poisson stream following the scenario's rate over time.

    The same law as the simulator's arrivals (Poisson at the rate profile, or the MMPP phases, or
    the trace itself); the draw is the load generator's own, so the live run and the simulator
    share the law, not the sample.
    """
    a = scenario.arrivals
    if a.process == "trace":
        return np.asarray(sorted(a.trace), dtype=np.float64)
    rng = np.random.default_rng(seed)
    times: list[FloatArray] = []
    for start, end, rate in _segments(a, scenario.duration_s, rng):
        if rate <= 0 or end <= start:
            continue
        count = int(rng.poisson(rate * (end - start)))
        times.append(np.sort(rng.uniform(start, end, size=count)))
    return np.concatenate(times) if times else np.zeros(0)
