"""Simulator speed on one core: simulated requests/s (p2c) and env steps/s, per pool size.

    .venv/bin/python benchmarks/sim_throughput.py [--seconds 300] [--backends 16 100 1000]

The target is the same at every N (1,000,000 requests/s, goal 3,000,000): a p2c pick draws
two backends whatever N (two binary searches of the proxy's draw table, `envs.nb_pickers`);
only the per-interval work (snapshot, features, a table rebuilt after new weights) is O(N).
The simulated time is scaled down with N so that each run simulates about as many requests.

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

SIZES = (16, 100, 1000)


def scenario(seconds: float, backends: int) -> Scenario:
    return pool_scenario(
        backends,
        load=0.8,
        duration_s=seconds,
        concurrency=4,
        service=ServiceDist("lognormal", 0.010, cv=1.0),
        timeout_s=1.0,
        health_interval_s=1.0,
    )


def requests_per_second(seconds: float, backends: int) -> tuple[float, int]:
    sim = Simulator(scenario(seconds, backends), 0)
    loop = ControlLoop(sim)
    started = time.process_time()
    while not loop.done:
        for p in range(sim.proxies):
            sim.set_decision(p, np.full(backends, 1.0 / backends), "p2c")
        loop.step()
    elapsed = time.process_time() - started
    return sim.requests / elapsed, sim.requests


def steps_per_second(steps: int, backends: int) -> float:
    env = BackendPoolEnv(scenario(float(steps), backends))
    env.reset(seed=0)
    env.action_space.seed(0)
    started = time.process_time()
    for _ in range(steps):
        env.step(env.action_space.sample())
    return steps / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=300.0, help="simulated seconds at 16 backends"
    )
    parser.add_argument("--backends", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    for backends in args.backends:
        seconds = max(args.seconds * 16 / backends, 5.0)
        requests_per_second(2.0, backends)
        steps_per_second(2, backends)
        rate, count = requests_per_second(seconds, backends)
        steps = steps_per_second(int(seconds), backends)
        print(f"{backends} backends, {seconds:g} simulated s:")
        print(f"  simulator: {rate:,.0f} simulated requests/s ({count:,} requests, p2c)")
        print(f"  env: {steps:,.0f} steps/s (random policy)")
    print("(80% load, 1-second control intervals, one core)")


if __name__ == "__main__":
    main()
