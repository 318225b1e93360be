"""Open-loop load generator: requests leave on a fixed schedule whatever the answers.

A closed-loop client that waits for an answer before sending the next request slows down exactly
when the system under test does, and so hides the latency its users would see (coordinated
omission). Here the whole schedule (Poisson or constant gaps) is drawn up front, each request is
dispatched at its intended time, and its latency runs from that intended time: when the generator
itself falls behind, the lag is part of the latency and is also reported on its own (`lag_ms`).

Every request's intended send time, latency, status and failure cause is kept (the count is capped
at `MAX_REQUESTS`), so quantiles are exact rather than histogram estimates, and the live benchmark
can plot latency over time from the same records.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import aiohttp
import numpy as np
from yarl import URL

from lab.load_result import (
    _4XX,
    _5XX,
    _CONNECT,
    _IO,
    _OK,
    _TIMEOUT,
    CAUSES,
    ERROR_CAUSES,
    LoadResult,
    failure_verdict,
    format_summary,
)
from rl_lb.errors import ConfigError
from rl_lb.types import FloatArray, IntArray

__all__ = [
    "CAUSES",
    "ERROR_CAUSES",
    "MAX_CONNECTIONS",
    "MAX_DURATION_S",
    "MAX_RATE",
    "MAX_REQUESTS",
    "MAX_TIMEOUT_S",
    "LoadProgress",
    "LoadResult",
    "Process",
    "failure_verdict",
    "format_progress",
    "format_summary",
    "make_schedule",
    "run_load",
    "run_schedule",
    "validate",
]

Process = Literal["poisson", "constant"]
MAX_RATE = 10_000.0
MAX_DURATION_S = 3600.0
MAX_REQUESTS = 2_000_000
"""Caps the stored records (about 30 bytes each)."""
MAX_CONNECTIONS = 1024
MAX_TIMEOUT_S = 120.0
MIN_SLEEP_S = 0.001
"""Shortest sleep between dispatch rounds: requests due within it leave together, which bounds
the generator's CPU use; the few hundred microseconds of lag this costs are measured."""

PROGRESS_EVERY_S = 0.5
"""How often a progress callback hears from a running load."""


@dataclass(frozen=True)
class LoadProgress:
    """Where a running load stands: what a person watching it wants to see."""

    elapsed_s: float
    sent: int
    answered: int
    errors: int
    rate: float
    """Requests sent per second over the last progress period."""
    total: int


def validate(
    url: str,
    rate: float,
    duration: float,
    connections: int = 64,
    timeout: float = 5.0,
    process: str = "poisson",
) -> Process:
    """Refuse flags that would make a meaningless or runaway run, with the fix in one line.

    Returns the process, known now to be one of `Process`.
    """
    if process not in ("poisson", "constant"):
        raise ConfigError("--process", f"unknown process {process!r}", "use poisson or constant")
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError("URL", f"{url!r} is not an http(s) URL", "e.g. http://127.0.0.1:8080/")
    if not 0 < rate <= MAX_RATE:
        raise ConfigError(
            "--rate", f"{rate:g} requests/s is out of range", f"use 0 < rate <= {MAX_RATE:g}"
        )
    if not 0 < duration <= MAX_DURATION_S:
        raise ConfigError(
            "--duration",
            f"{duration:g} s is out of range",
            f"use 0 < duration <= {MAX_DURATION_S:g}",
        )
    if rate * duration > MAX_REQUESTS:
        raise ConfigError(
            "--rate/--duration",
            f"{rate * duration:.0f} requests is more than one run may send",
            f"keep rate × duration <= {MAX_REQUESTS}",
        )
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ConfigError(
            "--connections", f"{connections} is out of range", f"use 1-{MAX_CONNECTIONS}"
        )
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise ConfigError(
            "--timeout", f"{timeout:g} s is out of range", f"use 0 < timeout <= {MAX_TIMEOUT_S:g}"
        )
    return "poisson" if process == "poisson" else "constant"


def make_schedule(rate: float, duration: float, process: str, seed: int) -> FloatArray:
    """Intended send times (s from the start) of every request in [0, duration)."""
    if process == "constant":
        return np.arange(math.ceil(rate * duration - 1e-9), dtype=np.float64) / rate
    if process != "poisson":
        raise ValueError(f"unknown arrival process {process!r}")
    rng = np.random.default_rng(seed)
    expected = rate * duration
    batch = int(expected + 10 * math.sqrt(expected) + 10)
    times = np.cumsum(rng.exponential(1.0 / rate, size=batch))
    while times[-1] < duration:  # astronomically rare; keeps the schedule exact anyway
        extra = times[-1] + np.cumsum(rng.exponential(1.0 / rate, size=batch))
        times = np.concatenate([times, extra])
    return times[times < duration]


