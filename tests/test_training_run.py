"""A tiny end-to-end training run into a temporary MLflow store, then everything it promised.

One run (a few hundred steps on a short three-backend scenario) is shared by the module: its
MLflow record, its registered model loaded through the registry and through `rl-lb evaluate`,
and a resume from its checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from rl_lb.cli import main
from rl_lb.errors import ConfigError
from rl_lb.features import FeatureEncoder
from rl_lb.policies.learned import LearnedPolicy
from training.checkpoint_eval import policy_of
from training.config import load_config
from training.export import export_policy
from training.train import RunResult, run

pytestmark = pytest.mark.filterwarnings(
    # SQLAlchemy 2.1 deprecates a loader strategy MLflow's store still uses.
    "ignore::sqlalchemy.exc.SADeprecationWarning"
)

# Named like a library scenario so the run draws its weights-over-time plot.
SCENARIO = """
name = "degrading"
description = "Short: one of three backends slows down 5x."
duration_s = 20
control_interval_s = 1.0

[arrivals]
process = "poisson"
load = [0.5, 0.6]

[[backends]]
name = "healthy"
count = 2
concurrency = 2
service = { dist = "exponential", mean_s = 0.010 }

[[backends]]
name = "slowing"
concurrency = 2
service = { dist = "exponential", mean_s = 0.010 }
events = [{ at_s = 5, until_s = 15, slowdown = 5.0 }]
"""

CONFIG = """
timesteps = 128
n_envs = 1
seed = 3
checkpoint_every_steps = 64

[algo_params]
n_steps = 64
batch_size = 32
n_epochs = 1

[policy]
slot_net = [8]
head_net = [8]
critic_net = [8]

[eval]
every_steps = 64
seeds = [1]
final_seeds = [2]
baselines = ["least-latency", "round-robin"]
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlruns.db")
        yield root


@pytest.fixture(scope="module")
def files(store: Path) -> dict[str, Path]:
    (store / "degrading.toml").write_text(SCENARIO)
    (store / "tiny.toml").write_text(CONFIG)
    return {"scenario": store / "degrading.toml", "config": store / "tiny.toml"}


@pytest.fixture(scope="module")
def result(store: Path, files: dict[str, Path]) -> RunResult:
    config = load_config(
        files["config"], {"scenarios": [str(files["scenario"])], "out": str(store / "runs")}
    )
    return run(config)


def test_the_run_records_params_metrics_and_git_state(result: RunResult) -> None:
    recorded = mlflow.get_run(result.run_id).data
    assert recorded.params["algo_params.n_steps"] == "64"
    assert recorded.params["policy.slot_net"] == "[8]"
    assert recorded.params["seed"] == "3"
    assert "git.commit" in recorded.tags
    for metric in (
        "train/sps",
        "train/episode_reward",
        "train/value_loss",
        "eval/p99_ratio_vs_least_latency",
        "eval/effective_p99_ms/degrading",
        "eval/p99_ms/degrading",
        "final/p99_ratio_vs_least_latency",
    ):
        assert metric in recorded.metrics, metric
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "eval/best_score")
    assert len(history) == 2, "evaluated at 64 steps and at the end (128)"


def test_the_run_keeps_model_export_tables_plots_and_scenarios(result: RunResult) -> None:
    client = mlflow.MlflowClient()

    def listed(path: str) -> set[str]:
        return {a.path for a in client.list_artifacts(result.run_id, path)}

    assert listed("model") == {"model/best.zip"}
    assert listed("policy") == {"policy/policy.npz", "policy/policy.json"}
    assert listed("evaluation") == {"evaluation/evaluation.csv", "evaluation/evaluation.md"}
    assert listed("plots") == {"plots/latency_cdf_degrading.png", "plots/weights_degrading.png"}
    assert listed("scenarios") == {"scenarios/degrading.toml"}


def test_the_export_is_registered_and_loads_without_torch_from_the_registry(
    result: RunResult,
) -> None:
    assert result.model_version == 1
    policy = LearnedPolicy.load("models:/rl-lb-policy/1")
    assert policy.version == LearnedPolicy.load(result.policy_dir).version
    assert policy.header["run_id"] == result.run_id


