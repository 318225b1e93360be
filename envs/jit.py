"""The one decorator for the simulator's kernels.

`_nrt=False` switches off numba's reference counting. With it on, every call between compiled
functions that passes a tuple of arrays (`Spec`, `State`) increfs and decrefs each array with an
atomic operation: ~40x the cost of the work itself. The price is that kernels cannot allocate
arrays, so every buffer they need lives in the state or is passed in.

The on-disk cache is keyed by a digest of the kernels' sources *and of the modules they import*
(`_cache_dir`). numba's own key is the compiled function's file alone: after an edit of a twin
module or of a constant in `rl_lb`, it would go on loading a kernel built from the old code.
Set `NUMBA_CACHE_DIR` to choose the place yourself (then numba's own keying applies).
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from numba import config, njit

__all__ = ["jit", "jit_inline"]

F = TypeVar("F", bound=Callable[..., Any])
_ROOT = Path(__file__).resolve().parents[1]


def _sources() -> list[Path]:
    """The kernel modules of `envs` and every `envs`/`rl_lb` module they import, transitively."""
    todo = [p for p in (_ROOT / "envs").glob("*.py") if p.name.startswith(("nb_", "kernel"))]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_bytes())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:  # relative: from the importing module's package upwards
                parts = list(path.relative_to(_ROOT).parent.parts)[: 1 - node.level or None]
                name = ".".join([*parts, *(node.module or "").split(".")]).strip(".")
            else:
                name = node.module or ""
            if name.split(".")[0] in ("envs", "rl_lb"):
                base = _ROOT.joinpath(*name.split("."))
                todo += [base.with_suffix(".py"), base / "__init__.py"]
                todo += [base / f"{alias.name}.py" for alias in node.names]
    return sorted(seen)


def _cache_dir() -> str:
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.relative_to(_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    parent = Path(cache_home, "rl-lb", "numba")
    _prune(parent, keep=8)
    return str(parent / digest.hexdigest()[:16])


def _prune(parent: Path, keep: int) -> None:
    """Drop all but the `keep` most recently used builds (each edit of a kernel makes one)."""
    try:
        builds = sorted(parent.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


if not os.environ.get("NUMBA_CACHE_DIR"):
    config.CACHE_DIR = _cache_dir()  # type: ignore[attr-defined]  # numba sets its config at run time

# numba ships no stubs that list the private `_nrt` option, so its overloads reject the call.
_compile = njit(cache=True, _nrt=False)  # type: ignore[call-overload]
_compile_inline = njit(cache=True, _nrt=False, inline="always")  # type: ignore[call-overload]


def jit(function: F) -> F:
    """Compile `function` (cached on disk); typed as the function itself for the type checker."""
    return cast(F, _compile(function))


def jit_inline(function: F) -> F:
    """`jit`, and inlined by numba into every caller. For the large kernels called once per
    event with the whole `Spec` and `State`: numba passes a named tuple by value, flattened, so
    a call LLVM does not inline copies ~6 KB of array descriptors on the stack (half of the
    simulator's time per request at 1,000 backends, before `_arrive` was inlined)."""
    return cast(F, _compile_inline(function))
