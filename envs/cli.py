"""`rl-lb evaluate`: balancers against scenarios in simulation, with confidence intervals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from rl_lb.balancers import BALANCER_NAMES
from rl_lb.errors import ConfigError
from rl_lb.scenarios import library_scenarios

__all__ = ["DEFAULT_BALANCERS", "register"]

DEFAULT_BALANCERS: tuple[str, ...] = tuple(b for b in BALANCER_NAMES if b != "learned")
"""Every preset that needs no model file."""
_COMMAND = "evaluate"


def _evaluate(
    scenario: Annotated[
        list[str] | None,
        typer.Option("--scenario", help="Scenario file or library name (repeat; default: all)."),
    ] = None,
    balancer: Annotated[
        list[str] | None,
        typer.Option("--balancer", help="Balancer preset or POLICY+PICKER (repeat; default: all)."),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per pair (0..N-1).")] = 5,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write one record per run to this file.")
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", help="Weight policy for a POLICY+PICKER balancer.")
    ] = None,
    picker: Annotated[
        str | None, typer.Option("--picker", help="Picker for a POLICY+PICKER balancer.")
    ] = None,
) -> None:
    """Run every balancer on every scenario for several seeds and print one table per scenario."""
    from envs.evaluate import evaluate, render

    if (policy is None) != (picker is None):
        raise ConfigError(
            "--policy/--picker", "give both or neither", "e.g. --policy capacity --picker p2c"
        )
    balancers = list(balancer or ([] if policy else DEFAULT_BALANCERS))
    if policy is not None:
        balancers.append(f"{policy}+{picker}")
    scenarios: list[str | Path] = list(scenario) if scenario else list(library_scenarios())
    console = Console()
    if console.is_terminal:
        columns = (
            *Progress.get_default_columns()[:2],
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("simulating", total=None)
            records = evaluate(
                scenarios,
                balancers,
                seeds,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    else:
        records = evaluate(scenarios, balancers, seeds)
    render(records, console if console.is_terminal else Console(width=160))
    if json_out is not None:
        json_out.write_text(json.dumps(records, indent=1) + "\n")


def register(app: typer.Typer) -> None:
    """Add `evaluate`; calling it again (a second `main()`) adds nothing."""
    if any(c.name == _COMMAND for c in app.registered_commands):
        return
    app.command(_COMMAND)(_evaluate)
