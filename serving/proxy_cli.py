"""`rl-lb serve`: the proxy from the command line.

Imports of the proxy itself are deferred to the command body so that `rl-lb --help` stays fast
and the proxy starts accepting within ~1 s. Every option is also a key of the `--config` TOML
file (same name, no dashes in front); options given on the command line win.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register", "serve"]

_LIMITS = "Limits and timeouts"
_CONTROL = "Balancing"
_ADMIN = "Admin API"
_HEALTH = "Health"


def serve(
    backend: Annotated[
        list[str] | None, typer.Option("--backend", "-b", help="Backend URL (repeatable).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="proxy.toml; flags override it.")
    ] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT  [default: 127.0.0.1:8080]")] = None,
    balancer: Annotated[
        str | None,
        typer.Option(
            help="learned | least-latency | round-robin | … | POLICY+PICKER  [default: learned]",
            rich_help_panel=_CONTROL,
        ),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            help="Model dir/.npz or models:/rl-lb-policy/N  [default: the shipped policy]",
            rich_help_panel=_CONTROL,
        ),
    ] = None,
    control_interval: Annotated[
        float | None, typer.Option(help="Seconds  [default: 1.0]", rich_help_panel=_CONTROL)
    ] = None,
    max_staleness: Annotated[
        float | None,
        typer.Option(help="Older metrics → fallback  [default: 5.0]", rich_help_panel=_CONTROL),
    ] = None,
    metrics_delay: Annotated[
        float | None,
        typer.Option(help="Give the policy S-old metrics  [default: 0]", rich_help_panel=_CONTROL),
    ] = None,
    metrics_window: Annotated[
        float | None,
        typer.Option(
            help="Seconds of quantiles, errors, throughput  [default: 10]", rich_help_panel=_CONTROL
        ),
    ] = None,
    ewma_tau: Annotated[
        float | None,
        typer.Option(help="Peak-EWMA time constant, s  [default: 10]", rich_help_panel=_CONTROL),
    ] = None,
    admin: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT, '' for none  [default: 127.0.0.1:9090]", rich_help_panel=_ADMIN
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(envvar="RL_LB_ADMIN_TOKEN", help="Bearer token", rich_help_panel=_ADMIN),
    ] = None,
    health_path: Annotated[
        str | None,
        typer.Option(help="'' for none  [default: /health]", rich_help_panel=_HEALTH),
    ] = None,
    health_interval: Annotated[
        float | None, typer.Option(help="Seconds  [default: 5]", rich_help_panel=_HEALTH)
    ] = None,
    health_timeout: Annotated[
        float | None, typer.Option(help="Seconds  [default: 2]", rich_help_panel=_HEALTH)
    ] = None,
    consecutive_failures: Annotated[
        int | None, typer.Option(help="Ejection after  [default: 5]", rich_help_panel=_HEALTH)
    ] = None,
    base_ejection: Annotated[
        float | None, typer.Option(help="Seconds  [default: 30]", rich_help_panel=_HEALTH)
    ] = None,
    max_ejection_percent: Annotated[
        float | None, typer.Option(help="[default: 10]", rich_help_panel=_HEALTH)
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes sharing the port (SO_REUSEPORT)  [default: 1]")
    ] = None,
    connect_timeout: Annotated[
        float | None, typer.Option(help="Seconds  [default: 2]", rich_help_panel=_LIMITS)
    ] = None,
    read_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds between backend bytes  [default: 30]", rich_help_panel=_LIMITS),
    ] = None,
    total_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds, 0 for none  [default: 0]", rich_help_panel=_LIMITS),
    ] = None,
    header_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds for a request head  [default: 60]", rich_help_panel=_LIMITS),
    ] = None,
    max_body_size: Annotated[
        int | None,
        typer.Option(help="Bytes, 0 for none  [default: 1 GiB]", rich_help_panel=_LIMITS),
    ] = None,
    max_header_size: Annotated[
        int | None, typer.Option(help="Bytes per line  [default: 8190]", rich_help_panel=_LIMITS)
    ] = None,
    max_connections: Annotated[
        int | None, typer.Option(help="[default: 10000]", rich_help_panel=_LIMITS)
    ] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(help="Per backend  [default: 1000]", rich_help_panel=_LIMITS)
    ] = None,
    retries: Annotated[
        int | None, typer.Option(help="Per request  [default: 2]", rich_help_panel=_LIMITS)
    ] = None,
    retry_budget: Annotated[
        float | None,
        typer.Option(help="Share of requests  [default: 0.2]", rich_help_panel=_LIMITS),
    ] = None,
    preserve_host: Annotated[
        bool | None, typer.Option("--preserve-host/--backend-host", help="[default: preserve]")
    ] = None,
    shutdown_timeout: Annotated[
        float | None, typer.Option(help="Seconds  [default: 30]", rich_help_panel=_LIMITS)
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
) -> None:
    """Run the learning load balancer in front of BACKENDs."""
    given = dict(locals())
    from serving.config import load_config

    flags: dict[str, Any] = {
        key.replace("_", "-"): value
        for key, value in given.items()
        if key not in ("config", "log_level", "backend")
    }
    flags["backend"] = backend or None
    proxy_config = load_config(str(config) if config else None, flags)
    _configure_logging(log_level)
    _run_workers(proxy_config, flags, log_level)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _worker(config: Any, flags: dict[str, Any], worker: int, log_level: str) -> None:
    from serving.app import run

    _configure_logging(log_level)
    run(config, flags, worker)


def _run_workers(config: Any, flags: dict[str, Any], log_level: str) -> None:
    """Worker 0 runs here (with the admin API); the others are spawned processes."""
    from serving.app import run

    if config.workers == 1:
        run(config, flags)
        return
    import multiprocessing
    import os

    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_worker, args=(config, flags, k, log_level), daemon=False)
        for k in range(1, config.workers)
    ]
    for child in children:
        child.start()

    def forward(signum: int) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    try:
        run(config, flags, 0, forward)
    finally:
        for child in children:
            child.join(config.shutdown_timeout_s + 5)
            if child.is_alive():
                child.kill()


def register(app: typer.Typer) -> None:
    app.command()(serve)
