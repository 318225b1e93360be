"""Sub-commands of the training wing: `rl-lb train`, `rl-lb ui` and `rl-lb promote`.

Heavy imports (torch, SB3, MLflow) happen inside the commands so that `rl-lb --help` and the
other wings' commands stay fast; each says what it is loading while the terminal would
otherwise sit silent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rl_lb.policies.learned import LearnedPolicy
from rl_lb.tracking_store import TrackingUriOption, use_tracking_uri
from training.config import TrainConfig
from training.promote import DEFAULT_ALIAS, GATE_SCENARIOS, GATE_SEEDS
from training.sweep_cli import sweep
from training.ui_server import serve_ui

__all__ = ["register"]

TrackingUri = TrackingUriOption


def train(
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario",
            help="Scenario file or library name (`rl-lb scenario list`); repeatable.",
            show_default="the whole library",
        ),
    ] = None,
    algo: Annotated[
        str | None,
        typer.Option(help="SB3 algorithm: ppo or a2c.", show_default=TrainConfig.algo),
    ] = None,
    timesteps: Annotated[
        int | None,
        typer.Option(
            help="Environment steps to train for.", show_default=f"{TrainConfig.timesteps:,}"
        ),
    ] = None,
    n_envs: Annotated[
        int | None,
        typer.Option(
            help="Simulator environments stepped together (K of the rollout).",
            show_default=str(TrainConfig.n_envs),
        ),
    ] = None,
    vec: Annotated[
        str | None,
        typer.Option(
            help="batched: every environment in this process, simulators advanced in one "
            "call; subproc: one process each.",
            show_default=TrainConfig.vec,
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the run.", show_default=str(TrainConfig.seed))
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file with every hyper-parameter (flags override it), like "
            "training/configs/shipped.toml.",
            show_default="the built-in defaults",
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="Folder of the run folders (OUT/ppo-DATE-sSEED/: checkpoints, best policy).",
            show_default=f"{TrainConfig.out}/",
        ),
    ] = None,
    export: Annotated[
        str | None,
        typer.Option(
            help="Also copy the best numpy policy to this folder.", show_default="no copy"
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue from a checkpoint (.zip) of an earlier run.", show_default="a new run"
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="Start from an exported policy's actor (a folder such as rl_lb/policies/shipped, "
            "or models:/rl-lb-policy/N) with a new critic; see critic_warmup_steps.",
            show_default="from scratch",
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Train the weight policy in the simulator, tracked in MLflow; keeps the best checkpoint."""
    from training.config import load_config

    overrides = {
        "scenarios": list(scenario) if scenario else None,
        "algo": algo,
        "timesteps": timesteps,
        "n_envs": n_envs,
        "vec": vec,
        "seed": seed,
        "out": out,
        "export": export,
        "init": init,
    }
    loaded = load_config(config, overrides)
    use_tracking_uri(tracking_uri)
    loaded.scenario_paths()  # an unknown scenario is one line now, not after the slow imports
    loaded.check_start(resume)
    if loaded.init:
        LearnedPolicy.load(loaded.init)  # so is a bad policy to start from (numpy only)
    typer.echo("loading torch, stable-baselines3 and MLflow…", err=True)
    from training.train import run  # torch and SB3: only once the configuration is known good

    run(loaded, resume=resume)


def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the MLflow UI.")] = 5000,
    experiment: Annotated[
        str | None,
        typer.Option(
            help="Experiment whose runs to open.", show_default=f"{TrainConfig.experiment}"
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Open the MLflow UI on the store `rl-lb train` writes to, on 127.0.0.1 only.

    Prints the link to the experiment's runs list (MLflow 3 otherwise lands on its GenAI pages),
    says when the UI answers, and stops cleanly on Ctrl-C.
    """
    use_tracking_uri(tracking_uri)
    raise typer.Exit(serve_ui(port, experiment or TrainConfig.experiment))


def promote(
    version: Annotated[
        int, typer.Argument(min=1, help="Registered version of rl-lb-policy to promote.")
    ],
    alias: Annotated[
        str, typer.Option(help="The alias to move (what proxies follow).")
    ] = DEFAULT_ALIAS,
    force: Annotated[
        bool, typer.Option("--force", help="Skip the gate (an emergency rollback).")
    ] = False,
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario",
            help="Gate scenario file or library name (repeatable). "
            f"Default: {', '.join(GATE_SCENARIOS)}.",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per gate scenario.")] = GATE_SEEDS,
    tracking_uri: TrackingUri = None,
) -> None:
    """Move the registry alias to VERSION once it beats the current one in the simulator.

    Prints the gate's table; exits 1 when the version loses (the alias stays), 2 on bad input.
    """
    from training.promote import promote as run

    use_tracking_uri(tracking_uri)
    raise typer.Exit(
        run(version, alias=alias, force=force, scenarios=scenario, seeds=seeds, echo=typer.echo)
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("ui")(ui)
    app.command("promote")(promote)
    app.command("sweep")(sweep)
