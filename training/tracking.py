"""Where runs are recorded: an embedded MLflow store unless `MLFLOW_TRACKING_URI` says otherwise.

The default is a SQLite file plus an artifacts directory next to it, so `rl-lb train` works with
no server and `rl-lb ui` browses the same store. The numpy export, not the SB3 zip, is what gets
registered as `rl-lb-policy`: `models:/rl-lb-policy/N` must load in the proxy without torch.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rl_lb.policies.learned import REGISTERED_MODEL
from rl_lb.tracking_store import tracking_uri as shared_tracking_uri

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING_KIND",
    "POLICY_ARTIFACT_PATH",
    "artifact_root",
    "git_state",
    "log_params",
    "register_policy",
    "runs_page",
    "setup_experiment",
    "tracking_uri",
]

POLICY_ARTIFACT_PATH = "policy"
_MAX_PARAM_CHARS = 6000

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""MLflow 3's experiment-kind tag, which MLflow's UI can set by hand ("Machine learning" or "GenAI
apps & agents"). Recorded so the experiment says what it holds; the open-source UI of 3.17 still
picks its view from the link's `workflowType` (see `runs_page`), not from this tag."""
MODEL_TRAINING_KIND = "custom_model_development"
"""The experiment kind the UI names "Machine learning": training runs, no GenAI traces."""
_UI_VIEW = "workflowType=machine_learning"
"""The UI's model-training view; without it MLflow 3 shows its GenAI pages, empty for us."""


def tracking_uri() -> str:
    """The store every command shares (`--tracking-uri`, `MLFLOW_TRACKING_URI`, or the default)."""
    return shared_tracking_uri()


def artifact_root(uri: str) -> str | None:
    """`mlartifacts/` next to a SQLite store; None lets any other store choose its own."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.resolve().parent / "mlartifacts").as_uri()


def setup_experiment(name: str) -> str:
    """Point MLflow at the store and return the id of experiment `name`, created if new.

    The experiment is marked as model training, unless someone already chose its kind in the UI.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        created = mlflow.create_experiment(
            name,
            artifact_location=artifact_root(uri),
            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
        )
        return str(created)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
        )
    return str(experiment.experiment_id)


def runs_page(ui_url: str, experiment_id: str) -> str:
    """The link to an experiment's runs list, in the model-training view of the UI at `ui_url`."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{_UI_VIEW}"


def git_state(repo: Path | None = None) -> dict[str, str]:
    """The commit the run was trained from, and whether the tree had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=False, timeout=10
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "git.commit": git("rev-parse", "HEAD") or "none",
        "git.dirty": str(bool(git("status", "--porcelain"))).lower(),
    }


def log_params(params: dict[str, Any]) -> None:
    """Every parameter, lists as their text, cut to MLflow's length limit."""
    mlflow.log_params({key: str(value)[:_MAX_PARAM_CHARS] for key, value in params.items()})


def register_policy(run_id: str, artifact_uri: str) -> int:
    """Register the run's numpy export as a new version of `rl-lb-policy` and return N."""
    client = MlflowClient()
    try:
        client.create_registered_model(REGISTERED_MODEL)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        REGISTERED_MODEL, source=f"{artifact_uri}/{POLICY_ARTIFACT_PATH}", run_id=run_id
    )
    return int(version.version)
