"""The CLI as a new user meets it: help, defaults, one-line errors, tables that fit.

Each test runs the command as a user would (through `rl_lb.cli.main`, or a subprocess where the
terminal width matters) and asserts what the user sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envs.cli import DEFAULT_BALANCERS
from envs.evaluate import short_labels
from rl_lb.balancers import BALANCER_NAMES
from rl_lb.cli import main

TINY = """
name = "tiny"
description = "two equal backends, a few seconds"
duration_s = 4
control_interval_s = 1.0

[arrivals]
process = "poisson"
load = 0.5

[[backends]]
count = 2
concurrency = 2
service = { dist = "exponential", mean_s = 0.01 }
"""


def _run(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "rl_lb.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


def test_bare_command_prints_help_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "Usage: rl-lb" in out
    assert "evaluate" in out


@pytest.mark.parametrize("command", [["evaluate"], ["scenario", "validate"], ["serve"], []])
def test_dash_h_is_help_and_flags_have_no_placeholder(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "-h"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out
    assert "<bool>" not in out


def test_evaluate_includes_the_learned_policy_by_default() -> None:
    assert "learned" in DEFAULT_BALANCERS
    assert set(DEFAULT_BALANCERS) == set(BALANCER_NAMES)


def test_evaluate_default_run_has_a_learned_row(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "runs.json"
    done = _run("evaluate", "--scenario", str(scenario), "--seeds", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    balancers = {r["balancer"] for r in json.loads(out.read_text())}
    assert balancers == set(BALANCER_NAMES)
    assert "learned" in done.stdout.split()
    assert "tiny (1 seed)" in done.stdout
    assert "±" not in done.stdout  # one seed: no intervals promised or shown


def test_evaluate_table_fits_80_columns_with_a_legend(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    long_name = f"learned:{Path('rl_lb/policies/shipped').resolve()}"
    done = _run(
        "evaluate",
        "--scenario",
        str(scenario),
        "--seeds",
        "2",
        "--balancer",
        "least-latency",
        "--balancer",
        long_name,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert any(line.split()[:1] == ["#1"] for line in lines)  # the short label's row
    assert f"#1 = {long_name}" in done.stdout  # and its legend
    assert "eff p99" in done.stdout
    assert "timeout" in done.stdout  # the caption explains eff p99
    row = next(line for line in lines if line.strip().startswith("least-latency"))
    assert row.split()[1].isdigit()  # requests: a count, no ±


def test_short_labels_keep_short_names() -> None:
    labels, legend = short_labels(["least-latency", "x" * 40])
    assert labels == {"least-latency": "least-latency", "x" * 40: "#1"}
    assert legend == [f"#1 = {'x' * 40}"]


def test_evaluate_json_into_a_missing_folder_fails_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing" / "runs.json"
    code = main(["evaluate", "--scenario", "steady", "--seeds", "1", "--json", str(target)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--json" in err
    assert "does not exist" in err


def test_evaluate_old_policy_spelling_is_refused_with_a_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["evaluate", "--scenario", "steady", "--policy", "capacity", "--picker", "p2c"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--weight-policy capacity" in err


def test_evaluate_weight_policy_adds_a_pair(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "runs.json"
    argv = ["evaluate", "--scenario", str(scenario), "--seeds", "1", "--json", str(out)]
    assert main([*argv, "--weight-policy", "capacity", "--picker", "p2c"]) == 0
    assert {r["balancer"] for r in json.loads(out.read_text())} == {"capacity+p2c"}


def test_evaluate_policy_option_serves_that_model(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "runs.json"
    model = "rl_lb/policies/shipped"
    argv = ["evaluate", "--scenario", str(scenario), "--seeds", "1", "--json", str(out)]
    assert main([*argv, "--balancer", "learned", "--policy", model]) == 0
    assert {r["balancer"] for r in json.loads(out.read_text())} == {f"learned:{model}"}


# -- scenario validate: every file, every error (finding 8) ------------------------------------

BAD_SCENARIO = """
name = "bad one"
duration_s = -3
controll_interval_s = 1
[arrivals]
process = "poison"
load = 0.5
[[backends]]
count = 0
concurency = 3
service = { dist = "exponential", mean_s = -1 }
[[backends]]
count = 2
concurrency = 2
service = { dist = "lognormal", mean_s = 0.01, shape = 2 }
"""


def test_scenario_validate_reports_every_error_of_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, good = tmp_path / "bad.toml", tmp_path / "tiny.toml"
    bad.write_text(BAD_SCENARIO)
    good.write_text(TINY)
    code = main(["scenario", "validate", str(bad), "slow-backendd", str(good)])
    assert code == 2
    captured = capsys.readouterr()
    assert f"{good}: ok: tiny" in captured.out  # the file after the bad ones is still checked
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    where = [line.split(": ")[2] for line in errors if str(bad) in line]
    assert where == [
        "controll_interval_s",
        "name",
        "duration_s",
        "arrivals.process",
        "backends[0].concurency",
        "backends[0].count",
        "backends[0].concurrency",
        "backends[0].service.mean_s",
        "backends[1].service.shape",
    ]
    assert any("did you mean 'slow-backend'?" in line for line in errors)
    assert "2 of 3 files have errors" in captured.err


def test_scenario_errors_are_capped_per_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "typos.toml"
    path.write_text("".join(f"typo_{i} = 1\n" for i in range(30)) + TINY)
    assert main(["scenario", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("unknown key") == 20
    assert "stopped after 20 errors" in err


def test_a_loader_still_raises_one_line_naming_the_first_error(tmp_path: Path) -> None:
    from rl_lb.errors import ScenarioError
    from rl_lb.scenarios import load_scenario

    path = tmp_path / "bad.toml"
    path.write_text(BAD_SCENARIO)
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: controll_interval_s: unknown key")
    assert "8 more errors in this file" in message


# -- help that explains (finding 9) --------------------------------------------------------------


def _commands() -> list[tuple[str, object]]:
    import typer

    from rl_lb.cli import _register_wings, app

    _register_wings()
    root = typer.main.get_command(app)
    found: list[tuple[str, object]] = []

    def walk(prefix: str, command: object) -> None:
        found.append((prefix, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk(f"{prefix} {name}".strip(), sub)

    walk("", root)
    return found


def test_every_option_of_every_command_is_described() -> None:
    undescribed = [
        f"{name}: {'/'.join(param.opts)}"
        for name, command in _commands()
        for param in getattr(command, "params", [])
        if param.param_type_name == "option" and not (param.help or "").strip()
    ]
    assert undescribed == []


def test_every_scenario_option_says_a_library_name_works() -> None:
    helps = {
        name: param.help
        for name, command in _commands()
        for param in getattr(command, "params", [])
        if "--scenario" in getattr(param, "opts", [])
    }
    assert {"train", "evaluate", "backends", "bench live"} <= set(helps)
    assert [name for name, text in helps.items() if "name" not in (text or "")] == []


def test_train_help_shows_its_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from training.config import TrainConfig

    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the help wraps; compare words
    assert f"[default: ({TrainConfig.timesteps:,})]" in out
    assert f"[default: ({TrainConfig.n_envs})]" in out
    assert f"[default: ({TrainConfig.out}/)]" in out


# -- train says what it is doing (finding 16) -----------------------------------------------------


def test_train_says_what_it_loads_before_the_heavy_imports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.train

    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    calls: list[object] = []
    monkeypatch.setattr(training.train, "run", lambda config, resume: calls.append(config))
    assert main(["train", "--scenario", str(scenario), "--timesteps", "64"]) == 0
    assert len(calls) == 1
    assert "loading torch, stable-baselines3 and MLflow" in capsys.readouterr().err


def test_the_training_bar_labels_its_two_times() -> None:
    from rich.console import Console

    from training.callbacks import ProgressCallback

    console = Console(record=True, width=120, force_terminal=False)
    bar = ProgressCallback(1000, console)
    bar.progress.start()
    bar.progress.update(bar.task, completed=500)
    bar.progress.stop()
    text = console.export_text()
    assert "elapsed" in text
    assert "left" in text
