"""Sub-commands of the serving wing: `serve` (the proxy)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from serving import proxy_cli

    proxy_cli.register(app)
