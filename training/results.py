"""docs/results.md: the shipped policy against every baseline, on seeds training never saw.

    .venv/bin/python -m training.results [--seeds 10] [--out docs/results.md]

Every number in the page comes from one `envs.evaluate` run made by this module; the page says
which command made it, so it is regenerated, never edited. Every figure of the learned policy is
given with its outcome guard on (`learned`) and off (`learned~no-outcome-guard`), beside the
share of control intervals it spent on its fallback: a guard that falls back often would make a
poor policy look like least-latency, and the page shows what the guard costs a good one.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.evaluate import evaluate, student_t
from envs.record_cache import RecordCache
from rl_lb.balancers import BALANCER_NAMES, UNGUARDED_SUFFIX
from rl_lb.errors import RlLbError
from rl_lb.policies.learned import LearnedPolicy
from rl_lb.scenarios import library_scenarios, resolve_scenario
from training.evaluation import LEARNED, REFERENCE
from training.heldout_report import BEGIN as HELDOUT_BEGIN
from training.heldout_report import END as HELDOUT_END
from training.heldout_report import update_results_page
from training.script import add_record_cache_flag, run_script

__all__ = ["main", "render_markdown"]

FIRST_SEED = 30_001
"""Above training's environment seeds and its evaluation seeds (10_001…, 20_001…)."""
HEURISTICS = tuple(name for name in BALANCER_NAMES if name != LEARNED)
UNGUARDED = LEARNED + UNGUARDED_SUFFIX
"""The learned policy with its output checks only: the guard-off figures."""
COMMAND = ".venv/bin/python -m training.results --seeds {seeds}"
TARGETS = (
    ("worst ratio to the best heuristic, any scenario", "vs_best", 1.05),
    ("geometric mean of effective p99 vs least-latency", REFERENCE, 0.90),
    ("geometric mean of effective p99 vs inverse-latency", "inverse-latency", 0.70),
    ("outcome guard: geometric mean of effective p99, guard on / off", UNGUARDED, 1.02),
    ("outcome guard: share of intervals on the fallback, any scenario", "fallback_share", 0.05),
)


def _interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% Student-t interval."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan
    return mean, student_t(len(values) - 1) * float(np.std(values, ddof=1)) / math.sqrt(len(values))


def _by_cell(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for record in records:
        cells[(record["scenario"], record["balancer"])][int(record["seed"])] = record
    return cells


def _geomean_ratio(
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]],
    scenarios: list[str],
    seeds: list[int],
    other: str,
) -> tuple[float, float]:
    """Per seed, the geometric mean over scenarios of learned / other; then its interval (paired
    seeds: the same worlds and arrivals for both)."""
    per_seed = []
    for seed in seeds:
        logs = [
            math.log(
                cells[(s, LEARNED)][seed]["effective_p99_ms"]
                / cells[(s, other)][seed]["effective_p99_ms"]
            )
            for s in scenarios
        ]
        per_seed.append(math.exp(sum(logs) / len(logs)))
    return _interval(per_seed)


def _label(balancer: str) -> str:
    return "learned (guard off)" if balancer == UNGUARDED else balancer


def _fallback_shares(
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]], scenarios: list[str]
) -> dict[str, tuple[float, float]]:
    """Per scenario, the guarded policy's share of intervals on its fallback: mean and interval."""
    return {
        s: _interval([float(r["fallback_share"]) for r in cells[(s, LEARNED)].values()])
        for s in scenarios
    }


