"""`rl-lb evaluate --ray` runs its episodes as Ray tasks and prints the same table and JSON
records as a run in this process (same scenario draws, same seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl_lb.cli import main

pytest.importorskip("ray", reason="the sweep extra (rl-lb[sweep]) is not installed")

pytestmark = pytest.mark.slow  # starts and stops a local Ray


def test_evaluate_on_ray_gives_the_same_table_and_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--scenario", "slow-backend", "--scenario", "fast-failure"]
    argv += ["--balancer", "round-robin", "--balancer", "least-latency", "--seeds", "2"]
    assert main([*argv, "--json", str(tmp_path / "here.json")]) == 0
    here = capsys.readouterr().out
    assert main([*argv, "--ray", "--json", str(tmp_path / "ray.json")]) == 0
    on_ray = capsys.readouterr().out
    records = json.loads((tmp_path / "ray.json").read_text())
    assert records == json.loads((tmp_path / "here.json").read_text())
    assert len(records) == 2 * 2 * 2
    assert on_ray == here
