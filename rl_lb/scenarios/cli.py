"""`rl-lb scenario validate|list`: check scenario files before a long training run meets them."""

from __future__ import annotations

from typing import Annotated

import typer

from rl_lb.scenarios.library import library_scenarios, load_scenario
from rl_lb.scenarios.sample import ScenarioFamily

__all__ = ["register", "summary"]

_GROUP = "scenario"


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
    """Parse and validate scenario files; print a one-line summary of each."""
    for file in files:
        family = load_scenario(file)
        typer.echo(f"{family.source}: ok: {summary(family)}")


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
        name=_GROUP, help="Validate and list scenario files.", no_args_is_help=True
    )
    scenario_app.command("validate")(_validate)
    scenario_app.command("list")(_list)
    app.add_typer(scenario_app)
