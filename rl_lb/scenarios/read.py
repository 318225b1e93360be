"""Typed, bounded reads from a raw TOML table, each failure one `ScenarioError` line.

Every error names the file and the key path (`backends[1].service.dist`) so a user can jump to
the line; every number may be a `[low, high]` range, checked at both ends, which is enough
because every bound here is an interval.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

from rl_lb.errors import ScenarioError
from rl_lb.scenarios.fields import Bounds, Key, Num, key_of, numeric_fields

__all__ = ["MAX_ERRORS", "CollectedScenarioError", "Context", "Table", "describe", "number"]

MAX_ERRORS = 20
"""Errors reported for one file; past this many, the rest are likely one mistake's echoes."""

_MAGNITUDE = 1e9
"""Larger numbers are typos, and they would overflow the samplers' arithmetic."""
_TINY = 1e-9
"""Smaller non-zero numbers are typos too, and products of two of them underflow to 0."""
_INT_MAX = 2**31 - 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
T = TypeVar("T")


class CollectedScenarioError(ScenarioError):
    """Several errors of one file. Its own message is the first error's line with a count of the
    others; `errors` holds every one (each a one-line `ScenarioError`)."""

    def __init__(self, errors: Sequence[ScenarioError], capped: bool = False) -> None:
        self.errors = list(errors)
        self.capped = capped
        first, more = self.errors[0], len(self.errors) - 1
        note = f"{more}{'+' if capped else ''} more error{'s' if more > 1 else ''} in this file"
        super().__init__(first.where, first.what, "; ".join(filter(None, [first.fix, note])))


class _AbandonedPartError(Exception):
    """A part of the file whose errors are recorded already: it yields no value."""


class Context:
    """Where errors point (the file), the errors found so far, and a running count of
    `[low, high]` ranges.

    Parsing goes on after an error wherever the parts are independent (`attempt`), so that one
    run reports every mistake of a file, up to `MAX_ERRORS`; `finish` raises them.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.ranges = 0
        self.errors: list[ScenarioError] = []

    def error(self, path: str, what: str, fix: str = "") -> ScenarioError:
        return ScenarioError(f"{self.file}: {path}" if path else self.file, what, fix)

    def record(self, error: ScenarioError) -> None:
        """Note an error and go on; at `MAX_ERRORS` stop parsing the file."""
        self.errors.append(error)
        if len(self.errors) >= MAX_ERRORS:
            raise CollectedScenarioError(self.errors, capped=True)

    def attempt(self, check: Callable[[], T]) -> T | None:
        """`check()`, or None with its error recorded: the caller goes on with the next part."""
        try:
            return check()
        except CollectedScenarioError:
            raise
        except ScenarioError as error:
            self.record(error)
        except _AbandonedPartError:
            pass
        return None

    def settle(self, mark: int) -> None:
        """Abandon the current part if errors were recorded since `len(self.errors) == mark`."""
        if len(self.errors) > mark:
            raise _AbandonedPartError

    def finish(self) -> None:
        """Raise what was found: the error itself when there is one, else all of them."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise CollectedScenarioError(self.errors)


def describe(value: object) -> str:
    """A short, single-line rendering of a user's value for an error message."""
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
    kind = next((k for t, k in kinds.items() if type(value) is t), None)
    if kind is None:
        kind = "table" if isinstance(value, Mapping) else "array" if isinstance(value, list) else ""
        kind = kind or type(value).__name__
    text = repr(value).replace("\n", " ")
    return f"{kind} {text[:40]}…" if len(text) > 40 else f"{kind} {text}"


def _fmt(x: float) -> str:
    return f"{x:g}"


def _scalar(ctx: Context, value: object, path: str, integer: bool) -> float:
    kind = "an integer" if integer else "a number"
    example = f"write e.g. {path.rsplit('.', 1)[-1]} = 4 or a range [2, 8]"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.error(path, f"expected {kind}, got {describe(value)}", example)
    if integer and not isinstance(value, int):
        raise ctx.error(path, f"expected {kind}, got {describe(value)}", "drop the fraction")
    limit = _INT_MAX if integer else _MAGNITUDE
    if not math.isfinite(value) or abs(value) > limit or 0 < abs(value) < _TINY:
        fix = f"use 0 or {_TINY:g} <= |x| <= {limit:g}"
        raise ctx.error(path, f"{describe(value)} is not a usable number", fix)
    return float(value)


