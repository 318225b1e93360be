"""Simulator speed on one core: simulated requests/s (16 backends, p2c) and env steps/s.

    .venv/bin/python benchmarks/sim_throughput.py [--seconds 300]

Rates are per second of this process's CPU time (pinned to one core), so that other work on
the machine slows them less than wall-clock rates. JIT compilation (or loading the numba cache)
happens in a warm-up run that is not timed. The
request rate includes the per-interval Python work (a snapshot of the pool every second), as in
an episode; the env rate includes encoding observations and decoding random actions.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from envs.env import BackendPoolEnv
from envs.factory import pool_scenario
from envs.simulator import ControlLoop, Simulator
from rl_lb.scenarios import Scenario, ServiceDist

BACKENDS = 16


def scenario(seconds: float) -> Scenario:
    return pool_scenario(
        BACKENDS,
        load=0.8,
        duration_s=seconds,
        concurrency=4,
        service=ServiceDist("lognormal", 0.010, cv=1.0),
        timeout_s=1.0,
        health_interval_s=1.0,
    )


def requests_per_second(seconds: float) -> tuple[float, int]:
    sim = Simulator(scenario(seconds), 0)
    loop = ControlLoop(sim)
    started = time.process_time()
    while not loop.done:
        for p in range(sim.proxies):
            sim.set_decision(p, np.full(BACKENDS, 1.0 / BACKENDS), "p2c")
        loop.step()
    elapsed = time.process_time() - started
    return sim.requests / elapsed, sim.requests


def steps_per_second(steps: int) -> float:
    env = BackendPoolEnv(scenario(float(steps)))
    env.reset(seed=0)
    env.action_space.seed(0)
    started = time.process_time()
    for _ in range(steps):
        env.step(env.action_space.sample())
    return steps / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="simulated seconds")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    requests_per_second(2.0)
    steps_per_second(2)
    rate, count = requests_per_second(args.seconds)
    steps = steps_per_second(int(args.seconds))
    print(f"simulator: {rate:,.0f} simulated requests/s ({count:,} requests, p2c)")
    print(f"env: {steps:,.0f} steps/s (random policy)")
    print(f"({BACKENDS} backends, 80% load, 1-second control intervals, one core)")


if __name__ == "__main__":
    main()
