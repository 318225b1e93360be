"""How a proxy setting is declared once and everything else derived from that declaration.

A proxy setting is a `ProxyConfig` field made by `proxy_setting` (or `duration`): its default,
its `rl_lb.control.Setting` (key = flag name = TOML key, help, unit, bounds) and an `Option`
(how a value that is not a number is read, which help panel shows it, extra flag names). The
settings shared with the simulator are declared in `rl_lb.control` and only get a panel here.
`declare` turns both into one table of `Declared` settings, from which serving/config.py reads
and checks values, serving/proxy_cli.py builds the `rl-lb serve` options, and `markdown_table`
writes the docs' table.

Only the standard library and the core's light modules are imported: `rl-lb` reads all this when
it builds its commands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rl_lb.control import Setting, check_value, default_text, spec_settings

__all__ = [
    "ADMIN",
    "BALANCING",
    "DISCOVERY",
    "HEALTH",
    "LIMITS",
    "SECTION_PANELS",
    "Declared",
    "Option",
    "declare",
    "duration",
    "markdown_table",
    "proxy_setting",
]

BALANCING = "Balancing"
ADMIN = "Admin API"
HEALTH = "Health"
LIMITS = "Limits and timeouts"
DISCOVERY = "Discovery"
SECTION_PANELS = {
    "metrics": BALANCING,
    "health": HEALTH,
    "ejection": HEALTH,
    "retries": LIMITS,
    "slow_start": BALANCING,
    "outcome_guard": BALANCING,
    "prequal": BALANCING,
}
"""The `rl-lb serve --help` panel of each `ControlSpec` section."""


@dataclass(frozen=True)
class Option:
    """How a proxy setting is read and shown, beside its `Setting` (a number needs none of it)."""

    panel: str | None = None
    """The `rl-lb serve --help` panel; None: the general one."""
    read: Callable[[Any, str], Any] | None = None
    """`(raw, where) -> value` for a value that is not a number (None: `check_value`)."""
    accepts: str = ""
    """What `read` accepts, for the docs' range column."""
    none_means: str = "none"
    """The default as the user reads it when it is None or empty; '' when there is none."""
    flag_type: Any = None
    """The flag's Python type when it is not the number the `Setting` says (str, bool, list)."""
    flags: tuple[str, ...] = ()
    """The flag's names when not just `--KEY` (`-b`, `--preserve-host/--backend-host`)."""
    envvar: str | None = None


def proxy_setting(default: Any, info: Setting, option: Option | None = None) -> Any:
    """A `ProxyConfig` field carrying its declaration."""
    return field(default=default, metadata={"setting": info, "option": option or Option()})


def duration(default: float, key: str, text: str, minimum: float, panel: str = LIMITS) -> Any:
    """A `ProxyConfig` field for a duration in seconds (most of the proxy's own settings)."""
    return proxy_setting(default, Setting(key, text, "s", minimum=minimum), Option(panel))


@dataclass(frozen=True)
class Declared:
    """One setting of `rl-lb serve`: its declaration and where its value lives."""

    info: Setting
    field: dataclasses.Field[Any]
    option: Option
    section: str | None = None
    """The `ControlSpec` section holding it; None: a field of `ProxyConfig` itself."""

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def flag_type(self) -> Any:
        if self.option.flag_type is not None:
            return self.option.flag_type
        return int if self.info.integer else float

    def read(self, raw: Any, where: str) -> Any:
        """`raw` checked and converted, or a one-line `ConfigError` naming `where`."""
        if self.option.read is not None:
            return self.option.read(raw, where)
        return check_value(self.info, raw, where)

    def default_text(self) -> str:
        """The default as the user writes it (`10 s`, `true`), or '' when there is none."""
        default = self.field.default
        if default is None or default == ():
            return self.option.none_means
        if isinstance(default, bool):
            return str(default).lower()
        if isinstance(default, tuple):
            return ", ".join(map(str, default))
        return default_text(self.field, self.info)

    def accepts(self) -> str:
        if self.option.read is not None:
            return self.option.accepts
        return self.info.describe_range() + (f" {self.info.unit}" if self.info.unit else "")

    def value(self, config: Any) -> Any:
        """Its value in a `ProxyConfig`."""
        holder = config if self.section is None else getattr(config.control, self.section)
        return getattr(holder, self.field.name)


def declare(config_type: type[Any]) -> dict[str, Declared]:
    """Key → declaration: the fields of `config_type` made by `proxy_setting`, then every setting
    of the `ControlSpec` its `control` field holds."""
    table: dict[str, Declared] = {}
    for f in dataclasses.fields(config_type):
        if isinstance(info := f.metadata.get("setting"), Setting):
            table[info.key] = Declared(info, f, f.metadata["option"])
    for section, f, info in spec_settings():
        table[info.key] = Declared(info, f, Option(SECTION_PANELS[section]), section)
    return table


def markdown_table(settings: Iterable[Declared]) -> str:
    """The proxy's own settings as a Markdown table, as `rl_lb.control.markdown_table()` has the
    shared ones (docs/proxy.md holds both; tests/test_control_spec.py compares)."""
    lines = ["| flag / TOML key | default | range | what it does |", "|---|---|---|---|"]
    for declared in settings:
        if declared.section is not None:
            continue
        flags = declared.option.flags[0] if declared.option.flags else f"--{declared.key}"
        default = declared.default_text() or "(required)"
        cells = [f"`{flags}` / `{declared.key}`", default, declared.accepts(), declared.info.help]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)
