"""`rl-lb scenario generate`: write generated worlds as readable scenario files.

Registered on the core's `scenario` group through the `rl_lb.scenario_commands` entry point,
so the core offers the command without importing the simulator's wing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from envs.worlds.generator import MAX_COUNT, generate_world, write_worlds

__all__ = ["register"]


def _generate(
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write into (created if its parent exists).")
    ],
    seed: Annotated[int, typer.Option("--seed", help="Generator seed: same seed, same files.")] = 0,
    count: Annotated[int, typer.Option("--count", help=f"Worlds to write, 1 to {MAX_COUNT}.")] = 10,
) -> None:
    """Write generated worlds as scenario files (the same seed gives the same bytes).

    Files are named gen-SEED-INDEX.toml; pools, traffic and trouble are drawn from the
    distribution of docs/scenarios.md, and each file is commented with what was drawn.
    """
    paths = write_worlds(seed, count, out)
    kinds: Counter[str] = Counter()
    for index in range(count):
        kinds.update(generate_world(seed, index).trouble)
    typer.echo(f"wrote {len(paths)} worlds to {out} ({paths[0].name} … {paths[-1].name})")
    typer.echo("trouble: " + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"))


def register(scenario_app: typer.Typer) -> None:
    """Add `generate` to the `rl-lb scenario` group."""
    scenario_app.command("generate")(_generate)
