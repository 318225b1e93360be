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

The request path only appends a tuple to a list (`dispatched`, `answered`); each control step
hands the list to a background thread (`flush`), which converts and writes it. Files rotate at
`record-file-size` bytes; this worker deletes its oldest files once its own files exceed its
share (`record-max-bytes / workers`) of the bound. pyarrow is imported here only, and this
module only when recording is on.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

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
        self._pending: dict[float, tuple[int, int]] = {}
        self._rows: list[tuple[float, str, float, str, int, int]] = []
        self._intervals: list[dict[str, Any]] = []
        requests = REQUEST_SCHEMA.with_metadata({SAMPLE_KEY: str(sample)})
        budget = max(max_bytes // (2 * workers), 1)  # requests and intervals share the bound
        self._writers = {
            "requests": _Writer(path, "requests", worker, requests, file_size, budget),
            "intervals": _Writer(path, "intervals", worker, INTERVAL_SCHEMA, file_size, budget),
        }
        self._queue: queue.Queue[tuple[str, list[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="rl-lb-recorder", daemon=True)
        self._thread.start()

    # -- the request path (event loop) ------------------------------------------------------

    def dispatched(self, started: float, in_flight: int) -> None:
        """A request went to a backend holding `in_flight` open exchanges (this one counted)."""
        self._seen += 1
        if self._seen % self.sample == 0:
            self._pending[started] = (in_flight, self.interval)

    def answered(self, started: float, backend: str, latency_s: float, outcome: int) -> None:
        """Its response head (or its failure) came back: a row if it was sampled."""
        pending = self._pending.pop(started, None)
        if pending is not None:
            self._rows.append(
                (
                    started + self.to_unix,
                    backend,
                    latency_s,
                    OUTCOME_NAMES[outcome],
                    pending[0],
                    pending[1],
                )
            )

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
        self.flush()

    def flush(self) -> None:
        if self._rows:
            self._queue.put(("requests", self._rows))
            self._rows = []
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
                log.exception("recording: writing %d %s rows failed", len(rows), kind)
        for writer in self._writers.values():
            try:
                writer.close()
            except Exception:
                log.exception("recording: closing %s failed", writer.path)

    @staticmethod
    def _table(kind: str, rows: list[Any]) -> Any:
        if kind == "intervals":
            return pa.Table.from_pylist(rows, schema=INTERVAL_SCHEMA)
        columns = list(zip(*rows, strict=True))
        return pa.Table.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(columns, REQUEST_SCHEMA, strict=True)],
            schema=REQUEST_SCHEMA,
        )
