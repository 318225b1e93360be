"""The scenario file: raw TOML data to a validated `FamilyTemplate`, or one `ScenarioError`.

Each key's bounds and default come from its dataclass field (`schema`) or, for the settings
shared with the proxy, from `rl_lb.control` (`shared`). What is left here is what involves more
than one key: checks between two numbers (an event inside the episode, steps in order) use the
worst case over their ranges, so every draw `ScenarioFamily.sample` can make is valid by
construction.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

from rl_lb.control import ControlSpec
from rl_lb.scenarios.arrivals import ARRIVAL_KEYS, ArrivalsTemplate, parse_arrivals
from rl_lb.scenarios.fields import Bounds, Key, Num, Template, file_keys
from rl_lb.scenarios.read import Context, Table
from rl_lb.scenarios.schema import (
    BackendSpec,
    Distribution,
    Event,
    MetricsSpec,
    Pauses,
    Scenario,
    ServiceDist,
)
from rl_lb.scenarios.shared import parse_shared, shared_keys, shared_sections

__all__ = [
    "BACKEND_KEYS",
    "DISTRIBUTIONS",
    "EVENT_KEYS",
    "MAX_BACKENDS",
    "PAUSES_KEYS",
    "SECTION_KEYS",
    "SERVICE_KEYS",
    "TOP_KEYS",
    "FamilyTemplate",
    "GroupTemplate",
    "parse_family",
]

DISTRIBUTIONS: tuple[Distribution, ...] = ("exponential", "lognormal", "pareto", "constant")
MAX_BACKENDS = 1000
"""Backends in a scenario, all groups together. The policy reads a pool of any size; this bounds
what a simulated episode costs (memory and time grow with N) to what has been benchmarked."""

SECTION_KEYS: dict[str, tuple[str, ...]] = {
    section: (*(file_keys(MetricsSpec) if section == "metrics" else ()), *shared_keys(section))
    for section in dict.fromkeys(("metrics", *shared_sections()))
}
"""`[metrics]`, `[health]`, `[ejection]`, `[retries]`: the scenario's own keys, then the shared."""
TOP_KEYS = (
    *(k for k in file_keys(Scenario) if k not in SECTION_KEYS),
    "shuffle_backends",
    *SECTION_KEYS,
)
BACKEND_KEYS = ("name", "count", *file_keys(BackendSpec))
SERVICE_KEYS = file_keys(ServiceDist)
EVENT_KEYS = file_keys(Event)
PAUSES_KEYS = file_keys(Pauses)
_COUNT = Key(Bounds(ge=1, le=MAX_BACKENDS), integer=True, default=1)
"""Backends in a `[[backends]]` group (a file-only key: each becomes one `BackendSpec`)."""
_ONLY_FOR: dict[str, Distribution] = {"cv": "lognormal", "shape": "pareto"}
"""Service keys that apply to one distribution only."""
_DEFAULT_NAME = re.compile(r"b\d+")
T = TypeVar("T")
_UNKNOWN_DURATION = Num(math.inf, math.inf)
"""Stands for a `duration_s` that failed to read: checks against it pass, so the parts that
depend on it (arrival steps, events) are still read and their own errors reported."""


@dataclass(frozen=True)
class GroupTemplate:
    name: str | None
    count: Num
    backend: Template[BackendSpec]
    """Every backend of the group is this one draw, renamed."""


@dataclass(frozen=True)
class FamilyTemplate:
    name: str
    description: str
    duration_s: Num
    control_interval_s: Num
    shuffle_backends: bool
    arrivals: ArrivalsTemplate
    metrics: Template[MetricsSpec]
    control: Template[ControlSpec]
    groups: tuple[GroupTemplate, ...]
    ranges: int
    """How many numbers in the file are `[low, high]` ranges."""


