"""`rl-lb bench live` and `rl-lb bench sim2real`: the proxy measured, and checked against the model.

Both take the same scenario options: `--duration` (or `--time-scale`) compresses the scenario's
timeline and `--rate-scale` thins its traffic, and that one scaled scenario is what both the
simulator and the live run get (see `lab.bench_scenario`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.padding import Padding
from rich.progress_bar import ProgressBar

from rl_lb.tracking_store import TrackingUriOption, use_tracking_uri

if TYPE_CHECKING:
    from lab.bench import LiveRun
    from rl_lb.scenarios import Scenario

__all__ = ["MARK_BEGIN", "MARK_END", "register", "write_markdown"]

bench_app = typer.Typer(
    help="Live benchmark of the proxy on emulated backends, and its sim-to-real check.",
    no_args_is_help=True,
)
MARK_BEGIN = "<!-- sim2real:begin -->"
MARK_END = "<!-- sim2real:end -->"
DEFAULT_BALANCERS = ["least-latency", "round-robin"]

ScenarioOpt = Annotated[
    list[str], typer.Option("--scenario", help="Scenario file or library name (repeatable).")
]
BalancerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--balancer", help="Balancer preset, learned[:PATH] or POLICY+PICKER (repeatable)."
    ),
]
DurationOpt = Annotated[
    float | None,
    typer.Option(help="Seconds per run: the scenario's timeline is compressed to fit."),
]
TimeScaleOpt = Annotated[
    float | None,
    typer.Option(help="Real seconds per scenario second (instead of --duration)."),
]
RateScaleOpt = Annotated[
    float, typer.Option(help="Multiplies every arrival rate (the machine's limit, not the pool's).")
]
SeedsOpt = Annotated[int, typer.Option(min=1, help="Seeds per pair (0..N-1).")]
PolicyOpt = Annotated[
    str | None, typer.Option(help="Model for the `learned` balancer (default: the shipped one).")
]


class _Display:
    """The rich Live view of the runs of one scenario and seed: progress, then the proxy's state."""

    def __init__(self, live: Live, scenario: Scenario, seed: int) -> None:
        self.live, self.scenario, self.seed = live, scenario, seed
        self.balancer = ""

    def start(self, balancer: str) -> None:
        self.balancer = balancer

    def show(self, elapsed: float, state: dict[str, Any] | None) -> None:
        from lab.demo import live_table

        total = self.scenario.duration_s
        done = min(max(elapsed, 0.0), total)
        names = {}
        if state is not None:  # the proxy lists its backends in the scenario's order
            urls = [b["url"] for b in state["backends"]]
            names = dict(zip(urls, (b.name for b in self.scenario.backends), strict=True))
        title = f"{self.balancer} (seed {self.seed})"
        self.live.update(
            Group(
                # Padding ends the bar's line, which the table's title would continue.
                Padding(ProgressBar(total=total, completed=done, width=60), 0),
                live_table(title, state, done, total, names),
            )
        )


async def _live(
    scenarios: list[str],
    balancers: list[str],
    seeds: int,
    options: dict[str, Any],
    policy: str | None,
    console: Console,
    protocol: str = "http1",
) -> list[tuple[Scenario, list[LiveRun]]]:
    """Per scenario (as run), the live runs of every seed and balancer, shown as they go."""
    from lab.bench import bench_scenario, run_live
    from lab.demo import logs_through

    groups: list[tuple[Scenario, list[LiveRun]]] = []
    for name in scenarios:
        runs: list[LiveRun] = []
        for seed in range(seeds):
            scenario = bench_scenario(name, seed, **options)
            console.print(
                f"[bold]{scenario.name}[/bold] seed {seed}: {len(scenario.backends)} backends, "
                f"{scenario.arrivals.rate:.0f} requests/s, {scenario.duration_s:g} s per balancer"
                + (f", over {protocol}" if protocol != "http1" else "")
            )
            live = Live(console=console, transient=True, auto_refresh=console.is_terminal)
            with logs_through(console), live:
                display = _Display(live, scenario, seed)
                runs += await run_live(
                    scenario,
                    balancers,
                    seed,
                    policy=policy,
                    protocol=protocol,
                    on_start=display.start,
                    on_state=display.show,
                )
        groups.append((scenario, runs))
    return groups


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the children (proxy, load generator) are stopped too."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _log_mlflow(
    scenario: Scenario, runs: list[LiveRun], params: dict[str, Any], console: Console
) -> None:
    from lab.bench_mlflow import log_bench

    params = {**params, "scenario": scenario.name, "scaled_duration_s": scenario.duration_s}
    try:
        run_id = log_bench(
            params, [r.record for r in runs], [r.episode for r in runs], scenario.duration_s
        )
    except ImportError as error:
        console.print(f"[yellow]not logged to MLflow ({error}); install the train extra")
        return
    from rl_lb.tracking_store import describe_store

    where = f"experiment rl-lb-bench in {describe_store()}; --no-mlflow to skip"
    console.print(f"logged to MLflow run {run_id} ({where})", highlight=False)


