"""Compare balancers on scenarios over several seeds: `evaluate` (records) and `render` (tables).

At a given seed every balancer meets the same scenario draw and the same simulator seed, so the
differences between rows are the balancers', not the dice's.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from envs.episode import SUMMARY_KEYS, run_episode, summarise
from envs.record_cache import RecordCache
from rl_lb.balancers import make_balancer
from rl_lb.scenarios import Scenario, ScenarioFamily, load_scenario

__all__ = [
    "RECORD_KEYS",
    "EvaluationPool",
    "as_family",
    "draw",
    "evaluate",
    "render",
    "short_labels",
    "student_t",
]

RECORD_KEYS: tuple[str, ...] = ("scenario", "balancer", "seed", *SUMMARY_KEYS)
PARALLEL_FROM = 8
"""Jobs from which two worker processes pay for their start-up (numba loads its cache)."""
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
"""Two-sided 95% Student t quantiles for 1..30 degrees of freedom."""

Progress = Callable[[int, int], None]
"""Called with (jobs done, jobs in all) after each episode."""
ScenarioSource = str | Path | Scenario | ScenarioFamily
_T = TypeVar("_T")
Job = tuple[Scenario, str, int]
"""One episode: (sampled scenario, balancer name, seed)."""


def student_t(df: int) -> float:
    """97.5% quantile of Student's t (Cornish-Fisher beyond the table, error < 1e-3)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def _ignore_ctrl_c() -> None:
    """Worker initializer: a Ctrl-C in the terminal reaches every process of its group; the
    parent alone handles it (one line), the workers finish their episode and get no more."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _job(scenario: Scenario, balancer: str, seed: int) -> dict[str, Any]:
    result = run_episode(scenario, balancer, seed)
    return {"scenario": scenario.name, "balancer": balancer, "seed": seed, **summarise(result)}


def as_family(source: ScenarioSource) -> Scenario | ScenarioFamily:
    """A scenario given by name, file or object; files are read and validated here."""
    return source if isinstance(source, Scenario | ScenarioFamily) else load_scenario(source)


def draw(family: Scenario | ScenarioFamily, seed: int) -> Scenario:
    """The scenario an episode of `seed` runs: a family sampled with that seed."""
    return family if isinstance(family, Scenario) else family.sample(np.random.default_rng(seed))


def evaluate(
    scenarios: Sequence[ScenarioSource],
    balancers: Sequence[str],
    seeds: int | Iterable[int],
    *,
    progress: Progress | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    cache: RecordCache | None = None,
    executor: Executor | None = None,
) -> list[dict[str, Any]]:
    """One record per (scenario, balancer, seed), keys `RECORD_KEYS`, in that nested order.

    `seeds` is a count (seeds 0..N-1) or the seeds themselves. A scenario family is sampled with
    the seed; the simulator runs with it too. Invalid scenarios raise `ScenarioError` and
    unknown balancers `ConfigError` before anything runs. `workers` defaults to 2 processes when
    there are at least `PARALLEL_FROM` episodes to run and 2 cores, else 1. `ray_address`
    ("local" or a cluster's address) runs the episodes as Ray tasks instead (envs/ray_runs.py).
    With a `cache` (envs/record_cache.py) the heuristics' records found there are not run again
    and those run are stored: the records are the same either way. An `executor` (such as an
    `EvaluationPool` kept for many calls) runs the episodes instead of a pool of this call's own
    (unless `workers` is 1); it is left running.
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    families = [as_family(s) for s in scenarios]
    for name in balancers:
        make_balancer(name)
    jobs = [
        (draw(f, seed), name, seed) for f in families for name in balancers for seed in seed_list
    ]
    records: list[dict[str, Any] | None] = [None] * len(jobs)
    if cache is not None:
        records = [cache.get(*job) for job in jobs]
    todo = [i for i, record in enumerate(records) if record is None]
    found = len(jobs) - len(todo)
    if progress is not None and found:
        progress(found, len(jobs))

    def done(k: int, record: dict[str, Any]) -> None:
        """The `k`-th episode to run has its record: kept, and stored as soon as it exists, so a
        stopped evaluation keeps what it ran."""
        records[todo[k]] = record
        if cache is not None:
            cache.put(jobs[todo[k]][0], record)

    todo_jobs = [jobs[i] for i in todo]
    _run(todo_jobs, done, workers, ray_address, _offset(progress, found, len(jobs)), executor)
    return [r for r in records if r is not None]


def _offset(progress: Progress | None, found: int, total: int) -> Progress | None:
    """`progress` counting the `found` cached records as done, out of all `total`."""
    if progress is None or not found:
        return progress
    return lambda done, _: progress(found + done, total)


def _run(
    jobs: list[Job],
    done: Callable[[int, dict[str, Any]], None],
    workers: int | None,
    ray_address: str | None,
    progress: Progress | None,
    executor: Executor | None,
) -> None:
    """Run `jobs`, telling `done` (job index, record) as each finishes."""
    if not jobs:
        return
    if workers is None:
        # A pool that is already running costs nothing to use; a new one pays its start-up.
        enough = executor is not None or len(jobs) >= PARALLEL_FROM
        workers = 2 if enough and (os.cpu_count() or 1) >= 2 else 1
    if ray_address is not None:
        from envs.ray_runs import run_on_ray

        for i, record in enumerate(run_on_ray(_job, jobs, ray_address, progress)):
            done(i, record)
    elif workers <= 1:
        for i, job in enumerate(jobs):
            done(i, _job(*job))
            if progress is not None:
                progress(i + 1, len(jobs))
    elif executor is not None:
        _run_on(executor, jobs, done, progress)
    else:
        with _process_pool(workers) as pool:
            try:
                _run_on(pool, jobs, done, progress)
            except BaseException:  # Ctrl-C or a failed job: drop the queued ones, not run them
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def _run_on(
    executor: Executor,
    jobs: list[Job],
    done: Callable[[int, dict[str, Any]], None],
    progress: Progress | None,
) -> None:
    """`jobs` on `executor`, records told to `done` in the order they finish (each is filed
    under its own index, so the order the workers took them in changes nothing)."""
    futures = {executor.submit(_job, *job): i for i, job in enumerate(jobs)}
    try:
        for finished, future in enumerate(as_completed(futures), start=1):
            done(futures[future], future.result())
            if progress is not None:
                progress(finished, len(jobs))
    except BaseException:  # the queued jobs of this call are dropped, the pool is the caller's
        for future in futures:
            future.cancel()
        raise


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes started fresh ("spawn": no copy of the parent's torch or threads)."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_ctrl_c)


class EvaluationPool(Executor):
    """The process pool of many `evaluate` calls, started at the first job they submit.

    Each new pool starts two Python processes that import numpy and load numba's cache: 1.3-1.6
    s per `evaluate` call on the quiet 2-core VM, 3.2-3.6 s at load 3.7 (docs/training.md, "The
    evaluation record cache"), paid at every periodic evaluation of a training run. Used as a
    context manager, it stops its workers at the end, dropping queued jobs (Ctrl-C included).
    Workers keep no state between jobs that a record depends on (jobs already share workers
    within one call), so the records are those of a fresh pool.
    """

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        if self._pool is None:
            self._pool = _process_pool(self.workers)
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True, cancel_futures=True)


LABEL_WIDTH = 20
"""Row labels longer than this are shortened to `#k` with a legend under the table."""
CAPTION = (
    "latencies in ms; eff p99: the 99th percentile with every failed request counted as the "
    "scenario's timeout"
)


def _mean(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    return f"{float(np.mean(values)) * scale:.{digits}f}"


def _cell(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """Mean ± the 95% Student-t half-width (the mean alone for one value)."""
    array = np.asarray(values, dtype=np.float64) * scale
    mean = float(array.mean())
    if len(array) < 2:
        return f"{mean:.{digits}f}"
    half = student_t(len(array) - 1) * float(array.std(ddof=1)) / math.sqrt(len(array))
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def short_labels(names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Row label per balancer name, and the legend lines for those that had to be shortened."""
    labels: dict[str, str] = {}
    legend: list[str] = []
    for name in names:
        if len(name) <= LABEL_WIDTH:
            labels[name] = name
        else:
            labels[name] = f"#{len(legend) + 1}"
            legend.append(f"{labels[name]} = {name}")
    return labels, legend


def render(records: Sequence[dict[str, Any]], console: Console) -> None:
    """One table per scenario, one row per balancer: means over seeds, the 95% Student-t interval
    on the tail figures (p99, eff p99) where there are several seeds.

    Narrow terminals (under 110 columns) drop the mean and p99.9 columns rather than wrap cells;
    the JSON records keep every figure.
    """
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        grouped[record["scenario"]][record["balancer"]].append(record)
    wide = console.width >= 110
    for scenario, rows in grouped.items():
        seeds = max(len(r) for r in rows.values())
        if seeds > 1:
            title = f"{scenario} ({seeds} seeds, mean; ± 95% CI on the tails)"
        else:
            title = f"{scenario} (1 seed)"
        labels, legend = short_labels(rows)
        table = Table(
            title=title,
            title_justify="left",
            caption=CAPTION,
            caption_justify="left",
            box=box.SIMPLE_HEAD,
        )
        table.add_column("balancer", no_wrap=True)
        headers = ["requests", "err %", "p50", "p99", "eff p99"]
        if wide:
            headers = ["requests", "err %", "mean", "p50", "p99", "p99.9", "eff p99"]
        for header in headers:
            table.add_column(header, justify="right", no_wrap=True)
        for balancer, runs in rows.items():
            errors = [r["errors"] / r["requests"] if r["requests"] else 0.0 for r in runs]
            cells = {
                "requests": _mean([r["requests"] for r in runs], digits=0),
                "err %": _mean(errors, 100.0, 2),
                "mean": _mean([r["mean_ms"] for r in runs]),
                "p50": _mean([r["p50_ms"] for r in runs]),
                "p99": _cell([r["p99_ms"] for r in runs]),
                "p99.9": _mean([r["p999_ms"] for r in runs]),
                "eff p99": _cell([r["effective_p99_ms"] for r in runs]),
            }
            table.add_row(labels[balancer], *(cells[h] for h in headers))
        console.print(table)
        for line in legend:
            console.print(f"  {line}", highlight=False, soft_wrap=True)
