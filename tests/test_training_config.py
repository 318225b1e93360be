"""`TrainConfig` from TOML and flags: typos and wrong types are errors, flags win over the file."""

from __future__ import annotations

import dataclasses
import subprocess
import tomllib
from pathlib import Path

import pytest

from rl_lb.cli import main
from rl_lb.errors import ConfigError
from training.config import AlgoConfig, PolicyConfig, TrainConfig, load_config

SHIPPED = Path(__file__).parents[1] / "training" / "configs" / "shipped.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_file_fills_sections_and_flags_override_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "seed = 4\ntimesteps = 1000\n[algo_params]\ngamma = 1\n[policy]\nslot_net = [8, 8]\n"
        '[env]\npicker = "p2c-latency"\n',
    )
    config = load_config(path, {"timesteps": 50, "n_envs": None})
    assert (config.seed, config.timesteps, config.n_envs) == (4, 50, TrainConfig().n_envs)
    assert config.algo_params.gamma == 1.0
    assert isinstance(config.algo_params.gamma, float)
    assert config.policy.slot_net == [8, 8]
    assert config.env == {"picker": "p2c-latency"}
    assert config.flat()["algo_params.gamma"] == 1.0


def test_the_shipped_config_pins_every_hyper_parameter() -> None:
    """`make policy` must not change when a default in config.py does."""
    raw = tomllib.loads(SHIPPED.read_text())
    assert {"seed", "timesteps", "n_envs", "algo", "reward_scale"} <= raw.keys()
    for section, cls in (("algo_params", AlgoConfig), ("policy", PolicyConfig)):
        assert raw[section].keys() == {f.name for f in dataclasses.fields(cls)}, section
    assert len(load_config(SHIPPED).scenario_paths()) >= 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gama = 0.9\n", "unknown key 'gama'"),
        ("[algo_params]\ngama = 0.9\n", "unknown key [algo_params] 'gama'"),
        ("timesteps = 1.5\n", "timesteps = 1.5 should be a int"),
        ("[policy]\nslot_net = 64\n", "slot_net = 64 should be a list"),
        ("seed = true\n", "should be a int"),
        ("algo = 'sac'\n", "unknown algorithm 'sac'"),
        ("[eval\n", "invalid TOML"),
        ("policy = 3\n", "[policy] should be a table"),
    ],
)
def test_a_bad_file_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)


def test_rl_lb_train_reports_a_bad_config_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--config", str(write(tmp_path, "gama = 0.9\n"))]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'gama'" in err
    assert len(err.splitlines()) == 1


def test_rl_lb_train_reports_an_unknown_scenario_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["train", "--scenario", "no-such-scenario", "--timesteps", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no-such-scenario" in err
    assert len(err.splitlines()) == 1


def test_rl_lb_ui_serves_the_training_store_on_localhost_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    launched: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda command: launched.append(command) or 0)
    assert main(["ui", "--port", "5055"]) == 0
    (command,) = launched
    assert command[command.index("--backend-store-uri") + 1] == uri
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5055"
