"""Reading a recording (every worker's Parquet files of one or more folders) into numpy columns.

A file that cannot be read (truncated by a crash, an unclosed file of a proxy still running, a
foreign file) costs one error line naming it; the rest of the recording is still used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl_lb.errors import ScenarioError
from rl_lb.types import FloatArray, IntArray
from serving.recorder import SAMPLE_KEY

__all__ = ["Recording", "read_recording"]


@dataclass(frozen=True)
class Recording:
    """Every recorded request (sorted by arrival) and the recorded control intervals."""

    arrival_s: FloatArray
    """Seconds from the first recorded arrival."""
    backend: IntArray
    """Index into `names`."""
    names: tuple[str, ...]
    latency_s: FloatArray
    failed: np.ndarray
    """True for a 5xx or a connection failure / timeout (what the simulator calls an error)."""
    in_flight: IntArray
    """The backend's open exchanges at dispatch, this one counted."""
    start_unix_s: float
    balancers: tuple[str, ...]
    """The balancer named by each recorded control interval (most often one name)."""
    primary_share: float
    """Share of the recorded intervals in primary mode (NaN: none recorded)."""
    sample: int
    """1 in `sample` requests was recorded (estimated from the files' metadata when present)."""

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self.arrival_s) else 0.0

    def of(self, backend: int) -> np.ndarray:
        return np.asarray(self.backend == backend)


def _files(folders: Sequence[str], kind: str) -> list[Path]:
    found: list[Path] = []
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            raise ScenarioError(
                folder, "is not a folder", "pass the folder of rl-lb serve --record"
            )
        found += sorted(path.glob(f"{kind}-w*-*.parquet"))
    return found


def _read(path: Path, columns: list[str], warn: Callable[[str], None]) -> Any:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]  # no type information shipped

    try:
        return pq.read_table(path, columns=columns)
    except Exception as error:  # pyarrow raises several types for a broken file
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        warn(f"{path}: unreadable recording file, skipped ({first})")
        return None


REQUEST_COLUMNS = ["arrival_s", "backend", "latency_s", "outcome", "in_flight"]


def read_recording(folders: Sequence[str], warn: Callable[[str], None]) -> Recording:
    """The requests and intervals of `folders`; ScenarioError when no request is readable."""
    tables = [_read(p, REQUEST_COLUMNS, warn) for p in _files(folders, "requests")]
    tables = [t for t in tables if t is not None and t.num_rows]
    samples = {int((t.schema.metadata or {}).get(SAMPLE_KEY.encode(), b"1")) for t in tables}
    if not tables:
        where = ", ".join(folders)
        raise ScenarioError(where, "holds no readable recorded request", "record with --record")
    columns = {
        c: [t.column(c).to_numpy(zero_copy_only=False) for t in tables] for c in REQUEST_COLUMNS
    }
    merged = {c: np.concatenate(parts) for c, parts in columns.items()}
    order = np.argsort(merged["arrival_s"], kind="stable")
    arrival = merged["arrival_s"][order].astype(np.float64)
    urls = merged["backend"][order].astype(str)
    names, backend = np.unique(urls, return_inverse=True)
    outcome = merged["outcome"][order].astype(str)
    balancers: list[str] = []
    modes: list[str] = []
    for path in _files(folders, "intervals"):
        table = _read(path, ["balancer", "mode"], warn)
        if table is not None:
            balancers += table.column("balancer").to_pylist()
            modes += table.column("mode").to_pylist()
    primary = sum(m == "primary" for m in modes) / len(modes) if modes else float("nan")
    return Recording(
        arrival_s=arrival - arrival[0],
        backend=backend.astype(np.int64),
        names=tuple(str(n) for n in names),
        latency_s=merged["latency_s"][order].astype(np.float64),
        failed=np.isin(outcome, ["5xx", "error"]),
        in_flight=merged["in_flight"][order].astype(np.int64),
        start_unix_s=float(arrival[0]),
        balancers=tuple(balancers),
        primary_share=primary,
        sample=max(samples, default=1),
    )
