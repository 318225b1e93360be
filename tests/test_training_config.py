"""`TrainConfig` from TOML and flags: typos and wrong types are errors, flags win over the file."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import tomllib
from pathlib import Path

import pytest

from envs.env import ERROR_WEIGHT, BackendPoolEnv
from rl_lb.cli import main
from rl_lb.errors import ConfigError
from rl_lb.policies.learned import HEADER_FILE, SHIPPED_DIR, LearnedPolicy
from rl_lb.scenarios import library_scenarios
from training.config import AlgoConfig, PolicyConfig, TrainConfig, load_config

CONFIGS = Path(__file__).parents[1] / "training" / "configs"
SHIPPED = CONFIGS / "shipped.toml"
STAGE3 = CONFIGS / "shipped-stage3.toml"
WORLDS = STAGE3.with_name("shipped-worlds.toml")
FINETUNE = CONFIGS / "shipped-finetune.toml"
STAGE4 = CONFIGS / "shipped-prequal.toml"
"""The four stages of `make policy` (docs/training.md, "Reproduce the shipped policy"), and
`make policy-worlds` (tried, not shipped)."""


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


@pytest.mark.parametrize(
    "path",
    [SHIPPED, FINETUNE, STAGE3, STAGE4, WORLDS],
    ids=["stage 1", "stage 2", "stage 3", "stage 4", "worlds"],
)
def test_both_shipped_configs_load_and_pin_every_hyper_parameter(path: Path) -> None:
    """`make policy` must not change when a default in config.py does."""
    raw = tomllib.loads(path.read_text())
    assert {"seed", "timesteps", "n_envs", "algo", "reward_scale"} <= raw.keys()
    for section, cls in (("algo_params", AlgoConfig), ("policy", PolicyConfig)):
        assert raw[section].keys() == {f.name for f in dataclasses.fields(cls)}, section
    config = load_config(path)
    # The small library, and training copies of the large worlds (20-64 backends: the whole
    # library would pad every pool to the 210 slots of large-slowdown).
    paths = config.scenario_paths()
    small = [p for p in library_scenarios() if not p.name.startswith("large-")]
    assert paths[: len(small)] == small
    assert [p.name for p in paths[len(small) :]] == [
        "train-large-heterogeneous.toml",
        "train-large-slowdown.toml",
        "train-large-many-proxies.toml",
    ]
    assert config.algo == "ppo"
    # The shipped version is ppo-…-sSEED@… of these stages; policy-worlds was tried on seed 7.
    shipped = re.search(r"-s(\d+)@", LearnedPolicy.load().version)
    assert shipped is not None
    assert config.seed == (7 if path == WORLDS else int(shipped.group(1)))
    assert set(config.env) <= set(inspect.signature(BackendPoolEnv).parameters)


def test_the_shipped_configs_are_the_four_stages_docs_training_describes() -> None:
    """Stage 1: 100 000 steps with the in-flight p2c picker and the default error price.
    Stage 2 resumes it for 50 000 more with p2c-latency, arrival rates at 50-100 % of each
    scenario's and a failed request priced at 40 instead of 10; stage 3 resumes stage 2 for
    200 000 more (350 000 in all) with the same settings on four environments. Stage 4 starts
    from stage 3's export (the Makefile's --init) with the prequal picker, 10 000 steps of
    critic warm-up and 120 000 more, on 300 generated worlds too, and its best evaluation is
    the shipped policy. The same network and PPO settings throughout."""
    stage1, stage2, stage3 = load_config(SHIPPED), load_config(FINETUNE), load_config(STAGE3)
    stage4 = load_config(STAGE4)
    assert stage1.timesteps == 100_000
    assert stage1.picker == "p2c"
    assert "load_scale" not in stage1.env
    assert stage1.env.get("error_weight", ERROR_WEIGHT) == ERROR_WEIGHT == 10.0
    assert stage2.timesteps - stage1.timesteps == 50_000
    assert stage3.timesteps - stage2.timesteps == 200_000
    for later in (stage2, stage3, stage4):
        assert later.env["load_scale"] == [0.5, 1.0]
        assert later.env["error_weight"] == 40.0
        assert later.algo_params == stage1.algo_params
        assert later.policy == stage1.policy
    assert stage2.picker == stage3.picker == "p2c-latency"
    assert stage3.n_envs == stage4.n_envs == 4
    assert stage4.picker == "prequal"
    assert (stage4.init, stage4.critic_warmup_steps) == ("", 10_000)  # init: the Makefile's
    assert stage4.timesteps - stage4.critic_warmup_steps == 120_000
    assert (stage4.worlds, stage4.worlds_seed) == (300, 1)
    makefile = (CONFIGS.parents[1] / "Makefile").read_text()
    recipe = makefile[makefile.index("\npolicy:") : makefile.index("\npolicy-worlds:")]
    assert recipe.count("rl-lb train") == 4
    assert '--init "$$(ls -d runs/shipped-stage3/*/policy)"\n' in recipe
    assert recipe.count("--export") == 1  # only the tempering exports, after stage 4
    assert 'training.temper "$$(ls -d runs/shipped-prequal/*/policy)"' in recipe
    assert "--record-cache --export rl_lb/policies/shipped\n" in recipe
    shipped = json.loads((SHIPPED_DIR / HEADER_FILE).read_text())
    assert shipped["picker"] == stage4.picker
    assert shipped["architecture"]["slot_net"] == stage4.policy.slot_net
    assert shipped["architecture"]["head_net"] == stage4.policy.head_net
    assert shipped["activation"] == stage4.policy.activation
    trained = shipped["temper"]["trained_version"]  # stage 4's export, before the tempering
    assert shipped["version"] == f"{trained}~t{shipped['temper']['scale']:g}"
    steps = int(trained.rpartition("@")[2])  # an evaluation of stage 4 (PPO rollouts)
    assert stage4.critic_warmup_steps < steps
    assert steps < stage4.timesteps + stage4.algo_params.n_steps * stage4.n_envs


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
        ("worlds_seed = 1000000\n", "generator seed 1000000 is not a training seed"),
        ("worlds = -1\n", "-1 generated worlds"),
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
    """The MLflow server `rl-lb ui` starts (training/ui_server.py) reads the one tracking store
    and listens on loopback only."""
    from training.ui_server import server_command

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    command = server_command(5055)
    assert command[command.index("--backend-store-uri") + 1] == uri
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5055"


def test_the_gunicorn_specialisation_trains_on_what_the_fit_writes() -> None:
    """training/configs/specialise-gunicorn.toml (docs/sim2real.md, "Learn your own pool"):
    the two files `benchmarks/fit_gunicorn.py --out g-work` writes (the pool as recorded and at
    its default --serve-rate of 55 requests/s), evaluated at the served load, from scratch, with
    the picker the proxy's own view supports (gunicorn answers no Prequal probes)."""
    config = load_config(CONFIGS / "specialise-gunicorn.toml")
    fit = (CONFIGS.parents[1] / "benchmarks" / "fit_gunicorn.py").read_text()
    assert 'f"gunicorn-pool-at-{args.serve_rate:g}"' in fit
    assert "default=55.0" in fit
    assert config.scenarios == ["g-work/gunicorn-pool-at-55.toml", "g-work/gunicorn-pool.toml"]
    assert config.eval.scenarios == ["g-work/gunicorn-pool-at-55.toml"]
    assert config.init == ""
    assert config.picker == "p2c-latency"
    assert set(config.env) <= set(inspect.signature(BackendPoolEnv).parameters)
    assert config.timesteps <= 60_000  # the 43-second run of docs/sim2real.md
