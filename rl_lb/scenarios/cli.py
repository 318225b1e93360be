"""`rl-lb scenario validate|list`: check scenario files before a long training run meets them."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated

import typer
from rich.console import Console

from rl_lb.errors import ScenarioError
from rl_lb.scenarios.library import library_scenarios, load_scenario
from rl_lb.scenarios.read import MAX_ERRORS, CollectedScenarioError
from rl_lb.scenarios.sample import ScenarioFamily

__all__ = ["register", "summary"]

_GROUP = "scenario"
SUBCOMMAND_ENTRY_POINTS = "rl_lb.scenario_commands"
"""Entry points naming a wing's `register(scenario_app: typer.Typer) -> None`."""
err_console = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line


def summary(family: ScenarioFamily) -> str:
    """One line: what the pool and the traffic look like (range midpoints when randomised)."""
    scenario = family.nominal()
    capacity, rate = scenario.capacity_rps, scenario.arrivals.rate
    line = (
        f"{family.name}: {len(scenario.backends)} backends, capacity {capacity:,.0f} rps, "
        f"{scenario.arrivals.process} rate {rate:,.0f} rps ({rate / capacity:.0%} load), "
        f"{scenario.duration_s:g} s"
    )
    if family.randomised:
        line += f", randomised values: {family.randomised} (midpoints shown)"
    return line


def _validate(
    files: Annotated[
        list[str], typer.Argument(help="Scenario files, or library names such as slow-backend.")
    ],
) -> None:
    """Parse and validate scenario files: a one-line summary of each good one, every error of
    each bad one (up to 20 a file); exit status 2 when any file has an error."""
    failed = 0
    for file in files:
        try:
            family = load_scenario(file)
        except ScenarioError as error:
            failed += 1
            for each in error.errors if isinstance(error, CollectedScenarioError) else [error]:
                err_console.print(f"[red]error:[/red] {each}", highlight=False, soft_wrap=True)
            if isinstance(error, CollectedScenarioError) and error.capped:
                err_console.print(f"{file}: stopped after {MAX_ERRORS} errors", highlight=False)
            continue
        typer.echo(f"{family.source}: ok: {summary(family)}")
    if failed:
        if len(files) > 1:
            err_console.print(f"{failed} of {len(files)} files have errors", highlight=False)
        raise typer.Exit(2)


def _list() -> None:
    """List the scenario library with one-line descriptions."""
    families = [load_scenario(path) for path in library_scenarios()]
    width = max((len(f.name) for f in families), default=0)
    for family in families:
        typer.echo(f"{family.name:<{width}}  {family.description}")


def register(app: typer.Typer) -> None:
    """Add the `scenario` command group; calling it again (a second `main()`) adds nothing."""
    if any(group.name == _GROUP for group in app.registered_groups):
        return
    scenario_app = typer.Typer(
        name=_GROUP,
        help="Scenario files: list, validate, and (from the wings) generate, fit, check.",
        no_args_is_help=True,
    )
    scenario_app.command("validate")(_validate)
    scenario_app.command("list")(_list)
    for entry in sorted(entry_points(group=SUBCOMMAND_ENTRY_POINTS), key=lambda e: e.name):
        try:  # a wing adds its sub-commands (envs: `generate`) without the core importing it
            entry.load()(scenario_app)
        except ImportError as error:  # a wing whose optional dependencies are missing
            err_console.print(f"[yellow]rl-lb scenario: '{entry.name}' unavailable: {error}")
    app.add_typer(scenario_app)
