"""README's quick-start commands, run as a reader pastes them into bash.

Each command of the "The `rl-lb` command" block runs verbatim except that its duration, step
count or seed count is made short (`SHORTER`); a command without a duration gets a short one
(`--duration`) where it would otherwise run a whole scenario. The backends + serve + loadgen
trio runs on the README's own ports, so it is skipped when one of them is taken.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from commands import end_session, read_until

README = Path(__file__).resolve().parents[1] / "README.md"
SHORTER = {
    "--seeds 5": "--seeds 1",
    "--timesteps 200000": "--timesteps 128",
    "--duration 120": "--duration 3",
}
"""Only durations, step and seed counts change; everything else runs as written."""
BENCH_DURATION = "--duration 3"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def quickstart() -> list[str]:
    """The `rl-lb …` lines of README's command block, comments and alignment dropped."""
    text = README.read_text()
    block = text.split("## The `rl-lb` command", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        if line.startswith("rl-lb"):
            commands.append(re.sub(r"\s+#.*$", "", line).strip())
    return commands


def shortened(command: str) -> str:
    for long, short in SHORTER.items():
        command = command.replace(long, short)
    if command.startswith("rl-lb bench") and "--duration" not in command:
        command += f" {BENCH_DURATION}"
    return command


def _env() -> dict[str, str]:
    """`rl-lb` on PATH (this interpreter's), a wide terminal, no inherited tracking store."""
    env = {**os.environ, "COLUMNS": "120", "TERM": "dumb"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def bash(command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", shortened(command)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def started(command: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", f"exec {shortened(command)}"],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _find(prefix: str) -> str:
    matches = [c for c in quickstart() if c.startswith(prefix)]
    assert len(matches) == 1, (prefix, quickstart())
    return matches[0]


QUICK = ["rl-lb --help", "rl-lb scenario list", "rl-lb evaluate", "rl-lb bench sim2real"]
SLOW = ["rl-lb train", "rl-lb bench live"]
TRIO = ["rl-lb backends", "rl-lb serve", "rl-lb loadgen"]
UI = ["rl-lb ui"]


def test_every_quickstart_command_is_run_by_a_test() -> None:
    covered = QUICK + SLOW + TRIO + UI
    assert sorted(c for c in quickstart() if not any(c.startswith(p) for p in covered)) == []
    assert all(any(c.startswith(p) for c in quickstart()) for p in covered)


@pytest.mark.parametrize("prefix", QUICK)
def test_a_quick_command_runs_as_written(prefix: str, tmp_path: Path) -> None:
    done = bash(_find(prefix), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)  # train: its evaluations (seeds x baselines x 120 s) are not steps
@pytest.mark.parametrize("prefix", SLOW)
def test_a_long_command_runs_as_written_when_shortened(prefix: str, tmp_path: Path) -> None:
    done = bash(_find(prefix), tmp_path, timeout=1700)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    if prefix == "rl-lb train":
        assert "next steps:" in done.stderr


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@pytest.fixture
def stopped_at_the_end() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=30)
        end_session(process)  # what outlived Ctrl-C (rl-lb ui's MLflow server, say) goes too


def test_backends_serve_and_loadgen_run_as_written(
    tmp_path: Path, stopped_at_the_end: list[subprocess.Popen[str]]
) -> None:
    backends, serve, loadgen = (_find(prefix) for prefix in TRIO)
    if not _ports_free([*range(9001, 9011), 8080, 9090]):
        pytest.skip("a port of the README's example is taken on this machine")
    pool = started(backends, tmp_path)
    stopped_at_the_end.append(pool)
    printed = read_until(pool, "rl-lb loadgen")
    # what `rl-lb backends` prints is what README says to run next
    assert f"  {loadgen}" in printed
    expanded = subprocess.run(
        ["bash", "-c", f"echo {serve}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert f"  {expanded}" in printed
    proxy = started(serve, tmp_path)
    stopped_at_the_end.append(proxy)
    assert any("proxy on 127.0.0.1:8080" in line for line in read_until(proxy, "proxy on"))
    done = bash(loadgen, tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_ui_runs_as_written_and_stops_in_one_line(
    tmp_path: Path, stopped_at_the_end: list[subprocess.Popen[str]]
) -> None:
    if not _ports_free([5000]):
        pytest.skip("port 5000 (the UI's default) is taken on this machine")
    ui = started(_find("rl-lb ui"), tmp_path)
    stopped_at_the_end.append(ui)
    lines = read_until(ui, "Ctrl-C to stop")
    assert lines[-1].startswith("ready at http://127.0.0.1:5000"), lines
    ui.send_signal(signal.SIGINT)
    rest, _ = ui.communicate(timeout=60)
    assert rest.strip().splitlines() == ["MLflow UI stopped."]
