"""`rl-lb ui`: the MLflow UI on the training store, with a link straight to the runs list.

MLflow 3 opens an experiment on its GenAI pages, which are empty for training runs; the link
printed by `rl-lb ui` must land on the rl-lb experiment's runs in the model-training view.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from commands import end_session, session_groups

from training.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    runs_page,
    setup_experiment,
)

pytestmark = pytest.mark.filterwarnings(
    # SQLAlchemy 2.1 deprecates a loader strategy MLflow's store still uses.
    "ignore::sqlalchemy.exc.SADeprecationWarning"
)

LINK = re.compile(
    r"http://127\.0\.0\.1:(\d+)/#/experiments/(\d+)/runs\?workflowType=machine_learning"
)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_runs_page_links_the_runs_list_in_the_model_training_view() -> None:
    link = runs_page("http://127.0.0.1:5000/", "7")
    assert link == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"


def test_a_new_experiment_is_marked_as_model_training_and_a_chosen_kind_is_kept(
    store: str,
) -> None:
    created = setup_experiment("fresh")
    assert mlflow.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND

    chosen = mlflow.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert setup_experiment("chosen") == chosen
    assert mlflow.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"

    untagged = mlflow.create_experiment("untagged")
    assert setup_experiment("untagged") == untagged
    assert mlflow.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def ui_process(store: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`rl-lb ui` on a free port in a session of its own, everything in that session stopped
    however the test ends (it fails, it is interrupted, the command ignores its signal)."""
    port = _free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "rl_lb.cli", "ui", "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            yield process, port
        finally:
            end_session(process)


def _experiment_from_server(port: int, experiment_id: str) -> dict[str, Any]:
    """The experiment as the started server reports it, polled until the server answers."""
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"
    deadline = time.monotonic() + 180  # MLflow's workers start slowly on a busy 2-core machine
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                experiment: dict[str, Any] = json.load(response)["experiment"]
                return experiment
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.mark.slow
def test_rl_lb_ui_prints_the_runs_page_of_the_experiment_it_serves(
    ui_process: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = ui_process
    assert process.stdout is not None
    first_line = process.stdout.readline()  # printed before the server starts
    found = LINK.search(first_line)
    assert found, first_line
    assert int(found.group(1)) == port

    experiment = _experiment_from_server(port, found.group(2))
    assert experiment["name"] == "rl-lb"
    tags = {tag["key"]: tag["value"] for tag in experiment["tags"]}
    assert tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def _wait_until_answering(port: int) -> None:
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + 180  # as in _experiment_from_server
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_to_rl_lb_ui_alone_stops_the_server_it_started(
    ui_process: tuple[subprocess.Popen[str], int], signum: signal.Signals
) -> None:
    """`kill` or Ctrl-C to the command (not to its group): the MLflow processes go with it, and
    the port is free once it has exited."""
    process, port = ui_process
    _wait_until_answering(port)
    assert len(session_groups(process.pid)) == 2  # the command's group and the server's

    os.kill(process.pid, signum)
    assert process.wait(timeout=60) == 0  # its own bounds: 15 s SIGTERM, then 5 s SIGKILL
    assert session_groups(process.pid) == set()
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a restarted UI would
        probe.bind(("127.0.0.1", port))  # fails while anything still listens there
