"""`training.plots.make_all`: the same figures whether its episodes run in turn or on a training
run's evaluation workers."""

from __future__ import annotations

from pathlib import Path

from tiny_scenarios import tiny

from envs.evaluate import EvaluationPool
from rl_lb.policies.learned import SHIPPED_DIR
from training import plots


def test_the_plots_are_the_same_on_the_workers(tmp_path: Path) -> None:
    scenarios = [tiny("degrading", 4.0), tiny("steady", 1.0)]  # one with a weights plot
    baselines = ["least-latency", "round-robin"]
    alone = plots.make_all(scenarios, baselines, SHIPPED_DIR, 20_001, tmp_path / "alone")
    with EvaluationPool(workers=2) as pool:
        pooled = plots.make_all(scenarios, baselines, SHIPPED_DIR, 20_001, tmp_path / "pool", pool)
    names = sorted(p.name for p in alone.iterdir())
    assert names == [
        "latency_cdf_degrading.png",
        "latency_cdf_steady.png",
        "weights_degrading.png",
    ]
    assert names == sorted(p.name for p in pooled.iterdir())
    for name in names:
        assert (alone / name).read_bytes() == (pooled / name).read_bytes(), name