def parse_family(raw: object, file: str, base_dir: Path) -> FamilyTemplate:
    """Validate a whole scenario document; trace paths are relative to `base_dir`.

    Independent parts (each top-level key, section, backend group, event) are read even after
    another failed, so the error raised lists every mistake of the file
    (`CollectedScenarioError`); a part checked against a value that failed to read (events
    against the duration) is still read, without that check.
    """
    ctx = Context(file)
    top = Table(ctx, raw, "", TOP_KEYS)
    name = ctx.attempt(lambda: top.name("name"))
    description = ctx.attempt(lambda: top.string("description", ""))
    duration = ctx.attempt(lambda: top.field(Scenario, "duration_s"))
    control = ctx.attempt(lambda: top.field(Scenario, "control_interval_s"))
    if duration is not None and control is not None:
        ctx.attempt(lambda: _check_interval(ctx, control, duration))
    shuffle = ctx.attempt(lambda: top.boolean("shuffle_backends", False))
    span = duration if duration is not None else _UNKNOWN_DURATION
    arrivals = ctx.attempt(
        lambda: parse_arrivals(
            Table(ctx, top.raw("arrivals"), "arrivals", ARRIVAL_KEYS), span, base_dir
        )
    )
    sections = {
        section: ctx.attempt(partial(Table, ctx, top.data.get(section, {}), section, keys))
        for section, keys in SECTION_KEYS.items()
    }
    metrics_table = sections["metrics"]
    metrics = None
    if metrics_table is not None:
        metrics = ctx.attempt(lambda: Template(MetricsSpec, metrics_table.numbers(MetricsSpec)))
    shared = None
    if all(table is not None for table in sections.values()):
        tables = {section: table for section, table in sections.items() if table is not None}
        shared = ctx.attempt(lambda: parse_shared(ctx, tables))
    groups = _groups(top, span)
    ctx.finish()
    return FamilyTemplate(
        name=_read(name),
        description=_read(description),
        duration_s=_read(duration),
        control_interval_s=_read(control),
        shuffle_backends=_read(shuffle),
        arrivals=_read(arrivals),
        metrics=_read(metrics),
        control=_read(shared),
        groups=_read(groups),
        ranges=ctx.ranges,
    )


def _read(part: T | None) -> T:
    """A part read without error: `Context.finish` raised already if one failed."""
    if part is None:
        raise AssertionError("a part of the scenario failed without an error")
    return part


def _check_interval(ctx: Context, control: Num, duration: Num) -> None:
    if control.high > duration.low:
        raise ctx.error(
            "control_interval_s",
            f"{control.high:g} s is longer than the episode ({duration.low:g} s)",
            "use a control interval <= duration_s",
        )


def _groups(top: Table, duration: Num) -> tuple[GroupTemplate, ...] | None:
    """Every `[[backends]]` group, each read on its own; None when one of them failed."""
    ctx = top.ctx
    items = ctx.attempt(lambda: top.array("backends"))
    if items is None:
        return None
    mark = len(ctx.errors)
    found = [
        ctx.attempt(partial(_group_at, ctx, item, f"{top.key('backends')}[{i}]", duration))
        for i, item in enumerate(items)
    ]
    if len(ctx.errors) > mark:
        return None
    groups = tuple(g for g in found if g is not None)
    if not groups:
        ctx.record(ctx.error("backends", "no backends", "add at least one [[backends]] table"))
        return None
    total = sum(round(g.count.high) for g in groups)
    if total > MAX_BACKENDS:
        ctx.record(
            ctx.error(
                "backends",
                f"up to {total} backends in total, more than the maximum {MAX_BACKENDS}",
                "lower the counts (the upper end of a count range counts)",
            )
        )
        return None
    ctx.attempt(lambda: _check_names(top, groups))
    return groups


def _group_at(ctx: Context, item: object, path: str, duration: Num) -> GroupTemplate:
    return _group(Table(ctx, item, path, BACKEND_KEYS), duration)


def _check_names(top: Table, groups: tuple[GroupTemplate, ...]) -> None:
    """Expanded names (`web`, or `web-0`, `web-1`, … for count > 1; `b<i>` unnamed) stay unique."""
    earlier: list[str] = []
    for i, group in enumerate(groups):
        name = group.name
        if name is None:
            continue
        path = f"backends[{i}].name"
        if _DEFAULT_NAME.fullmatch(name):
            raise top.ctx.error(path, f"{name!r} is reserved for unnamed backends", "rename it")
        if name in earlier:
            raise top.ctx.error(path, f"two backend groups are named {name!r}", "rename one")
        for other in earlier:
            if re.fullmatch(re.escape(other) + r"-\d+", name) or re.fullmatch(
                re.escape(name) + r"-\d+", other
            ):
                raise top.ctx.error(
                    path, f"{name!r} clashes with the expanded names of {other!r}", "rename it"
                )
        earlier.append(name)


