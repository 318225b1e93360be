"""Scoring a policy against the heuristics from `envs.evaluate` records.

A run ranks checkpoints by the geometric mean, over scenarios, of the policy's effective p99
divided by least-latency's (both averaged over the held-out seeds): a ratio per scenario, so a
200 ms scenario does not outweigh a 20 ms one, and a geometric mean, so halving one scenario's
tail and doubling another's is a wash. The other target of the shipped policy, the worst ratio
to the best heuristic of each scenario, comes first in `Scores.selection_key`.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "LEARNED",
    "METRIC_KEYS",
    "REFERENCE",
    "Scores",
    "Table",
    "eval_metrics",
    "mean_table",
    "score",
    "write_tables",
]

REFERENCE = "least-latency"
LEARNED = "learned"
METRIC_KEYS = ("requests", "errors", "mean_ms", "p50_ms", "p99_ms", "p999_ms", "effective_p99_ms")

Table = dict[tuple[str, str], dict[str, float]]


def mean_table(records: Iterable[dict[str, Any]]) -> Table:
    """(scenario, balancer) → each metric averaged over seeds."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[(str(record["scenario"]), str(record["balancer"]))].append(record)
    return {
        key: {m: sum(float(r[m]) for r in rows) / len(rows) for m in METRIC_KEYS}
        for key, rows in grouped.items()
    }


class Scores:
    """Effective-p99 ratios of one balancer against least-latency and the best heuristic."""

    def __init__(self, table: Table, balancer: str, heuristics: Sequence[str]) -> None:
        self.scenarios = sorted({s for s, b in table if b == balancer})
        self.vs_reference: dict[str, float] = {}
        self.vs_best: dict[str, float] = {}
        for scenario in self.scenarios:
            own = table[(scenario, balancer)]["effective_p99_ms"]
            reference = table[(scenario, REFERENCE)]["effective_p99_ms"]
            best = min(
                table[(scenario, h)]["effective_p99_ms"]
                for h in heuristics
                if (scenario, h) in table
            )
            self.vs_reference[scenario] = own / reference
            self.vs_best[scenario] = own / best

    @property
    def geomean(self) -> float:
        """The score to minimise: geometric mean of the ratios to least-latency."""
        logs = [math.log(max(r, 1e-9)) for r in self.vs_reference.values()]
        return math.exp(sum(logs) / len(logs)) if logs else float("inf")

    @property
    def worst_vs_best(self) -> float:
        return max(self.vs_best.values(), default=float("inf"))

    def selection_key(self, tolerance: float) -> tuple[bool, float]:
        """What checkpoints are ranked by, smaller first: the geometric mean, except that a
        policy within `tolerance` of the best heuristic on every scenario beats any that is not.
        A policy great on average but broken on one scenario is not the one to ship.
        """
        return (self.worst_vs_best > tolerance, self.geomean)


def score(table: Table, heuristics: Sequence[str], balancer: str = LEARNED) -> Scores:
    return Scores(table, balancer, heuristics)


def eval_metrics(table: Table, scores: Scores, balancer: str = LEARNED) -> dict[str, float]:
    """The `eval/…` metrics of one evaluation, per scenario and overall."""
    metrics = {
        "eval/p99_ratio_vs_least_latency": scores.geomean,
        "eval/worst_ratio_vs_best_heuristic": scores.worst_vs_best,
    }
    for scenario in scores.scenarios:
        row = table[(scenario, balancer)]
        metrics[f"eval/p99_ms/{scenario}"] = row["p99_ms"]
        metrics[f"eval/effective_p99_ms/{scenario}"] = row["effective_p99_ms"]
        metrics[f"eval/error_rate/{scenario}"] = row["errors"] / max(row["requests"], 1.0)
        metrics[f"eval/p99_ratio_vs_least_latency/{scenario}"] = scores.vs_reference[scenario]
        metrics[f"eval/ratio_vs_best_heuristic/{scenario}"] = scores.vs_best[scenario]
    return metrics


def write_tables(table: Table, out_dir: Path) -> list[Path]:
    """`evaluation.csv` and `evaluation.md`: one row per scenario and balancer, seeds averaged."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for (scenario, balancer), values in sorted(table.items()):
        reference = table.get((scenario, REFERENCE), {}).get("effective_p99_ms", math.nan)
        ratio = values["effective_p99_ms"] / reference if reference else math.nan
        rows.append({"scenario": scenario, "balancer": balancer, **values, "ratio_vs_ll": ratio})
    columns = ["scenario", "balancer", *METRIC_KEYS, "ratio_vs_ll"]
    csv_path, md_path = out_dir / "evaluation.csv", out_dir / "evaluation.md"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [csv_path, md_path]
