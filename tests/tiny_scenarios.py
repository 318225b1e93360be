"""A three-backend pool a few simulated seconds long, one backend slowed throughout: episodes of
it run in milliseconds, so evaluation tests can afford many of them."""

from __future__ import annotations

from envs.factory import pool_scenario
from rl_lb.scenarios import Event, Scenario, ServiceDist


def tiny(name: str = "tiny", slowdown: float = 3.0, duration_s: float = 3.0) -> Scenario:
    """`name`'s pool: backend 0 `slowdown` times slower for the whole `duration_s`."""
    return pool_scenario(
        3,
        load=0.5,
        duration_s=duration_s,
        service=ServiceDist("exponential", 0.01),
        timeout_s=0.5,
        events=[(0, Event(0.0, duration_s, slowdown=slowdown))],
        name=name,
    )
