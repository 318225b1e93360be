"""The settings a scenario shares with the proxy, read from the file into a `ControlSpec`.

Which keys exist, in which section, with which bounds and defaults is `rl_lb.control`'s to say
(`Setting.scenario` is the file's `section.key`); nothing of it is written again here. A key the
file leaves out keeps the setting's default. Like every scenario number, a shared setting may be
a `[low, high]` range; a rule between two settings of a section (an ejection's base time at most
its maximum) is `rl_lb.control`'s own check, run here on every corner of the ranges, so every
draw is valid.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from rl_lb.control import ControlSpec, Setting, spec_settings
from rl_lb.errors import ConfigError
from rl_lb.scenarios.fields import Num, Template, setting_key
from rl_lb.scenarios.read import Context, Table

__all__ = ["SharedKey", "parse_shared", "shared_keys", "shared_sections"]

_DEFAULTS = ControlSpec()


class SharedKey(NamedTuple):
    """One shared setting as a scenario file writes it."""

    section: str
    """The `ControlSpec` section (`ejection`)."""
    field: str
    """The section dataclass's field (`max_ejection_s`)."""
    file_section: str
    """The file's table (`[ejection]`)."""
    file_key: str
    """The key in that table (`max_ejection_s`)."""
    info: Setting


def _shared() -> Iterator[SharedKey]:
    for section, f, info in spec_settings():
        if info.scenario is not None:
            file_section, _, file_key = info.scenario.partition(".")
            yield SharedKey(section, f.name, file_section, file_key, info)


def shared_sections() -> tuple[str, ...]:
    """The file's tables that hold shared settings, in `ControlSpec` order."""
    return tuple(dict.fromkeys(k.file_section for k in _shared()))


def shared_keys(file_section: str) -> tuple[str, ...]:
    """The shared settings' keys in one of the file's tables."""
    return tuple(k.file_key for k in _shared() if k.file_section == file_section)


def parse_shared(ctx: Context, tables: Mapping[str, Table]) -> Template[ControlSpec]:
    """Read every shared key from `tables` (one per `shared_sections()` name)."""
    read: dict[str, dict[str, Num]] = {}
    where: dict[str, list[SharedKey]] = {}
    for k in _shared():
        table = tables[k.file_section]
        where.setdefault(k.section, []).append(k)
        if table.has(k.file_key):
            bounds, integer = setting_key(k.info).bounds, k.info.integer
            read.setdefault(k.section, {})[k.field] = table.num(k.file_key, bounds, None, integer)
    sections: dict[str, object] = {}
    for section, nums in read.items():
        cls = type(getattr(_DEFAULTS, section))
        _check_every_corner(ctx, cls, nums, where[section])
        sections[section] = Template(cls, nums)
    return Template(ControlSpec, sections)


def _check_every_corner(
    ctx: Context, cls: type[Any], nums: Mapping[str, Num], keys: list[SharedKey]
) -> None:
    """Build the section at each combination of range ends; the first refusal is the error."""
    ends = [sorted({n.low, n.high}) for n in nums.values()]
    for corner in itertools.product(*ends):
        values = {
            name: round(v) if n.integer else v
            for (name, n), v in zip(nums.items(), corner, strict=True)
        }
        try:
            cls(**values)
        except ConfigError as error:
            owner = next((k for k in keys if error.where in (k.info.key, k.info.scenario)), keys[0])
            raise ctx.error(
                f"{owner.file_section}.{owner.file_key}",
                _in_file_terms(error.what, keys),
                _in_file_terms(error.fix, keys),
            ) from None


def _in_file_terms(text: str, keys: list[SharedKey]) -> str:
    """A message about proxy flags (`base-ejection`) in the file's keys (`base_ejection_s`)."""
    for k in sorted(keys, key=lambda k: -len(k.info.key)):
        text = re.sub(rf"(?<![\w-]){re.escape(k.info.key)}(?![\w-])", k.file_key, text)
    return text
