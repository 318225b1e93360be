"""`rl-lb serve --record DIR`: a monitoring trace of the live pool, in Parquet files.

Why: a policy trained on hand-written worlds never meets the user's own pool. The recording is
what `rl-lb scenario fit` turns into a scenario of that pool (lab/fit/), and what
`rl-lb scenario check` replays against.

What is written (nothing else: no request URL, header, body or client address):

* `requests-w<worker>-<n>.parquet`, one row per sampled request (1 in `record-sample`): its
  dispatch time (`arrival_s`, Unix seconds), the backend's address (`backend`, as configured),
  the time to the response head or the failure (`latency_s`), the outcome (`outcome`: 1xx..5xx,
  error), the backend's exchanges open at dispatch counting this one (`in_flight`) and the
  control interval it fell in (`interval`);
* `intervals-w<worker>-<n>.parquet`, one row per control decision: the snapshot the policy saw
  (list columns, one entry per backend), the weights decided, the mode and the balancer.

The request path only appends numbers to typed arrays, one per column (`dispatched`,
`answered`): no object per request for the garbage collector to track. Each control step hands
the arrays to a background thread (`flush`), which converts them to Arrow in bulk and writes
them. Files rotate at `record-file-size` bytes; this worker deletes its oldest files once its
own files exceed its share (`record-max-bytes / workers`) of the bound. pyarrow is imported here
only, and this module only when recording is on.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]  # no type information shipped
import pyarrow.parquet as pq  # type: ignore[import-untyped]  # no type information shipped

from rl_lb.errors import ConfigError
from rl_lb.types import SNAPSHOT_COLUMNS, FloatArray, PoolSnapshot

__all__ = [
    "INTERVAL_SCHEMA",
    "OUTCOME_NAMES",
    "REQUEST_SCHEMA",
    "SAMPLE_KEY",
    "Recorder",
    "recording_files",
]

log = logging.getLogger("rl_lb.serving.recorder")

OUTCOME_NAMES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx", "error")
"""`outcome` values, indexed as the monitor's status classes (serving.monitor.STATUS_CLASSES)."""

REQUEST_SCHEMA = pa.schema(
    [
        ("arrival_s", pa.float64()),
        ("backend", pa.string()),
        ("latency_s", pa.float64()),
        ("outcome", pa.string()),
        ("in_flight", pa.int32()),
        ("interval", pa.int64()),
    ]
)
_SNAPSHOT_TYPES = {"in_flight": pa.int64(), "healthy": pa.bool_(), "ejected": pa.bool_()}
INTERVAL_SCHEMA = pa.schema(
    [
        ("interval", pa.int64()),
        ("at_s", pa.float64()),
        ("mode", pa.string()),
        ("reason", pa.string()),
        ("balancer", pa.string()),
        ("names", pa.list_(pa.string())),
        ("decided_weights", pa.list_(pa.float64())),
    ]
    + [
        (f"seen_{column}", pa.list_(_SNAPSHOT_TYPES.get(column, pa.float64())))
        for column in SNAPSHOT_COLUMNS
    ]
)
SAMPLE_KEY = "rl_lb.record_sample"
"""Schema metadata of the requests files: 1 in how many requests they hold."""
_FILE_NAME = re.compile(r"^(requests|intervals)-w(\d+)-(\d{6})\.parquet$")
_OUTCOME_VALUES = pa.array(OUTCOME_NAMES, pa.string())
_INTERVAL_SHIFT = 32
_IN_FLIGHT_MASK = (1 << _INTERVAL_SHIFT) - 1
"""A dispatch's interval and in-flight count travel as one int: (interval << 32) + in-flight."""
_PENDING_LIMIT = 100_000
"""Dispatched requests waiting for their answer beyond which the oldest are forgotten (requests
the client abandoned never get one)."""


def recording_files(directory: Path, kind: str) -> list[Path]:
    """The `kind` ("requests" or "intervals") files of a recording, every worker, oldest first."""
    found = [p for p in directory.iterdir() if (m := _FILE_NAME.match(p.name)) and m[1] == kind]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


