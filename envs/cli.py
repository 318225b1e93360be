"""`rl-lb evaluate`: balancers against scenarios in simulation, with confidence intervals."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rl_lb.balancers import BALANCER_NAMES
from rl_lb.errors import ConfigError
from rl_lb.policies import POLICY_NAMES
from rl_lb.scenarios import library_scenarios
from rl_lb.tracking_store import TrackingUriOption, use_tracking_uri

__all__ = ["DEFAULT_BALANCERS", "check_output_path", "register"]

DEFAULT_BALANCERS: tuple[str, ...] = BALANCER_NAMES
"""Every preset, `learned` (the shipped policy) included: the product's headline comparison."""
PIPED_WIDTH = 120
"""Table width when the output is not a terminal and `COLUMNS` is not set."""
_COMMAND = "evaluate"


def check_output_path(path: Path | None, option: str = "--json") -> None:
    """Refuse an output file whose folder is missing, before any work is done."""
    if path is None or path == Path("-"):
        return
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(option, f"folder {str(folder)!r} does not exist", "create it first")
    if path.is_dir():
        raise ConfigError(option, f"{str(path)!r} is a folder", "name a file")
    if not os.access(folder, os.W_OK):
        raise ConfigError(option, f"folder {str(folder)!r} is not writable", "choose another")


def _learned_with(policy: str, balancers: list[str]) -> list[str]:
    """`--policy MODEL`: every bare `learned` balancer serves that model."""
    if policy in POLICY_NAMES and not Path(policy).exists():
        raise ConfigError(
            "--policy",
            f"{policy!r} is a weight policy; --policy takes a trained model (path or models:/ URI)",
            f"use --weight-policy {policy} --picker PICKER",
        )
    if "learned" not in balancers:
        balancers.append("learned")
    return [f"learned:{policy}" if b == "learned" else b for b in balancers]


def _evaluate(
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario",
            help="Scenario file or library name, e.g. slow-backend (repeat; default: the library).",
        ),
    ] = None,
    balancer: Annotated[
        list[str] | None,
        typer.Option(
            "--balancer",
            help="Preset, learned[:MODEL] or POLICY+PICKER (repeat; default: every preset, "
            "learned included).",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per pair (0..N-1).")] = 5,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write one record per run to this file.")
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            help="Trained model (folder, .npz or models:/ URI) for the learned balancer "
            "[default: the shipped policy].",
        ),
    ] = None,
    weight_policy: Annotated[
        str | None,
        typer.Option(
            "--weight-policy",
            help=f"Weight policy of an extra POLICY+PICKER balancer: {', '.join(POLICY_NAMES)}.",
        ),
    ] = None,
    picker: Annotated[
        str | None, typer.Option("--picker", help="Picker of that POLICY+PICKER balancer.")
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run the episodes as tasks on Ray started here.")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Run the episodes on this Ray cluster (ray://HOST:10001 or HOST:6379).",
        ),
    ] = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Run every balancer on every scenario for several seeds and print one table per scenario."""
    from envs.evaluate import evaluate, render

    use_tracking_uri(tracking_uri)  # where learned:models:/… is looked up
    check_output_path(json_out)
    if (weight_policy is None) != (picker is None):
        raise ConfigError(
            "--weight-policy/--picker",
            "give both or neither",
            "e.g. --weight-policy capacity --picker p2c",
        )
    balancers = list(balancer or ([] if weight_policy else DEFAULT_BALANCERS))
    if weight_policy is not None:
        balancers.append(f"{weight_policy}+{picker}")
    if policy is not None:
        balancers = _learned_with(policy, balancers)
    scenarios: list[str | Path] = list(scenario) if scenario else list(library_scenarios())
    on_ray = ray_address or ("local" if ray else None)
    console = Console()
    if console.is_terminal:
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes, elapsed"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("simulating", total=None)
            records = evaluate(
                scenarios,
                balancers,
                seeds,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                ray_address=on_ray,
            )
    else:
        records = evaluate(scenarios, balancers, seeds, ray_address=on_ray)
    piped = not console.is_terminal and "COLUMNS" not in os.environ
    render(records, Console(width=PIPED_WIDTH) if piped else console)
    if json_out is not None:
        json_out.write_text(json.dumps(records, indent=1) + "\n")


def register(app: typer.Typer) -> None:
    """Add `evaluate`; calling it again (a second `main()`) adds nothing."""
    if any(c.name == _COMMAND for c in app.registered_commands):
        return
    app.command(_COMMAND)(_evaluate)
