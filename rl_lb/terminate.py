"""SIGTERM as a Ctrl-C: how `rl-lb` and the `python -m training.X` commands end when killed.

SIGTERM, left at its default action, kills a command at once and orphans the worker processes
it started (evaluation pools, simulator environments). Raised as a `KeyboardInterrupt` instead,
it takes the path every command already has for a Ctrl-C: workers stopped, nothing
half-written. Commands that handle SIGTERM themselves (`rl-lb serve`) install their own handler
over it, and this one then stays out of the way.
"""

from __future__ import annotations

import signal
import threading

__all__ = [
    "INTERRUPTED",
    "INTERRUPTED_LINE",
    "TERMINATED",
    "TERMINATED_LINE",
    "SigtermAsInterrupt",
]

INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it)."""
TERMINATED = 143
"""The exit status of a command stopped by SIGTERM (128 + 15)."""
INTERRUPTED_LINE = "interrupted (Ctrl-C): stopped before the end"
TERMINATED_LINE = "terminated (SIGTERM): stopped before the end"


class SigtermAsInterrupt:
    """While installed, SIGTERM raises `KeyboardInterrupt` and sets `received`."""

    def __init__(self) -> None:
        self.received = False
        self._installed = False

    def __call__(self, signum: int, frame: object) -> None:
        self.received = True
        raise KeyboardInterrupt

    def install(self) -> None:
        """Handle SIGTERM here if nothing else does (and this is the main thread)."""
        on_main_thread = threading.current_thread() is threading.main_thread()
        if on_main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self)
            self._installed = True

    def uninstall(self) -> None:
        """Back to SIGTERM's default action, if `install` set this handler."""
        if self._installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._installed = False