def number(ctx: Context, value: object, path: str, bounds: Bounds, integer: bool = False) -> Num:
    """Parse `x` or `[low, high]` and check both ends against `bounds`."""
    if isinstance(value, list):
        if len(value) != 2:
            raise ctx.error(
                path,
                f"a range needs exactly two numbers, got {len(value)}",
                "write [low, high], e.g. [0.5, 1.5]",
            )
        low = _scalar(ctx, value[0], path, integer)
        high = _scalar(ctx, value[1], path, integer)
        if low > high:
            raise ctx.error(
                path,
                f"range [{_fmt(low)}, {_fmt(high)}] has low > high",
                f"write [{_fmt(high)}, {_fmt(low)}]",
            )
        if low != high:
            ctx.ranges += 1
    else:
        low = high = _scalar(ctx, value, path, integer)
    for end in (low, high):
        if not bounds.holds(end):
            raise ctx.error(
                path, f"{_fmt(end)} is out of range: must be {bounds.text()}", "change the value"
            )
    return Num(low, high, integer)


class Table:
    """One TOML table with a fixed set of valid keys; unknown keys fail with a suggestion."""

    def __init__(self, ctx: Context, data: object, path: str, keys: Sequence[str]) -> None:
        if not isinstance(data, Mapping):
            header = f"[{path}]" if path else "a table"
            raise ctx.error(path, f"expected a table, got {describe(data)}", f"write {header}")
        self.ctx, self.path, self.data = ctx, path, data
        for key in data:  # each unknown key is reported; the known ones are still read
            if key not in keys:
                close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'? " if close else ""
                ctx.record(
                    ctx.error(
                        self.key(str(key)), "unknown key", f"{hint}valid keys: {', '.join(keys)}"
                    )
                )

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> object:
        if name not in self.data:
            where = f"[{self.path}]" if self.path else "the top level"
            raise self.ctx.error(self.key(name), "missing required key", f"add '{name}' to {where}")
        return self.data[name]

    def num(
        self,
        name: str,
        bounds: Bounds,
        default: float | None = None,
        integer: bool = False,
    ) -> Num:
        if default is not None and name not in self.data:
            return Num(default, default, integer)
        return number(self.ctx, self.raw(name), self.key(name), bounds, integer)

    def optional_num(self, name: str, bounds: Bounds) -> Num | None:
        return self.num(name, bounds) if name in self.data else None

    def declared(self, name: str, info: Key, bounds: Bounds | None = None) -> Num | None:
        """The key as `info` declares it (`bounds` replaces bounds that depend on the file)."""
        check = bounds if bounds is not None else info.bounds
        if info.optional:
            return self.optional_num(name, check)
        return self.num(name, check, info.default, info.integer)

    def field(self, cls: type[Any], name: str, bounds: Bounds | None = None) -> Num:
        """The numeric, non-optional field `name` of `cls`, as its `num(...)` metadata says."""
        value = self.declared(name, key_of(cls, name), bounds)
        assert value is not None, f"{cls.__name__}.{name} is optional"
        return value

    def numbers(
        self, cls: type[Any], bounds: Mapping[str, Bounds] | None = None
    ) -> dict[str, Num | None]:
        """Every numeric key `cls` declares, in declaration order (defaults filled in)."""
        extra = bounds or {}
        mark = len(self.ctx.errors)
        values: dict[str, Num | None] = {}
        for name, info in numeric_fields(cls):
            values[name] = self.ctx.attempt(partial(self.declared, name, info, extra.get(name)))
        self.ctx.settle(mark)  # a key that failed must not pass for an absent optional one
        return values

    def string(self, name: str, default: str | None = None) -> str:
        if default is not None and name not in self.data:
            return default
        value = self.raw(name)
        if not isinstance(value, str):
            raise self.ctx.error(
                self.key(name), f"expected a string, got {describe(value)}", f'write {name} = "…"'
            )
        return value

    def name(self, name: str, default: str | None = None) -> str:
        """A name used in logs, metric labels and backend ids: short, no spaces."""
        value = self.string(name, default)
        if not _NAME.fullmatch(value):
            raise self.ctx.error(
                self.key(name),
                f"invalid name {value!r}",
                "use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit",
            )
        return value

    def boolean(self, name: str, default: bool) -> bool:
        if name not in self.data:
            return default
        value = self.data[name]
        if not isinstance(value, bool):
            raise self.ctx.error(
                self.key(name),
                f"expected true or false, got {describe(value)}",
                f"write {name} = true",
            )
        return value

    def choice(self, name: str, options: Sequence[str], default: str | None = None) -> str:
        value = self.string(name, default)
        if value not in options:
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise self.ctx.error(
                self.key(name),
                f"unknown {name} {value!r}",
                f"{hint}valid: {', '.join(options)}",
            )
        return value

    def array(self, name: str) -> list[object]:
        value = self.raw(name)
        if not isinstance(value, list):
            raise self.ctx.error(
                self.key(name), f"expected an array, got {describe(value)}", f"write {name} = […]"
            )
        return value

    def tables(self, name: str, keys: Sequence[str]) -> Iterable[Table]:
        return (
            Table(self.ctx, item, f"{self.key(name)}[{i}]", keys)
            for i, item in enumerate(self.array(name))
        )
