"""A disk cache of evaluation records of the heuristic balancers: `RecordCache`.

Every `rl-lb train` stage runs the same baseline episodes (8 heuristics × 13 scenarios × 3–4
seeds) that the stage before it ran, in a new process, and they are a large part of its
evaluation time (docs/training.md, "The evaluation record cache"). A heuristic's record is a
pure function of the sampled scenario, the balancer's name, the seed and the code, so it can be
kept on disk and read back by the next stage or the next run.

The key is a sha256 over everything that decides a record: the sampled `Scenario` in full (not
its name: a family is drawn with the seed, and a file may change under the same name), the
balancer's name, the seed, and `code_fingerprint()`, the bytes of every module of `envs` and
`rl_lb` with the versions of Python, numpy and numba, so any edit of the simulator, the
policies or the pickers starts a new cache. `run_episode` takes nothing else (no environment
settings, no picker beyond the balancer's own). Learned policies are never cached: their
weights are files the fingerprint does not cover.

Entries are written to a temporary file and renamed into place, so parallel stages or a killed
run never leave half an entry; an entry that does not read back as a valid record is ignored,
with one warning line, and recomputed. A cache that cannot be written is skipped, not fatal.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rl_lb.scenarios import Scenario

__all__ = [
    "CACHE_ENV",
    "FORMAT",
    "RecordCache",
    "cacheable",
    "code_fingerprint",
    "default_root",
    "scenario_text",
]

log = logging.getLogger(__name__)

CACHE_ENV = "RL_LB_RECORD_CACHE"
"""Unset or empty: the default folder (`default_root`); `off` (or 0, false, no): no cache;
anything else: the cache's folder."""
OFF_VALUES = frozenset({"off", "0", "false", "no", "none"})
FORMAT = 1
"""Bumped when the entries' layout or the records' keys change."""
KEEP_BUILDS = 8
"""Code fingerprints whose entries are kept; older ones are deleted (each code edit makes one)."""
_ROOT = Path(__file__).resolve().parents[1]
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "scenario": (str,),
    "balancer": (str,),
    "seed": (int,),
    "requests": (int,),
    "errors": (int,),
}
"""Types of the record keys that are not floats (every other summary figure is a float)."""


@functools.cache
def code_fingerprint() -> str:
    """sha256 of every `.py` under envs/ and rl_lb/ (path and bytes) and the interpreter's,
    numpy's and numba's versions: computed once per process, a few milliseconds."""
    digest = hashlib.sha256()
    for package in ("envs", "rl_lb"):
        for path in sorted((_ROOT / package).rglob("*.py")):
            data = path.read_bytes()
            digest.update(f"{path.relative_to(_ROOT).as_posix()}\0{len(data)}\0".encode() + data)
    versions = (
        sys.version,
        platform.machine(),
        np.__version__,
        importlib.metadata.version("numba"),
    )
    digest.update(repr(versions).encode())
    return digest.hexdigest()


def default_root() -> Path:
    """`$XDG_CACHE_HOME/rl-lb/records`, else `~/.cache/rl-lb/records` (beside numba's builds)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache_home, "rl-lb", "records")


def cacheable(balancer: str) -> bool:
    """Heuristic presets and `POLICY+PICKER` pairs; not `learned…`, whose weights are files."""
    return not balancer.startswith("learned")


class _UnstableError(Exception):
    """A value whose text is not a function of its content (an object's address)."""


def _canonical(value: Any) -> str:
    """Text of `value` from all its dataclass fields (even those left out of their repr)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        inner = ",".join(f"{f.name}={_canonical(getattr(value, f.name))}" for f in fields)
        return f"{type(value).__qualname__}({inner})"
    if isinstance(value, tuple | list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_canonical(k)}:{_canonical(v)}" for k, v in value.items()) + "}"
    if isinstance(value, np.ndarray):
        return f"array({value.dtype.str},{value.shape},{value.tobytes().hex()})"
    text = repr(value)  # floats: the shortest text that reads back as the same float
    if " at 0x" in text:
        raise _UnstableError(text)
    return text


def scenario_text(scenario: Scenario) -> str:
    """The sampled scenario's full content; its file's path is left out (not simulated)."""
    return _canonical(dataclasses.replace(scenario, source=None))


class RecordCache:
    """Evaluation records on disk, one JSON file per (scenario content, balancer, seed, code)."""

    def __init__(self, root: Path, fingerprint: str | None = None) -> None:
        self.root = root
        self.fingerprint = fingerprint or code_fingerprint()
        self.folder = root / self.fingerprint[:16]
        self._readable = self._writable = True
        self.hits = self.misses = 0

    @classmethod
    def from_env(cls) -> RecordCache | None:
        """The cache `RL_LB_RECORD_CACHE` names (module docstring), None when it says off."""
        setting = os.environ.get(CACHE_ENV, "").strip()
        if setting.lower() in OFF_VALUES:
            return None
        cache = cls(Path(setting).expanduser() if setting else default_root())
        cache.prune()
        return cache

    def prune(self, keep: int = KEEP_BUILDS) -> None:
        """Mark this code's folder used and drop all but the `keep` most recently used."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            os.utime(self.folder)
            builds = sorted(self.root.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:
            return
        for old in builds[keep:]:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    def key(self, scenario: Scenario, balancer: str, seed: int) -> str | None:
        """The entry's sha256, None for what is never cached."""
        if not cacheable(balancer):
            return None
        try:
            text = scenario_text(scenario)
        except _UnstableError:
            return None
        material = json.dumps([FORMAT, self.fingerprint, text, balancer, int(seed)])
        return hashlib.sha256(material.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, scenario: Scenario, balancer: str, seed: int) -> dict[str, Any] | None:
        """The stored record, or None (not cacheable, absent, or unreadable: then one warning)."""
        key = self.key(scenario, balancer, seed)
        if key is None or not self._readable:
            return None
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        except OSError as error:
            self._readable = False
            log.warning("record cache: cannot read %s (%s); not using it", self.folder, error)
            return None
        try:
            record = _parse(text, key, (scenario.name, balancer, int(seed)))
        except (ValueError, TypeError, KeyError) as error:
            log.warning("record cache: ignoring corrupt entry %s (%s); recomputing", path, error)
            self.misses += 1
            return None
        self.hits += 1
        return record

    def put(self, scenario: Scenario, record: dict[str, Any]) -> None:
        """Store `record` (of `scenario`) atomically; nothing for what is never cached."""
        key = self.key(scenario, str(record["balancer"]), int(record["seed"]))
        if key is None or not self._writable:
            return
        path = self.path(key)
        text = json.dumps({"format": FORMAT, "key": key, "record": record})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=f".{key[:8]}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as file:
                    file.write(text)
                os.replace(temp, path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as error:
            self._writable = False
            log.warning("record cache: cannot write %s (%s); not caching", self.folder, error)


def _parse(text: str, key: str, expected: tuple[str, str, int]) -> dict[str, Any]:
    """The record of an entry, checked against its key and the episode it must describe."""
    from envs.evaluate import RECORD_KEYS

    entry = json.loads(text)
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
        raise ValueError("not an entry of this key")
    record = entry["record"]
    if not isinstance(record, dict) or list(record) != list(RECORD_KEYS):
        raise ValueError("not a record")
    for name, value in record.items():
        types = _RECORD_TYPES.get(name, (float,))
        if not isinstance(value, types) or isinstance(value, bool):
            raise TypeError(f"{name} is {type(value).__name__}")
    if (record["scenario"], record["balancer"], record["seed"]) != expected:
        raise ValueError("another episode's record")
    return record
