"""Running a long-lived command as a user would: read what it prints up to a line, then Ctrl-C.

Shared by the first-hour and README tests: each starts a command (`backends`, `ui`, `demo`…),
waits for the line a user waits for, stops it with SIGINT and checks what it said on the way out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no type information shipped

__all__ = ["Stopped", "end_session", "read_until", "run_then_ctrl_c", "session_groups"]


def read_until(process: subprocess.Popen[str], marker: str, limit: int = 200) -> list[str]:
    """Lines of the process's stdout up to and including the first that holds `marker` (or up to
    `limit` lines, or to the end of its output)."""
    assert process.stdout is not None
    lines: list[str] = []
    while len(lines) < limit:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if marker in line:
            break
    return lines


@dataclass(frozen=True)
class Stopped:
    lines: list[str]
    """What it printed up to the marker."""
    rest: str
    """What it printed on stdout after Ctrl-C."""
    err: str
    """Its stderr (empty when merged into stdout)."""
    returncode: int


def run_then_ctrl_c(
    argv: Sequence[str],
    marker: str,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    merge_stderr: bool = False,
    timeout_s: float = 60,
) -> Stopped:
    """Start `argv`, read stdout up to `marker`, send SIGINT, wait at most `timeout_s` for it to
    end (it is killed after that, and the test fails on the timeout)."""
    with subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
    ) as process:
        try:
            lines = read_until(process, marker)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                rest, err = process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate(timeout=10)
                raise
    return Stopped(lines, rest, err or "", process.returncode)


def session_groups(session: int) -> set[int]:
    """The process groups with a live (not zombie) process in `session`.

    A command started with `start_new_session=True` leads its own session; `rl-lb ui` starts
    MLflow (uvicorn, job runners, huey consumers) in a second process group of it: killing the
    command's group alone would leave the server holding its port, as it once did for the rest
    of a suite."""
    groups: set[int] = set()
    for process in psutil.process_iter(["status"]):
        try:
            if os.getsid(process.pid) == session and process.info["status"] != psutil.STATUS_ZOMBIE:
                groups.add(os.getpgid(process.pid))
        except (ProcessLookupError, PermissionError):
            continue
    return groups


def end_session(process: subprocess.Popen[str]) -> None:
    """SIGTERM to every group of the command's session, SIGKILL to what is left after a bounded
    wait; the command itself is reaped on the way. Anything alive after that fails the test."""
    session = process.pid
    for signum, wait_s in ((signal.SIGTERM, 60.0), (signal.SIGKILL, 10.0)):
        for group in session_groups(session):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signum)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            process.poll()
            if not session_groups(session):
                return
            time.sleep(0.2)
    left = session_groups(session)
    assert not left, f"process groups {sorted(left)} of the command outlived SIGKILL"
