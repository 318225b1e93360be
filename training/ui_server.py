"""`rl-lb ui`: the MLflow UI as a user expects a local tool to behave.

MLflow's server takes ~10 s to answer on a small machine and, stopped with Ctrl-C in the same
terminal, each of its worker processes prints its own KeyboardInterrupt traceback. So the server
runs in its own process group with its output in a log file; this command says "starting…" until
the UI answers, notes when the store holds no rl-lb runs (and which store it is), and on Ctrl-C
stops the server's whole process group and prints one line.

SIGTERM and SIGHUP (a closed terminal) stop it the same way: left to their default action they
would end this command alone and leave the server holding the port. While the server runs, the
stop signals only set a flag the supervising loop reads, so no signal can land between starting
the server and holding its handle. The server's group stays in this command's session (no
new session), so whoever started the command in a session of its own (a test, a supervisor) can
still find and stop everything it left behind, even after a SIGKILL this command cannot catch.
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
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import psutil  # type: ignore[import-untyped]  # no type information shipped
import typer

from rl_lb.tracking_store import describe_store, sqlite_file, tracking_uri

__all__ = ["HOST", "serve_ui", "server_command"]

HOST = "127.0.0.1"
_POLL_S = 0.5
_STOP_TIMEOUT_S = 15.0
_KILL_TIMEOUT_S = 5.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, `kill`, and a closed terminal: each stops the server too, never this command alone."""
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


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


class _StopRequest:
    """Stop signals set a flag instead of raising while installed; previous handlers come back on
    exit. A signal the command was started with ignored (nohup, `cmd &` in a script) stays
    ignored, as a user who launched it that way expects."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, _Handler] = {}

    def __enter__(self) -> _StopRequest:
        for signum in _STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.received is None:
            self.received = signum


def _group_alive(group: int) -> bool:
    """Whether a live (not zombie) process is left in the process group: the port is held
    until the last of them has gone."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except ProcessLookupError:
            continue
    return False


def _group_ended(server: subprocess.Popen[bytes], wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        server.poll()  # reaps the server itself, our child
        if not _group_alive(server.pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (MLflow, uvicorn, the job runners), SIGKILL to what
    is left after a bounded wait; returns once none of them is alive, so the port is free."""
    for signum, wait_s in ((signal.SIGTERM, _STOP_TIMEOUT_S), (signal.SIGKILL, _KILL_TIMEOUT_S)):
        try:
            os.killpg(server.pid, signum)
        except ProcessLookupError:
            break
        if _group_ended(server, wait_s):
            break
    server.poll()


def _supervise(
    server: subprocess.Popen[bytes], base: str, log_path: Path, stop: _StopRequest
) -> int:
    """Say when the UI answers; the server's status if it ends by itself, 0 once asked to stop."""
    typer.echo(f"starting the UI on {base} …", err=True)
    ready = False
    while stop.received is None:
        if server.poll() is not None:
            typer.echo(f"the MLflow UI exited ({server.returncode}); its log: {log_path}")
            return server.returncode or 1
        if not ready and _answers(f"{base}/health"):
            ready = True
            typer.echo(f"ready at {base} (store {describe_store()}); Ctrl-C to stop", err=True)
        time.sleep(_POLL_S)
    _stop(server)
    typer.echo("MLflow UI stopped.", err=True)
    return 0


def serve_ui(port: int, experiment: str) -> int:
    """Run the UI until Ctrl-C, SIGTERM or SIGHUP (exit 0) or until the server fails (its exit
    status); the server's whole process group is stopped (at worst killed) before it returns."""
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
    with _StopRequest() as stop:  # from before the server starts to after it is stopped
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                server_command(port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,  # Ctrl-C reaches this command only; it stops the group
            )
        try:
            return _supervise(server, base, log_path, stop)
        finally:
            _stop(server)  # at once when it already ended: its children may not have
