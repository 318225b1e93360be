"""`evaluate`, its tables and `rl-lb evaluate`, including the two library stories it must tell."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from tiny_scenarios import tiny

from envs.episode import run_episode
from envs.evaluate import RECORD_KEYS, evaluate, render, student_t
from rl_lb.cli import main
from rl_lb.errors import ConfigError, ScenarioError
from rl_lb.scenarios import library_scenarios, load_scenario

LIBRARY = {p.stem: p for p in library_scenarios()}


def test_records_and_tables() -> None:
    records = evaluate(
        [tiny("a", 1.0, duration_s=4.0), tiny("b", 6.0, duration_s=4.0)],
        ["random", "least-latency"],
        2,
        workers=1,
    )
    assert [(r["scenario"], r["balancer"], r["seed"]) for r in records] == [
        (s, b, seed) for s in "ab" for b in ("random", "least-latency") for seed in (0, 1)
    ]
    assert all(tuple(r) == RECORD_KEYS for r in records)
    out = io.StringIO()
    render(records, Console(file=out, width=200))
    text = out.getvalue()
    assert "a (2 seeds" in text
    assert "b (2 seeds" in text
    assert text.count("least-latency") == 2
    assert "±" in text
    assert "eff p99" in text
    assert "every failed request counted" in text  # the caption explains it


def test_parallel_workers_give_the_same_records() -> None:
    jobs = ([tiny("a", 3.0, duration_s=4.0)], ["random", "uniform+jsq"], [4, 5])
    assert evaluate(*jobs, workers=2) == evaluate(*jobs, workers=1)  # type: ignore[arg-type]


def test_bad_input_is_refused_before_running() -> None:
    with pytest.raises(ScenarioError):
        evaluate(["no-such-scenario"], ["random"], 1)
    with pytest.raises(ConfigError):
        evaluate([tiny("a", 1.0, duration_s=4.0)], ["no-such-balancer"], 1)


def test_student_t() -> None:
    assert student_t(4) == pytest.approx(2.776)
    assert student_t(100) == pytest.approx(1.984, abs=1e-3)


def test_cli_slow_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs.json"
    argv = [
        "evaluate",
        "--scenario",
        str(LIBRARY["slow-backend"]),
        "--balancer",
        "round-robin",
        "--balancer",
        "least-latency",
        "--seeds",
        "5",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "slow-backend (5 seeds" in table
    assert "round-robin" in table
    records = json.loads(out.read_text())
    assert len(records) == 10
    assert all(set(r) == set(RECORD_KEYS) for r in records)
    p99 = {
        b: np.mean([r["p99_ms"] for r in records if r["balancer"] == b])
        for b in ("round-robin", "least-latency")
    }
    # Round-robin keeps feeding the slow backend its tenth; since slow start ramps a backend back
    # after each ejection (issue 14) round-robin's p99 is ~270 ms rather than the 1 s timeout,
    # and least-latency's ~130 ms.
    assert p99["least-latency"] < 0.6 * p99["round-robin"]


def test_cli_invalid_scenario_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nduration_s = -1\n')
    assert main(["evaluate", "--scenario", str(bad), "--balancer", "random", "--seeds", "1"]) == 2
    assert "bad.toml" in capsys.readouterr().err


def test_least_latency_does_not_herd_onto_a_fast_failing_backend() -> None:
    scenario = load_scenario(LIBRARY["fast-failure"]).sample(np.random.default_rng(0))
    flaky = next(i for i, b in enumerate(scenario.backends) if b.name == "flaky")
    event = scenario.backends[flaky].events[0]
    result = run_episode(scenario, "least-latency", seed=0)
    during = (result.arrival_s >= event.at_s) & (result.arrival_s < event.until_s)
    share = float(np.mean(result.backend[during] == flaky))
    assert share < 0.05  # a fair share is 0.2: 1 ms 503s must not look like the fastest backend
