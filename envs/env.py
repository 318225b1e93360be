"""`BackendPoolEnv`: the simulator as a Gymnasium environment, one step per control interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs import ENV_ID, kernel
from envs.simulator import ControlLoop, Simulator
from rl_lb.errors import ScenarioError
from rl_lb.features import ArraySpec, FeatureEncoder
from rl_lb.policies.learned import DEFAULT_PICKER
from rl_lb.scenarios import Scenario, ScenarioFamily, load_scenario, time_scaled
from rl_lb.types import PoolSnapshot

__all__ = [
    "DEFAULT_SLOTS",
    "ENV_ID",
    "BackendPoolEnv",
    "box",
    "interval_reward",
    "policy_spaces",
    "pool_slots",
]

ERROR_WEIGHT = 10.0
"""Default reward cost of an interval where every request failed, on top of its latency terms."""

DEFAULT_SLOTS = 16
"""Rows of a policy's spaces built outside an environment (tests, tools): the small library's
largest pool. An environment pads to the largest pool of its own scenarios instead."""

ScenarioSource = str | Path | Scenario | ScenarioFamily


def _family(source: ScenarioSource) -> Scenario | ScenarioFamily:
    return source if isinstance(source, Scenario | ScenarioFamily) else load_scenario(source)


def pool_slots(families: Sequence[Scenario | ScenarioFamily]) -> int:
    """The largest pool any of `families` can draw: the rows every observation is padded to,
    so that one run mixes pools of 2 and 64 backends under one fixed SB3 space."""
    return max(len(f.backends) if isinstance(f, Scenario) else f.max_backends for f in families)


def box(spec: ArraySpec) -> spaces.Box:
    """The Gymnasium space of an array the encoder describes (the core itself has no Gymnasium)."""
    return spaces.Box(low=spec.low, high=spec.high, shape=spec.shape, dtype=spec.dtype)


def policy_spaces(
    encoder: FeatureEncoder, slots: int = DEFAULT_SLOTS
) -> tuple[spaces.Box, spaces.Box]:
    """(observation space, action space) of a policy fed by `encoder` with observations padded
    to `slots` rows: what the environments declare and what an SB3 policy is built with."""
    return box(encoder.observation_spec(slots)), box(encoder.action_spec(slots))


def interval_reward(
    effective_p99_s: float,
    mean_s: float,
    error_rate: float,
    ideal_s: float,
    error_weight: float = ERROR_WEIGHT,
) -> float:
    """-(log(effective p99 / ideal) + log(mean / ideal) + error_weight × error rate).

    Ratios are floored at 1 so the reward is at most 0; see `BackendPoolEnv` for why.
    """
    tail = math.log(max(effective_p99_s, ideal_s) / ideal_s)
    body = math.log(max(mean_s, ideal_s) / ideal_s)
    return -(tail + body + error_weight * error_rate)


class BackendPoolEnv(gym.Env[np.ndarray, np.ndarray]):
    """Set the traffic weights of a simulated backend pool, one control interval at a time.

    Each episode draws one scenario (uniformly from the files given, with the file's own
    randomisation) and runs it for `duration_s`; the episode is truncated there. Every proxy of
    the scenario applies the same weights with the same picker (`picker`, "p2c" by default);
    each keeps its own health view, so an ejected backend is skipped whatever its weight.

    ## Action Space
    `Box(-1, 1, (slots,), float32)`: one score per backend slot. `FeatureEncoder.decode`
    turns them into weights (a softmax over live backends; absent and dead slots get 0).
    `slots` is the largest pool the scenarios can draw (`pool_slots`) unless given, so one
    environment may mix pools of 2 and 200 backends; every environment of a vectorised run
    gets the same scenarios, hence the same spaces.

    ## Observation Space
    `box(FeatureEncoder(history).observation_spec(slots))`: `Box(-10, 10, (slots, n_features))`,
    the encoding of proxy 0's snapshot — taken `metrics.delay_s` before the decision — with the
    snapshots of the previous steps as history, padded with zero rows past the pool. Column 0 is
    the present mask.

    ## Rewards
    Over the requests resolved during the interval, with failed requests (error, timeout,
    rejected, no backend) counted at the scenario's timeout in the effective latency:

        r = -(log(effective p99 / ideal) + log(mean latency / ideal) + error_weight × error rate)

    where ideal is `scenario.ideal_latency_s`, so pools of 10 ms and 200 ms backends weigh
    alike. Tail latency comes first, but the effective p99 alone is a cliff: past 1% failures it
    equals the timeout whatever else changes. The mean (real latencies) keeps the gradient
    informative there and the error rate makes fewer failures better even when both latencies
    are pinned; below 1% failures the interval's p99 does not see them at all, while an
    episode's p99 does (each failure pushes it further into the tail), so `error_weight`
    (default 10) prices them. Each ratio is floored at 1, so r <= 0; an interval with no
    resolved request scores 0.

    `load_scale=(low, high)` multiplies every arrival rate of an episode by a factor drawn
    uniformly from that range, so that a policy trained at a scenario's load has also seen the
    same pool lighter (a real service is not always at its peak).

    `info` holds the interval's `requests`, `errors`, `p50_ms`, `p99_ms`, `effective_p99_ms`,
    `mean_ms`, the applied `weights` and the `scenario` name.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (Gymnasium's class attribute)

    def __init__(
        self,
        scenario: ScenarioSource | Sequence[ScenarioSource],
        *,
        picker: str = DEFAULT_PICKER,
        history: int = 4,
        load_scale: tuple[float, float] = (1.0, 1.0),
        error_weight: float = ERROR_WEIGHT,
        slots: int | None = None,
    ) -> None:
        low, high = (float(x) for x in load_scale)
        if not (0 < low <= high and math.isfinite(high)):
            raise ScenarioError("load_scale", f"{load_scale!r}", "use (low, high), 0 < low <= high")
        if not (error_weight >= 0 and math.isfinite(error_weight)):
            raise ScenarioError("error_weight", f"{error_weight!r}", "use a number >= 0")
        self.load_scale = (low, high)
        self.error_weight = float(error_weight)
        sources = (
            [scenario]
            if isinstance(scenario, str | Path | Scenario | ScenarioFamily)
            else list(scenario)
        )
        if not sources:
            raise ScenarioError("scenario", "no scenario given", "pass a file, a name or a list")
        self.families = [_family(s) for s in sources]
        largest = pool_slots(self.families)
        if slots is not None and slots < largest:
            raise ScenarioError(
                "slots",
                f"{slots} slots, but the scenarios draw pools of up to {largest} backends",
                f"use slots >= {largest} or leave it unset",
            )
        self.slots = largest if slots is None else int(slots)
        self.picker = picker
        self.encoder = FeatureEncoder(history)
        self.observation_space, self.action_space = policy_spaces(self.encoder, self.slots)
        self.scenario: Scenario | None = None
        self._sim: Simulator | None = None
        self._loop: ControlLoop | None = None
        self._history: list[PoolSnapshot] = []

    def _observe(self) -> np.ndarray:
        snapshot, past = self._observation_inputs()
        return self.encoder.encode(snapshot, past, slots=self.slots)

    def _observation_inputs(self) -> tuple[PoolSnapshot, list[PoolSnapshot]]:
        """What the observation encodes: proxy 0's visible snapshot and the last history - 1
        decided on (apart so that `BatchedVecEnv` encodes K environments' at once)."""
        assert self._loop is not None
        snapshot = self._loop.visible()[0]
        past = self._history[len(self._history) - (self.encoder.history - 1) :]
        return snapshot, past if self.encoder.history > 1 else []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        family = self.families[int(self.np_random.integers(len(self.families)))]
        scenario = family if isinstance(family, Scenario) else family.sample(self.np_random)
        low, high = self.load_scale
        if high > low or low != 1.0:
            scenario = time_scaled(scenario, 1.0, float(self.np_random.uniform(low, high)))
        self.scenario = scenario
        self._sim = Simulator(scenario, int(self.np_random.integers(2**63)))
        self._loop = ControlLoop(self._sim)
        self._history = []
        return self._observe(), {"scenario": scenario.name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._loop is None or self._sim is None or self.scenario is None:
            raise RuntimeError("call reset() before step()")
        if self._loop.done:
            raise RuntimeError("the episode is over: call reset()")
        sim, loop = self._sim, self._loop
        snapshot = loop.visible()[0]
        weights = self.encoder.decode(np.asarray(action), snapshot)
        for p in range(sim.proxies):
            sim.set_decision(p, weights, self.picker)
        first, last = loop.step()
        self._history.append(snapshot)
        reward, info = self._score(sim.resolved(first, last))
        info["weights"] = weights
        return self._observe(), reward, False, loop.done, info

    def _score(self, ids: np.ndarray) -> tuple[float, dict[str, Any]]:
        assert self._sim is not None
        st = self._sim.state
        failed = st.r_outcome[ids] != kernel.OK
        stats = self._latency_stats(st.r_latency[ids], failed)
        return self._reward_and_info(len(ids), int(failed.sum()), stats)

    def _latency_stats(
        self, latency: np.ndarray, failed: np.ndarray
    ) -> tuple[float, float, float, float] | None:
        """(p50, p99, effective p99, mean) of an interval's latencies (None without any): the
        figures the reward reads, apart so that `BatchedVecEnv` computes them for K pools."""
        assert self.scenario is not None
        if len(latency) == 0:
            return None
        effective = np.where(failed, self.scenario.timeout_s, latency)
        p50, p99 = np.quantile(latency, [0.5, 0.99])
        return float(p50), float(p99), float(np.quantile(effective, 0.99)), float(latency.mean())

    def _reward_and_info(
        self, requests: int, errors: int, stats: tuple[float, float, float, float] | None
    ) -> tuple[float, dict[str, Any]]:
        assert self.scenario is not None
        info: dict[str, Any] = {
            "scenario": self.scenario.name,
            "requests": requests,
            "errors": errors,
        }
        if stats is None:
            info.update(
                dict.fromkeys(("p50_ms", "p99_ms", "effective_p99_ms", "mean_ms"), math.nan)
            )
            return 0.0, info
        p50, p99, effective_p99, mean = stats
        info.update(
            p50_ms=p50 * 1e3,
            p99_ms=p99 * 1e3,
            effective_p99_ms=effective_p99 * 1e3,
            mean_ms=mean * 1e3,
        )
        reward = interval_reward(
            effective_p99, mean, errors / requests, self.scenario.ideal_latency_s, self.error_weight
        )
        return reward, info
