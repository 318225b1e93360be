"""Load sweep of Prequal against the heuristics it is measured with, in the simulator.

The pool is tests/scenarios/half-slow.toml (Prequal's set-up in small: four proxies, eight
backends, four of them 2× slower); its traffic is scaled from 0.5 to 1.1 of the pool's capacity.
Each cell is the mean over the seeds of the effective p99 (failed requests count as the 2 s
timeout) and, where some failed, their share: at the overloaded end the p99 is the timeout for
everyone, and the share of failed requests says who degrades gracefully.

Run: `.venv/bin/python benchmarks/prequal_sweep.py [--seeds 3] [--duration 30]`. It prints the
table and writes it into docs/baselines.md between the `prequal-sweep` markers.
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
BEGIN, END = "<!-- prequal-sweep:begin -->", "<!-- prequal-sweep:end -->"
BALANCERS = ("prequal", "least-latency", "least-request", "round-robin")
LOADS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)


def _at_load(base: Scenario, nominal_load: float, load: float, duration_s: float) -> Scenario:
    scaled = time_scaled(base, 1.0, load / nominal_load)
    return dataclasses.replace(scaled, name=f"{base.name}@{load:g}", duration_s=duration_s)


def sweep(seeds: int, duration_s: float) -> str:
    """The sweep as a Markdown table (rows: load, columns: balancers)."""
    family = load_scenario(SCENARIO)
    base = family.nominal()
    nominal_load = 0.9  # the file's `load`
    scenarios = [_at_load(base, nominal_load, load, duration_s) for load in LOADS]
    records = evaluate(scenarios, list(BALANCERS), seeds, workers=1)
    header = "| load | " + " | ".join(f"{b} p99 (ms)" for b in BALANCERS) + " |"
    lines = [header, "|---|" + "---:|" * len(BALANCERS)]
    for load, scenario in zip(LOADS, scenarios, strict=True):
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


def write(table: str, seeds: int, duration_s: float) -> None:
    """Replace what is between the markers of docs/baselines.md (the file is made if missing)."""
    block = (
        f"{BEGIN}\n"
        f"Effective p99 (ms), mean of {seeds} seeds, {duration_s:g} s simulated per run, "
        f"`{SCENARIO.relative_to(ROOT)}` at each load (fraction of the pool's capacity). "
        "Written by `benchmarks/prequal_sweep.py`.\n\n"
        f"{table}\n{END}"
    )
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    if BEGIN in text and END in text:
        text = text.split(BEGIN)[0] + block + text.split(END, 1)[1]
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
    table = sweep(args.seeds, args.duration)
    print(table)
    print(f"({time.perf_counter() - started:.0f} s)")
    if not args.no_write:
        write(table, args.seeds, args.duration)
        print(f"written to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
