"""`rl-lb sweep`: the command; Ray, torch and MLflow load only once the sweep file is good."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rl_lb.errors import ConfigError
from rl_lb.tracking_store import TrackingUriOption, use_tracking_uri

__all__ = ["RAY_ADDRESS_HELP", "sweep"]

RAY_ADDRESS_HELP = (
    "Join this Ray cluster (ray://HOST:10001 or HOST:6379) instead of starting Ray here."
)
"""The `--ray-address` help, the same wherever Ray is used."""


def sweep(
    config: Annotated[
        Path, typer.Option("--config", help="Sweep file (see training/sweep_config.py).")
    ],
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help=RAY_ADDRESS_HELP, show_default="local Ray"),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder of the sweeps' trial folders.")] = Path(
        "sweeps"
    ),
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Train many policies on Ray Tune (ASHA early stopping), each an MLflow child run of the
    sweep's run; the best is registered as a new rl-lb-policy version."""
    from training.sweep_config import load_sweep

    loaded = load_sweep(config)
    use_tracking_uri(tracking_uri)
    try:
        import ray  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            "rl-lb sweep", "Ray is not installed", "pip install 'rl-lb[sweep]'"
        ) from error
    typer.echo("loading Ray, torch, stable-baselines3 and MLflow…", err=True)
    from training.sweep import sweep as run_sweep

    run_sweep(loaded, config, out, ray_address)
