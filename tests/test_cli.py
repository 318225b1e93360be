from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from rl_lb import __version__
from rl_lb.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rl-lb {__version__}"


def test_help_lists_the_wings_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("evaluate", "train", "serve", "backends", "loadgen", "scenario"):
        assert command in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "frobnicate" in capsys.readouterr().err


def test_console_script_runs_without_importing_torch() -> None:
    code = "import sys; from rl_lb.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip().endswith("False")


SIGTERM_COMMANDS = {
    "rl-lb evaluate": ["rl_lb.cli", "evaluate", "--scenario", "park", "--balancer", "prequal"],
    "python -m training.results": ["training.results", "--scenario", "park", "--out", "{tmp}/r.md"],
}
"""`python -m` arguments; {tmp}: the test's own folder."""


@pytest.mark.parametrize("name", SIGTERM_COMMANDS)
def test_sigterm_stops_a_command_and_its_workers_like_ctrl_c(tmp_path: Path, name: str) -> None:
    """SIGTERM to the command alone (what `docker stop` or a batch scheduler sends) goes the way
    of a Ctrl-C: its worker processes stopped, one line, status 143. Left at the default action
    it killed the command and left its pool's workers running with no parent (`rl-lb`, and the
    `python -m training.X` commands of `training.script.run_script`)."""
    import os
    import signal
    import time

    from commands import end_session, session_groups

    argv = [arg.format(tmp=tmp_path) for arg in SIGTERM_COMMANDS[name]]
    env = {**os.environ, "RL_LB_RECORD_CACHE": "off", "COLUMNS": "80"}
    stderr = (tmp_path / "stderr").open("w")  # a pipe would stay open while orphans hold it
    process = subprocess.Popen(
        [sys.executable, "-m", *argv, "--seeds", "400"],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        command = psutil.Process(process.pid)
        deadline = time.monotonic() + 120
        while not _started(command.children()) and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = command.children(recursive=True)
        assert _started(workers), "the evaluation pool never started"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        err = (tmp_path / "stderr").read_text()
        assert process.returncode == 143
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == "terminated (SIGTERM): stopped before the end"
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert alive == []
        assert session_groups(process.pid) == set()
    finally:
        end_session(process)
        stderr.close()


def _started(workers: list[psutil.Process]) -> bool:
    """The pool's workers past their start-up (1 s of CPU each: unpickling what the parent sent,
    importing the simulator; the resource tracker beside them does neither). A signal that ends
    the parent while a worker still reads from it makes that worker print an EOFError, which is
    multiprocessing's, not the command's."""
    try:
        pool = [w for w in workers if "spawn_main" in " ".join(w.cmdline())]
        return bool(pool) and all(sum(w.cpu_times()[:2]) >= 1.0 for w in pool)
    except psutil.NoSuchProcess:
        return False
