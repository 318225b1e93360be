"""`rl-lb sweep` on local Ray: two trials as MLflow children of one parent, the best
registered, nothing of Ray's listening beyond loopback; a bad sweep file is one error line;
Ctrl-C leaves no process behind.

Ray, torch and a tiny scenario make each trial a minute or so on two busy cores: the sweep
tests are `slow` (they still run in `make test`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import mlflow
import psutil
import pytest

from rl_lb.cli import main
from training.sweep_config import load_sweep

pytest.importorskip("ray", reason="the sweep extra (rl-lb[sweep]) is not installed")

pytestmark = pytest.mark.filterwarnings(
    # SQLAlchemy 2.1 deprecates a loader strategy MLflow's store still uses.
    "ignore::sqlalchemy.exc.SADeprecationWarning"
)

SCENARIO = (Path(__file__).parent / "scenarios" / "two-speeds.toml").read_text()
"""Short: one of three backends is three times slower (shared with the other training test)."""


def sweep_file(root: Path, timesteps: int = 256, extra: str = "") -> Path:
    (root / "two-speeds.toml").write_text(SCENARIO)
    path = root / "sweep.toml"
    path.write_text(
        f"""
name = "tiny"
concurrent = 2
grace_steps = {timesteps}
{extra}
[overrides]
scenarios = ["{root / "two-speeds.toml"}"]
timesteps = {timesteps}
n_envs = 4
checkpoint_every_steps = 128
"algo_params.n_steps" = 32
"algo_params.batch_size" = 64
"algo_params.n_epochs" = 1
"policy.slot_net" = [8]
"policy.head_net" = [8]
"policy.critic_net" = [8]
"eval.every_steps" = 128
"eval.seeds" = [1]
"eval.final_seeds" = [2]
"eval.baselines" = ["least-latency", "round-robin"]

[space]
"algo_params.learning_rate" = {{ grid = [3e-4, 1e-3] }}
"""
    )
    return path


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
"""Listening addresses that other machines cannot reach (Ray's gRPC servers take the mapped one)."""


class Listeners:
    """Every TCP socket listening in this process and its descendants (Ray's GCS and raylet, its
    agents, the trials' workers), sampled twice a second while a sweep runs: local Ray must not
    be reachable from other machines, and Ray's gRPC servers bind all interfaces by default."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, int]] = set()  # (process name, address, port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Listeners:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _watch(self) -> None:
        root = psutil.Process()
        while not self._stop.wait(0.5):
            for process in [root, *root.children(recursive=True)]:
                try:
                    name = process.name()
                    sockets = process.net_connections(kind="tcp")
                except psutil.Error:  # gone, or a zombie, since children() listed it
                    continue
                for socket in sockets:
                    if socket.status == psutil.CONN_LISTEN:
                        self.seen.add((name, socket.laddr.ip, socket.laddr.port))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)  # an earlier sweep in this process set another one
        yield tmp_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "x"\n[space]\nseed = { normal = [0, 1] }\n', "unknown 'normal'"),
        ('name = "x"\n[space]\n"algo_params.gamma" = { uniform = [1, 0] }\n', "low < high"),
        ('name = "x"\n[space]\n"algo_params.gamma" = { choice = ["high"] }\n', "should be a float"),
        ('name = "x"\n[space]\n"algo.gamma" = { choice = [0.9] }\n', "unknown key 'algo.gamma'"),
        ('name = "x"\n[overrides]\ntimestep = 10\n', "unknown key 'timestep'"),
        ('name = "x"\n[space]\nscenarios = { choice = [["no-such-world"]] }\n', "no-such-world"),
        ('name = "x"\ntrials = 0\n', "trials = 0"),
        ('name = "x"\nconcurent = 2\n', "unknown key 'concurent'"),
        ("name = [", "sweep.toml"),
    ],
)
def test_a_bad_sweep_file_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    assert main(["sweep", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err


def test_the_sweep_file_of_the_docs_reads(tmp_path: Path) -> None:
    sweep = load_sweep(sweep_file(tmp_path))
    assert [d.key for d in sweep.space] == ["algo_params.learning_rate"]
    config = sweep.trial_config({"algo_params.learning_rate": 1e-3})
    assert config.algo_params.learning_rate == 1e-3
    assert config.timesteps == 256
    assert config.policy.slot_net == [8]


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~60 s alone; Ray start-up and two trainings on a busy 2-core box
def test_two_trials_on_local_ray_are_children_of_one_run_and_the_best_is_registered(
    store: Path,
) -> None:
    path = sweep_file(store)
    with Listeners() as listeners:
        assert main(["sweep", "--config", str(path), "--out", str(store / "sweeps")]) == 0
    assert {"gcs_server", "raylet"} <= {name for name, _, _ in listeners.seen}, listeners.seen
    reachable = {listener for listener in listeners.seen if listener[1] not in LOOPBACK}
    assert not reachable, f"local Ray listens beyond loopback: {sorted(reachable)}"
    runs = mlflow.search_runs(experiment_names=["rl-lb"], output_format="list")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 == len(runs) - 1
    rates = sorted(float(c.data.params["algo_params.learning_rate"]) for c in children)
    assert rates == [3e-4, 1e-3]
    for child in children:
        assert child.info.status == "FINISHED"
        assert "eval/p99_ratio_vs_least_latency" in child.data.metrics
        assert "final_score" in child.data.metrics
    client = mlflow.MlflowClient()
    history = client.get_metric_history(children[0].info.run_id, "score")
    assert [m.step for m in history] == [128, 256]  # an evaluation, then the final report
    lowest = min(c.data.metrics["final_score"] for c in children)
    # Two tiny trials may tie (both no better than least-latency): either is the best then.
    tied = {c.info.run_id: c for c in children if c.data.metrics["final_score"] == lowest}
    (version,) = client.search_model_versions("name='rl-lb-policy'")
    assert version.run_id in tied, {c.info.run_id: c.data.metrics["final_score"] for c in children}
    best = tied[version.run_id]
    assert parent.data.tags["registered_version"] == str(version.version)
    listed = {a.path for a in client.list_artifacts(best.info.run_id, "policy")}
    assert listed == {"policy/policy.npz", "policy/policy.json"}


@pytest.mark.slow
def test_ctrl_c_stops_every_trial_and_ray(store: Path) -> None:
    path = sweep_file(store, timesteps=100_000)
    out = store / "sweeps"
    command = [sys.executable, "-c", "import sys; from rl_lb.cli import main; sys.exit(main())"]
    driver = subprocess.Popen(
        [*command, "sweep", "--config", str(path), "--out", str(out)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("*/*/train.log"))) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert len(list(out.glob("*/*/train.log"))) == 2, "both trials should have started"
        family = psutil.Process(driver.pid).children(recursive=True)
        assert any("ImplicitFunc" in " ".join(p.cmdline()) for p in family)
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=120) == 130
    finally:
        if driver.poll() is None:
            driver.kill()
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, [p.cmdline()[:2] for p in alive]
    runs = mlflow.search_runs(experiment_names=["rl-lb"], output_format="list")
    assert {r.info.status for r in runs} == {"KILLED"}
