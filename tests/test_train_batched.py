"""`rl-lb train --vec batched`: a short run trains, records and registers a policy as the
subprocess runs do, and the same seed on the same machine gives the same weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest

from rl_lb.cli import main
from training.config import load_config
from training.train import RunResult, run

pytestmark = [
    pytest.mark.slow,  # three short trainings with their evaluations
    pytest.mark.filterwarnings(
        # SQLAlchemy 2.1 deprecates a loader strategy MLflow's store still uses.
        "ignore::sqlalchemy.exc.SADeprecationWarning"
    ),
]

SCENARIO = (Path(__file__).parent / "scenarios" / "two-speeds.toml").read_text()
"""Short: one of three backends is three times slower (shared with the other training test)."""

CONFIG = """
timesteps = 1024
n_envs = 8
vec = "batched"
seed = 5
checkpoint_every_steps = 512

[algo_params]
n_steps = 64
batch_size = 256
n_epochs = 2

[policy]
slot_net = [16]
head_net = [16]
critic_net = [16]

[eval]
every_steps = 512
seeds = [1]
final_seeds = [2]
baselines = ["least-latency", "round-robin"]
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("batched-train")
    (root / "two-speeds.toml").write_text(SCENARIO)
    (root / "config.toml").write_text(CONFIG)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlruns.db")
        yield {"root": root, "scenario": root / "two-speeds.toml", "config": root / "config.toml"}


def _weights(policy_dir: Path) -> dict[str, np.ndarray]:
    with np.load(policy_dir / "policy.npz") as arrays:
        return {name: arrays[name] for name in arrays.files}


def test_rl_lb_train_vec_batched_makes_a_policy_and_an_mlflow_run(
    files: dict[str, Path],
) -> None:
    out = files["root"] / "cli-runs"
    argv = ["train", "--config", str(files["config"]), "--scenario", str(files["scenario"])]
    assert main([*argv, "--vec", "batched", "--out", str(out)]) == 0
    (run_dir,) = out.iterdir()
    assert (run_dir / "policy" / "policy.npz").is_file()
    (recorded,) = mlflow.search_runs(experiment_names=["rl-lb"], output_format="list")
    assert recorded.data.params["vec"] == "batched"
    assert recorded.data.params["n_envs"] == "8"
    for metric in (
        "train/sps",
        "train/episode_reward",
        "eval/best_score",
        "final/p99_ratio_vs_least_latency",
    ):
        assert metric in recorded.data.metrics, metric
    versions = mlflow.MlflowClient().search_model_versions("name='rl-lb-policy'")
    assert [v.run_id for v in versions] == [recorded.info.run_id]


def test_the_same_seed_gives_the_same_weights(files: dict[str, Path]) -> None:
    def train_once(name: str) -> RunResult:
        overrides = {
            "scenarios": [str(files["scenario"])],
            "out": str(files["root"] / name),
            "timesteps": 512,
        }
        return run(load_config(files["config"], overrides))

    first, second = train_once("first"), train_once("second")
    a, b = _weights(first.policy_dir), _weights(second.policy_dir)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_an_unknown_vec_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--vec", "threads", "--timesteps", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "threads" in err
    assert "batched or subproc" in err
