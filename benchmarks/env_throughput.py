"""Environment steps/s of `subproc` against `batched` vectorisation, and where the time goes.

    .venv/bin/python benchmarks/env_throughput.py [--k 2 8 32] [--steps 100] [--rollouts 2]

Both step K `BackendPoolEnv`s on the same fixed library mix (`MIX`: eight scenarios, 3 to 16
backends, 1 to 4 proxies; not the smallest pools) with the same seeded random actions. Rates
are wall-clock environment steps per second over `--steps` steps per environment after a
warm-up (numba's cache loaded, every process started), on however many cores the machine
gives. For `batched` the time splits into the simulator kernel (the batched numba calls) and
Python glue (snapshots, the feature encoder, rewards' quantiles, SB3's VecEnv bookkeeping);
then a short PPO training with the shipped network measures the share of SB3 and torch
(rollout collection's policy forward passes and the updates) beside the environment's.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from envs.batched_vec_env import BatchedVecEnv
from envs.env import BackendPoolEnv
from training.config import TrainConfig
from training.train import TORCH_THREADS, _build_model

MIX = (
    "slow-backend",
    "heterogeneous",
    "gc-pauses",
    "park",
    "many-proxies",
    "stale-metrics",
    "bursty",
    "fast-failure",
)
"""The library scenarios every environment draws from, each episode one of them."""

KINDS: dict[str, type[DummyVecEnv] | type[SubprocVecEnv]] = {
    "subproc": SubprocVecEnv,
    "batched": BatchedVecEnv,
}


def make_env() -> gym.Env[Any, Any]:
    """Module-level so that SubprocVecEnv can pickle it."""
    return BackendPoolEnv(list(MIX))


def vec_env(kind: str, k: int) -> VecEnv:
    return make_vec_env(make_env, n_envs=k, seed=0, vec_env_cls=KINDS[kind])


def step_rate(kind: str, k: int, steps: int) -> tuple[float, float]:
    """(environment steps/s, share of the time in the batched kernel; NaN for subproc)."""
    venv = vec_env(kind, k)
    rng = np.random.default_rng(0)
    shape = (k, *venv.action_space.shape)  # type: ignore[misc]
    venv.reset()
    for _ in range(5):
        venv.step(rng.uniform(-1, 1, shape).astype(np.float32))
    kernel_before = venv.kernel_seconds if isinstance(venv, BatchedVecEnv) else 0.0
    started = time.perf_counter()
    for _ in range(steps):
        venv.step(rng.uniform(-1, 1, shape).astype(np.float32))
    elapsed = time.perf_counter() - started
    share = float("nan")
    if isinstance(venv, BatchedVecEnv):
        share = (venv.kernel_seconds - kernel_before) / elapsed
    venv.close()
    return k * steps / elapsed, share


class _Timed(VecEnvWrapper):
    """Wall time spent stepping the wrapped environments."""

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)
        self.seconds = 0.0

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        started = time.perf_counter()
        out = self.venv.step_wait()
        self.seconds += time.perf_counter() - started
        return out


def training_split(k: int, rollouts: int) -> dict[str, float]:
    """Shares of a short batched PPO run: kernel, Python glue, SB3 + torch."""
    th.set_num_threads(TORCH_THREADS)
    inner = vec_env("batched", k)
    assert isinstance(inner, BatchedVecEnv)
    timed = _Timed(inner)
    config = TrainConfig(n_envs=k, seed=0)
    config.algo_params.n_steps = 128
    config.algo_params.batch_size = min(256, 128 * k)
    model = _build_model(config, timed, None)
    model.learn(128 * k)  # warm-up: first rollout and update
    timed.seconds, inner.kernel_seconds = 0.0, 0.0
    started = time.perf_counter()
    model.learn(128 * k * rollouts, reset_num_timesteps=False)
    total = time.perf_counter() - started
    inner.close()
    return {
        "kernel": inner.kernel_seconds / total,
        "glue": (timed.seconds - inner.kernel_seconds) / total,
        "sb3_torch": (total - timed.seconds) / total,
        "steps_per_s": 128 * k * rollouts / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 8, 32], help="batch sizes")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per environment")
    parser.add_argument("--rollouts", type=int, default=2, help="timed PPO rollouts (0: none)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"library mix: {', '.join(MIX)}; {cores} cores; random actions")
    print(f"{'K':>3} {'subproc steps/s':>16} {'batched steps/s':>16} {'ratio':>6} {'kernel':>7}")
    for k in args.k:
        subproc, _ = step_rate("subproc", k, args.steps)
        batched, kernel_share = step_rate("batched", k, args.steps)
        print(
            f"{k:>3} {subproc:>16,.0f} {batched:>16,.0f} {batched / subproc:>5.1f}x "
            f"{kernel_share:>6.0%}"
        )
    if args.rollouts:
        for k in args.k:
            split = training_split(k, args.rollouts)
            print(
                f"PPO, batched K={k}: {split['steps_per_s']:,.0f} steps/s; time in kernel "
                f"{split['kernel']:.0%}, Python glue {split['glue']:.0%}, "
                f"SB3 + torch {split['sb3_torch']:.0%}"
            )


if __name__ == "__main__":
    main()
