"""`ControlSpec`, every section together, and what is derived from all the declarations at once:
the proxy's flags (`ControlSpec.flags` / `from_flags`) and the docs' settings tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rl_lb.control.guard_settings import OutcomeGuardSettings
from rl_lb.control.pool_settings import EjectionSettings, HealthSettings, MetricsSettings
from rl_lb.control.prequal_settings import PrequalSettings
from rl_lb.control.setting import Setting, check_value, section_settings
from rl_lb.control.traffic_settings import RetrySettings, SlowStartSettings
from rl_lb.errors import ConfigError

__all__ = ["ControlSpec", "default_text", "markdown_table", "spec_settings"]


@dataclass(frozen=True)
class ControlSpec:
    """All the shared settings; the simulator and the proxy each hold one."""

    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    ejection: EjectionSettings = field(default_factory=EjectionSettings)
    retries: RetrySettings = field(default_factory=RetrySettings)
    slow_start: SlowStartSettings = field(default_factory=SlowStartSettings)
    outcome_guard: OutcomeGuardSettings = field(default_factory=OutcomeGuardSettings)
    prequal: PrequalSettings = field(default_factory=PrequalSettings)

    def flags(self) -> dict[str, float | int]:
        """Every setting the proxy has as `{key: value}`: the TOML keys (and flags) of a proxy
        that runs it (`bench live` starts its proxies with these). Simulator-only settings
        (`Setting.proxy` False) are left out: no proxy would accept them."""
        return {
            info.key: getattr(getattr(self, name), f.name)
            for name, f, info in spec_settings()
            if info.proxy
        }

    @classmethod
    def from_flags(cls, values: Mapping[str, Any], prefix: str = "--") -> ControlSpec:
        """A spec from `{key: raw value}` (keys as in `flags`; missing ones keep the default).

        Each value is checked with its setting's bounds; an error names `prefix + key`. A
        simulator-only key is refused (it is not a flag) and the error says where it is set.
        """
        declared = {info.key: info for _, _, info in spec_settings()}
        for key in sorted(values):
            info = declared.get(key)
            if info is None:
                raise ConfigError(f"{prefix}{key}", "not a control setting")
            if not info.proxy:
                raise ConfigError(
                    f"{prefix}{key}",
                    "is a simulator-only setting, not a proxy one",
                    f"set it in a scenario file (`{info.scenario}`)",
                )
        sections: dict[str, dict[str, Any]] = {}
        for name, f, info in spec_settings():
            if info.key in values and values[info.key] is not None:
                checked = check_value(info, values[info.key], f"{prefix}{info.key}")
                sections.setdefault(name, {})[f.name] = checked
        return cls(**{name: _section_type(name)(**kw) for name, kw in sections.items()})


def _section_type(name: str) -> type[Any]:
    spec_field = next(f for f in dataclasses.fields(ControlSpec) if f.name == name)
    factory = spec_field.default_factory
    assert isinstance(factory, type)
    return factory


def spec_settings() -> Iterator[tuple[str, dataclasses.Field[Any], Setting]]:
    """(section name, field, setting) for every setting of the `ControlSpec`."""
    for spec_field in dataclasses.fields(ControlSpec):
        for f, info in section_settings(_section_type(spec_field.name)):
            yield spec_field.name, f, info


def default_text(f: dataclasses.Field[Any], info: Setting) -> str:
    """The default as a user writes it (`10 s`, `5`, `10 %`)."""
    value = f.default
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} {info.unit}".strip()


def markdown_table(*, scenario: bool = False) -> str:
    """The settings as a Markdown table: for docs/proxy.md (the proxy's, `Setting.proxy`), or
    (`scenario`) docs/scenarios.md (those a scenario file sets)."""
    if scenario:
        lines = ["| scenario key | default | range | what it does |", "|---|---|---|---|"]
    else:
        lines = ["| flag / TOML key | default | range | what it does |", "|---|---|---|---|"]
    for _, f, info in spec_settings():
        shown = info.scenario is not None if scenario else info.proxy
        if not shown:
            continue
        name = f"`{info.scenario}`" if scenario else f"`--{info.key}` / `{info.key}`"
        rng = info.describe_range() + (f" {info.unit}" if info.unit else "")
        lines.append(f"| {name} | {default_text(f, info)} | {rng} | {info.help} |")
    return "\n".join(lines)
