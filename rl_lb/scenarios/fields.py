"""How a dataclass field is written in a scenario file, declared once on the field itself.

A scenario field's default is its dataclass default; its bounds and integer-ness live in its
field metadata (`num(...)`), or, for the settings shared with the proxy, in its
`rl_lb.control.Setting`. From that one declaration the parser reads a `Num` (a number or a
`[low, high]` range), a `Template` holds what was read, and `Template.draw` builds the concrete
dataclass, drawing each range in field-declaration order. So the range-holding "template" and
the concrete value are the same class seen at two moments, and no field is written twice.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from rl_lb.control import Setting

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "LISTED",
    "NON_NEGATIVE",
    "POSITIVE",
    "Bounds",
    "Drawer",
    "Key",
    "Num",
    "Template",
    "file_keys",
    "key_of",
    "num",
    "numeric_fields",
    "setting_key",
]

T = TypeVar("T", bound="DataclassInstance")


class Drawer(Protocol):
    """Picks one value from a range; random for training, the midpoint for summaries."""

    def __call__(self, low: float, high: float, integer: bool) -> float: ...


@dataclass(frozen=True)
class Bounds:
    """An interval a number must lie in; None means unbounded on that side."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def holds(self, x: float) -> bool:
        return not (
            (self.gt is not None and x <= self.gt)
            or (self.ge is not None and x < self.ge)
            or (self.lt is not None and x >= self.lt)
            or (self.le is not None and x > self.le)
        )

    def text(self) -> str:
        parts = [
            f"{op} {v:g}"
            for op, v in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
            if v is not None
        ]
        return " and ".join(parts)


POSITIVE = Bounds(gt=0)
NON_NEGATIVE = Bounds(ge=0)


@dataclass(frozen=True)
class Num:
    """A number from the file: fixed when low == high, else drawn uniformly per episode."""

    low: float
    high: float
    integer: bool = False

    @property
    def is_range(self) -> bool:
        return self.low != self.high

    def draw(self, drawer: Drawer) -> float:
        # Fixed numbers consume no randomness, so adding a range elsewhere in a file does not
        # change how the other ranges are drawn for a given seed more than necessary.
        return drawer(self.low, self.high, self.integer) if self.is_range else self.low

    def draw_int(self, drawer: Drawer) -> int:
        return round(self.draw(drawer))

    def value(self, drawer: Drawer) -> float | int:
        """The drawn value in the field's type: an int for integer keys."""
        return self.draw_int(drawer) if self.integer else self.draw(drawer)


@dataclass(frozen=True)
class Key:
    """A numeric scenario key: its valid interval, integer-ness and default in a file."""

    bounds: Bounds = Bounds()
    integer: bool = False
    default: float | None = None
    """Used when the key is absent; None: the key is required, unless `optional`."""
    optional: bool = False
    """An absent key is None (`Event.slowdown_to`)."""


_META = "scenario"
"""The field-metadata entry: a `Key` for a number, True for any other key a file may write."""

LISTED: Mapping[str, object] = {_META: True}
"""Field metadata of a key a file writes as a string, a boolean or a table (the parser checks
it itself): `dist: Distribution = field(metadata=LISTED)`."""


def num(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    integer: bool = False,
    file_default: float | None = None,
) -> Mapping[str, object]:
    """Field metadata of a numeric key: `cv: float = field(default=1.0, metadata=num(ge=0))`.

    The field's default is the file's; a default of None makes the key optional. `file_default`
    is for a field code must always give (no dataclass default) but a file may leave out.
    """
    return {_META: Key(Bounds(gt, ge, lt, le), integer, file_default)}


def file_keys(cls: type[Any]) -> tuple[str, ...]:
    """The keys a file may write for `cls`, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if _META in f.metadata)


def _resolved(f: dataclasses.Field[Any]) -> Key | None:
    """The field's `Key` with its file default: the dataclass default, if the field has one."""
    info = f.metadata.get(_META)
    if not isinstance(info, Key):
        return None
    if f.default is None:
        return dataclasses.replace(info, optional=True)
    if f.default is not MISSING:
        return dataclasses.replace(info, default=f.default)
    return info


def key_of(cls: type[Any], name: str) -> Key:
    """The `Key` of the numeric field `name` of `cls`, its default filled in."""
    info = _resolved(next(f for f in dataclasses.fields(cls) if f.name == name))
    assert info is not None, f"{cls.__name__}.{name} is not a numeric key"
    return info


def numeric_fields(cls: type[Any]) -> Iterator[tuple[str, Key]]:
    """(name, Key) of every numeric key of `cls`, in declaration order."""
    for f in dataclasses.fields(cls):
        info = _resolved(f)
        if info is not None:
            yield f.name, info


def setting_key(info: Setting) -> Key:
    """The scenario-file view of a setting shared with the proxy: its bounds and integer-ness.

    No default: a key the file leaves out keeps the setting's own dataclass default.
    """
    low = {"gt": info.minimum} if info.min_exclusive else {"ge": info.minimum}
    high = {"le": info.maximum} if math.isfinite(info.maximum) else {}
    return Key(Bounds(**low, **high), info.integer)


@dataclass(frozen=True)
class Template(Generic[T]):
    """A validated section of a file before its ranges are drawn.

    `values` maps field names of `cls` to a `Num`, a nested `Template`, a tuple of them, or a
    plain value; fields it leaves out keep their dataclass default.
    """

    cls: type[T]
    values: Mapping[str, object]

    def draw(self, drawer: Drawer) -> T:
        """The concrete dataclass, its ranges drawn in field-declaration order."""
        kwargs = {
            f.name: _draw(self.values[f.name], drawer)
            for f in dataclasses.fields(self.cls)
            if f.name in self.values
        }
        return self.cls(**kwargs)


def _draw(value: object, drawer: Drawer) -> object:
    if isinstance(value, Num):
        return value.value(drawer)
    if isinstance(value, Template):
        return value.draw(drawer)
    if isinstance(value, tuple):
        return tuple(_draw(v, drawer) for v in value)
    return value
