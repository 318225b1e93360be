"""Sub-commands of the serving wing: `serve`, `backends`, `loadgen`, `demo`, `bench`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from serving import bench_cli, proxy_cli, tools_cli

    proxy_cli.register(app)
    tools_cli.register(app)
    bench_cli.register(app)
