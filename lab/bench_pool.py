"""`rl-lb bench pool`: balancers compared live on backends you already run (issue 18, item 4).

`rl-lb bench live` builds its backends from a scenario; this command takes the user's own
(`--backend URL`, repeated) and, for each seed, sends every balancer the same open-loop Poisson
schedule through its own `rl-lb serve` child, so the runs of one seed are paired. With
`--record DIR` each run is also recorded (`DIR/<balancer>-s<seed>/`), which gives the share of
control intervals a guarded policy served in primary mode (a result in fallback does not say
anything about the policy).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rl_lb.errors import ConfigError

__all__ = ["pool"]


def _flags(balancer: str) -> tuple[str, tuple[str, ...]]:
    """`--balancer` and the extra flags of one balancer spec (`learned:PATH` adds --policy)."""
    if balancer.startswith("learned:"):
        return "learned", ("--policy", balancer.removeprefix("learned:"))
    return balancer, ()


def _cell(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ({'/'.join(f'{v:.0f}' for v in values)})"


def pool(
    backend: Annotated[
        list[str], typer.Option("--backend", "-b", help="Backend URL; repeat for more.")
    ],
    rate: Annotated[float, typer.Option(help="Requests per second (open loop, Poisson).")],
    balancer: Annotated[
        list[str] | None,
        typer.Option(help="Balancer (preset, POLICY+PICKER or learned:PATH); repeat for more."),
    ] = None,
    duration: Annotated[float, typer.Option(help="Seconds of load per run.")] = 60.0,
    path: Annotated[str, typer.Option(help="Path requested from the backends.")] = "/",
    seeds: Annotated[int, typer.Option(help="Paired runs per balancer (schedule seeds).")] = 1,
    record: Annotated[
        Path | None, typer.Option(help="Record every run under this folder (rl-lb serve --record).")
    ] = None,
) -> None:
    """Each balancer in turn in front of your backends, the same open-loop load per seed."""
    import tempfile

    from lab.fit.pipeline import record_pool
    from lab.fit.recording import read_recording
    from lab.runtime import run_async

    if not rate > 0 or not duration > 0 or seeds < 1:
        raise ConfigError("bench pool", "--rate, --duration and --seeds must be positive")
    if not path.startswith("/"):
        raise ConfigError("--path", f"{path!r} does not start with '/'", "write it like /api")
    balancers = balancer or ["least-latency", "learned"]
    workdir = record or Path(tempfile.mkdtemp(prefix="rl-lb-bench-pool-"))
    p50: dict[str, list[float]] = {b: [] for b in balancers}
    p99: dict[str, list[float]] = {b: [] for b in balancers}
    errors: dict[str, list[float]] = {b: [] for b in balancers}
    primary: dict[str, list[float]] = {b: [] for b in balancers}
    for seed in range(seeds):
        for spec in balancers:
            name, extra = _flags(spec)
            folder = workdir / f"{spec.replace(':', '-').replace('/', '_')}-s{seed}"
            run = run_async(
                record_pool(
                    list(backend),
                    rate,
                    folder,
                    duration_s=duration,
                    path=path,
                    loads=(1.0,),
                    balancer=name,
                    seed=seed,
                    record=record is not None,
                    extra_flags=extra,
                )
            )
            p50[spec].append(run.load.quantile_ms(0.5))
            p99[spec].append(run.load.quantile_ms(0.99))
            errors[spec].append(100 * run.load.error_count / max(run.load.requests, 1))
            if record is not None:
                primary[spec].append(100 * read_recording([str(folder)], print).primary_share)
            typer.echo(f"seed {seed} {spec}: p99 {p99[spec][-1]:.1f} ms", err=True)
    table = Table(title=f"{len(backend)} backends, {rate:g} requests/s, {duration:g} s x {seeds}")
    for column in ("balancer", "p50 ms", "p99 ms (per seed)", "errors %", "primary %"):
        table.add_column(column, overflow="fold")  # wrap: per-seed figures are never cut
    for spec in balancers:
        table.add_row(
            spec, _cell(p50[spec]), _cell(p99[spec]), _cell(errors[spec]), _cell(primary[spec])
        )
    Console().print(table)
