"""Sub-commands of the lab wing: `backends`, `loadgen`, `demo`, `bench`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from lab import bench_cli, tools_cli

    tools_cli.register(app)
    bench_cli.register(app)
