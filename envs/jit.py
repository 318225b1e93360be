"""The one decorator for the simulator's kernels.

`_nrt=False` switches off numba's reference counting. With it on, every call between compiled
functions that passes a tuple of arrays (`Spec`, `State`) increfs and decrefs each array with an
atomic operation: ~40x the cost of the work itself. The price is that kernels cannot allocate
arrays, so every buffer they need lives in the state or is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from numba import njit

__all__ = ["jit"]

F = TypeVar("F", bound=Callable[..., Any])
# numba ships no stubs that list the private `_nrt` option, so its overloads reject the call.
_compile = njit(cache=True, _nrt=False)  # type: ignore[call-overload]


def jit(function: F) -> F:
    """Compile `function` (cached on disk); typed as the function itself for the type checker."""
    return cast(F, _compile(function))
