"""Sub-commands of the training wing: `rl-lb train` and `rl-lb ui`.

Heavy imports (torch, SB3, MLflow) happen inside the commands so that `rl-lb --help` and the
other wings' commands stay fast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def train(
    scenario: Annotated[
        list[Path] | None,
        typer.Option("--scenario", help="Scenario file (repeatable). Default: all of scenarios/."),
    ] = None,
    algo: Annotated[str | None, typer.Option(help="SB3 algorithm: ppo or a2c.")] = None,
    timesteps: Annotated[int | None, typer.Option(help="Environment steps to train for.")] = None,
    n_envs: Annotated[int | None, typer.Option(help="Parallel environments (processes).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the run.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with every hyper-parameter (flags override).")
    ] = None,
    out: Annotated[str | None, typer.Option(help="Directory for runs and checkpoints.")] = None,
    export: Annotated[
        str | None, typer.Option(help="Also copy the best numpy policy to this directory.")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue from a checkpoint (.zip) of an earlier run.")
    ] = None,
) -> None:
    """Train the weight policy in the simulator, tracked in MLflow; keeps the best checkpoint."""
    from training.config import load_config

    overrides = {
        "scenarios": [str(p) for p in scenario] if scenario else None,
        "algo": algo,
        "timesteps": timesteps,
        "n_envs": n_envs,
        "seed": seed,
        "out": out,
        "export": export,
    }
    loaded = load_config(config, overrides)
    from training.train import run  # torch and SB3: only once the configuration is known good

    run(loaded, resume=resume)


def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the MLflow UI.")] = 5000,
    experiment: Annotated[
        str | None,
        typer.Option(help="Experiment whose runs to open. Default: the one `rl-lb train` uses."),
    ] = None,
) -> None:
    """Open the MLflow UI on the store `rl-lb train` writes to, on 127.0.0.1 only.

    Prints the link to the experiment's runs list: MLflow 3 otherwise lands on its GenAI pages.
    """
    from training.config import TrainConfig
    from training.tracking import runs_page, setup_experiment, tracking_uri

    name = experiment or TrainConfig.experiment
    experiment_id = setup_experiment(name)  # created (empty) if nothing was trained yet
    host = "127.0.0.1"
    link = runs_page(f"http://{host}:{port}", experiment_id)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri()]
    command += ["--host", host, "--port", str(port), "--workers", "1"]  # one local user
    typer.echo(f"MLflow UI, runs of experiment {name!r}: {link}")
    typer.echo(f"(store {tracking_uri()}); Ctrl-C to stop")
    raise typer.Exit(subprocess.call(command))


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("ui")(ui)
