"""Running a long-lived command as a user would: read what it prints up to a line, then Ctrl-C.

Shared by the first-hour and README tests: each starts a command (`backends`, `ui`, `demo`…),
waits for the line a user waits for, stops it with SIGINT and checks what it said on the way out.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Stopped", "read_until", "run_then_ctrl_c"]


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