class _Writer:
    """One kind of file of one worker: a Parquet writer rotated by size, bounded on disk."""

    def __init__(
        self, directory: Path, kind: str, worker: int, schema: Any, file_size: int, budget: int
    ) -> None:
        self.directory, self.kind, self.worker, self.schema = directory, kind, worker, schema
        self.file_size, self.budget = file_size, budget
        self.number = max((int(p.name[-14:-8]) for p in self._own()), default=0)
        self.path: Path | None = None
        self.writer: Any = None

    def _own(self) -> list[Path]:
        """This worker's files of this kind, oldest first."""
        tag = f"-w{self.worker}-"
        return [p for p in recording_files(self.directory, self.kind) if tag in p.name]

    def write(self, table: Any) -> None:
        if self.writer is None:
            self.number += 1
            self.path = self.directory / f"{self.kind}-w{self.worker}-{self.number:06d}.parquet"
            self.writer = pq.ParquetWriter(self.path, self.schema)
        self.writer.write_table(table.replace_schema_metadata(self.schema.metadata))
        assert self.path is not None
        if self.path.stat().st_size >= self.file_size:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self._bound()

    def _bound(self) -> None:
        """Delete this worker's oldest closed files of this kind beyond its disk budget."""
        own = self._own()
        sizes = [p.stat().st_size for p in own]
        total = sum(sizes)
        for path, size in zip(own, sizes, strict=True):
            if total <= self.budget:
                break
            path.unlink(missing_ok=True)
            total -= size
            log.info("recording: %s deleted (record-max-bytes reached)", path.name)


class _RequestColumns:
    """One interval's sampled requests, a typed array per column. Appending a number to an
    `array.array` allocates no Python object (a tuple per row did, kept alive until the writer
    thread took it), and the writer thread turns each column into Arrow in one call over its
    buffer instead of converting row by row under the GIL the event loop needs."""

    __slots__ = ("arrival", "backend", "latency", "outcome", "packed")

    def __init__(self) -> None:
        self.arrival = array("d")
        """Monitor-clock dispatch times (`Recorder.to_unix` added at conversion)."""
        self.backend = array("I")
        """Index into the recorder's backend names."""
        self.latency = array("d")
        self.outcome = array("B")
        """Index into OUTCOME_NAMES."""
        self.packed = array("q")
        """(interval << _INTERVAL_SHIFT) + in_flight, both at dispatch."""

    def __len__(self) -> int:
        return len(self.arrival)

    def table(self, names: list[str], to_unix: float) -> Any:
        """The Arrow table of these rows (REQUEST_SCHEMA, without its metadata)."""
        packed = np.frombuffer(self.packed, dtype=np.int64)
        backend = pa.DictionaryArray.from_arrays(
            pa.array(np.frombuffer(self.backend, dtype=np.uint32)), pa.array(names, pa.string())
        )
        outcome = pa.DictionaryArray.from_arrays(
            pa.array(np.frombuffer(self.outcome, dtype=np.uint8)), _OUTCOME_VALUES
        )
        columns = [
            pa.array(np.frombuffer(self.arrival, dtype=np.float64) + to_unix),
            backend.cast(pa.string()),
            pa.array(np.frombuffer(self.latency, dtype=np.float64)),
            outcome.cast(pa.string()),
            pa.array((packed & _IN_FLIGHT_MASK).astype(np.int32)),
            pa.array(packed >> _INTERVAL_SHIFT),
        ]
        return pa.Table.from_arrays(columns, schema=REQUEST_SCHEMA)


