"""`rl-lb scenario check`: the fitted world in the simulator, fed the recorded arrivals and run by
the recorded balancer, against the recording: per-backend p50/p99 and the pool's p99.

When the recording is sampled (1 in k requests), its arrivals are not all the traffic: the
fitted file's own arrival process (a rate profile scaled by k) is kept instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from envs.episode import run_episode
from lab.fit.recording import Recording
from lab.fit.world import backend_name
from rl_lb.balancers import make_balancer
from rl_lb.errors import ScenarioError
from rl_lb.scenarios import Arrivals, Scenario
from rl_lb.types import FloatArray

__all__ = ["Comparison", "recorded_balancer", "replay", "service_quantiles"]

_Z99 = 2.326347874040841
"""The standard normal's 0.99 quantile."""


@dataclass(frozen=True)
class Comparison:
    """Recorded and simulated latency quantiles (ms) of one backend, or of the pool ("pool")."""

    name: str
    recorded_requests: int
    simulated_requests: int
    recorded_p50_ms: float
    simulated_p50_ms: float
    recorded_p99_ms: float
    simulated_p99_ms: float

    @property
    def p99_error(self) -> float:
        """Relative error of the simulated p99 (NaN without requests on either side)."""
        if not self.recorded_p99_ms > 0 or math.isnan(self.simulated_p99_ms):
            return math.nan
        return self.simulated_p99_ms / self.recorded_p99_ms - 1


def service_quantiles(dist: str, mean: float, cv: float, shape: float) -> tuple[float, float]:
    """p50 and p99 of a service-time distribution of the simulator's (seconds)."""
    if dist == "constant":
        return mean, mean
    if dist == "exponential":
        return mean * math.log(2), -mean * math.log(0.01)
    if dist == "pareto":
        scale = mean * (shape - 1) / shape
        return scale * 0.5 ** (-1 / shape), scale * 0.01 ** (-1 / shape)
    sigma = math.sqrt(math.log(1 + cv * cv))
    mu = math.log(mean) - sigma * sigma / 2
    return math.exp(mu), math.exp(mu + _Z99 * sigma)


def recorded_balancer(recording: Recording) -> str:
    """The balancer that served most recorded intervals (least-latency when none was recorded)."""
    if not recording.balancers:
        return "least-latency"
    return Counter(recording.balancers).most_common(1)[0][0]


def _quantiles(latency: FloatArray) -> tuple[float, float]:
    if len(latency) == 0:
        return math.nan, math.nan
    p50, p99 = np.quantile(latency * 1e3, [0.5, 0.99])
    return float(p50), float(p99)


def _with_recorded_arrivals(scenario: Scenario, recording: Recording) -> Scenario:
    if recording.sample != 1:
        return scenario
    trace = tuple(float(t) for t in recording.arrival_s if t < scenario.duration_s)
    arrivals = Arrivals("trace", len(trace) / scenario.duration_s, trace=trace)
    return dataclasses.replace(scenario, arrivals=arrivals)


def replay(
    scenario: Scenario, recording: Recording, balancer: str, seed: int = 0, seeds: int = 3
) -> list[Comparison]:
    """Per-backend comparisons (in the scenario's order), then the pool's. The simulated
    quantiles are over the requests of `seeds` runs (seed, seed + 1, …): one recording is one
    draw of the real pool, and the simulator's own draw should not add to the difference."""
    try:
        make_balancer(balancer)
    except Exception as error:
        raise ScenarioError(
            "--balancer",
            f"the recorded balancer {balancer!r} cannot run here: {error}",
            "name one with --balancer",
        ) from None
    world = _with_recorded_arrivals(scenario, recording)
    results = [run_episode(world, balancer, seed + k) for k in range(seeds)]
    latency = np.concatenate([r.latency_s for r in results])
    backend = np.concatenate([r.backend for r in results])
    recorded_index = {backend_name(url): i for i, url in enumerate(recording.names)}
    rows = []
    for j, name in enumerate(results[0].backend_names):
        i = recorded_index.get(name)
        recorded = recording.latency_s[recording.of(i)] if i is not None else np.empty(0)
        rows.append(_row(name, recorded, latency[backend == j], seeds))
    rows.append(_row("pool", recording.latency_s, latency, seeds))
    return rows


def _row(name: str, recorded: FloatArray, simulated: FloatArray, seeds: int) -> Comparison:
    r50, r99 = _quantiles(recorded)
    s50, s99 = _quantiles(simulated)
    return Comparison(name, len(recorded), round(len(simulated) / seeds), r50, s50, r99, s99)
