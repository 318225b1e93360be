"""Run a `Balancer` over one whole scenario episode: `run_episode` and `summarise`.

This is how every non-learning comparison is made (`rl-lb evaluate`, the trainer's periodic
evaluation): each proxy gets its own balancer, decides on its (possibly delayed) snapshot every
control interval, and its picker runs as the numba picker of the same name.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs import kernel
from envs.simulator import ControlLoop, Simulator
from rl_lb.balancers import Balancer, make_balancer
from rl_lb.scenarios import Scenario
from rl_lb.types import FloatArray, IntArray

__all__ = ["SUMMARY_KEYS", "EpisodeResult", "fallback_share_of", "run_episode", "summarise"]

SUMMARY_KEYS: tuple[str, ...] = (
    "requests",
    "errors",
    "mean_ms",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "effective_p99_ms",
    "fallback_share",
)


@dataclass(frozen=True, eq=False)
class EpisodeResult:
    """Every request of one episode (arrival order) and what proxy 0 decided each interval."""

    scenario: str
    balancer: str
    seed: int
    backend_names: tuple[str, ...]
    timeout_s: float
    """The scenario's timeout: what a failed request costs in the effective latency."""
    arrival_s: FloatArray
    proxy: IntArray
    backend: IntArray
    """Backend of the last attempt, -1 when none was available."""
    latency_s: FloatArray
    outcome: IntArray
    """Index into `OUTCOMES`: ok, error, timeout, rejected, no-backend."""
    retries: IntArray
    interval_start_s: FloatArray
    weights: FloatArray
    """(intervals, backends): the weights proxy 0 applied in each interval."""
    modes: tuple[str, ...]
    """Proxy 0's balancer mode each interval ("primary" or "fallback: reason")."""

    OUTCOMES = kernel.OUTCOMES

    @property
    def failed(self) -> np.ndarray:
        return np.asarray(self.outcome != kernel.OK)

    @property
    def effective_latency_s(self) -> FloatArray:
        """Latency with every failed request counted as the timeout."""
        return np.where(self.failed, self.timeout_s, self.latency_s)


def _balancers(balancer: Balancer | str, proxies: int, seed: int) -> list[Balancer]:
    """One balancer per proxy: built by name (seeded), or copies of the one given."""
    if isinstance(balancer, str):
        rng = random.Random(seed)
        return [
            make_balancer(balancer, rng=random.Random(rng.getrandbits(64))) for _ in range(proxies)
        ]
    return [balancer] + [copy.deepcopy(balancer) for _ in range(proxies - 1)]


def run_episode(scenario: Scenario, balancer: Balancer | str, seed: int) -> EpisodeResult:
    """Simulate `scenario` with `balancer` on every proxy, then let in-flight requests finish.

    A name builds one seeded balancer per proxy; an instance serves proxy 0 and deep copies
    serve the others (each proxy keeps its own history and picker state). Arrivals stop at
    duration_s; the run continues one timeout longer so every request has its outcome.
    """
    sim = Simulator(scenario, seed)
    loop = ControlLoop(sim)
    balancers = _balancers(balancer, sim.proxies, seed)
    for b in balancers:
        b.reset()
    starts, weights, modes = [], [], []
    while not loop.done:
        now = loop.time_of(loop.k)
        for p, (b, snapshot) in enumerate(zip(balancers, loop.visible(), strict=True)):
            decision = b.decide(snapshot, now)
            sim.set_decision(p, decision.weights, decision.picker.name)
            if p == 0:
                starts.append(now)
                weights.append(np.asarray(decision.weights, dtype=np.float64))
                modes.append(decision.mode + (f": {decision.reason}" if decision.reason else ""))
        loop.step()
    sim.run_until(scenario.duration_s + scenario.timeout_s + 1e-6)
    records = sim.records()
    return EpisodeResult(
        scenario=scenario.name,
        balancer=balancers[0].name,
        seed=seed,
        backend_names=sim.names,
        timeout_s=scenario.timeout_s,
        arrival_s=records.arrival_s,
        proxy=records.proxy,
        backend=records.backend,
        latency_s=records.latency_s,
        outcome=records.outcome,
        retries=records.retries,
        interval_start_s=np.array(starts),
        weights=np.array(weights),
        modes=tuple(modes),
    )


def summarise(result: EpisodeResult) -> dict[str, Any]:
    """The evaluation figures of one episode: exact quantiles over all its requests.

    Latencies are what clients waited (a failure at its real latency); `effective_p99_ms`
    counts every failure as the timeout. NaN figures when the episode had no request.
    `fallback_share` is the share of intervals proxy 0 served by a guarded balancer's fallback.
    """
    n = len(result.latency_s)
    fallback_share = fallback_share_of(result)
    if n == 0:
        nan = float("nan")
        return dict.fromkeys(SUMMARY_KEYS, nan) | {
            "requests": 0,
            "errors": 0,
            "fallback_share": fallback_share,
        }
    ms = result.latency_s * 1e3
    p50, p99, p999 = np.quantile(ms, [0.5, 0.99, 0.999])
    return {
        "requests": n,
        "errors": int(result.failed.sum()),
        "mean_ms": float(ms.mean()),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "p999_ms": float(p999),
        "effective_p99_ms": float(np.quantile(result.effective_latency_s * 1e3, 0.99)),
        "fallback_share": fallback_share,
    }


def fallback_share_of(result: EpisodeResult) -> float:
    """Share of the control intervals proxy 0 spent on its fallback (any reason); NaN if none."""
    if not result.modes:
        return float("nan")
    return sum(mode.startswith("fallback") for mode in result.modes) / len(result.modes)