class Recorder:
    """Collects rows on the event loop, writes them from one background thread."""

    def __init__(
        self,
        directory: str,
        *,
        worker: int = 0,
        workers: int = 1,
        sample: int = 1,
        file_size: int = 16 << 20,
        max_bytes: int = 1 << 30,
    ) -> None:
        path = Path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError("record", f"cannot create {directory}: {error.strerror}") from None
        self.sample = sample
        self.interval = 0
        """Index of the control interval now running (set by the controller's decisions)."""
        self.to_unix = time.time() - time.monotonic()
        """Added to monitor-clock times (time.monotonic) to give Unix seconds."""
        self._seen = 0
        self._interval_key = 0
        """`interval << _INTERVAL_SHIFT`, added to a dispatch's in-flight count."""
        self._pending: dict[float, int] = {}
        """Dispatch time -> packed (interval, in-flight) of the sampled requests not answered."""
        self._backend_ids: dict[str, int] = {}
        self._backend_names: list[str] = []
        self._columns = _RequestColumns()
        self._intervals: list[dict[str, Any]] = []
        requests = REQUEST_SCHEMA.with_metadata({SAMPLE_KEY: str(sample)})
        budget = max(max_bytes // (2 * workers), 1)  # requests and intervals share the bound
        self._writers = {
            "requests": _Writer(path, "requests", worker, requests, file_size, budget),
            "intervals": _Writer(path, "intervals", worker, INTERVAL_SCHEMA, file_size, budget),
        }
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="rl-lb-recorder", daemon=True)
        self._thread.start()

    # -- the request path (event loop) ------------------------------------------------------

    def dispatched(self, started: float, in_flight: int) -> None:
        """A request went to a backend holding `in_flight` open exchanges (this one counted)."""
        self._seen += 1
        if self._seen % self.sample == 0:
            self._pending[started] = self._interval_key + in_flight

    def answered(self, started: float, backend: str, latency_s: float, outcome: int) -> None:
        """Its response head (or its failure) came back: a row if it was sampled."""
        packed = self._pending.pop(started, None)
        if packed is None:
            return
        backend_id = self._backend_ids.get(backend)
        if backend_id is None:
            backend_id = self._backend_ids[backend] = len(self._backend_names)
            self._backend_names.append(backend)
        columns = self._columns
        columns.arrival.append(started)
        columns.backend.append(backend_id)
        columns.latency.append(latency_s)
        columns.outcome.append(outcome)
        columns.packed.append(packed)

    # -- once per control interval ----------------------------------------------------------

    def decided(
        self, snapshot: PoolSnapshot, weights: FloatArray, mode: str, reason: str, balancer: str
    ) -> None:
        """A control decision: its row, then this interval's rows go to the writer thread."""
        row: dict[str, Any] = {
            "interval": self.interval,
            "at_s": snapshot.taken_at + self.to_unix,
            "mode": mode,
            "reason": reason,
            "balancer": balancer,
            "names": list(snapshot.names),
            "decided_weights": [float(w) for w in weights],
        }
        for column in SNAPSHOT_COLUMNS:
            row[f"seen_{column}"] = getattr(snapshot, column).tolist()
        self._intervals.append(row)
        self.interval += 1
        self._interval_key = self.interval << _INTERVAL_SHIFT
        self.flush()

    def flush(self) -> None:
        if len(self._columns):
            # the names list is copied: the event loop may append a new backend meanwhile
            self._queue.put(("requests", (self._columns, list(self._backend_names))))
            self._columns = _RequestColumns()
        if self._intervals:
            self._queue.put(("intervals", self._intervals))
            self._intervals = []
        if len(self._pending) > _PENDING_LIMIT:
            for started in sorted(self._pending)[: len(self._pending) - _PENDING_LIMIT]:
                del self._pending[started]

    def close(self) -> None:
        """Write what is left and close the files (blocks until the thread is done)."""
        self.flush()
        self._queue.put(None)
        self._thread.join()

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            kind, rows = item
            try:
                self._writers[kind].write(self._table(kind, rows))
            except Exception:  # a full disk must not stop the proxy: the batch is lost, logged
                log.exception("recording: writing %d %s rows failed", self._count(rows), kind)
        for writer in self._writers.values():
            try:
                writer.close()
            except Exception:
                log.exception("recording: closing %s failed", writer.path)

    @staticmethod
    def _count(rows: Any) -> int:
        return len(rows[0]) if isinstance(rows, tuple) else len(rows)

    def _table(self, kind: str, rows: Any) -> Any:
        if kind == "intervals":
            return pa.Table.from_pylist(rows, schema=INTERVAL_SCHEMA)
        columns, names = rows
        return columns.table(names, self.to_unix)
