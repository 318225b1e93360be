"""docs/results.md gives every learned figure with the outcome guard on and off, and the share of
intervals on the fallback, so a guard that falls back often cannot pass for a good policy.

Rendered from made-up records (the real run is `make results`, minutes long)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import training.results as results
from training.evaluation import LEARNED

SEEDS = [30_001, 30_002]


def records(guard_cost: float, fallback_share: float) -> list[dict[str, Any]]:
    """Two scenarios; the guarded policy costs `guard_cost` × the unguarded one and spends
    `fallback_share` of its intervals on the fallback in `bursty`."""
    out = []
    for scenario, base in (("bursty", 100.0), ("steady", 50.0)):
        for seed in SEEDS:
            jitter = 1.0 + (seed - SEEDS[0]) * 0.02
            figures = {results.UNGUARDED: base * jitter, LEARNED: base * jitter * guard_cost}
            for balancer in [LEARNED, results.UNGUARDED, *results.HEURISTICS]:
                p99 = figures.get(balancer, base * 1.5 * jitter)
                share = fallback_share if balancer == LEARNED and scenario == "bursty" else 0.0
                out.append(
                    {
                        "scenario": scenario,
                        "balancer": balancer,
                        "seed": seed,
                        "effective_p99_ms": p99,
                        "requests": 1000,
                        "errors": 1 if balancer == results.UNGUARDED else 0,
                        "fallback_share": share,
                    }
                )
    return out


@pytest.fixture(autouse=True)
def shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = SimpleNamespace(version="test-version", picker="p2c-latency")
    monkeypatch.setattr(results.LearnedPolicy, "load", staticmethod(lambda spec: stub))


def target_row(page: str, start: str) -> list[str]:
    row = next(line for line in page.splitlines() if line.startswith(f"| {start}"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_every_learned_figure_is_given_with_the_guard_on_and_off() -> None:
    page = results.render_markdown(records(1.01, 0.02), SEEDS)
    header = target_row(page, "scenario | learned")
    assert header[1:3] == ["learned", "learned (guard off)"]
    bursty = target_row(page, "bursty")
    assert bursty[1].startswith("102.0 ± ")  # guard on: 1% over the mean of 100 and 102
    assert bursty[2].startswith("101.0 ± ")  # guard off
    errors = page.split("## Error rate (%) per scenario")[1].split("##")[0]
    assert "| steady | 0.00 | 0.10 |" in errors  # the guard-off errors have their own column
    guard = page.split("## The outcome guard")[1]
    assert "| bursty | 102.0 ± " in guard
    assert "| 1.010 | 2.0 ± 0.0 |" in guard  # on / off, % of intervals on the fallback


def test_the_guard_targets_are_judged_from_the_same_seeds() -> None:
    page = results.render_markdown(records(1.01, 0.02), SEEDS)
    cost = target_row(page, "outcome guard: geometric mean")
    assert cost[1].startswith("1.010 ± ")
    assert cost[-1] == "yes"
    share = target_row(page, "outcome guard: share of intervals")
    assert share[1] == "0.020 (bursty)"
    assert share[-1] == "yes"


@pytest.mark.parametrize(
    ("guard_cost", "fallback_share", "failing"),
    [(1.05, 0.0, "outcome guard: geometric mean"), (1.0, 0.2, "outcome guard: share")],
)
def test_a_costly_or_often_absent_policy_misses_its_targets(
    guard_cost: float, fallback_share: float, failing: str
) -> None:
    page = results.render_markdown(records(guard_cost, fallback_share), SEEDS)
    assert target_row(page, failing)[-1] == "NO"


def test_a_partial_run_names_its_scenarios_in_its_command() -> None:
    page = results.render_markdown(records(1.0, 0.0), SEEDS, ["bursty", "steady"])
    assert "training.results --seeds 2 --scenario bursty --scenario steady" in page


@pytest.mark.parametrize(("heuristic_factor", "overlap"), [(1.5, "no"), (1.011, "yes")])
def test_each_scenario_says_whether_the_intervals_of_learned_and_its_best_heuristic_overlap(
    heuristic_factor: float, overlap: str
) -> None:
    """Two seeds 2% apart give each mean a 95% half-width of ~12.7% (t = 12.71): heuristics at
    1.5× learned's are apart, at 1.011× they overlap (the ratio is learned / the best: 1/f)."""
    page = results.render_markdown(
        [
            {**r, "effective_p99_ms": r["effective_p99_ms"] / 1.5 * heuristic_factor}
            if r["balancer"] in results.HEURISTICS
            else r
            for r in records(1.0, 0.0)
        ],
        SEEDS,
    )
    bursty = target_row(page, "bursty")
    assert bursty[-2] == f"{1 / heuristic_factor:.3f} (round-robin)"
    assert bursty[-1] == overlap
