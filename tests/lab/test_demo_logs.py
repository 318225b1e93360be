"""Log records during a live table print through its console, on their own lines above it.

Left to Python's last-resort handler they are written bare to stderr, in the middle of the table
(`mode: primarybackend http://… ejected …`).
"""

from __future__ import annotations

import io
import logging
import re

from rich.console import Console
from rich.live import Live

from lab.demo import live_table, logs_through

EJECTED = "backend http://127.0.0.1:9 ejected after 5 consecutive failures"
STATE = {
    "backends": [
        {
            "url": "http://127.0.0.1:9",
            "weight": 1.0,
            "in_flight": 0,
            "p99_s": 0.01,
            "ejected": False,
            "healthy": True,
        }
    ],
    "mode": "primary",
    "reason": "",
}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _lines(out: io.StringIO) -> list[str]:
    return [ANSI.sub("", line).rstrip() for line in out.getvalue().replace("\r", "\n").split("\n")]


def _demo_like_run(console: Console) -> None:
    with logs_through(console), Live(console=console, auto_refresh=False) as live:
        live.update(live_table("learned", STATE, 1.0, 8.0, {}), refresh=True)
        logging.getLogger("rl_lb.serving.proxy").warning(EJECTED)
        live.update(live_table("learned", STATE, 2.0, 8.0, {}), refresh=True)


def test_a_warning_prints_on_its_own_line_on_a_terminal() -> None:
    out = io.StringIO()
    _demo_like_run(Console(file=out, width=80, force_terminal=True, color_system=None))
    lines = _lines(out)
    logged = [line for line in lines if "ejected" in line]
    assert logged, lines
    assert all(line.startswith("WARNING") and "│" not in line for line in logged), logged
    assert not any("mode:" in line and "ejected" in line for line in lines)


def test_a_warning_prints_on_its_own_line_off_a_terminal() -> None:
    out = io.StringIO()
    _demo_like_run(Console(file=out, width=80, force_terminal=False))
    logged = [line for line in _lines(out) if "ejected" in line]
    assert logged
    assert all(line.startswith("WARNING") for line in logged), logged


def test_the_handler_is_removed_afterwards() -> None:
    before = list(logging.getLogger().handlers)
    _demo_like_run(Console(file=io.StringIO(), width=80))
    assert logging.getLogger().handlers == before