def test_an_unknown_registry_version_is_one_model_error_line(
    result: RunResult, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--balancer", "learned:models:/rl-lb-policy/99", "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "models:/rl-lb-policy/99" in err
    assert len(err.splitlines()) == 1


def test_rl_lb_evaluate_runs_the_exported_policy(
    result: RunResult, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    balancer = f"learned:{result.policy_dir}"
    argv = ["evaluate", "--scenario", str(files["scenario"]), "--balancer", balancer]
    assert main([*argv, "--seeds", "1"]) == 0
    assert "learned:" in capsys.readouterr().out


def test_a_run_resumes_from_its_checkpoint(
    result: RunResult, store: Path, files: dict[str, Path]
) -> None:
    config = load_config(
        files["config"],
        {"scenarios": [str(files["scenario"])], "out": str(store / "runs"), "timesteps": 192},
    )
    resumed = run(config, resume=result.run_dir / "latest.zip")
    assert resumed.model_version == 2
    assert mlflow.get_run(resumed.run_id).data.tags["resumed_from"].endswith("latest.zip")
    steps = [
        m.step for m in mlflow.MlflowClient().get_metric_history(resumed.run_id, "eval/best_score")
    ]
    assert min(steps) > 128, "the step count carries on from the checkpoint"


def test_a_run_resumes_onto_generated_worlds_of_larger_pools(
    result: RunResult, store: Path, files: dict[str, Path]
) -> None:
    """The checkpoint saw pools of 3; generated world 0 of seed 1 has 26 backends, so the
    environments pad to more slots than the checkpoint's spaces, and the set network resumes."""
    overrides = {"worlds": 1, "worlds_seed": 1, "timesteps": 192, "out": str(store / "worlds")}
    config = load_config(files["config"], {"scenarios": [str(files["scenario"])], **overrides})
    resumed = run(config, resume=result.run_dir / "latest.zip")
    written = sorted(p.name for p in (resumed.run_dir / "worlds").iterdir())
    assert written == ["gen-1-0000.toml"]
    model = PPO.load(resumed.run_dir / "latest.zip")
    assert model.observation_space.shape == (26, FeatureEncoder().n_features)
    artifacts = mlflow.MlflowClient().list_artifacts(resumed.run_id, "scenarios/worlds")
    assert [Path(a.path).name for a in artifacts] == written


def test_a_resumed_run_follows_its_own_seed(
    result: RunResult, store: Path, files: dict[str, Path]
) -> None:
    def resumed(seed: int) -> dict[str, torch.Tensor]:
        overrides = {"scenarios": [str(files["scenario"])], "seed": seed, "timesteps": 320}
        config = load_config(files["config"], {**overrides, "out": str(store / f"s{seed}")})
        done = run(config, resume=result.run_dir / "latest.zip")
        # latest.zip at step 320 has had two updates since the checkpoint (after 192 and 256).
        return PPO.load(done.run_dir / "latest.zip").policy.state_dict()

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    first, again, other = resumed(5), resumed(5), resumed(6)
    assert same(first, again), "the same seed repeats the run"
    assert not same(first, other), "another seed is another run (not the checkpoint's seed)"


def test_the_progress_bar_ends_where_whole_rollouts_end() -> None:
    """PPO asked for 100 steps with 64-step rollouts runs 128: the bar says 128/128, not 128/100."""
    import io

    from rich.console import Console
    from stable_baselines3 import PPO

    from training.callbacks import ProgressCallback

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, seed=0)
    out = io.StringIO()
    progress = ProgressCallback(100, Console(file=out, width=100, color_system=None))
    model.learn(100, callback=progress)
    assert model.num_timesteps == 128
    assert progress.total == 128
    assert "128/128" in out.getvalue()


def test_a_run_starts_from_an_export_and_its_critic_warms_up_first(
    result: RunResult, store: Path, files: dict[str, Path]
) -> None:
    """With the warm-up longer than the run, the actor never moves: after the run's two updates
    its last checkpoint's actor is still the export it started from, array for array. Without
    the warm-up, the same run moves it."""

    def actor_after(warmup: int) -> dict[str, np.ndarray]:
        overrides = {
            "scenarios": [str(files["scenario"])],
            "out": str(store / f"init-{warmup}"),
            "init": str(result.policy_dir),
            "critic_warmup_steps": warmup,
        }
        started = run(load_config(files["config"], overrides))
        tags = mlflow.get_run(started.run_id).data.tags
        assert tags["initialised_from"] == str(result.policy_dir)
        last = PPO.load(started.run_dir / "latest.zip", device="cpu")
        folder = export_policy(policy_of(last), started.run_dir / "last", FeatureEncoder(), "x")
        with np.load(folder / "policy.npz") as arrays:
            return {k: arrays[k] for k in arrays.files}

    with np.load(result.policy_dir / "policy.npz") as arrays:
        imported = {k: arrays[k] for k in arrays.files}

    def same(actor: dict[str, np.ndarray]) -> bool:
        return actor.keys() == imported.keys() and all(
            np.array_equal(actor[k], imported[k]) for k in actor
        )

    assert same(actor_after(10_000))
    assert not same(actor_after(0))


def test_a_run_cannot_both_resume_and_start_from_an_export(
    result: RunResult, store: Path, files: dict[str, Path]
) -> None:
    overrides = {"scenarios": [str(files["scenario"])], "init": str(result.policy_dir)}
    with pytest.raises(ConfigError, match="give one of them"):
        run(load_config(files["config"], overrides), resume=result.run_dir / "latest.zip")
