"""Does a policy starve healthy backends? Equal pools, no trouble: how many backends it gives
almost nothing, interval by interval, and whether they ever get traffic back.

    .venv/bin/python -m training.starvation [--policy learned[:PATH]] [--backends 16 64 200]
                                            [--seconds 60] [--seeds 2]

In a pool of equal, healthy backends every backend deserves its 1/N. A policy that reads a
backend's low throughput as low capacity starves it, which lowers its throughput further: the
exclusion confirms itself (the `capacity` heuristic's failure, issue 17). This prints, per pool
size, the share of backends below a tenth of 1/N after 10 s and at the end, how many of those
starved at some point got back above it, and the effective p99 against `prequal` with the same
seed. A policy free of the ratchet keeps the starved share near 0 in every row.
"""

from __future__ import annotations

import argparse

import numpy as np

from envs.episode import run_episode
from envs.factory import pool_scenario
from rl_lb.balancers import Balancer
from rl_lb.scenarios import Scenario, ServiceDist

STARVED = 0.1
"""A backend is starved below this fraction of the uniform weight 1/N."""


def equal_pool(backends: int, seconds: float) -> Scenario:
    """N backends of 2 workers, lognormal 20 ms service (100 req/s each), 65% load."""
    return pool_scenario(
        backends,
        load=0.65,
        duration_s=seconds,
        concurrency=2,
        service=ServiceDist("lognormal", 0.020, cv=1.0),
        timeout_s=1.0,
        health_interval_s=1.0,
        name=f"equal-{backends}",
    )


def starvation(
    balancer: Balancer | str, backends: int, seconds: float, seed: int
) -> dict[str, float]:
    """The figures of one row (shares of the N backends, latencies in ms)."""
    scenario = equal_pool(backends, seconds)
    result = run_episode(scenario, balancer, seed)
    starved = result.weights * backends < STARVED  # (intervals, backends)
    ever = starved.any(axis=0)
    first = np.argmax(starved, axis=0)
    back = [b for b in np.flatnonzero(ever) if not starved[first[b] :, b].all()]
    reference = run_episode(scenario, "prequal", seed)
    ten = min(10, len(starved) - 1)
    return {
        "after 10 s": float(starved[ten].mean()),
        "at the end": float(starved[-1].mean()),
        "ever": float(ever.mean()),
        "came back": float(len(back) / max(int(ever.sum()), 1)),
        "p99 ms": float(np.percentile(result.effective_latency_s, 99) * 1000),
        "prequal p99 ms": float(np.percentile(reference.effective_latency_s, 99) * 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="learned", help="balancer: learned or learned:PATH")
    parser.add_argument("--backends", type=int, nargs="+", default=[16, 64, 200])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.policy}: backends below {STARVED:g} × 1/N in equal, healthy pools at 65% load")
    header = "| N | seed | after 10 s | at the end | ever | came back | p99 ms | prequal p99 ms |"
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for backends in args.backends:
        for seed in range(args.seeds):
            row = starvation(args.policy, backends, args.seconds, seed)
            print(
                f"| {backends} | {seed} | {row['after 10 s']:.0%} | {row['at the end']:.0%} | "
                f"{row['ever']:.0%} | {row['came back']:.0%} | {row['p99 ms']:.1f} | "
                f"{row['prequal p99 ms']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