@bench_app.command("live")
def live(
    scenario: ScenarioOpt,
    balancer: BalancerOpt = None,
    duration: DurationOpt = None,
    time_scale: TimeScaleOpt = None,
    rate_scale: RateScaleOpt = 1.0,
    seeds: SeedsOpt = 1,
    policy: PolicyOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the records here.")] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")] = False,
    tracking_uri: TrackingUriOption = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="Client protocol: http1, h2c (HTTP/2 to the proxy) or grpc (gRPC backends too)."
        ),
    ] = "http1",
) -> None:
    """Each balancer in turn: the scenario's emulated backends, the proxy, open-loop load."""
    from envs.evaluate import render
    from lab.runtime import run_async

    use_tracking_uri(tracking_uri)  # the proxies (models:/) and the bench's own MLflow run

    balancers = balancer or DEFAULT_BALANCERS
    console = Console()
    options = {"duration": duration, "time_scale": time_scale, "rate_scale": rate_scale}
    with _stoppable():
        groups = run_async(_live(scenario, balancers, seeds, options, policy, console, protocol))
    records = [r.record for _, runs in groups for r in runs]
    render(records, console if console.is_terminal else Console(width=160))
    if json_out is not None:
        json_out.write_text(json.dumps(records, indent=1) + "\n")
    if not no_mlflow:
        params = {
            "balancers": ",".join(balancers),
            "seeds": seeds,
            "policy": policy,
            "protocol": protocol,
            **options,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],
        }
        for scaled, runs in groups:
            _log_mlflow(scaled, runs, params, console)


def write_markdown(path: Path, report: str) -> None:
    """Replace the report between the markers of an existing file, else write the report alone."""
    block = f"{MARK_BEGIN}\n{report.rstrip()}\n{MARK_END}\n"
    text = path.read_text() if path.is_file() else ""
    if MARK_BEGIN in text and MARK_END in text:
        head, _, rest = text.partition(MARK_BEGIN)
        _, _, tail = rest.partition(MARK_END)
        block = head + block.rstrip("\n") + tail
    path.write_text(block)


@bench_app.command("sim2real")
def sim2real(
    scenario: ScenarioOpt,
    balancer: BalancerOpt = None,
    duration: DurationOpt = None,
    time_scale: TimeScaleOpt = None,
    rate_scale: RateScaleOpt = 1.0,
    seeds: SeedsOpt = 1,
    policy: PolicyOpt = None,
    markdown_out: Annotated[
        Path | None,
        typer.Option(
            "--markdown", help="Write the report (between the sim2real markers if present)."
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Write sim and live records here, and live runs' fallback spells."
        ),
    ] = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """The same scaled scenarios and balancers in the simulator and live: p99s side by side."""
    from lab.bench import bench_scenario, record_of, simulate
    from lab.bench_report import compare, describe_spell, fallback_spells, markdown, rich_tables
    from lab.runtime import run_async

    use_tracking_uri(tracking_uri)  # where learned:models:/… is looked up

    balancers = balancer or DEFAULT_BALANCERS
    console = Console()
    options: dict[str, Any] = {
        "duration": duration,
        "time_scale": time_scale,
        "rate_scale": rate_scale,
    }
    load_before = os.getloadavg()[0]
    sim = [
        record_of(simulate(bench_scenario(name, seed, **options), b, seed, policy))
        for name in scenario
        for seed in range(seeds)
        for b in balancers
    ]
    with _stoppable():
        groups = run_async(_live(scenario, balancers, seeds, options, policy, console))
    runs_done = [r for _, runs in groups for r in runs]
    live_records = [r.record for r in runs_done]
    spells = fallback_spells([r.episode for r in runs_done], [r.states for r in runs_done])
    comparisons = compare(sim, live_records)
    shown = console if console.is_terminal else Console(width=160)
    for table in rich_tables(comparisons):
        shown.print(table)
    for spell in spells:
        shown.print(f"live, {describe_spell(spell)}")
    if json_out is not None:
        document = {"sim": sim, "live": live_records, "live_fallback": spells}
        json_out.write_text(json.dumps(document, indent=1) + "\n")
    if markdown_out is not None:
        header = (
            f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
            f"({platform.python_implementation()} {platform.python_version()}); 1-min load average "
            f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after. Scaling: "
            f"{', '.join(f'{k}={v}' for k, v in options.items() if v is not None)}; "
            f"seeds 0..{seeds - 1}."
        )
        notes = "".join(f"\n- Live, {describe_spell(spell)}." for spell in spells)
        body = markdown(comparisons) + (f"\nFallback spells:\n{notes}\n" if notes else "")
        write_markdown(markdown_out, f"{header}\n\n{body}")
        console.print(f"report written to {markdown_out}")


def register(app: typer.Typer) -> None:
    from lab.bench_pool import pool  # your own backends (issue 18)

    if not any(c.name == "pool" for c in bench_app.registered_commands):
        bench_app.command("pool")(pool)
    app.add_typer(bench_app, name="bench")
