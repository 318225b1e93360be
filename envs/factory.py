"""Scenarios built in code rather than read from a file: queueing-theory pools and test cases.

The queueing references (M/M/1, M/M/c, the supermarket model) need pools of up to 100 identical
servers with no timeouts, no queue limit and no trouble, which no file in the library describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rl_lb.control import ControlSpec
from rl_lb.scenarios import (
    Arrivals,
    BackendSpec,
    Event,
    MetricsSpec,
    Pauses,
    Scenario,
    ServiceDist,
)

__all__ = ["NEVER", "pool_scenario"]

NEVER = 1e12
"""A timeout (seconds) that never fires and a health-check period that never comes."""


def pool_scenario(
    n: int,
    *,
    load: float,
    duration_s: float,
    concurrency: int = 1,
    service: ServiceDist | None = None,
    timeout_s: float = NEVER,
    queue_limit: int = 1 << 40,
    events: Sequence[tuple[int, Event]] = (),
    pauses: Sequence[tuple[int, Pauses]] = (),
    metrics: MetricsSpec | None = None,
    control: ControlSpec | None = None,
    health_interval_s: float = NEVER,
    control_interval_s: float = 1.0,
    name: str = "pool",
) -> Scenario:
    """n identical backends offered Poisson traffic at `load` × capacity.

    `events` and `pauses` attach trouble to backends by index. Exponential service of mean 1 s
    by default (the time unit of docs/queueing.md). `control` holds the other shared settings
    (the proxy's defaults when None); the health-check period is always `health_interval_s`.
    """
    shared = control if control is not None else ControlSpec()
    dist = service if service is not None else ServiceDist("exponential", 1.0)
    backends = tuple(
        BackendSpec(
            name=f"b{i}",
            concurrency=concurrency,
            service=dist,
            queue_limit=queue_limit,
            timeout_s=timeout_s,
            events=tuple(e for j, e in events if j == i),
            pauses=next((p for j, p in pauses if j == i), None),
        )
        for i in range(n)
    )
    rate = load * sum(b.capacity_rps for b in backends)
    return Scenario(
        name=name,
        duration_s=duration_s,
        control_interval_s=control_interval_s,
        arrivals=Arrivals("poisson", rate),
        metrics=metrics if metrics is not None else MetricsSpec(),
        backends=backends,
        control=replace(shared, health=replace(shared.health, interval_s=health_interval_s)),
    )
