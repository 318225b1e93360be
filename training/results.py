"""docs/results.md: the shipped policy against every baseline, on seeds training never saw.

    .venv/bin/python -m training.results [--seeds 10] [--out docs/results.md]

Every number in the page comes from one `envs.evaluate` run made by this module; the page says
which command made it, so it is regenerated, never edited.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from envs.evaluate import evaluate, student_t
from rl_lb.balancers import BALANCER_NAMES
from rl_lb.policies.learned import LearnedPolicy
from rl_lb.scenarios import library_scenarios
from training.evaluation import LEARNED, REFERENCE

__all__ = ["main", "render_markdown"]

FIRST_SEED = 30_001
"""Above training's environment seeds and its evaluation seeds (10_001…, 20_001…)."""
HEURISTICS = tuple(name for name in BALANCER_NAMES if name != LEARNED)
COMMAND = ".venv/bin/python -m training.results --seeds {seeds}"
TARGETS = (
    ("worst ratio to the best heuristic, any scenario", "vs_best", 1.05),
    ("geometric mean of effective p99 vs least-latency", REFERENCE, 0.90),
    ("geometric mean of effective p99 vs inverse-latency", "inverse-latency", 0.70),
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
    """Per seed, the geometric mean over scenarios of learned / other; then its interval."""
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


def render_markdown(records: list[dict[str, Any]], seeds: list[int]) -> str:
    shipped = LearnedPolicy.load(None)
    cells = _by_cell(records)
    scenarios = sorted({s for s, _ in cells})
    mean = {
        key: _interval([r["effective_p99_ms"] for r in rows.values()])
        for key, rows in cells.items()
    }
    lines = [
        "# Results: the shipped policy against every baseline",
        "",
        "Regenerate this page (about 2 minutes on 2 cores) with:",
        "",
        "```",
        COMMAND.format(seeds=len(seeds)),
        "```",
        "",
        f"Simulator, every library scenario, seeds {seeds[0]}–{seeds[-1]} (never seen in "
        "training). `learned` is the shipped policy (`rl_lb/policies/shipped/`, "
        f"{shipped.version}) with the `{shipped.picker}` picker it was trained with, guarded. "
        "Effective p99 counts a failed request as the scenario's timeout. "
        "± is the half-width of a 95% Student-t interval over seeds.",
        "",
        "## Targets",
        "",
        "| target | measured | required | met |",
        "|---|---|---|---|",
    ]
    vs_best = {}
    for s in scenarios:
        best = min(mean[(s, h)][0] for h in HEURISTICS)
        vs_best[s] = mean[(s, LEARNED)][0] / best
    worst = max(vs_best, key=vs_best.__getitem__)
    for label, other, bound in TARGETS:
        if other == "vs_best":
            value, text = vs_best[worst], f"{vs_best[worst]:.3f} ({worst})"
        else:
            value, half = _geomean_ratio(cells, scenarios, seeds, other)
            text = f"{value:.3f} ± {half:.3f}"
        lines.append(f"| {label} | {text} | ≤ {bound:.2f} | {'yes' if value <= bound else 'NO'} |")
    lines += ["", "## Effective p99 (ms) per scenario", ""]
    balancers = [LEARNED, *HEURISTICS]
    lines.append("| scenario | " + " | ".join(balancers) + " | learned / best heuristic |")
    lines.append("|---" * (len(balancers) + 2) + "|")
    for s in scenarios:
        row = [f"{mean[(s, b)][0]:.1f} ± {mean[(s, b)][1]:.1f}" for b in balancers]
        lines.append(f"| {s} | " + " | ".join(row) + f" | {vs_best[s]:.3f} |")
    lines += ["", "## Error rate (%) per scenario", ""]
    lines.append("| scenario | " + " | ".join(balancers) + " |")
    lines.append("|---" * (len(balancers) + 1) + "|")
    for s in scenarios:
        rates = []
        for b in balancers:
            rows = cells[(s, b)].values()
            rates.append(
                100 * sum(r["errors"] for r in rows) / max(sum(r["requests"] for r in rows), 1)
            )
        lines.append(f"| {s} | " + " | ".join(f"{x:.2f}" for x in rates) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args()
    seeds = list(range(FIRST_SEED, FIRST_SEED + args.seeds))
    records = evaluate([str(path) for path in library_scenarios()], [LEARNED, *HEURISTICS], seeds)
    args.out.write_text(render_markdown(records, seeds))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
