"""`BatchedVecEnv` against SB3's `DummyVecEnv` over the same `BackendPoolEnv`s and seeds.

The batch only moves where the kernel runs (one numba call for every waiting pool), so every
observation, reward, done flag and info, `terminal_observation` included, must be identical —
with pools of different sizes, control intervals, metric delays and proxy counts in one batch,
and episodes ending at different steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from envs.batched_vec_env import BatchedVecEnv, advance_simulators
from envs.env import BackendPoolEnv
from envs.factory import pool_scenario
from envs.simulator import Simulator
from rl_lb.scenarios import MetricsSpec, Scenario, ServiceDist, load_scenario


def mixed_pools() -> list[Scenario]:
    """Short episodes of different lengths, sizes, intervals, delays and proxy counts."""
    service = ServiceDist("lognormal", 0.010, cv=1.0)
    return [
        pool_scenario(2, load=0.7, duration_s=6, concurrency=2, service=service, name="two"),
        pool_scenario(
            5,
            load=0.8,
            duration_s=9,
            concurrency=2,
            service=service,
            timeout_s=0.2,
            health_interval_s=1.0,
            metrics=MetricsSpec(delay_s=0.3, proxies=2),
            control_interval_s=0.5,
            name="five",
        ),
        pool_scenario(
            9,
            load=0.6,
            duration_s=13,
            service=service,
            metrics=MetricsSpec(delay_s=1.5),
            name="nine",
        ),
    ]


def make_env(scenarios: list[Any], **kwargs: Any) -> gym.Env[Any, Any]:
    env = BackendPoolEnv(scenarios, **kwargs)
    return gym.wrappers.TransformReward(env, lambda r: 0.5 * r)


def both(factory: Callable[[], gym.Env[Any, Any]], n: int, seed: int) -> tuple[VecEnv, VecEnv]:
    one_by_one = make_vec_env(factory, n_envs=n, seed=seed, vec_env_cls=DummyVecEnv)
    batched = make_vec_env(factory, n_envs=n, seed=seed, vec_env_cls=BatchedVecEnv)
    return one_by_one, batched


def same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert a.keys() == b.keys(), where
        for key in a:
            same(a[key], b[key], f"{where}.{key}")
    elif where.endswith("episode.t"):
        pass  # the Monitor wrapper's wall-clock time since the start
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float), where
        assert math.isnan(b), where
    else:
        assert a == b, where


def run_side_by_side(reference: VecEnv, batched: VecEnv, steps: int, seed: int) -> int:
    """Step both with the same random actions; returns how many episodes ended."""
    rng = np.random.default_rng(seed)
    same(reference.reset(), batched.reset(), "reset")
    ended = 0
    for t in range(steps):
        actions = rng.uniform(-1, 1, (reference.num_envs, *reference.action_space.shape))
        obs_a, rew_a, done_a, infos_a = reference.step(actions.astype(np.float32))
        obs_b, rew_b, done_b, infos_b = batched.step(actions.astype(np.float32))
        same(obs_a, obs_b, f"step {t} obs")
        same(rew_a, rew_b, f"step {t} rewards")
        same(done_a, done_b, f"step {t} dones")
        for i, (info_a, info_b) in enumerate(zip(infos_a, infos_b, strict=True)):
            same(info_a, info_b, f"step {t} env {i} info")
        ended += int(done_a.sum())
    return ended


def test_mixed_pools_match_dummy_vec_env_step_for_step() -> None:
    reference, batched = both(partial(make_env, mixed_pools()), 4, seed=11)
    assert isinstance(batched, BatchedVecEnv)
    ended = run_side_by_side(reference, batched, steps=45, seed=5)
    assert ended >= 6  # several auto-resets, at different steps, with different pools drawn
    sizes = {info["scenario"] for info in batched.reset_infos}
    assert sizes  # every env has a scenario after its resets
    # One kernel call per round, a few rounds per step: far fewer than one per pool and phase.
    assert batched.kernel_calls <= 45 * 4
    reference.close()
    batched.close()


def test_library_mix_matches_dummy_vec_env_through_an_episode_end() -> None:
    names = ["slow-backend", "stale-metrics", "many-proxies", "park", "gc-pauses"]
    factory = partial(make_env, names, load_scale=(0.5, 1.0))
    reference, batched = both(factory, 3, seed=2)
    assert run_side_by_side(reference, batched, steps=125, seed=9) == 3
    reference.close()
    batched.close()


@pytest.mark.parametrize("history", [1, 6])
def test_other_histories_match_dummy_vec_env(history: int) -> None:
    """No lagged columns at all, and more of them than an episode's first steps can fill."""
    reference, batched = both(partial(make_env, mixed_pools(), history=history), 3, seed=4)
    assert run_side_by_side(reference, batched, steps=20, seed=6) >= 1
    reference.close()
    batched.close()


def test_environments_of_different_shapes_do_not_batch() -> None:
    with pytest.raises(ValueError, match="history, slots"):
        BatchedVecEnv([partial(make_env, mixed_pools(), history=h) for h in (2, 4)])


def test_advance_simulators_grows_a_pool_out_of_room_like_run_until() -> None:
    family = load_scenario("slow-backend")
    scenario = family if isinstance(family, Scenario) else family.sample(np.random.default_rng(0))
    alone = Simulator(scenario, 4, room=16)
    cramped = Simulator(scenario, 4, room=16)
    idle = Simulator(scenario, 5)
    alone.run_until(3.0)
    calls = advance_simulators([cramped, idle], [3.0, None])
    assert calls > 1  # 16 requests of room: it had to grow, several times
    assert idle.now == 0.0
    assert cramped.now == alone.now == 3.0
    same(cramped.records()._asdict(), alone.records()._asdict(), "records")


def test_a_direct_step_outside_the_batch_still_advances() -> None:
    venv = BatchedVecEnv([partial(make_env, mixed_pools())])
    venv.seed(1)
    venv.reset()
    venv.step(np.zeros((1, *venv.action_space.shape), dtype=np.float32))
    venv.envs[0].step(np.zeros(venv.action_space.shape, dtype=np.float32))
    assert venv.pools[0]._sim is not None
    assert venv.pools[0]._sim.now > 0


def test_only_backend_pool_envs_batch() -> None:
    with pytest.raises(TypeError, match="BackendPoolEnv"):
        BatchedVecEnv([lambda: gym.make("CartPole-v1")])
