"""The `[arrivals]` table: read and validated once, then drawn against each sampled pool.

Arrivals are the one section that is not a plain dataclass of numbers: traffic may be written as
a rate (requests/s) or a load (a fraction of the pool's capacity, known only once the backends
are drawn), and each process (poisson, mmpp, trace) takes its own keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

from rl_lb.scenarios.fields import POSITIVE, Bounds, Drawer, Num
from rl_lb.scenarios.read import Table, describe, number
from rl_lb.scenarios.schema import Arrivals, Process, RateStep

__all__ = [
    "ARRIVAL_KEYS",
    "PROCESSES",
    "Amount",
    "ArrivalsTemplate",
    "StepTemplate",
    "draw_arrivals",
    "parse_arrivals",
]

PROCESSES: tuple[Process, ...] = ("poisson", "mmpp", "trace")
ARRIVAL_KEYS = ("process", "rate", "load", "profile", "rates", "loads", "dwell_s", "trace")
_PROCESS_KEYS: dict[str, tuple[str, ...]] = {
    "poisson": ("process", "rate", "load", "profile"),
    "mmpp": ("process", "rates", "loads", "dwell_s"),
    "trace": ("process", "trace"),
}


@dataclass(frozen=True)
class Amount:
    """Traffic written either as `rate` (requests/s) or as `load` (fraction of capacity)."""

    value: Num
    is_load: bool


@dataclass(frozen=True)
class StepTemplate:
    at_s: Num
    amount: Amount


@dataclass(frozen=True)
class ArrivalsTemplate:
    process: Process
    base: Amount | None
    """Poisson only: the base rate or load."""
    profile: tuple[StepTemplate, ...]
    phases: tuple[Amount, ...]
    """MMPP only: one rate or load per phase."""
    dwell_s: tuple[Num, ...]
    trace: tuple[float, ...]
    """Trace only: every timestamp in the file, sorted, before cutting at the duration."""


def parse_arrivals(table: Table, duration: Num, base_dir: Path) -> ArrivalsTemplate:
    """Validate `[arrivals]`; a trace path is relative to `base_dir`."""
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


def _rate(amount: Amount, capacity: float, draw: Drawer) -> float:
    value = amount.value.draw(draw)
    return value * capacity if amount.is_load else value


def draw_arrivals(t: ArrivalsTemplate, capacity: float, duration: float, draw: Drawer) -> Arrivals:
    """The concrete arrivals for a pool of `capacity` requests/s and an episode of `duration`."""
    if t.process == "mmpp":
        rates = tuple(_rate(a, capacity, draw) for a in t.phases)
        dwell = tuple(d.draw(draw) for d in t.dwell_s)
        mean = sum(r * d for r, d in zip(rates, dwell, strict=True)) / sum(dwell)
        return Arrivals("mmpp", mean, mmpp_rates=rates, mmpp_dwell_s=dwell)
    if t.process == "trace":
        trace = tuple(x for x in t.trace if x < duration)
        return Arrivals("trace", len(trace) / duration, trace=trace)
    assert t.base is not None  # the parser guarantees a rate or load for poisson
    rate = _rate(t.base, capacity, draw)
    profile = tuple(RateStep(s.at_s.draw(draw), _rate(s.amount, capacity, draw)) for s in t.profile)
    return Arrivals("poisson", rate, profile=profile)
