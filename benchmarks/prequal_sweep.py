"""Load sweep of Prequal against the heuristics it is measured with, in the simulator.

The pool is tests/scenarios/half-slow.toml (Prequal's set-up in small: four proxies, eight
backends, four of them 2× slower); its traffic is scaled from 0.5 to 1.1 of the pool's capacity.
Each cell is the mean over the seeds of the effective p99 (failed requests count as the 2 s
timeout) and, where some failed, their share: at the overloaded end the p99 is the timeout for
everyone, and the share of failed requests says who degrades gracefully.

A second table repeats the overloaded loads with backends that shed: a queue of at most
`SHEDDING_QUEUE` requests (0.5 s of work on a fast backend, 1 s on a slow one) instead of the
file's 1000. It separates the rule from the simulator's backends, which serve every queued
request even after its client gave up at the timeout (docs/baselines.md, "Why prequal loses more
requests in overload").

Run: `.venv/bin/python benchmarks/prequal_sweep.py [--seeds 3] [--duration 30]`. It prints the
tables and writes them into docs/baselines.md between the `prequal-sweep` and
`prequal-shedding` markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from envs.evaluate import evaluate
from rl_lb.scenarios import Scenario, load_scenario, time_scaled

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "tests" / "scenarios" / "half-slow.toml"
DOC = ROOT / "docs" / "baselines.md"
SWEEP_MARKERS = ("<!-- prequal-sweep:begin -->", "<!-- prequal-sweep:end -->")
SHEDDING_MARKERS = ("<!-- prequal-shedding:begin -->", "<!-- prequal-shedding:end -->")
BALANCERS = ("prequal", "least-latency", "least-request", "round-robin")
LOADS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)
SHEDDING_LOADS = (1.0, 1.1, 1.2)
SHEDDING_QUEUE = 100
"""Queue limit of the shedding backends (the scenario file's backends queue up to 1000)."""


def _at_load(
    base: Scenario, nominal_load: float, load: float, duration_s: float, queue_limit: int | None
) -> Scenario:
    scaled = time_scaled(base, 1.0, load / nominal_load)
    name = f"{base.name}@{load:g}"
    if queue_limit is not None:
        backends = tuple(dataclasses.replace(g, queue_limit=queue_limit) for g in scaled.backends)
        scaled = dataclasses.replace(scaled, backends=backends)
        name += f",queue<={queue_limit}"
    return dataclasses.replace(scaled, name=name, duration_s=duration_s)


def sweep(
    seeds: int, duration_s: float, loads: tuple[float, ...] = LOADS, queue_limit: int | None = None
) -> str:
    """The sweep as a Markdown table (rows: load, columns: balancers); `queue_limit` replaces
    every backend's."""
    family = load_scenario(SCENARIO)
    base = family.nominal()
    nominal_load = 0.9  # the file's `load`
    scenarios = [_at_load(base, nominal_load, load, duration_s, queue_limit) for load in loads]
    records = evaluate(scenarios, list(BALANCERS), seeds, workers=1)
    header = "| load | " + " | ".join(f"{b} p99 (ms)" for b in BALANCERS) + " |"
    lines = [header, "|---|" + "---:|" * len(BALANCERS)]
    for load, scenario in zip(loads, scenarios, strict=True):
        p99, failed = [], []
        for balancer in BALANCERS:
            runs = [
                r for r in records if r["scenario"] == scenario.name and r["balancer"] == balancer
            ]
            p99.append(float(np.mean([r["effective_p99_ms"] for r in runs])))
            failed.append(sum(r["errors"] for r in runs) / max(sum(r["requests"] for r in runs), 1))
        best = min(range(len(p99)), key=lambda k: (p99[k], failed[k]))
        cells = []
        for k, (value, share) in enumerate(zip(p99, failed, strict=True)):
            cell = f"{value:.0f}" + (f" ({share:.1%} failed)" if share >= 0.0005 else "")
            cells.append(f"**{cell}**" if k == best else cell)
        lines.append(f"| {load:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(table: str, markers: tuple[str, str], caption: str) -> None:
    """Replace what is between the markers of docs/baselines.md (the file is made if missing)."""
    begin, end = markers
    block = f"{begin}\n{caption} Written by `benchmarks/prequal_sweep.py`.\n\n{table}\n{end}"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    if begin in text and end in text:
        text = text.split(begin)[0] + block + text.split(end, 1)[1]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    DOC.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=30.0, help="simulated seconds per run")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    started = time.perf_counter()
    common = (
        f"Effective p99 (ms), mean of {args.seeds} seeds, {args.duration:g} s simulated per run, "
        f"`{SCENARIO.relative_to(ROOT)}` at each load (fraction of the pool's capacity)"
    )
    table = sweep(args.seeds, args.duration)
    shedding = sweep(args.seeds, args.duration, SHEDDING_LOADS, SHEDDING_QUEUE)
    print(table, shedding, sep="\n\n")
    print(f"({time.perf_counter() - started:.0f} s)")
    if not args.no_write:
        write(table, SWEEP_MARKERS, common + ".")
        write(
            shedding,
            SHEDDING_MARKERS,
            f"{common}, every backend's queue limited to {SHEDDING_QUEUE} requests.",
        )
        print(f"written to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
