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

`--probe` explains it: on one snapshot of an equal pool of 64 (uniform weights), the policy's
log-weight for one backend against the median backend's, when that backend's columns (every
lag) say it was starved: its last weight at 0.01 × 1/N, its throughput share at 0.1, its
in-flight at 0.1 of the mean, each alone and all three. The throughput row divided by
log(0.1) is the policy's elasticity to its own traffic: above 1, a backend that gets a little
less traffic gets a still smaller weight, and the exclusion feeds itself.
"""

from __future__ import annotations

import argparse

import numpy as np

from envs.episode import run_episode, summarise
from envs.factory import pool_scenario
from envs.simulator import Simulator
from rl_lb.balancers import Balancer
from rl_lb.features import SCORE_SCALE
from rl_lb.policies.learned import LearnedPolicy
from rl_lb.scenarios import Scenario, ServiceDist
from training.script import run_script

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
        "p99 ms": float(summarise(result)["effective_p99_ms"]),
        "prequal p99 ms": float(summarise(reference)["effective_p99_ms"]),
    }


PROBES: dict[str, dict[str, float]] = {
    "last weight 0.01 x 1/N": {"weight": 0.01},
    "throughput share 0.1": {"throughput_share": 0.1},
    "in-flight 0.1 x mean": {"in_flight_rel": 0.1},
    "all three": {"weight": 0.01, "throughput_share": 0.1, "in_flight_rel": 0.1},
}


def probe(policy: LearnedPolicy, backends: int = 64, seed: int = 0) -> dict[str, float]:
    """Log-weight of backend 0 minus the median backend's, per `PROBES` row (see the docstring)."""
    sim = Simulator(equal_pool(backends, 30.0), seed)
    snapshots = []
    for t in range(1, 21):
        sim.set_decision(0, np.full(backends, 1.0 / backends), policy.picker)
        sim.run_until(float(t))
        snapshots.append(sim.snapshot(0))
    past = tuple(reversed(snapshots[-policy.encoder.history : -1]))
    observation = policy.encoder.encode(snapshots[-1], past)
    names = policy.encoder.names
    out = {}
    for label, columns in PROBES.items():
        changed = observation.copy()
        for j, name in enumerate(names):
            if name.split("@")[0] in columns:
                changed[0, j] = columns[name.split("@")[0]]
        scores = np.clip(policy.network.scores(changed)[:backends], -1.0, 1.0)
        out[label] = float(SCORE_SCALE * (scores[0] - np.median(scores[1:])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="learned", help="balancer: learned or learned:PATH")
    parser.add_argument("--backends", type=int, nargs="+", default=[16, 64, 200])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--probe", action="store_true", help="the policy's response instead")
    args = parser.parse_args()
    if args.probe:
        if args.policy.partition(":")[0] != "learned":
            parser.error(
                f"--probe needs a learned policy (learned or learned:PATH), not {args.policy!r}"
            )
        spec = args.policy.partition(":")[2] or None
        for label, value in probe(LearnedPolicy.load(spec)).items():
            print(f"{label}: log-weight {value:+.2f} against the median backend")
        return
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
    run_script(main)
