"""Record an emulated pool through the proxy: the recipe of docs/sim2real.md "Learn your own
pool", as a function the tests and the docs' figures share.

The load steps up from `low` to `high` times the pool's capacity so that every backend's
in-flight count passes its concurrency for a while (what the fit needs to see the queue), then
comes back down.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lab.backends import EmulatedPool
from lab.loadgen import run_schedule
from rl_lb.control import ControlSpec
from rl_lb.scenarios import Scenario
from rl_lb.types import FloatArray
from serving.app import ProxyServer
from serving.config import ProxyConfig

__all__ = ["record_emulated", "slowed", "stepped_schedule"]


def slowed(scenario: Scenario, factor: float) -> Scenario:
    """The scenario with every service time `factor` times longer (capacity / factor), so that
    proxy, backends and load fit on a small machine without the proxy's CPU being the queue."""
    backends = tuple(
        dataclasses.replace(b, service=dataclasses.replace(b.service, mean_s=b.service.mean_s * factor))
        for b in scenario.backends
    )
    return dataclasses.replace(scenario, backends=backends)


def stepped_schedule(
    capacity_rps: float, duration_s: float, loads: tuple[float, ...], seed: int
) -> FloatArray:
    """Poisson arrivals whose rate steps through `loads` (fractions of capacity), equal spans."""
    rng = np.random.default_rng(seed)
    span = duration_s / len(loads)
    times: list[FloatArray] = []
    for k, load in enumerate(loads):
        rate = load * capacity_rps
        n = rng.poisson(rate * span)
        times.append(np.sort(rng.uniform(k * span, (k + 1) * span, n)))
    return np.concatenate(times)


async def record_emulated(
    scenario: Scenario,
    folder: Path,
    *,
    duration_s: float,
    loads: tuple[float, ...] = (0.3, 0.6, 0.9, 1.0, 0.5),
    balancer: str = "least-latency",
    seed: int = 0,
    **settings: object,
) -> int:
    """Run `scenario`'s backends behind a recording proxy under stepped load; requests sent."""
    schedule = stepped_schedule(scenario.capacity_rps, duration_s, loads, seed)
    async with EmulatedPool(scenario, seed=seed) as pool:
        config = ProxyConfig(
            backends=tuple(pool.urls),
            listen="127.0.0.1:0",
            admin=None,
            balancer=balancer,
            control_interval_s=scenario.control_interval_s,
            control=ControlSpec.from_flags({"health-interval": 1.0}),
            health_path=None,
            read_timeout_s=10.0,
            record=str(folder),
            **settings,  # type: ignore[arg-type]
        )
        proxy = ProxyServer(config)
        await proxy.start()
        try:
            await run_schedule(
                f"http://127.0.0.1:{proxy.port}/", schedule, duration=duration_s, timeout=10.0,
                connections=256,
            )
        finally:
            await proxy.stop()
    return len(schedule)
