"""The CLI's tools as a new user meets them: the tracking store every command shares, a training
run folder served as a model, the commands `rl-lb backends` prints, and `rl-lb ui` (issue 13).

Each test runs the command as a user would (through `rl_lb.cli.main`, or a subprocess where
signals or the process's output matter) and asserts what the user sees.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from commands import run_then_ctrl_c
from test_cli_first_hour import TINY

from rl_lb.cli import main

# -- one tracking store, never created by a lookup (finding 5) -----------------------------------


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with no tracking store, as the current folder, MLFLOW_TRACKING_URI unset."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


def test_a_registry_lookup_from_another_folder_names_the_store_and_creates_nothing(
    elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = elsewhere / "tiny.toml"
    scenario.write_text(TINY)
    argv = ["evaluate", "--scenario", str(scenario), "--seeds", "1"]
    assert main([*argv, "--balancer", "learned:models:/rl-lb-policy/1"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line
    assert f"no tracking store at {elsewhere / 'mlruns.db'}" in line
    assert "(searched sqlite:///mlruns.db)" in line
    assert "--tracking-uri" in line
    assert list(elsewhere.iterdir()) == [scenario]  # no empty mlruns.db left behind


def test_serve_takes_the_store_from_tracking_uri(
    elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = elsewhere / "team" / "runs.db"
    argv = ["serve", "-b", "http://127.0.0.1:9", "--policy", "models:/rl-lb-policy/3"]
    # Ephemeral ports: a proxy already on 8080 (a developer's) would be the first error.
    argv += ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    assert main([*argv, "--tracking-uri", f"sqlite:///{other}"]) == 2
    line = capsys.readouterr().err.strip()
    assert f"no tracking store at {other}" in line
    assert not other.parent.exists()


def test_the_tracking_store_is_one_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from rl_lb.tracking_store import DEFAULT_TRACKING_URI, tracking_uri, use_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == DEFAULT_TRACKING_URI == "sqlite:///mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert tracking_uri() == "sqlite:///from-env.db"
    assert use_tracking_uri(None) == "sqlite:///from-env.db"  # the option not given
    assert use_tracking_uri("http://mlflow.internal:5000") == "http://mlflow.internal:5000"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"  # for MLflow too


@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["ui"],
        ["promote"],
        ["serve"],
        ["evaluate"],
        ["bench", "live"],
        ["bench", "sim2real"],
    ],
)
def test_commands_that_touch_the_store_take_tracking_uri(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--tracking-uri" in out
    assert "MLFLOW_TRACKING_URI" in out


# -- a training run folder serves its best policy (finding 4) ------------------------------------


def _exported(folder: Path, version: str) -> Path:
    from random_policy import ENCODER, make_policy

    from training.export import export_policy

    return export_policy(make_policy(), folder, ENCODER, version)


def test_a_run_folder_is_served_by_its_best_policy(tmp_path: Path) -> None:
    from rl_lb.policies.learned import LearnedPolicy

    run = tmp_path / "runs" / "ppo-20260101-000000-s0"
    _exported(run / "best_policy", "ppo-20260101-000000-s0@4096")
    assert LearnedPolicy.load(str(run)).version == "ppo-20260101-000000-s0@4096"
    _exported(run / "policy", "ppo-20260101-000000-s0@8192")  # the final export wins
    assert LearnedPolicy.load(str(run)).version == "ppo-20260101-000000-s0@8192"


def test_evaluate_accepts_a_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "ppo-20260101-000000-s0"
    _exported(run / "best_policy", "ppo-20260101-000000-s0@4096")
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "runs.json"
    argv = ["evaluate", "--scenario", str(scenario), "--seeds", "1", "--json", str(out)]
    assert main([*argv, "--balancer", f"learned:{run}"]) == 0
    assert {r["balancer"] for r in json.loads(out.read_text())} == {f"learned:{run}"}


def test_the_run_layout_is_the_one_the_loader_reads() -> None:
    from rl_lb.policies.learned import RUN_POLICY_FOLDERS
    from training.tracking import POLICY_ARTIFACT_PATH

    assert RUN_POLICY_FOLDERS[0] == POLICY_ARTIFACT_PATH  # training/train.py writes both


# -- backends print the commands that use them (finding 6) ---------------------------------------


def _free_port_block(count: int) -> int:
    """A first port with `count` free ports after it (checked now; loopback only)."""
    import socket

    for base in range(21_000, 60_000, 97):
        try:
            sockets = []
            for k in range(count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free port block")


def test_backends_print_a_serve_line_and_a_loadgen_line_that_fit(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    base = _free_port_block(2)
    argv = ["backends", "--scenario", str(scenario), "--base-port", str(base)]
    stopped = run_then_ctrl_c([sys.executable, "-m", "rl_lb.cli", *argv], "rl-lb loadgen")
    lines, err = stopped.lines, stopped.err
    urls = [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
    assert f"  rl-lb serve --backend {urls[0]} --backend {urls[1]}" in lines
    # tiny: 2 backends x 2 slots / 10 ms = 400 rps capacity, load 0.5, 4 s long
    assert "  rl-lb loadgen http://127.0.0.1:8080/ --rate 200 --duration 4" in lines
    assert "Traceback" not in err


# -- rl-lb ui: starting, a note on an empty store, one line on Ctrl-C (finding 3) ---------------

_FAKE_UI = """
import sys
import training.ui_server as ui
ui.server_command = lambda port: [
    sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"
]
from rl_lb.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ui_says_starting_notes_an_empty_store_and_stops_in_one_line(tmp_path: Path) -> None:
    """The UI server is stood in for by `python -m http.server` (MLflow's takes ~10 s): what is
    under test is the command around it."""
    port = _free_port_block(1)
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    argv = [sys.executable, "-c", _FAKE_UI, "ui", "--port", str(port)]
    stopped = run_then_ctrl_c(argv, "Ctrl-C to stop", cwd=tmp_path, env=env, merge_stderr=True)
    lines, rest = stopped.lines, stopped.rest
    text = "\n".join(lines)
    store = tmp_path / "mlruns.db"
    assert f"http://127.0.0.1:{port}/#/experiments/" in text
    assert f"note: no runs of experiment 'rl-lb' in sqlite:///mlruns.db ({store}) yet" in text
    assert f"starting the UI on http://127.0.0.1:{port}" in text
    assert lines[-1].startswith(f"ready at http://127.0.0.1:{port}")
    assert rest.strip().splitlines() == ["MLflow UI stopped."]
    assert stopped.returncode == 0


# -- a command stopped by Ctrl-C that has no stop message of its own says so in one line ---------


def test_demo_stopped_by_ctrl_c_says_so_in_one_line_with_status_130(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    argv = ["demo", "--scenario", str(scenario), "--duration", "30", "--rate-scale", "0.1"]
    stopped = run_then_ctrl_c(
        [sys.executable, "-m", "rl_lb.cli", *argv],
        "requests/s for 30 s per balancer",
        env={**os.environ, "COLUMNS": "80"},
    )
    assert any("per balancer" in line for line in stopped.lines), stopped.lines
    assert stopped.returncode == 130
    assert "Traceback" not in stopped.err
    assert stopped.err.strip().splitlines()[-1] == "interrupted (Ctrl-C): stopped before the end"
