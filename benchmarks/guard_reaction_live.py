"""The outcome guard's reaction through the real proxy: when the fallback serves, live.

    .venv/bin/python benchmarks/guard_reaction_live.py [--scenario FILE_OR_NAME] [--seeds 1]
        [--duration S] [--rate-scale 0.5] [--bad-policy] [--policy MODEL] [--json FILE]

Issue 12's reaction target, live: the fallback serves within 5 control intervals of the first
interval in which the learned policy's p99 over that interval exceeds the fallback's by the
guard's threshold. For each seed this runs `rl-lb bench live`'s machinery (emulated backends, an
`rl-lb serve` child, open-loop load) twice on the same schedule: the guarded learned policy, then
least-latency (its fallback). From the load generator's records it takes each control interval's
p99 (requests by intended send time, failures at the timeout), and from the polled
`/admin/state` the mode the proxy served in; it prints the interval the scenario's first event
starts in (the shift), the first interval whose guarded p99 is `threshold` x least-latency's (the
reaction's start), the interval of the first `fallback: regression` poll and the difference.

`--bad-policy` serves a deliberately bad learned policy instead of the shipped one: a one-unit
model that puts nearly all the weight on the backends slower than the pool's median (the model
of the proxy's guard-visibility tests, `tests/serving/rollout_fixtures.py`). Interval bounds are
the load's second 0 plus multiples of the control interval; the proxy's own decision clock is
not aligned with them, and the admin API is polled every 0.25 s, so a switch is seen up to one
interval late: the figures are upper bounds on the reaction. A benchmark, not a test; the exit
status is 0 whatever the figures are.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from envs.episode import EpisodeResult, summarise
from lab.bench import bench_scenario, run_live
from rl_lb.scenarios import Scenario

TESTS = Path(__file__).resolve().parents[1] / "tests"
SHIFT_WORLD = TESTS / "scenarios" / "fastest-slow.toml"
FALLBACK = "least-latency"
REACTION_BOUND = 5
"""Issue 12: the fallback serves within this many control intervals of the first bad one."""
MIN_REQUESTS = 20
"""An interval with fewer requests (in either run) has no p99 worth comparing."""


def interval_p99s(result: EpisodeResult, interval_s: float, count: int) -> list[float]:
    """Effective p99 of the requests sent in each control interval (NaN when too few)."""
    latency = result.effective_latency_s
    index = np.floor(result.arrival_s / interval_s).astype(np.int64)
    out = []
    for k in range(count):
        chosen = latency[index == k]
        out.append(float(np.quantile(chosen, 0.99)) if len(chosen) >= MIN_REQUESTS else math.nan)
    return out


def first_mode_interval(result: EpisodeResult, mode: str, interval_s: float) -> int | None:
    """The control interval of the first poll of `/admin/state` that showed `mode`."""
    for at, shown in zip(result.interval_start_s, result.modes, strict=True):
        if shown == mode:
            return int(at // interval_s)
    return None


def shift_interval(scenario: Scenario) -> int | None:
    """The interval the scenario's first backend event starts in (None: no event)."""
    starts = [e.at_s for b in scenario.backends for e in b.events]
    return int(min(starts) // scenario.control_interval_s) if starts else None


def reaction(scenario: Scenario, guarded: EpisodeResult, fallback: EpisodeResult) -> dict[str, Any]:
    """The intervals of the shift, the first bad interval and the first regression fallback."""
    interval = scenario.control_interval_s
    count = math.ceil(scenario.duration_s / interval)
    threshold = scenario.control.outcome_guard.threshold
    on, reference = (
        interval_p99s(guarded, interval, count),
        interval_p99s(fallback, interval, count),
    )
    bad = next((k for k in range(count) if on[k] > threshold * reference[k]), None)
    switched = first_mode_interval(guarded, "fallback: regression", interval)
    returned = None
    if switched is not None:
        later = [(at, m) for at, m in zip(guarded.interval_start_s, guarded.modes, strict=True)]
        returned = next(
            (
                int(at // interval)
                for at, m in later
                if at // interval > switched and m == "primary"
            ),
            None,
        )
    polls = len(guarded.modes)
    return {
        "control_interval_s": interval,
        "threshold": threshold,
        "shift_interval": shift_interval(scenario),
        "first_bad_interval": bad,
        "first_fallback_interval": switched,
        "first_return_interval": returned,
        "reaction_intervals": None if bad is None or switched is None else switched - bad,
        "polls_in_regression": sum(m == "fallback: regression" for m in guarded.modes) / polls,
        "guarded_effective_p99_ms": summarise(guarded)["effective_p99_ms"],
        "fallback_effective_p99_ms": summarise(fallback)["effective_p99_ms"],
        "interval_p99_ms": [
            [round(1000 * a, 1), round(1000 * b, 1)] for a, b in zip(on, reference, strict=True)
        ],
        "interval_modes": [first_mode_of(guarded, k, interval) for k in range(count)],
    }


def first_mode_of(result: EpisodeResult, k: int, interval_s: float) -> str:
    """The mode of the first poll within interval k ("" when none fell in it)."""
    return next(
        (
            m
            for at, m in zip(result.interval_start_s, result.modes, strict=True)
            if at // interval_s == k
        ),
        "",
    )


def guard_trace(
    states: tuple[dict[str, Any], ...], result: EpisodeResult, scenario: Scenario
) -> list[float | None]:
    """Per control interval, the guard's last log(policy / fallback cost) in the first poll of
    that interval (None: no poll, the fallback served the interval before, or the guard knew
    fewer than two backends: it was blind)."""
    count = math.ceil(scenario.duration_s / scenario.control_interval_s)
    trace: list[float | None] = [None] * count
    seen: set[int] = set()
    for at, state in zip(result.interval_start_s, states, strict=True):
        k = int(at // scenario.control_interval_s)
        if k < count and k not in seen:
            seen.add(k)
            trace[k] = (state.get("outcome_guard") or {}).get("log_ratio")
    return trace


def bad_policy(directory: Path) -> str:
    """The guard-visibility tests' slow-seeking model, written to `directory`."""
    sys.path[:0] = [str(TESTS), str(TESTS / "serving")]
    fixtures = importlib.import_module("rollout_fixtures")  # test code: not an installed module
    return str(
        fixtures.write_directional_model(directory / "slowest", fixtures.SLOWEST, "slowest-live")
    )


def verdict(row: dict[str, Any]) -> str:
    if row["first_bad_interval"] is None:
        return "no interval over the threshold: nothing to react to"
    if row["reaction_intervals"] is None:
        return "NOT met: the fallback never served"
    met = row["reaction_intervals"] <= REACTION_BOUND
    return ("met" if met else "NOT met") + f" ({row['reaction_intervals']} intervals)"


def report(seed: int, row: dict[str, Any]) -> None:
    print(
        f"seed {seed}: interval {row['control_interval_s']:g} s, threshold {row['threshold']:g}x; "
        f"shift in {row['shift_interval']}, first bad {row['first_bad_interval']}, "
        f"first fallback {row['first_fallback_interval']}, back to the policy "
        f"{row['first_return_interval']}; polls in regression {row['polls_in_regression']:.0%}"
    )
    print(
        f"  effective p99 guarded {row['guarded_effective_p99_ms']:.1f} ms, "
        f"{FALLBACK} {row['fallback_effective_p99_ms']:.1f} ms; reaction: {verdict(row)}; "
        f"generator lag p99 {row['generator_lag_p99_ms'][0]:g} / "
        f"{row['generator_lag_p99_ms'][1]:g} ms"
    )
    marks = [row[k] for k in ("shift_interval", "first_bad_interval", "first_fallback_interval")]
    around = sorted({k + d for k in marks if k is not None for d in (-1, 0, 1, 2)})
    for k in (k for k in around if 0 <= k < len(row["interval_p99_ms"])):
        on, reference = row["interval_p99_ms"][k]
        ratio = row["guard_log_ratio"][k]
        seen = "-" if ratio is None else f"log(P/B) {ratio:+.2f}"
        print(
            f"  interval {k:>3}: p99 {on:>7.1f} vs {reference:>7.1f} ms  guard {seen:<15} "
            f"{row['interval_modes'][k]}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(SHIFT_WORLD), help="scenario file or name")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    parser.add_argument("--duration", type=float, help="seconds per run (compresses the timeline)")
    parser.add_argument("--rate-scale", type=float, default=0.5, help="multiplies arrival rates")
    parser.add_argument("--bad-policy", action="store_true", help="serve the slow-seeking model")
    parser.add_argument("--policy", help="model of the learned balancer (default: shipped)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="guard-reaction-") as tmp:
        policy = bad_policy(Path(tmp)) if args.bad_policy else args.policy
        for seed in range(args.seeds):
            scenario = bench_scenario(
                args.scenario, seed, duration=args.duration, rate_scale=args.rate_scale
            )
            guarded, fallback = asyncio.run(
                run_live(scenario, ["learned", FALLBACK], seed, policy=policy)
            )
            row = reaction(scenario, guarded.episode, fallback.episode)
            # The generator's dispatch lag: tens of ms mean the machine, not the pool, is measured.
            row["guard_log_ratio"] = guard_trace(guarded.states, guarded.episode, scenario)
            row["generator_lag_p99_ms"] = [
                round(1000 * float(np.quantile(run.load.lag_s, 0.99)), 1)
                for run in (guarded, fallback)
            ]
            report(seed, row)
            rows.append({"seed": seed, **row})
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": rows}, indent=1)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
