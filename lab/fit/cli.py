"""`rl-lb scenario fit` and `rl-lb scenario check`, added to the core's `scenario` group through
the `rl_lb.scenario_commands` entry point (the core never imports the lab). The heavy imports
(pyarrow, the simulator) happen when a command runs, not when `rl-lb` starts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

err_console = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line


def _warn(line: str) -> None:
    err_console.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}"


def _fit(
    folders: Annotated[list[str], typer.Argument(help="Folders written by rl-lb serve --record.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Scenario file to write.")],
    name: Annotated[str | None, typer.Option(help="Scenario name (default: the file's).")] = None,
    trace: Annotated[
        bool,
        typer.Option(
            "--trace/--profile",
            help="Arrivals: the recorded ones (a CSV beside the file) or a rate profile.",
        ),
    ] = False,
) -> None:
    """Fit a scenario of the recorded pool: per backend its concurrency, service-time
    distribution, errors and change windows, and the arrival process, with ranges."""
    from lab.fit.recording import read_recording
    from lab.fit.replay import service_quantiles
    from lab.fit.world import fit_world, render, write_trace
    from rl_lb.errors import ScenarioError

    recording = read_recording(folders, _warn)
    world = fit_world(recording, name or out.stem)
    trace_file = None
    if trace and recording.sample != 1:
        raise ScenarioError(
            "--trace", f"the recording holds 1 request in {recording.sample}", "use --profile"
        )
    if trace:
        trace_path = out.with_suffix(".arrivals.csv")
        write_trace(world, trace_path)
        trace_file = trace_path.name
    out.write_text(render(world, folders, trace_file))
    table = Table(title=f"{out}: fitted from {len(recording.latency_s):,} requests")
    for column in ("backend", "requests", "concurrency", "service", "mean ms", "cv", "errors"):
        table.add_column(column)
    for column in ("p50 ms obs/fit", "p99 ms obs/fit"):
        table.add_column(column)
    for i, fit in enumerate(world.backends):
        mine = recording.of(i) & ~recording.failed
        limit = fit.concurrency or max(fit.concurrency_seen, 1)
        low = recording.latency_s[mine & (recording.in_flight <= limit)] * 1e3
        s = fit.service
        fit50, fit99 = (q * 1e3 for q in service_quantiles(s.dist, s.mean_s, s.cv, s.shape))
        obs50, obs99 = (
            (float(q) for q in np.quantile(low, [0.5, 0.99]))
            if len(low)
            else (
                math.nan,
                math.nan,
            )
        )
        table.add_row(
            fit.name,
            f"{fit.requests:,}",
            "?" if fit.concurrency is None else str(fit.concurrency),
            s.dist,
            f"{s.mean_s * 1e3:.2f}",
            f"{s.cv:.2f}",
            f"{fit.error_rate:.1%}",
            f"{_ms(obs50)}/{_ms(fit50)}",
            f"{_ms(obs99)}/{_ms(fit99)}",
        )
    Console().print(table)
    typer.echo("quantiles are of the low-load latency (in-flight <= concurrency): the service time")
    for fit in world.backends:
        for note in fit.notes:
            typer.echo(f"{fit.name}: {note}")
        for change in fit.changes:
            typer.echo(
                f"{fit.name}: changed {change.at_s:g}-{change.until_s:g} s "
                f"(latency x{change.slowdown:.2f})"
            )
    if recording.sample != 1:
        typer.echo(f"the recording holds 1 request in {recording.sample}: rates scaled by it")
    typer.echo(f"wrote {out}" + (f" and {trace_file}" if trace_file else ""))


def _check(
    scenario: Annotated[str, typer.Argument(help="The fitted scenario file.")],
    against: Annotated[
        list[str], typer.Option("--against", help="Recording folders (repeat for more).")
    ],
    balancer: Annotated[
        str | None, typer.Option(help="Balancer to run (default: the recorded one).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
) -> None:
    """Replay: the fitted world in the simulator, with the recorded arrivals and balancer,
    against the recording (p50/p99 per backend, p99 of the pool)."""
    from lab.fit.recording import read_recording
    from lab.fit.replay import recorded_balancer, replay
    from rl_lb.scenarios import load_scenario

    recording = read_recording(against, _warn)
    name = balancer or recorded_balancer(recording)
    rows = replay(load_scenario(scenario).nominal(), recording, name, seed)
    table = Table(title=f"{scenario} replayed with {name} against {', '.join(against)}")
    for column in ("backend", "requests rec/sim", "p50 ms rec/sim", "p99 ms rec/sim", "p99 err"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.name,
            f"{row.recorded_requests:,}/{row.simulated_requests:,}",
            f"{_ms(row.recorded_p50_ms)}/{_ms(row.simulated_p50_ms)}",
            f"{_ms(row.recorded_p99_ms)}/{_ms(row.simulated_p99_ms)}",
            "-" if math.isnan(row.p99_error) else f"{row.p99_error:+.0%}",
        )
    Console().print(table)
    if not math.isnan(recording.primary_share):
        typer.echo(f"recorded intervals in primary mode: {recording.primary_share:.0%}")


def register(scenario_app: typer.Typer) -> None:
    """Add `fit` and `check` to the `rl-lb scenario` group."""
    scenario_app.command("fit")(_fit)
    scenario_app.command("check")(_check)
