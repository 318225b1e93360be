"""How checkpoints are scored against the heuristics, and the tables written for a run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from training.evaluation import Table, eval_metrics, mean_table, score, write_tables

HEURISTICS = ["least-latency", "capacity"]


def record(scenario: str, balancer: str, seed: int, effective_p99_ms: float) -> dict[str, object]:
    return {
        "scenario": scenario,
        "balancer": balancer,
        "seed": seed,
        "requests": 1000,
        "errors": 10,
        "mean_ms": 5.0,
        "p50_ms": 4.0,
        "p99_ms": effective_p99_ms / 2,
        "p999_ms": effective_p99_ms,
        "effective_p99_ms": effective_p99_ms,
    }


def table(learned: dict[str, float]) -> Table:
    rows = [
        record("a", "least-latency", 0, 100.0),
        record("a", "least-latency", 1, 300.0),
        record("a", "capacity", 0, 100.0),
        record("b", "least-latency", 0, 50.0),
        record("b", "capacity", 0, 40.0),
    ]
    rows += [record(s, "learned", 0, v) for s, v in learned.items()]
    return mean_table(rows)


def test_seeds_are_averaged_and_ratios_taken_per_scenario() -> None:
    scores = score(table({"a": 100.0, "b": 50.0}), HEURISTICS)
    assert scores.vs_reference == {"a": 0.5, "b": 1.0}
    assert scores.vs_best == {"a": 1.0, "b": 1.25}
    assert scores.geomean == pytest.approx(math.sqrt(0.5))
    assert scores.worst_vs_best == 1.25


def test_a_policy_within_tolerance_everywhere_ranks_before_a_better_average() -> None:
    uneven = score(table({"a": 20.0, "b": 50.0}), HEURISTICS)
    even = score(table({"a": 100.0, "b": 41.0}), HEURISTICS)
    assert uneven.geomean < even.geomean
    assert even.selection_key(1.05) < uneven.selection_key(1.05)
    assert uneven.selection_key(1.5) < even.selection_key(1.5)


def test_metrics_are_namespaced_per_scenario() -> None:
    t = table({"a": 100.0, "b": 50.0})
    metrics = eval_metrics(t, score(t, HEURISTICS))
    assert metrics["eval/effective_p99_ms/a"] == 100.0
    assert metrics["eval/p99_ms/b"] == 25.0
    assert metrics["eval/error_rate/a"] == pytest.approx(0.01)
    assert metrics["eval/p99_ratio_vs_least_latency/a"] == 0.5
    assert metrics["eval/ratio_vs_best_heuristic/b"] == 1.25


def test_tables_hold_one_row_per_scenario_and_balancer(tmp_path: Path) -> None:
    csv_path, md_path = write_tables(table({"a": 100.0, "b": 50.0}), tmp_path)
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    learned_a = next(r for r in rows if r["scenario"] == "a" and r["balancer"] == "learned")
    assert float(learned_a["ratio_vs_ll"]) == 0.5
    lines = md_path.read_text().splitlines()
    assert lines[0].startswith("| scenario | balancer |")
    assert len(lines) == 2 + 6


@pytest.mark.parametrize("width", [80, 200])
def test_the_final_table_fits_the_terminal_with_whole_names_and_values(width: int) -> None:
    """At 80 columns the table takes its compact form; the longest training scenario's name and
    every value stay on one line, and every short name used is in the legend."""
    from rich.console import Console

    from training.train import _print_table

    baselines = ["round-robin", "least-latency", "inverse-latency", "p2c", "jsq", "capacity"]
    scenarios = ["steady", "train-large-heterogeneous", "train-large-many-proxies"]
    table: Table = {}
    for k, scenario in enumerate(scenarios):
        for j, balancer in enumerate([*baselines, "learned"]):
            p99 = 1000.0 + 111.1 * j if balancer != "inverse-latency" else 123.4 + k
            table[(scenario, balancer)] = {"effective_p99_ms": p99}
    console = Console(width=width, record=True, color_system=None)
    _print_table(console, table, baselines)
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    for k, scenario in enumerate(scenarios):
        row = next(line for line in lines if line.strip().startswith(scenario))
        assert f"{123.4 + k:.1f}" in row  # the best heuristic's p99, whole on the same line
        assert f"{1000.0 + 111.1 * 6:.1f}" in row  # learned's
    if width == 80:
        assert "inv-lat = inverse-latency" in text
        assert "best = the best heuristic" in text
