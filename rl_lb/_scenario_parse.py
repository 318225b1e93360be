"""The scenario schema: raw TOML data to a validated `FamilyTemplate`, or one `ScenarioError`.

Checks that involve two numbers (an event inside the episode, steps in order) use the worst case
over their ranges, so every draw `ScenarioFamily.sample` can make is valid by construction.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

from rl_lb._scenario_read import NON_NEGATIVE, POSITIVE, Bounds, Context, Table, describe, number
from rl_lb._scenario_template import (
    Amount,
    ArrivalsTemplate,
    Distribution,
    EventTemplate,
    FamilyTemplate,
    GroupTemplate,
    HealthTemplate,
    MetricsTemplate,
    Num,
    PausesTemplate,
    Process,
    ServiceTemplate,
    StepTemplate,
)
from rl_lb.features import MAX_BACKENDS  # the feature encoder's maximum pool size
from rl_lb.metrics import DEFAULT_EWMA_TAU_S, DEFAULT_WINDOW_S

__all__ = ["DISTRIBUTIONS", "MAX_BACKENDS", "PROCESSES", "parse_family"]

DISTRIBUTIONS: tuple[Distribution, ...] = ("exponential", "lognormal", "pareto", "constant")
PROCESSES: tuple[Process, ...] = ("poisson", "mmpp", "trace")

_TOP_KEYS = (
    "name",
    "description",
    "duration_s",
    "control_interval_s",
    "shuffle_backends",
    "arrivals",
    "metrics",
    "health",
    "backends",
)
_ARRIVAL_KEYS = ("process", "rate", "load", "profile", "rates", "loads", "dwell_s", "trace")
_PROCESS_KEYS: dict[str, tuple[str, ...]] = {
    "poisson": ("process", "rate", "load", "profile"),
    "mmpp": ("process", "rates", "loads", "dwell_s"),
    "trace": ("process", "trace"),
}
_BACKEND_KEYS = (
    "name",
    "count",
    "concurrency",
    "service",
    "queue_limit",
    "timeout_s",
    "events",
    "pauses",
)
_SERVICE_KEYS = ("dist", "mean_s", "cv", "shape")
_EVENT_KEYS = (
    "at_s",
    "until_s",
    "slowdown",
    "slowdown_to",
    "error_rate",
    "error_latency_s",
    "down",
)
_METRICS_KEYS = ("delay_s", "proxies", "window_s", "ewma_tau_s", "picker_refresh_s")
_HEALTH_KEYS = ("interval_s", "healthy_threshold", "unhealthy_threshold")
_DEFAULT_NAME = re.compile(r"b\d+")


def parse_family(raw: object, file: str, base_dir: Path) -> FamilyTemplate:
    """Validate a whole scenario document; trace paths are relative to `base_dir`."""
    ctx = Context(file)
    top = Table(ctx, raw, "", _TOP_KEYS)
    name = top.name("name")
    description = top.string("description", "")
    duration = top.num("duration_s", POSITIVE)
    control = top.num("control_interval_s", POSITIVE, default=1.0)
    if control.high > duration.low:
        raise ctx.error(
            "control_interval_s",
            f"{control.high:g} s is longer than the episode ({duration.low:g} s)",
            "use a control interval <= duration_s",
        )
    shuffle = top.boolean("shuffle_backends", False)
    arrivals_table = Table(ctx, top.raw("arrivals"), "arrivals", _ARRIVAL_KEYS)
    arrivals = _arrivals(arrivals_table, duration, base_dir)
    metrics = _metrics(Table(ctx, top.data.get("metrics", {}), "metrics", _METRICS_KEYS))
    health = _health(Table(ctx, top.data.get("health", {}), "health", _HEALTH_KEYS))
    groups = _groups(top, duration)
    return FamilyTemplate(
        name=name,
        description=description,
        duration_s=duration,
        control_interval_s=control,
        shuffle_backends=shuffle,
        arrivals=arrivals,
        metrics=metrics,
        health=health,
        groups=groups,
        ranges=ctx.ranges,
    )


def _amount(table: Table, rate_key: str, load_key: str) -> Amount:
    """Exactly one of a rate (requests/s) or a load (fraction of pool capacity)."""
    if table.has(rate_key) == table.has(load_key):
        what = "both" if table.has(rate_key) else "neither"
        raise table.ctx.error(
            table.key(rate_key),
            f"{what} of '{rate_key}' and '{load_key}' given",
            f"give exactly one: {rate_key} (requests/s) or {load_key} (fraction of capacity)",
        )
    if table.has(rate_key):
        return Amount(table.num(rate_key, POSITIVE), is_load=False)
    return Amount(table.num(load_key, POSITIVE), is_load=True)


def _arrivals(table: Table, duration: Num, base_dir: Path) -> ArrivalsTemplate:
    process = cast(Process, table.choice("process", PROCESSES, default="poisson"))
    for key in table.data:
        if key not in _PROCESS_KEYS[process]:
            raise table.ctx.error(
                table.key(key),
                f"'{key}' does not apply to process = '{process}'",
                f"{process} takes: {', '.join(_PROCESS_KEYS[process][1:])}",
            )
    if process == "mmpp":
        phases, dwell = _mmpp(table)
        return ArrivalsTemplate(process, None, (), phases, dwell, ())
    if process == "trace":
        return ArrivalsTemplate(process, None, (), (), (), _trace(table, duration, base_dir))
    base = _amount(table, "rate", "load")
    profile = _profile(table, duration) if table.has("profile") else ()
    return ArrivalsTemplate(process, base, profile, (), (), ())


def _profile(table: Table, duration: Num) -> tuple[StepTemplate, ...]:
    steps: list[StepTemplate] = []
    for step in table.tables("profile", ("at_s", "rate", "load")):
        at = step.num("at_s", Bounds(ge=0, lt=duration.low))
        if steps and at.low <= steps[-1].at_s.high:
            raise step.ctx.error(
                step.key("at_s"),
                f"step at {at.low:g} s is not after the previous one ({steps[-1].at_s.high:g} s)",
                "list profile steps in increasing at_s with disjoint ranges",
            )
        steps.append(StepTemplate(at, _amount(step, "rate", "load")))
    return tuple(steps)


def _mmpp(table: Table) -> tuple[tuple[Amount, ...], tuple[Num, ...]]:
    if table.has("rates") == table.has("loads"):
        what = "both" if table.has("rates") else "neither"
        raise table.ctx.error(
            table.key("rates"),
            f"{what} of 'rates' and 'loads' given",
            "give exactly one: rates (requests/s per phase) or loads (fractions of capacity)",
        )
    key = "rates" if table.has("rates") else "loads"
    values = table.array(key)
    dwell = table.array("dwell_s")
    if len(values) < 2 or len(values) != len(dwell):
        raise table.ctx.error(
            table.key("dwell_s"),
            f"{len(values)} {key} and {len(dwell)} dwell_s",
            f"give at least two phases, one dwell_s per entry of {key}",
        )
    ctx, is_load = table.ctx, key == "loads"
    phases = tuple(
        Amount(number(ctx, v, f"{table.key(key)}[{i}]", POSITIVE), is_load)
        for i, v in enumerate(values)
    )
    dwells = tuple(
        number(ctx, v, f"{table.key('dwell_s')}[{i}]", POSITIVE) for i, v in enumerate(dwell)
    )
    return phases, dwells


def _trace(table: Table, duration: Num, base_dir: Path) -> tuple[float, ...]:
    ctx, relative = table.ctx, table.string("trace")
    path = base_dir / relative
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as error:  # ValueError: undecodable, or a NUL in the path
        reason = "not found" if isinstance(error, FileNotFoundError) else "unreadable"
        raise ctx.error(
            "arrivals.trace",
            f"trace file {str(path)!r} {reason}",
            "the path is relative to the scenario file's folder; one timestamp (s) per line",
        ) from error
    times: list[float] = []
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            t = float(text)
        except ValueError:
            t = float("nan")
        if not (0 <= t < 1e9) or (times and t < times[-1]):
            raise ctx.error(
                f"arrivals.trace ({relative}:{lineno})",
                f"bad timestamp {describe(text)}",
                "one timestamp in seconds per line, >= 0 and non-decreasing",
            )
        times.append(t)
    if not times or times[0] >= duration.low:
        raise ctx.error(
            "arrivals.trace",
            f"trace {relative!r} has no arrival before {duration.low:g} s",
            "check the time unit: seconds from the episode start",
        )
    return tuple(times)


def _metrics(table: Table) -> MetricsTemplate:
    return MetricsTemplate(
        delay_s=table.num("delay_s", NON_NEGATIVE, default=0.0),
        proxies=table.num("proxies", Bounds(ge=1, le=64), default=1, integer=True),
        window_s=table.num("window_s", POSITIVE, default=DEFAULT_WINDOW_S),
        ewma_tau_s=table.num("ewma_tau_s", POSITIVE, default=DEFAULT_EWMA_TAU_S),
        picker_refresh_s=table.num("picker_refresh_s", NON_NEGATIVE, default=0.0),
    )


def _health(table: Table) -> HealthTemplate:
    return HealthTemplate(
        interval_s=table.num("interval_s", POSITIVE, default=1.0),
        healthy_threshold=table.num("healthy_threshold", Bounds(ge=1), default=1, integer=True),
        unhealthy_threshold=table.num("unhealthy_threshold", Bounds(ge=1), default=2, integer=True),
    )


def _groups(top: Table, duration: Num) -> tuple[GroupTemplate, ...]:
    groups = tuple(_group(t, duration) for t in top.tables("backends", _BACKEND_KEYS))
    if not groups:
        raise top.ctx.error("backends", "no backends", "add at least one [[backends]] table")
    total = sum(round(g.count.high) for g in groups)
    if total > MAX_BACKENDS:
        raise top.ctx.error(
            "backends",
            f"up to {total} backends in total, more than the maximum {MAX_BACKENDS}",
            "lower the counts (the upper end of a count range counts)",
        )
    _check_names(top, groups)
    return groups


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
    count = table.num("count", Bounds(ge=1, le=MAX_BACKENDS), default=1, integer=True)
    concurrency = table.num("concurrency", Bounds(ge=1), integer=True)
    service = _service(Table(table.ctx, table.raw("service"), table.key("service"), _SERVICE_KEYS))
    events: list[EventTemplate] = []
    if table.has("events"):
        for event_table in table.tables("events", _EVENT_KEYS):
            event = _event(event_table, duration)
            clash = next((e for e in events if _overlap(e, event)), None)
            if clash is not None:
                raise table.ctx.error(
                    event_table.path,
                    f"overlaps an earlier event ({clash.at_s.low:g}-{clash.until_s.high:g} s)",
                    "make the events of one group disjoint; put several effects in one event",
                )
            events.append(event)
    pauses = None
    if table.has("pauses"):
        pauses = _pauses(
            Table(table.ctx, table.raw("pauses"), table.key("pauses"), ("every_s", "duration_s"))
        )
    return GroupTemplate(
        name=table.name("name") if table.has("name") else None,
        count=count,
        concurrency=concurrency,
        service=service,
        queue_limit=table.num("queue_limit", NON_NEGATIVE, default=1000, integer=True),
        timeout_s=table.num("timeout_s", POSITIVE, default=1.0),
        events=tuple(events),
        pauses=pauses,
    )


def _overlap(a: EventTemplate, b: EventTemplate) -> bool:
    return a.at_s.low < b.until_s.high and b.at_s.low < a.until_s.high


def _service(table: Table) -> ServiceTemplate:
    dist = cast(Distribution, table.choice("dist", DISTRIBUTIONS))
    for key, owner in (("cv", "lognormal"), ("shape", "pareto")):
        if table.has(key) and dist != owner:
            raise table.ctx.error(
                table.key(key),
                f"'{key}' does not apply to dist = '{dist}'",
                f"remove it, or use dist = '{owner}'",
            )
    return ServiceTemplate(
        dist=dist,
        mean_s=table.num("mean_s", Bounds(ge=1e-6)),
        cv=table.num("cv", NON_NEGATIVE, default=1.0) if dist == "lognormal" else None,
        shape=table.num("shape", Bounds(gt=1), default=1.5) if dist == "pareto" else None,
    )


def _event(table: Table, duration: Num) -> EventTemplate:
    at = table.num("at_s", NON_NEGATIVE)
    until = table.num("until_s", Bounds(le=duration.low))
    if until.low <= at.high:
        raise table.ctx.error(
            table.key("until_s"),
            f"ends ({until.low:g} s) before it starts ({at.high:g} s)",
            "use until_s > at_s (with ranges: low end of until_s > high end of at_s)",
        )
    slowdown = table.num("slowdown", POSITIVE, default=1.0)
    slowdown_to = table.optional_num("slowdown_to", POSITIVE)
    error_rate = table.num("error_rate", Bounds(ge=0, le=1), default=0.0)
    down = table.boolean("down", False)
    if slowdown == Num(1.0, 1.0) and slowdown_to is None and error_rate.high == 0 and not down:
        raise table.ctx.error(
            table.path,
            "event changes nothing",
            "give slowdown, slowdown_to, error_rate or down = true",
        )
    return EventTemplate(
        at_s=at,
        until_s=until,
        slowdown=slowdown,
        slowdown_to=slowdown_to,
        error_rate=error_rate,
        error_latency_s=table.num("error_latency_s", NON_NEGATIVE, default=0.001),
        down=down,
    )


def _pauses(table: Table) -> PausesTemplate:
    every = table.num("every_s", POSITIVE)
    length = table.num("duration_s", POSITIVE)
    if length.high >= every.low:
        raise table.ctx.error(
            table.key("duration_s"),
            f"pauses of {length.high:g} s are not shorter than their spacing ({every.low:g} s)",
            "use duration_s < every_s",
        )
    return PausesTemplate(every, length)
