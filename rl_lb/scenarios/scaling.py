"""A scenario compressed in time and scaled in rate: the same pool under a shorter or lighter run.

A 120 s scenario run live takes 120 s per balancer and seed; `time_scaled` compresses its timeline
by `factor` (event windows, rate steps, MMPP dwell times, the control interval, the metrics delay,
window and EWMA time constant, the health-check period and the outcome guard's holds) so it fits in
`factor × duration_s` real seconds, and multiplies every arrival rate by `rate_scale` so that proxy,
backends and load generator fit on the machine. The result is an ordinary `Scenario`: the simulator
and the emulated backends are handed the very same object (and the proxy its control settings), so
whatever the scaling changes, it changes for both. The metrics' memory is compressed with the
timeline because a policy trained on a 10 s window and 1 s intervals would otherwise see, in a 6x
compressed run, each trouble window through a memory as long as half the run, and react 6x too late.

The health-check period is compressed too, but not below the shortest the proxy accepts.
What is deliberately left alone, because it is a property of the hardware rather than of the
timeline: service times, timeouts, error latencies and GC pause durations and periods (compressing
the period would raise the fraction of time paused, i.e. cut capacity).
"""

from __future__ import annotations

import math
from dataclasses import replace

from rl_lb.control import HealthSettings, section_settings
from rl_lb.errors import ConfigError
from rl_lb.scenarios.schema import Arrivals, RateStep, Scenario

__all__ = ["time_scaled"]

_SHORTEST_HEALTH_INTERVAL_S = next(
    info.minimum for f, info in section_settings(HealthSettings) if f.name == "interval_s"
)
"""The proxy's shortest health-check period: a timeline compressed further keeps this one."""


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
    control = scenario.control
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
        control=replace(
            control,
            metrics=replace(
                control.metrics,
                window_s=control.metrics.window_s * factor,
                ewma_tau_s=control.metrics.ewma_tau_s * factor,
            ),
            health=replace(
                control.health,
                interval_s=max(control.health.interval_s * factor, _SHORTEST_HEALTH_INTERVAL_S),
            ),
            # The guard's holds count in control intervals, as its evidence does: a 30 s hold
            # left uncompressed outlasted a whole 20 s live run after one trip.
            outcome_guard=replace(
                control.outcome_guard,
                backoff_s=control.outcome_guard.backoff_s * factor,
                max_backoff_s=control.outcome_guard.max_backoff_s * factor,
            ),
        ),
        backends=backends,
    )
