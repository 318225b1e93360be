"""`rl-lb ui`: the MLflow UI as a user expects a local tool to behave.

MLflow's server takes ~10 s to answer on a small machine and, stopped with Ctrl-C in the same
terminal, each of its worker processes prints its own KeyboardInterrupt traceback. So the server
runs in its own session with its output in a log file; this command says "starting…" until the
UI answers, notes when the store holds no rl-lb runs (and which store it is), and on Ctrl-C
stops the server's whole process group and prints one line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import typer

from rl_lb.tracking_store import describe_store, sqlite_file, tracking_uri

__all__ = ["HOST", "serve_ui", "server_command"]

HOST = "127.0.0.1"
_POLL_S = 0.5
_STOP_TIMEOUT_S = 15.0


def server_command(port: int) -> list[str]:
    """The MLflow UI on the shared store, one worker (one local user)."""
    return [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
        "--host", HOST, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def _store_note(experiment: str, runs: int) -> str | None:
    """A note when there is nothing to see yet, naming the store looked at."""
    if runs:
        return None
    return (
        f"note: no runs of experiment {experiment!r} in {describe_store()} yet: train one with "
        "`rl-lb train` (from this folder, or pass --tracking-uri / MLFLOW_TRACKING_URI)"
    )


def _count_runs(experiment_id: str) -> int:
    import mlflow

    return len(mlflow.search_runs([experiment_id], max_results=1, output_format="list"))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, if not with 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (MLflow and its workers), SIGKILL if it lingers."""
    for signum, wait_s in ((signal.SIGTERM, _STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.pid, signum)
        except ProcessLookupError:
            return
        try:
            server.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def serve_ui(port: int, experiment: str) -> int:
    """Run the UI until Ctrl-C (exit 0) or until the server fails (its exit status)."""
    store_file = sqlite_file(tracking_uri())
    fresh = store_file is not None and not store_file.exists()
    typer.echo("opening the tracking store…", err=True)
    from training.tracking import runs_page, setup_experiment

    experiment_id = setup_experiment(experiment)  # created (empty) if nothing was trained yet
    base = f"http://{HOST}:{port}"
    typer.echo(f"MLflow UI, runs of experiment {experiment!r}: {runs_page(base, experiment_id)}")
    note = _store_note(experiment, 0 if fresh else _count_runs(experiment_id))
    if note:
        typer.echo(note, err=True)
    log_path = Path(tempfile.gettempdir()) / f"rl-lb-ui-{port}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            server_command(port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches this command only; it stops the group
        )
    try:
        typer.echo(f"starting the UI on {base} …", err=True)
        while not _answers(f"{base}/health"):
            if server.poll() is not None:
                typer.echo(f"the MLflow UI exited ({server.returncode}); its log: {log_path}")
                return server.returncode or 1
            time.sleep(_POLL_S)
        typer.echo(f"ready at {base} (store {describe_store()}); Ctrl-C to stop", err=True)
        return server.wait()
    except KeyboardInterrupt:
        _stop(server)
        typer.echo("MLflow UI stopped.", err=True)
        return 0
    finally:
        if server.poll() is None:
            _stop(server)
