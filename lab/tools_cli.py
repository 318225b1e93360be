"""The `backends`, `loadgen` and `demo` sub-commands: the tools around the proxy."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lab.runtime import load_scenario_sample, run_async, wait_for_stop_signal
from rl_lb.scenarios import Scenario

if TYPE_CHECKING:
    from lab.loadgen import LoadProgress

__all__ = ["register"]


async def _serve_backends(scenario: Scenario, seed: int, time_scale: float, base_port: int) -> None:
    from lab.backends import EmulatedPool, describe, next_commands

    async with EmulatedPool(
        scenario, seed=seed, time_scale=time_scale, base_port=base_port
    ) as pool:
        typer.echo(f"scenario {scenario.name}: {len(pool.backends)} backends (Ctrl-C to stop)")
        for line in describe(pool):
            typer.echo(line)
        for line in next_commands(pool, time_scale):
            typer.echo(line)
        await wait_for_stop_signal()
    typer.echo("backends stopped")


def backends(
    scenario: Annotated[
        str, typer.Option("--scenario", help="Shipped scenario name or TOML file.")
    ],
    seed: Annotated[int, typer.Option(help="Seeds the scenario draw and every service time.")] = 0,
    time_scale: Annotated[
        float, typer.Option(help="Real seconds per scenario second for the event timeline.")
    ] = 1.0,
    base_port: Annotated[
        int,
        typer.Option(
            help="First port (one per backend: 9001, 9002, …); 0 picks free ports.",
            show_default="0: free ports",
        ),
    ] = 0,
) -> None:
    """Run a scenario's backends as real HTTP servers on 127.0.0.1 until Ctrl-C or SIGTERM."""
    sampled = load_scenario_sample(scenario, seed)
    run_async(_serve_backends(sampled, seed, time_scale, base_port))


def loadgen(
    url: Annotated[str, typer.Argument(help="Where to send GET requests.")],
    rate: Annotated[float, typer.Option(help="Requests per second.")],
    duration: Annotated[float, typer.Option(help="Seconds of sending.")],
    process: Annotated[str, typer.Option(help="Gaps between sends: poisson or constant.")] = (
        "poisson"
    ),
    connections: Annotated[int, typer.Option(help="Pooled keep-alive connections.")] = 64,
    timeout: Annotated[float, typer.Option(help="Per-request timeout, seconds.")] = 5.0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the summary as JSON ('-': stdout).")
    ] = None,
    records: Annotated[
        Path | None, typer.Option(help="Write one CSV row per request (sent_s, latency_ms, ...).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the Poisson schedule.")] = 0,
    tolerate_errors: Annotated[
        bool,
        typer.Option(
            "--tolerate-errors", help="Exit 0 even if some requests failed (not if all did)."
        ),
    ] = False,
) -> None:
    """Open-loop load: send on schedule whatever the answers, latency from the intended send.

    Exits 1 if every request failed, if any did (unless --tolerate-errors), or if it fell behind.
    """
    from envs.cli import check_output_path
    from lab.loadgen import (
        failure_verdict,
        format_summary,
        run_load,
        validate,
    )

    checked = validate(url, rate, duration, connections, timeout, process)
    for option, path in (("--json", json_out), ("--records", records)):
        check_output_path(path, option)
    status = _StatusLine() if sys.stderr.isatty() else None
    result = run_async(
        run_load(
            url,
            rate,
            duration,
            process=checked,
            connections=connections,
            timeout=timeout,
            seed=seed,
            progress=status.show if status else None,
        )
    )
    if status:
        status.clear()
    for line in format_summary(result):
        typer.echo(line, err=json_out == Path("-"))
    if json_out is not None:
        text = json.dumps(result.summary(), indent=2)
        if json_out == Path("-"):
            sys.stdout.write(text + "\n")
        else:
            json_out.write_text(text + "\n")
    if records is not None:
        with records.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["sent_s", "latency_ms", "status", "cause"])
            writer.writeheader()
            writer.writerows(result.records())
    verdict = failure_verdict(result, tolerate_errors=tolerate_errors)
    if verdict:
        typer.echo(f"loadgen: {verdict}", err=True)
        raise typer.Exit(1)


class _StatusLine:
    """One line on the terminal's stderr, rewritten in place while the load runs."""

    def show(self, progress: LoadProgress) -> None:
        from lab.loadgen import format_progress

        sys.stderr.write("\r" + format_progress(progress) + "\x1b[K")
        sys.stderr.flush()

    def clear(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def demo(
    scenario: Annotated[str, typer.Option(help="Shipped scenario name or TOML file.")] = (
        "slow-backend"
    ),
    duration: Annotated[float, typer.Option(help="Seconds of load per balancer.")] = 20.0,
    rate_scale: Annotated[
        float, typer.Option(help="Multiplies the scenario's arrival rate.")
    ] = 0.25,
    seed: Annotated[int, typer.Option(help="Seeds the scenario draw, backends and load.")] = 0,
) -> None:
    """Learned vs least-latency vs round-robin on emulated backends, through the real proxy."""
    from lab.demo import run_demo
    from rl_lb.errors import ConfigError

    if not 0 < duration <= 600:
        raise ConfigError(
            "--duration", f"{duration:g} s is out of range", "use 0 < duration <= 600"
        )
    if not 0 < rate_scale <= 10:
        raise ConfigError("--rate-scale", f"{rate_scale:g} is out of range", "use 0 < X <= 10")
    sampled = load_scenario_sample(scenario, seed)
    if sampled.arrivals.rate * rate_scale * duration < 1:
        raise ConfigError("--rate-scale", "that is less than one request", "raise it or --duration")
    run_async(run_demo(sampled, duration=duration, rate_scale=rate_scale, seed=seed))


def register(app: typer.Typer) -> None:
    app.command()(backends)
    app.command()(loadgen)
    app.command()(demo)
