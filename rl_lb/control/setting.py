"""How a shared setting is declared: a `Setting` on a dataclass field, checked on construction.

Every section of the control spec (rl_lb/control/*_settings.py) declares its fields with `setting`;
everything derived from the declarations (flags, TOML keys, scenario keys, docs tables) reads them
back with `section_settings`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rl_lb.errors import ConfigError

__all__ = ["Setting", "check_value", "section_settings", "setting"]


@dataclass(frozen=True)
class Setting:
    """What a user needs to know about one setting, beside its default."""

    key: str
    """The proxy's flag without dashes and its TOML key (`metrics-window`)."""
    help: str
    """One line: what it does, in the user's words."""
    unit: str = ""
    """`s`, `%`, `requests/s`, or '' for a plain number or count."""
    minimum: float = 0.0
    maximum: float = math.inf
    integer: bool = False
    min_exclusive: bool = False
    """True when the minimum itself is refused (a time constant of 0)."""
    scenario: str | None = None
    """The scenario file's `section.key` for it, or None when scenarios do not set it."""
    proxy: bool = True
    """False for a simulator-only setting (what the proxy measures for real, as a probe's round
    trip): no proxy flag, TOML key or docs/proxy.md row, and `ControlSpec.flags` leaves it out,
    so a proxy is never offered a knob it would ignore. Such a setting needs a `scenario` key."""

    def __post_init__(self) -> None:
        if not self.proxy and self.scenario is None:
            raise ValueError(f"{self.key}: a simulator-only setting needs a scenario key")

    def describe_range(self) -> str:
        low = f"> {self.minimum:g}" if self.min_exclusive else f">= {self.minimum:g}"
        if self.maximum == math.inf:
            return low
        return f"{low} and <= {self.maximum:g}"


def setting(default: Any, info: Setting) -> Any:
    """A dataclass field carrying its `Setting` (use as `x: float = setting(1.0, Setting(...))`)."""
    return field(default=default, metadata={"setting": info})


def check_value(info: Setting, raw: Any, where: str) -> float | int:
    """`raw` as the setting's type, or a `ConfigError` naming `where` and the valid range."""
    kind = "an integer" if info.integer else "a number"
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(where, f"{raw!r} is not {kind}")
    if info.integer and isinstance(raw, float) and not raw.is_integer():
        raise ConfigError(where, f"{raw!r} is not {kind}")
    try:
        value: float | int = int(raw) if info.integer else float(raw)
    except ValueError:
        raise ConfigError(where, f"{raw!r} is not {kind}") from None
    low_ok = value > info.minimum if info.min_exclusive else value >= info.minimum
    if not (math.isfinite(value) and low_ok and value <= info.maximum):
        raise ConfigError(where, f"{raw!r} is out of range", f"use {kind} {info.describe_range()}")
    return value


class _Section:
    """Checks every field against its `Setting` on construction, so a bad value never lives."""

    def __post_init__(self) -> None:
        for f, info in section_settings(type(self)):
            value = getattr(self, f.name)
            checked = check_value(info, value, info.scenario or info.key)
            object.__setattr__(self, f.name, checked)


def section_settings(section: type[Any]) -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
    """The fields of one section dataclass with their `Setting`, in declaration order."""
    for f in dataclasses.fields(section):
        info = f.metadata.get("setting")
        if isinstance(info, Setting):
            yield f, info
