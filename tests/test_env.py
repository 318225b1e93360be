"""`BackendPoolEnv`: registration, both environment checkers, determinism, reward and info."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.env import BackendPoolEnv, interval_reward, pool_slots
from envs.factory import pool_scenario
from rl_lb.errors import ScenarioError
from rl_lb.scenarios import Event, Scenario, ServiceDist, library_scenarios, load_scenario

LIBRARY = {p.stem: p for p in library_scenarios()}
INFO_KEYS = {
    "scenario",
    "requests",
    "errors",
    "p50_ms",
    "p99_ms",
    "effective_p99_ms",
    "mean_ms",
    "weights",
}


def slow_scenario() -> Scenario:
    return pool_scenario(
        4,
        load=0.6,
        duration_s=8.0,
        concurrency=2,
        service=ServiceDist("exponential", 0.01),
        timeout_s=0.5,
        events=[(1, Event(0.0, 8.0, slowdown=8.0))],
        health_interval_s=1.0,
    )


def small_env(**kwargs: object) -> BackendPoolEnv:
    return BackendPoolEnv(slow_scenario(), **kwargs)  # type: ignore[arg-type]


def test_registered_and_made_from_files() -> None:
    env = gym.make(envs.ENV_ID, scenario=[str(LIBRARY["slow-backend"]), "fast-failure"])
    obs, info = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape
    assert info["scenario"] in {"slow-backend", "fast-failure"}
    env.close()


def test_gymnasium_checker() -> None:
    env = gym.make(envs.ENV_ID, scenario=slow_scenario())
    check_env(env.unwrapped)


def test_stable_baselines3_checker() -> None:
    with warnings.catch_warnings():
        # the (backends, features) layout is the feature encoder's, by design
        warnings.filterwarnings("ignore", message=".*unconventional shape.*", category=UserWarning)
        sb3_check_env(small_env())


def test_deterministic_for_a_seed_and_truncates_at_duration() -> None:
    def episode(seed: int) -> tuple[list[float], int]:
        env = small_env()
        env.reset(seed=seed)
        env.action_space.seed(seed)
        rewards, steps, truncated = [], 0, False
        while not truncated:
            _, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert not terminated
            assert set(info) == INFO_KEYS
            rewards.append(reward)
            steps += 1
        return rewards, steps

    a, b, c = episode(1), episode(1), episode(2)
    assert a == b
    assert a != c
    assert a[1] == 8


def test_reward_prefers_keeping_traffic_off_the_slow_backend() -> None:
    def total(scores: np.ndarray) -> float:
        env = small_env()
        env.reset(seed=0)
        rewards = [env.step(scores)[1] for _ in range(8)]
        return float(np.sum(rewards))

    avoid, feed = np.zeros(4, np.float32), np.zeros(4, np.float32)
    avoid[1], feed[1] = -1.0, 1.0
    assert total(avoid) > total(feed) + 5.0


def test_weights_are_masked_to_the_pool_and_applied_to_every_proxy() -> None:
    env = BackendPoolEnv(LIBRARY["many-proxies"])
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(env.slots, np.float32))
    assert env._sim is not None
    n = len(env._sim.names)
    assert info["weights"].shape == (n,)
    np.testing.assert_allclose(
        env._sim.state.weights, np.tile(info["weights"], (env._sim.proxies, 1))
    )


def test_reward_terms() -> None:
    assert interval_reward(0.01, 0.01, 0.0, ideal_s=0.01) == 0.0
    assert interval_reward(0.001, 0.001, 0.0, ideal_s=0.01) == 0.0  # floored at the ideal
    tail_only = interval_reward(1.0, 0.01, 0.0, ideal_s=0.01)
    assert tail_only == pytest.approx(-math.log(100))
    # past the p99 cliff the mean and the error rate still tell better from worse
    assert interval_reward(1.0, 0.05, 0.02, 0.01) > interval_reward(1.0, 0.2, 0.05, 0.01)


def test_error_weight_prices_failures() -> None:
    free = interval_reward(0.05, 0.02, 0.01, 0.01, error_weight=0.0)
    assert interval_reward(0.05, 0.02, 0.01, 0.01, error_weight=40.0) == pytest.approx(free - 0.4)
    env = small_env(error_weight=0.0)
    env.reset(seed=1)
    errors_free = [env.step(env.action_space.sample())[1] for _ in range(3)]
    assert all(r <= 0 for r in errors_free)
    with pytest.raises(ScenarioError, match="error_weight"):
        small_env(error_weight=-1.0)


def test_load_scale_draws_a_lighter_pool_per_episode() -> None:
    base, light = small_env(), small_env(load_scale=(0.5, 0.5))
    base.reset(seed=3)
    light.reset(seed=3)
    assert base.scenario is not None
    assert light.scenario is not None
    assert light.scenario.arrivals.rate == pytest.approx(base.scenario.arrivals.rate * 0.5)
    varied = small_env(load_scale=(0.4, 1.0))
    rates = set()
    for seed in range(5):
        varied.reset(seed=seed)
        assert varied.scenario is not None
        rates.add(round(varied.scenario.arrivals.rate / base.scenario.arrivals.rate, 6))
    assert len(rates) == 5
    assert all(0.4 <= r <= 1.0 for r in rates)
    for bad in ((0.0, 1.0), (1.0, 0.5), (0.5, math.inf)):
        with pytest.raises(ScenarioError, match="load_scale"):
            small_env(load_scale=bad)


def test_one_run_mixes_pool_sizes_padded_to_the_largest() -> None:
    """Pools of 3 and 40 backends in one environment: one fixed space of 40 slots (SB3 needs
    it), the mask marks each episode's own backends, the weights cover exactly those."""
    small = pool_scenario(3, load=0.5, duration_s=3.0)
    large = pool_scenario(40, load=0.5, duration_s=3.0)
    env = BackendPoolEnv([small, large])
    assert env.slots == pool_slots([small, large]) == 40
    assert env.observation_space.shape == (40, env.encoder.n_features)
    assert env.action_space.shape == (40,)
    seen = set()
    for seed in range(8):
        obs, _ = env.reset(seed=seed)
        assert env.observation_space.contains(obs)
        n = len(env.scenario.backends)  # type: ignore[union-attr]
        seen.add(n)
        assert obs[:, 0].tolist() == [1.0] * n + [0.0] * (40 - n)
        obs, _, _, _, info = env.step(env.action_space.sample())
        assert info["weights"].shape == (n,)
        assert not obs[n:].any()
    assert seen == {3, 40}


def test_slots_below_the_largest_pool_are_a_scenario_error() -> None:
    big = pool_scenario(20, load=0.5, duration_s=5.0)
    with pytest.raises(ScenarioError, match="20 backends"):
        BackendPoolEnv(big, slots=16)
    assert BackendPoolEnv(big, slots=32).observation_space.shape[0] == 32


def test_a_large_library_scenario_runs_padded_to_its_largest_draw() -> None:
    family = load_scenario(LIBRARY["large-heterogeneous"])
    env = BackendPoolEnv(family)
    assert env.slots == family.max_backends > 100
    obs, _ = env.reset(seed=0)
    assert obs.shape == (family.max_backends, env.encoder.n_features)
    _, reward, _, _, info = env.step(np.zeros(env.slots, np.float32))
    assert info["requests"] > 1000
    assert reward <= 0
