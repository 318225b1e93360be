"""User-facing errors: one line that says what was wrong, where, and how to fix it."""

from __future__ import annotations

__all__ = ["ConfigError", "ModelError", "RlLbError", "ScenarioError"]


class RlLbError(Exception):
    """An error caused by user input. The CLI prints `str(error)` on one line and exits 2."""

    exit_code = 2

    def __init__(self, where: str, what: str, fix: str = "") -> None:
        self.where, self.what, self.fix = where, what, fix
        message = f"{where}: {what}" if where else what
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class ConfigError(RlLbError):
    """A bad configuration file or flag."""


class ScenarioError(RlLbError):
    """A bad scenario file."""


class ModelError(RlLbError):
    """A policy model that cannot be loaded or does not fit the feature layout."""