class _Run:
    """The mutable state of one run; requests write their own row of the arrays."""

    def __init__(
        self,
        urls: Sequence[str],
        targets: IntArray,
        schedule: FloatArray,
        session: aiohttp.ClientSession,
    ) -> None:
        self.urls = urls
        self.targets = targets
        self.schedule = schedule
        self.session = session
        n = len(schedule)
        self.latency = np.full(n, math.nan)
        self.lag = np.zeros(n)
        self.status = np.zeros(n, dtype=np.int16)
        self.cause = np.zeros(n, dtype=np.int8)
        self.pending: set[asyncio.Task[None]] = set()

    async def dispatch(self, start: float) -> float:
        """Send each request at its time, never waiting for answers; returns the last send."""
        schedule, n, i = self.schedule, len(self.schedule), 0
        last = start
        loop = asyncio.get_running_loop()
        while i < n:
            now = time.monotonic()
            due = int(np.searchsorted(schedule, now - start, side="right"))
            for j in range(i, due):
                intended = start + float(schedule[j])
                self.lag[j] = now - intended
                task = loop.create_task(self._one(j, intended))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)
            if due > i:
                last = now
            i = due
            if i < n:
                await asyncio.sleep(max(start + float(schedule[i]) - time.monotonic(), MIN_SLEEP_S))
        return last

    async def _one(self, j: int, intended: float) -> None:
        status, cause = 0, _OK
        try:
            url = self.urls[self.targets[j]]
            async with self.session.get(url, allow_redirects=False) as response:
                await response.read()
                status = response.status
            cause = _5XX if status >= 500 else _4XX if status >= 400 else _OK
        except TimeoutError:
            cause = _TIMEOUT
        except aiohttp.ClientConnectorError:
            cause = _CONNECT
        except aiohttp.ClientError:
            cause = _IO
        self.latency[j] = time.monotonic() - intended
        self.status[j] = status
        self.cause[j] = cause

    def progress(self, elapsed_s: float, sent: int, rate: float) -> LoadProgress:
        answered = ~np.isnan(self.latency[:sent])
        errors = int(np.count_nonzero(answered & (self.cause[:sent] != _OK)))
        total = len(self.schedule)
        return LoadProgress(elapsed_s, sent, int(answered.sum()), errors, rate, total)

    async def report(self, start: float, every: Callable[[LoadProgress], None]) -> None:
        """Call `every` each `PROGRESS_EVERY_S` with the counts so far (until cancelled)."""
        before, sent_before = start, 0
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            now = time.monotonic()
            sent = int(np.searchsorted(self.schedule, now - start, side="right"))
            rate = (sent - sent_before) / max(now - before, 1e-9)
            every(self.progress(now - start, sent, rate))
            before, sent_before = now, sent

    async def cancel(self) -> None:
        for task in self.pending:
            task.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)


async def run_schedule(
    url: str | Sequence[str],
    schedule: FloatArray,
    *,
    targets: IntArray | None = None,
    start_at: float | None = None,
    duration: float | None = None,
    connections: int = 64,
    timeout: float = 5.0,
    process: str = "schedule",
    progress: Callable[[LoadProgress], None] | None = None,
) -> LoadResult:
    """Send one GET to `url` at each time of `schedule` (s after second 0), open loop.

    `url` may be several URLs (proxy replicas sharing a pool, say): request j then goes to
    `url[targets[j]]`.

    `schedule` is sorted, in seconds from second 0; `start_at` is second 0 as a `time.monotonic()`
    value still to come (default: now, plus the shortest sleep), which lets another process line
    its own timeline up with this one. `duration` is the nominal length of the run, the achieved
    rate's shortest divisor (default: the last send time); `process` only labels the result.
    `connections` and `timeout` are as in `run_load`. Returns once every request has been
    answered or has failed. `progress`, if given, hears how far the run is every
    `PROGRESS_EVERY_S` seconds.
    """
    schedule = np.asarray(schedule, dtype=np.float64)
    if len(schedule) > MAX_REQUESTS:
        raise ConfigError(
            "schedule",
            f"{len(schedule)} requests is more than one run may send",
            f"keep it to {MAX_REQUESTS}",
        )
    if len(schedule) > 1 and bool(np.any(np.diff(schedule) < 0)):
        raise ValueError("the schedule's send times must be sorted")
    urls = [url] if isinstance(url, str) else list(url)
    if targets is None:
        targets = np.zeros(len(schedule), dtype=np.int64)
    if (
        len(urls) == 0
        or len(targets) != len(schedule)
        or not np.all((targets >= 0) & (targets < len(urls)))
    ):
        raise ValueError("each request needs a target among the URLs given")
    if duration is None:
        duration = float(schedule[-1]) if len(schedule) else 0.0
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(
        connector=connector, timeout=client_timeout, auto_decompress=False
    ) as session:
        run = _Run(urls, targets, schedule, session)
        start = time.monotonic() + MIN_SLEEP_S if start_at is None else start_at
        reporter = asyncio.create_task(run.report(start, progress)) if progress else None
        try:
            last = await run.dispatch(start)
            while run.pending:
                await asyncio.gather(*list(run.pending))
        finally:
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
            await run.cancel()
    return LoadResult(
        url=" ".join(urls),
        rate=len(schedule) / duration if duration > 0 else 0.0,
        duration_s=duration,
        process=process,
        started_at=start,
        sent_s=schedule,
        latency_s=run.latency,
        lag_s=run.lag,
        status=run.status,
        cause=run.cause,
        span_s=max(duration, last - start),
    )


async def run_load(
    url: str,
    rate: float,
    duration: float,
    *,
    process: Process = "poisson",
    connections: int = 64,
    timeout: float = 5.0,
    seed: int = 0,
    progress: Callable[[LoadProgress], None] | None = None,
) -> LoadResult:
    """Send `rate` GET requests/s to `url` for `duration` s, open loop, and measure every one.

    `connections` caps the pooled keep-alive connections; a request that finds them all busy
    waits for one, and that wait is part of its latency. `timeout` bounds each request from its
    dispatch. Returns once every request has been answered or has failed.
    """
    validate(url, rate, duration, connections, timeout, process)
    result = await run_schedule(
        url,
        make_schedule(rate, duration, process, seed),
        duration=duration,
        connections=connections,
        timeout=timeout,
        process=process,
        progress=progress,
    )
    return replace(result, rate=rate)


def format_progress(p: LoadProgress) -> str:
    """One status line for a terminal, rewritten in place while the load runs."""
    return (
        f"{p.elapsed_s:6.1f} s  sent {p.sent}/{p.total}  answered {p.answered}  "
        f"errors {p.errors}  rate {p.rate:.0f}/s"
    )
