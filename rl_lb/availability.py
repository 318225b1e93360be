"""A per-backend availability list that counts its own changes, so a picker's check is O(1).

A picker needs the candidate table for the current availability pattern on every request. Asking
a plain list "is everything available?" (`False not in available`) scans all N entries: ~9 µs
per pick at 1,000 backends, three times the budget of a whole pick (issue 15). `Availability` is
a `list[bool]` whose every mutation that may change the pattern bumps `version`; a picker keeps
the table it built with the version it saw and rebuilds only when the version moved.

It is a list subclass, not a counter kept beside a list, because availability is written in
several places (`PoolMetrics.set_health` and `set_ejected`, the proxy's circuit breaker and
drains on `PoolView`, additions and removals): with the count inside the list no writer can
forget to bump it, and a stale table cannot happen. Reads stay those of a plain list (indexing,
iteration, `in`, `list(...)` run at C speed); only writes pass through Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import SupportsIndex, overload

__all__ = ["Availability"]


class Availability(list[bool]):
    """`list[bool]` of "healthy and not ejected" (or the proxy's "may be picked") per backend.

    `version` grows with every mutation that can change the contents (an assignment of the same
    value to one entry does not count: the proxy rewrites entries after exchanges). Readers
    compare it to the version they last saw; they must also hold on to the list itself, since
    two lists can have the same version.
    """

    __slots__ = ("version",)

    def __init__(self, entries: Iterable[bool] = ()) -> None:
        self.version = 0
        super().__init__(entries)

    def __reduce__(self) -> tuple[type[Availability], tuple[list[bool]]]:
        """Copies and pickles rebuild through `__init__`: the default protocol would append the
        entries before restoring `version`, and `append` needs it."""
        return Availability, (list(self),)

    @overload
    def __setitem__(self, key: SupportsIndex, value: bool, /) -> None: ...

    @overload
    def __setitem__(self, key: slice, value: Iterable[bool], /) -> None: ...

    def __setitem__(self, key: SupportsIndex | slice, value: bool | Iterable[bool], /) -> None:
        if isinstance(key, slice):
            self.version += 1
            super().__setitem__(key, list(value))  # type: ignore[arg-type]
        elif super().__getitem__(key) != value:
            self.version += 1
            super().__setitem__(key, value)  # type: ignore[assignment]

    def __delitem__(self, key: SupportsIndex | slice, /) -> None:
        self.version += 1
        super().__delitem__(key)

    def __iadd__(self, entries: Iterable[bool], /) -> Availability:  # type: ignore[override,misc]
        self.version += 1
        super().__iadd__(entries)
        return self

    def __imul__(self, times: SupportsIndex, /) -> Availability:
        self.version += 1
        super().__imul__(times)
        return self

    def append(self, entry: bool, /) -> None:
        self.version += 1
        super().append(entry)

    def extend(self, entries: Iterable[bool], /) -> None:
        self.version += 1
        super().extend(entries)

    def insert(self, index: SupportsIndex, entry: bool, /) -> None:
        self.version += 1
        super().insert(index, entry)

    def pop(self, index: SupportsIndex = -1, /) -> bool:
        self.version += 1
        return super().pop(index)

    def remove(self, entry: bool, /) -> None:
        self.version += 1
        super().remove(entry)

    def clear(self) -> None:
        self.version += 1
        super().clear()

    def reverse(self) -> None:
        self.version += 1
        super().reverse()

    def sort(self, *args: object, **kwargs: object) -> None:
        self.version += 1
        super().sort(*args, **kwargs)  # type: ignore[call-overload]
