"""Hashes of the simulator's records over many episodes: a refactoring of the kernel must not
change one.

    .venv/bin/python benchmarks/sim_fingerprint.py OUT.txt
    (then the same from the other tree, e.g. a `git archive` copy on PYTHONPATH, and diff)

Every library scenario and six generated worlds (generator seed 5), their first 40 s (10 s for
the large ones), seeds 0 and 1, seven balancers (`jsq` skipped on the large pools): one line
per episode with its request count and the sha256 of every `Records` column (dtype included).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib

import numpy as np

from envs.episode import EpisodeResult, run_episode
from envs.worlds.generator import generate_world
from rl_lb.scenarios import Scenario, ScenarioFamily, library_scenarios, load_scenario

BALANCERS = (
    "round-robin",
    "least-request",
    "least-latency",
    "prequal",
    "jsq",
    "inverse-latency",
    "learned",
)
COLUMNS = ("arrival_s", "proxy", "backend", "latency_s", "outcome", "retries")


def digest(result: EpisodeResult) -> str:
    h = hashlib.sha256()
    for name in COLUMNS:
        column = getattr(result, name)
        h.update(name.encode() + str(column.dtype).encode() + column.tobytes())
    return h.hexdigest()[:16]


def families() -> list[tuple[str, ScenarioFamily]]:
    named = [(p.stem, load_scenario(p)) for p in library_scenarios()]
    return named + [(f"world-5-{i}", generate_world(5, i).family()) for i in range(6)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="file for the lines (also printed)")
    args = parser.parse_args()
    lines = []
    for name, family in families():
        large = name.startswith("large")
        for seed in (0, 1):
            drawn: Scenario = family.sample(np.random.default_rng(seed))
            scenario = dataclasses.replace(
                drawn, duration_s=min(drawn.duration_s, 10 if large else 40)
            )
            for balancer in BALANCERS:
                if large and balancer == "jsq":
                    continue
                result = run_episode(scenario, balancer, seed)
                lines.append(f"{name} {seed} {balancer} {len(result.arrival_s)} {digest(result)}")
                print(lines[-1], flush=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
