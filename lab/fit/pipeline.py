"""Record an emulated pool through the proxy: the recipe of docs/sim2real.md "Learn your own
pool", as a function the tests and the docs' figures share.

The load steps up from `low` to `high` times the pool's capacity so that every backend's
in-flight count passes its concurrency for a while (what the fit needs to see the queue), then
comes back down.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil  # type: ignore[import-untyped]  # no type information shipped

from lab.backends import EmulatedPool
from lab.bench_proxy import free_port, running_proxies
from lab.load_result import LoadResult
from lab.loadgen import run_schedule
from rl_lb.scenarios import Scenario
from rl_lb.types import FloatArray

__all__ = [
    "STEPPED_LOADS",
    "RecordedRun",
    "record_emulated",
    "record_pool",
    "slowed",
    "stepped_schedule",
]

STEPPED_LOADS = (0.3, 0.6, 0.9, 1.0, 0.5)
"""The recipe's load steps (fractions of capacity, equal spans): up to the pool's capacity,
where every backend's queue forms for a while, then down again."""


def slowed(scenario: Scenario, factor: float) -> Scenario:
    """The scenario with every service time `factor` times longer (capacity / factor), so that
    proxy, backends and load fit on a small machine without the proxy's CPU being the queue."""
    backends = tuple(
        dataclasses.replace(
            b, service=dataclasses.replace(b.service, mean_s=b.service.mean_s * factor)
        )
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


@dataclass(frozen=True)
class RecordedRun:
    sent: int
    urls: list[str]
    """The backends' URLs, in the scenario's order."""
    proxy_cpu_s: float
    """CPU time (user + system) of the proxy process while the load ran (start-up excluded)."""
    load: LoadResult
    """What the load generator measured."""


async def record_pool(
    urls: list[str],
    capacity_rps: float,
    folder: Path,
    *,
    duration_s: float,
    path: str = "/",
    loads: tuple[float, ...] = STEPPED_LOADS,
    balancer: str = "least-latency",
    control_interval_s: float = 1.0,
    seed: int = 0,
    record: bool = True,
    extra_flags: tuple[str, ...] = (),
) -> RecordedRun:
    """Put `rl-lb serve --record folder` (its own process, as in production) in front of the
    backends at `urls` and send it the stepped load (fractions of `capacity_rps`) for `path`.
    `record=False` runs the same without recording (to measure what recording costs)."""
    schedule = stepped_schedule(capacity_rps, duration_s, loads, seed)
    proxy_flags = [
        "--balancer", balancer,
        "--control-interval", repr(control_interval_s),
        "--health-path", "",
        "--read-timeout", "30",
        "--shutdown-timeout", "5",
        "--log-level", "warning",
        *(("--record", str(folder)) if record else ()),
        *extra_flags,
    ]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    async with running_proxies(urls, proxy_flags, folder.parent, [free_port()]) as proxies:
        process = psutil.Process(proxies[0].process.pid)
        before = process.cpu_times()
        target = proxies[0].url.rstrip("/") + path
        load = await run_schedule(
            target, schedule, duration=duration_s, timeout=30.0, connections=512
        )
        after = process.cpu_times()
        proxies[0].stop()  # SIGTERM: the recorder writes what is left and closes its files
    cpu = after.user + after.system - before.user - before.system
    return RecordedRun(len(schedule), list(urls), cpu, load)


async def record_emulated(
    scenario: Scenario,
    folder: Path,
    *,
    duration_s: float,
    loads: tuple[float, ...] = STEPPED_LOADS,
    balancer: str = "least-latency",
    seed: int = 0,
    record: bool = True,
) -> RecordedRun:
    """`record_pool` in front of `scenario`'s emulated backends (they and the load share this
    process; the URLs come back in the scenario's order)."""
    async with EmulatedPool(scenario, seed=seed) as pool:
        return await record_pool(
            pool.urls,
            scenario.capacity_rps,
            folder,
            duration_s=duration_s,
            loads=loads,
            balancer=balancer,
            control_interval_s=scenario.control_interval_s,
            seed=seed,
            record=record,
        )