def render_markdown(
    records: list[dict[str, Any]], seeds: list[int], scenarios_given: Sequence[str] = ()
) -> str:
    """The page; `scenarios_given`: the `--scenario` values of a partial run, named in its
    command line so that such a page cannot pass for the whole library."""
    shipped = LearnedPolicy.load(None)
    cells = _by_cell(records)
    scenarios = sorted({s for s, _ in cells})
    mean = {
        key: _interval([r["effective_p99_ms"] for r in rows.values()])
        for key, rows in cells.items()
    }
    shares = _fallback_shares(cells, scenarios)
    lines = [
        "# Results: the shipped policy against every baseline",
        "",
        "Regenerate this page (about 15 minutes on 2 cores, with the large scenarios) with:",
        "",
        "```",
        COMMAND.format(seeds=len(seeds)) + "".join(f" --scenario {s}" for s in scenarios_given),
        "```",
        "",
        f"Simulator, every library scenario, seeds {seeds[0]}–{seeds[-1]} (never seen in "
        "training). `learned` is the shipped policy (`rl_lb/policies/shipped/`, "
        f"{shipped.version}) with the `{shipped.picker}` picker it was trained with, guarded: "
        "its output checked every interval and its outcomes watched by the outcome guard "
        "(docs/proxy.md). `learned (guard off)` is the same policy with its output checks only "
        f"(`{UNGUARDED}`). "
        "Effective p99 counts a failed request as the scenario's timeout. "
        "± is the half-width of a 95% Student-t interval over seeds.",
        "",
        "## Targets",
        "",
        "| target | measured | required | met |",
        "|---|---|---|---|",
    ]
    best_of = {s: min(HEURISTICS, key=lambda h: mean[(s, h)][0]) for s in scenarios}
    vs_best = {s: mean[(s, LEARNED)][0] / mean[(s, best_of[s])][0] for s in scenarios}
    worst = max(vs_best, key=vs_best.__getitem__)
    most_fallback = max(scenarios, key=lambda s: shares[s][0])
    for label, other, bound in TARGETS:
        if other == "vs_best":
            value, text = vs_best[worst], f"{vs_best[worst]:.3f} ({worst})"
        elif other == "fallback_share":
            value = shares[most_fallback][0]
            text = f"{value:.3f} ({most_fallback})"
        else:
            value, half = _geomean_ratio(cells, scenarios, seeds, other)
            text = f"{value:.3f} ± {half:.3f}"
        lines.append(f"| {label} | {text} | ≤ {bound:.2f} | {'yes' if value <= bound else 'NO'} |")
    lines += ["", "## Effective p99 (ms) per scenario", ""]
    balancers = [LEARNED, UNGUARDED, *HEURISTICS]
    header = " | ".join(_label(b) for b in balancers)
    lines.append(
        f"| scenario | {header} | learned / best heuristic | 95% intervals of the two overlap |"
    )
    lines.append("|---" * (len(balancers) + 3) + "|")
    for s in scenarios:
        row = [f"{mean[(s, b)][0]:.1f} ± {mean[(s, b)][1]:.1f}" for b in balancers]
        ours, theirs = mean[(s, LEARNED)], mean[(s, best_of[s])]
        overlap = abs(ours[0] - theirs[0]) <= ours[1] + theirs[1]
        lines.append(
            f"| {s} | " + " | ".join(row) + f" | {vs_best[s]:.3f} ({best_of[s]}) "
            f"| {'yes' if overlap else 'no'} |"
        )
    lines += ["", "## Error rate (%) per scenario", ""]
    lines.append(f"| scenario | {header} |")
    lines.append("|---" * (len(balancers) + 1) + "|")
    for s in scenarios:
        rates = []
        for b in balancers:
            rows = cells[(s, b)].values()
            rates.append(
                100 * sum(r["errors"] for r in rows) / max(sum(r["requests"] for r in rows), 1)
            )
        lines.append(f"| {s} | " + " | ".join(f"{x:.2f}" for x in rates) + " |")
    lines += [
        "",
        "## The outcome guard",
        "",
        "What the guard costs the shipped policy, and how often it stepped aside: effective p99 "
        "with the guard on and off (same seeds), their ratio, and the share of control "
        "intervals the guarded policy spent on its fallback (any reason).",
        "",
        "| scenario | guard on (ms) | guard off (ms) | on / off | intervals on fallback (%) |",
        "|---|---|---|---|---|",
    ]
    for s in scenarios:
        on, off = mean[(s, LEARNED)], mean[(s, UNGUARDED)]
        share, half = shares[s]
        lines.append(
            f"| {s} | {on[0]:.1f} ± {on[1]:.1f} | {off[0]:.1f} ± {off[1]:.1f} "
            f"| {on[0] / off[0]:.3f} | {100 * share:.1f} ± {100 * half:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument(
        "--scenario",
        action="append",
        help="a library scenario or a file (repeatable; default: the whole library). "
        "A quick look only: docs/results.md is the whole library",
    )
    add_record_cache_flag(parser)
    args = parser.parse_args()
    seeds = list(range(FIRST_SEED, FIRST_SEED + args.seeds))
    if args.seeds < 1:
        parser.exit(2, f"error: --seeds {args.seeds}: give 1 or more (2+ for intervals)\n")
    try:
        scenarios = [str(resolve_scenario(s)) for s in args.scenario or library_scenarios()]
        cache = RecordCache.from_env() if args.record_cache else None
        records = evaluate(scenarios, [LEARNED, UNGUARDED, *HEURISTICS], seeds, cache=cache)
    except RlLbError as error:
        parser.exit(2, f"error: {error}\n")
    page = render_markdown(records, seeds, args.scenario or ())
    # The held-out section is `training.heldout`'s (its own command and budget): carry it over.
    old = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    args.out.write_text(page)
    if HELDOUT_BEGIN in old and HELDOUT_END in old:
        section = old.split(HELDOUT_BEGIN, 1)[1].split(HELDOUT_END, 1)[0].lstrip("\n")
        update_results_page(args.out, section)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_script(main)
