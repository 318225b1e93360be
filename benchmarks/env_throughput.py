"""Environment steps/s of `subproc` against `batched` vectorisation, and where the time goes.

    .venv/bin/python benchmarks/env_throughput.py [--k 2 8 32] [--steps 100] [--rollouts 2]
                                                  [--profile K]

Both step K `BackendPoolEnv`s on the same fixed library mix (`MIX`: eight scenarios, 3 to 16
backends, 1 to 4 proxies; not the smallest pools) with the same seeded random actions, over
`--steps` steps per environment after a warm-up (numba's cache loaded, every process started).
Two rates per kind: wall-clock steps/s on however many cores the machine gives, and steps per
CPU second (all processes' CPU time, the workers' included). On a shared machine the wall rate
says as much about the neighbours as about the code — K worker processes get K shares of a
busy CPU, one batched process one share — while CPU time per step does not move with the
load; `idle 2-core` turns it into the wall rates an otherwise idle 2-core machine would give
at best (subproc on min(K, 2) cores, batched on one). For `batched` the time splits into the
simulator kernel (the batched numba calls), the other batched calls (the rewards' statistics
and the observations, `batch`) and per-environment Python (decisions, snapshots, infos, SB3's
bookkeeping); `kernel-bound` is the rate with no time outside the kernel, the most any
Python-side work can give. Then a short PPO training with the shipped network measures the
share of SB3 and torch beside the environment's. `--profile K` prints where a batched step's
time goes (cProfile, the 15 most expensive functions by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import pstats
import time
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import psutil  # type: ignore[import-untyped]  # no type information shipped
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


class Rate(NamedTuple):
    """One kind's figures over the timed steps (shares are NaN for subproc)."""

    wall: float
    """Environment steps per wall-clock second."""
    per_cpu: float
    """Environment steps per CPU second, every process of the kind counted."""
    kernel: float
    """Share of the wall time in the batched kernel calls."""
    batch: float
    """Share of the wall time in the batched statistics and observations."""


def _cpu_seconds(venv: VecEnv) -> float:
    """CPU time of this process and of the vectorised environment's worker processes."""
    total = time.process_time()
    for process in getattr(venv, "processes", []):
        times = psutil.Process(process.pid).cpu_times()
        total += times.user + times.system
    return total


def step_rate(kind: str, k: int, steps: int) -> Rate:
    venv = vec_env(kind, k)
    rng = np.random.default_rng(0)
    shape = (k, *venv.action_space.shape)  # type: ignore[misc]
    venv.reset()
    for _ in range(5):
        venv.step(rng.uniform(-1, 1, shape).astype(np.float32))
    batched = venv if isinstance(venv, BatchedVecEnv) else None
    kernel_before = batched.kernel_seconds if batched else 0.0
    batch_before = batched.batch_seconds if batched else 0.0
    cpu_before, started = _cpu_seconds(venv), time.perf_counter()
    for _ in range(steps):
        venv.step(rng.uniform(-1, 1, shape).astype(np.float32))
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds(venv) - cpu_before
    venv.close()
    if batched is None:
        return Rate(k * steps / elapsed, k * steps / cpu, math.nan, math.nan)
    kernel = (batched.kernel_seconds - kernel_before) / elapsed
    batch = (batched.batch_seconds - batch_before) / elapsed
    return Rate(k * steps / elapsed, k * steps / cpu, kernel, batch)


def profile(k: int, steps: int) -> None:
    """cProfile of `steps` batched steps of K environments: the top functions by own time."""
    venv = vec_env("batched", k)
    rng = np.random.default_rng(0)
    shape = (k, *venv.action_space.shape)  # type: ignore[misc]
    venv.reset()
    for _ in range(5):
        venv.step(rng.uniform(-1, 1, shape).astype(np.float32))
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        venv.step(rng.uniform(-1, 1, shape).astype(np.float32))
    profiler.disable()
    venv.close()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


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
    """Shares of a short batched PPO run: kernel, batched statistics and observations, other
    Python glue, SB3 + torch."""
    th.set_num_threads(TORCH_THREADS)
    inner = vec_env("batched", k)
    assert isinstance(inner, BatchedVecEnv)
    timed = _Timed(inner)
    config = TrainConfig(n_envs=k, seed=0)
    config.algo_params.n_steps = 128
    config.algo_params.batch_size = min(256, 128 * k)
    model = _build_model(config, timed, None)
    model.learn(128 * k)  # warm-up: first rollout and update
    timed.seconds, inner.kernel_seconds, inner.batch_seconds = 0.0, 0.0, 0.0
    started = time.perf_counter()
    model.learn(128 * k * rollouts, reset_num_timesteps=False)
    total = time.perf_counter() - started
    inner.close()
    return {
        "kernel": inner.kernel_seconds / total,
        "batch": inner.batch_seconds / total,
        "glue": (timed.seconds - inner.kernel_seconds - inner.batch_seconds) / total,
        "sb3_torch": (total - timed.seconds) / total,
        "steps_per_s": 128 * k * rollouts / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 8, 32], help="batch sizes")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per environment")
    parser.add_argument("--rollouts", type=int, default=2, help="timed PPO rollouts (0: none)")
    parser.add_argument("--profile", type=int, metavar="K", help="profile a batch of K instead")
    args = parser.parse_args()
    if args.profile:
        profile(args.profile, args.steps)
        return
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    print(f"library mix: {', '.join(MIX)}; {cores} cores; load average {load:.1f}")
    print(
        "  K | wall steps/s: subproc batched ratio | per CPU second: subproc batched ratio"
        " | idle 2-core ratio | batched: kernel batch | kernel-bound idle 2-core ratio"
    )
    for k in args.k:
        sub = step_rate("subproc", k, args.steps)
        bat = step_rate("batched", k, args.steps)
        cores_used = min(k, cores, 2)
        idle = bat.per_cpu / (cores_used * sub.per_cpu)
        bound = bat.per_cpu / bat.kernel / (cores_used * sub.per_cpu)
        print(
            f"{k:>3} | {sub.wall:>20,.0f} {bat.wall:>7,.0f} {bat.wall / sub.wall:>4.1f}x | "
            f"{sub.per_cpu:>22,.0f} {bat.per_cpu:>7,.0f} {bat.per_cpu / sub.per_cpu:>4.1f}x | "
            f"{idle:>16.1f}x | {bat.kernel:>15.0%} {bat.batch:>5.0%} | {bound:>28.1f}x"
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.rollouts:
        for k in args.k:
            split = training_split(k, args.rollouts)
            print(
                f"PPO, batched K={k}: {split['steps_per_s']:,.0f} steps/s; time in kernel "
                f"{split['kernel']:.0%}, batched statistics and observations "
                f"{split['batch']:.0%}, other Python glue {split['glue']:.0%}, "
                f"SB3 + torch {split['sb3_torch']:.0%}"
            )


if __name__ == "__main__":
    main()
