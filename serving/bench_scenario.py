"""The one scenario both sides of a sim-to-real comparison run: compressed in time, scaled in rate.

A 120 s scenario run live takes 120 s per balancer and seed; `time_scaled` compresses its timeline
by `factor` (event windows, rate steps, MMPP dwell times, the control interval, the metrics delay
and the health-check period) so it fits in `factor × duration_s` real seconds, and multiplies every
arrival rate by `rate_scale` so that proxy, backends and load generator fit on the machine. The
result is an ordinary `Scenario`: the simulator and the emulated backends are handed the very same
object, so whatever the scaling changes, it changes for both.

What is deliberately left alone, because it is a property of the hardware rather than of the
timeline: service times, timeouts, error latencies and GC pause durations and periods (compressing
the period would raise the fraction of time paused, i.e. cut capacity). The metrics window and
EWMA time constant also stay: the proxy's trackers have them fixed (10 s), and a simulator with
shorter ones would disagree with the proxy by construction.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from rl_lb.errors import ConfigError
from rl_lb.scenarios import Arrivals, RateStep, Scenario
from rl_lb.types import FloatArray

__all__ = ["arrival_schedule", "time_scaled"]


def _arrivals(a: Arrivals, factor: float, rate_scale: float) -> Arrivals:
    if a.process == "trace":
        if factor != 1.0 or rate_scale != 1.0:
            raise ConfigError(
                "--time-scale/--rate-scale",
                "a trace of arrival times cannot be compressed or thinned",
                "run trace scenarios at their own duration and rate",
            )
        return a
    return replace(
        a,
        rate=a.rate * rate_scale,
        profile=tuple(RateStep(s.at_s * factor, s.rate * rate_scale) for s in a.profile),
        mmpp_rates=tuple(r * rate_scale for r in a.mmpp_rates),
        mmpp_dwell_s=tuple(d * factor for d in a.mmpp_dwell_s),
    )


def time_scaled(scenario: Scenario, factor: float, rate_scale: float = 1.0) -> Scenario:
    """`scenario` with a timeline `factor` times as long and `rate_scale` times the traffic."""
    for flag, value in (("--time-scale", factor), ("--rate-scale", rate_scale)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(flag, f"{value:g} is not a positive number")
    backends = tuple(
        replace(
            b,
            events=tuple(
                replace(e, at_s=e.at_s * factor, until_s=e.until_s * factor) for e in b.events
            ),
        )
        for b in scenario.backends
    )
    return replace(
        scenario,
        duration_s=scenario.duration_s * factor,
        control_interval_s=scenario.control_interval_s * factor,
        arrivals=_arrivals(scenario.arrivals, factor, rate_scale),
        metrics=replace(
            scenario.metrics,
            delay_s=scenario.metrics.delay_s * factor,
            picker_refresh_s=scenario.metrics.picker_refresh_s * factor,
        ),
        health=replace(scenario.health, interval_s=scenario.health.interval_s * factor),
        backends=backends,
    )


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
