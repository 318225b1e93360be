"""`training.compare_selections`: one heuristic across two held-out selections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl_lb.errors import ConfigError
from training.compare_selections import compare, load_selection, main
from training.heldout_report import HEURISTICS


def _selection(path: Path, p99: dict[str, dict[str, list[float]]]) -> Path:
    """A selection.json of worlds → heuristic → p99 per seed (heuristics not given: 500 ms)."""
    records = [
        {"scenario": world, "balancer": h, "seed": 40001 + k, "effective_p99_ms": value}
        for world, given in p99.items()
        for h in HEURISTICS
        for k, value in enumerate(given.get(h, [500.0, 500.0]))
    ]
    path.write_text(json.dumps({"key": {}, "records": records}))
    return path


def test_the_change_is_the_geometric_mean_of_the_paired_ratios(tmp_path: Path) -> None:
    before = _selection(
        tmp_path / "before.json",
        {
            "w0": {"prequal": [200.0, 200.0], "jsq": [100.0, 100.0]},  # jsq best
            "w1": {"prequal": [100.0, 300.0]},  # prequal best (mean 200)
            "w2": {h: [1000.0] * 2 for h in HEURISTICS},  # all at the timeout: left out
        },
    )
    after = _selection(
        tmp_path / "after.json",
        {
            "w0": {"prequal": [50.0, 50.0], "jsq": [100.0, 100.0]},  # 0.25x: prequal best now
            "w1": {"prequal": [400.0, 400.0]},  # 2x
            "w2": {h: [1000.0] * 2 for h in HEURISTICS},
        },
    )
    result = compare(load_selection(before), load_selection(after), "prequal", "jsq")
    assert (result.worlds, result.separating, result.lower_in) == (3, 2, 1)
    assert result.geomean_ratio == pytest.approx((0.25 * 2.0) ** 0.5)
    assert (result.lowest_ratio, result.highest_ratio) == (0.25, 2.0)
    assert result.best_before["jsq"] == result.best_before["prequal"] == 1
    assert result.best_after["prequal"] == 2  # w1 too: 400 < 500
    assert "jsq" not in result.best_after
    assert result.against_best_before == 1
    assert (result.versus_before, result.versus_after) == (2.0, 0.5)


def test_bad_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="not a held-out selection"):
        load_selection(bad)
    partial = tmp_path / "partial.json"
    partial.write_text(
        json.dumps(
            {"records": [{"scenario": "w", "balancer": "jsq", "seed": 1, "effective_p99_ms": 1}]}
        )
    )
    with pytest.raises(ConfigError, match="has no records of"):
        load_selection(partial)
    one = _selection(tmp_path / "one.json", {"w0": {}})
    other = _selection(tmp_path / "other.json", {"w1": {}})
    with pytest.raises(ConfigError, match="same worlds"):
        main([str(one), str(other)])