def _group(table: Table, duration: Num) -> GroupTemplate:
    """A `[[backends]]` group: its count, numbers, service, events and pauses each read on their
    own, so that every error in it is reported."""
    ctx = table.ctx
    mark = len(ctx.errors)
    count = ctx.attempt(lambda: table.declared("count", _COUNT))
    numbers = ctx.attempt(lambda: table.numbers(BackendSpec))
    service = ctx.attempt(
        lambda: _service(Table(ctx, table.raw("service"), table.key("service"), SERVICE_KEYS))
    )
    events: list[Template[Event]] = []
    items = ctx.attempt(lambda: table.array("events")) if table.has("events") else []
    for i, item in enumerate(items or []):
        path = f"{table.key('events')}[{i}]"
        event = ctx.attempt(partial(_event_at, ctx, item, path, duration))
        if event is None:
            continue
        clash = next((e for e in events if _overlap(e, event)), None)
        if clash is not None:
            ctx.record(
                ctx.error(
                    path,
                    f"overlaps an earlier event ({_num(clash, 'at_s').low:g}-"
                    f"{_num(clash, 'until_s').high:g} s)",
                    "make the events of one group disjoint; put several effects in one event",
                )
            )
            continue
        events.append(event)
    pauses = None
    if table.has("pauses"):
        pauses = ctx.attempt(
            lambda: _pauses(Table(ctx, table.raw("pauses"), table.key("pauses"), PAUSES_KEYS))
        )
    name = ctx.attempt(lambda: table.name("name")) if table.has("name") else None
    ctx.settle(mark)
    backend = Template(
        BackendSpec,
        {
            "name": "",
            **_read(numbers),
            "service": _read(service),
            "events": tuple(events),
            "pauses": pauses,
        },
    )
    return GroupTemplate(name=name, count=_read(count), backend=backend)


def _event_at(ctx: Context, item: object, path: str, duration: Num) -> Template[Event]:
    return _event(Table(ctx, item, path, EVENT_KEYS), duration)


def _num(template: Template[Event], name: str) -> Num:
    return cast(Num, template.values[name])


def _overlap(a: Template[Event], b: Template[Event]) -> bool:
    return (
        _num(a, "at_s").low < _num(b, "until_s").high
        and _num(b, "at_s").low < _num(a, "until_s").high
    )


def _service(table: Table) -> Template[ServiceDist]:
    dist = cast(Distribution, table.choice("dist", DISTRIBUTIONS))
    for key, owner in _ONLY_FOR.items():
        if table.has(key) and dist != owner:
            raise table.ctx.error(
                table.key(key),
                f"'{key}' does not apply to dist = '{dist}'",
                f"remove it, or use dist = '{owner}'",
            )
    values: dict[str, object] = {"dist": dist, "mean_s": table.field(ServiceDist, "mean_s")}
    values |= {
        key: table.field(ServiceDist, key) for key, owner in _ONLY_FOR.items() if owner == dist
    }
    if dist == "constant":
        values["cv"] = Num(0.0, 0.0)  # a constant service time does not vary
    return Template(ServiceDist, values)


def _event(table: Table, duration: Num) -> Template[Event]:
    numbers = table.numbers(Event, {"until_s": Bounds(le=duration.low)})
    at, until = cast(Num, numbers["at_s"]), cast(Num, numbers["until_s"])
    if until.low <= at.high:
        raise table.ctx.error(
            table.key("until_s"),
            f"ends ({until.low:g} s) before it starts ({at.high:g} s)",
            "use until_s > at_s (with ranges: low end of until_s > high end of at_s)",
        )
    down = table.boolean("down", False)
    error_rate = cast(Num, numbers["error_rate"])
    if (
        numbers["slowdown"] == Num(1.0, 1.0)
        and numbers["slowdown_to"] is None
        and error_rate.high == 0
        and not down
    ):
        raise table.ctx.error(
            table.path,
            "event changes nothing",
            "give slowdown, slowdown_to, error_rate or down = true",
        )
    return Template(Event, {**numbers, "down": down})


def _pauses(table: Table) -> Template[Pauses]:
    every, length = table.field(Pauses, "every_s"), table.field(Pauses, "duration_s")
    if length.high >= every.low:
        raise table.ctx.error(
            table.key("duration_s"),
            f"pauses of {length.high:g} s are not shorter than their spacing ({every.low:g} s)",
            "use duration_s < every_s",
        )
    return Template(Pauses, {"every_s": every, "duration_s": length})
