"""What the outcome guard costs a good policy: the library with the guard on and off.

    .venv/bin/python benchmarks/outcome_guard_cost.py [--seeds 10] [--first-seed 0]
                            [--scenario NAME ...] [--policy MODEL] [--json FILE]

Runs `learned` (guarded: weight envelope, CUSUM, probes) and `learned~no-outcome-guard` on every
scenario of the library (or those named) with the same seeds, so each pair of runs sees the same
arrivals and service times. Prints, per scenario, the geometric mean over seeds of the ratio
guard-on / guard-off effective p99 and the share of control intervals spent in fallback, then
the same over the whole library. Issue 12's budget: the guard makes the geometric mean at most 2%
worse (it may make it better: the weight envelope changes concentrated weights) and at most 5% of
intervals are spent in fallback. The exit status is 0 whatever the figures are
(a benchmark, not a test; tests/test_outcome_guard.py runs a small slice of it).

docs/results.md uses seeds 30001-30010 (`--first-seed 30001`). On `park` (Pareto jobs on single
servers) the guard's only effect is its probe floor, which reshuffles which queue the huge jobs
meet: per seed the ratio spans 0.14-5.6, and the geometric mean of 10 seeds is 1.36 on
30001-30010 and 0.73 on 0-9 (4 December 2026). Read park's row with its seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from envs.evaluate import evaluate
from rl_lb.balancers import UNGUARDED_SUFFIX
from rl_lb.scenarios import library_scenarios

GUARDED = "learned"
UNGUARDED = GUARDED + UNGUARDED_SUFFIX
P99_BUDGET = 0.02
"""Issue 12: the guard changes the effective p99's geometric mean by at most 2%..."""
FALLBACK_BUDGET = 0.05
"""...and spends at most 5% of the control intervals in fallback."""


def _balancer(base: str, policy: str | None) -> str:
    if policy is None:
        return base
    return f"learned:{policy}" + base.removeprefix("learned")


def guard_cost(
    scenarios: list[str],
    seeds: int,
    policy: str | None = None,
    workers: int | None = None,
    first_seed: int = 0,
) -> dict[str, Any]:
    """Per scenario and over all: geomean of guard-on / guard-off effective p99, fallback share."""
    on_name, off_name = _balancer(GUARDED, policy), _balancer(UNGUARDED, policy)
    seed_list = range(first_seed, first_seed + seeds)
    records = evaluate(scenarios, [on_name, off_name], seed_list, workers=workers)
    p99: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    fallback: dict[str, list[float]] = defaultdict(list)
    for r in records:
        p99[r["scenario"], r["seed"]][r["balancer"]] = r["effective_p99_ms"]
        if r["balancer"] == on_name:
            fallback[r["scenario"]].append(r["fallback_share"])
    logs: dict[str, list[float]] = defaultdict(list)
    for (scenario, _seed), pair in p99.items():
        logs[scenario].append(math.log(pair[on_name] / pair[off_name]))
    rows = {
        name: {
            "p99_ratio": math.exp(sum(values) / len(values)),
            "worst_seed_ratio": math.exp(max(values)),
            "fallback_share": sum(fallback[name]) / len(fallback[name]),
        }
        for name, values in logs.items()
    }
    every_log = [v for values in logs.values() for v in values]
    every_share = [v for shares in fallback.values() for v in shares]
    overall = {
        "p99_ratio": math.exp(sum(every_log) / len(every_log)),
        "fallback_share": sum(every_share) / len(every_share),
    }
    return {
        "seeds": seeds,
        "first_seed": first_seed,
        "policy": policy,
        "scenarios": rows,
        "overall": overall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per scenario")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds FIRST..FIRST+N-1")
    parser.add_argument("--scenario", action="append", help="library name or file (repeat)")
    parser.add_argument("--policy", help="a trained model instead of the shipped policy")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: use at least 1")
    scenarios = args.scenario or [str(p) for p in library_scenarios()]
    cost = guard_cost(scenarios, args.seeds, args.policy, first_seed=args.first_seed)
    last = args.first_seed + args.seeds - 1
    print(
        f"outcome guard on / off, {args.seeds} paired seeds ({args.first_seed}..{last}), "
        "effective p99 (geometric mean)"
    )
    print(f"{'scenario':<24} {'p99 on/off':>10} {'worst seed':>10} {'in fallback':>11}")
    for name, row in cost["scenarios"].items():
        print(
            f"{name:<24} {row['p99_ratio']:>10.3f} {row['worst_seed_ratio']:>10.3f} "
            f"{row['fallback_share']:>11.1%}"
        )
    ratio, share = cost["overall"]["p99_ratio"], cost["overall"]["fallback_share"]
    print(f"{'library':<24} {ratio:>10.3f} {'':>10} {share:>11.1%}")
    within = ratio <= 1.0 + P99_BUDGET and share <= FALLBACK_BUDGET
    print(
        f"budget (p99 at most {P99_BUDGET:.0%} worse, fallback <= {FALLBACK_BUDGET:.0%}): "
        + ("met" if within else "NOT met")
    )
    if args.json:
        args.json.write_text(json.dumps(cost, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
