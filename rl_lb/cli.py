"""The `rl-lb` command. Sub-commands come from the wings through the `rl_lb.commands` entry points.

Each entry point names a `register(app: typer.Typer) -> None` function next to the wing's code
(`envs/cli.py`, `training/cli.py`, `serving/cli.py`), so the core never imports a wing and a
wing that is not installed simply adds no commands.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Annotated, Any

import typer
from rich.console import Console
from typer._click.core import Context
from typer._click.exceptions import ClickException
from typer.core import TyperGroup, TyperOption

from rl_lb import __version__
from rl_lb.errors import RlLbError
from rl_lb.terminate import (
    INTERRUPTED,
    INTERRUPTED_LINE,
    TERMINATED,
    TERMINATED_LINE,
    SigtermAsInterrupt,
)

__all__ = ["app", "main"]

ENTRY_POINT_GROUP = "rl_lb.commands"

HELP_NAMES = ["-h", "--help"]
HELP_OPTIONS = {"help_option_names": HELP_NAMES}
"""`-h` and `--help` on every command (typer passes the root's context settings down)."""

app = typer.Typer(
    name="rl-lb",
    help="A load balancer that learns: simulate, train, evaluate and serve.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=HELP_OPTIONS,
)
err_console = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rl-lb {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """A load balancer that learns: simulate, train, evaluate and serve."""
    if ctx.invoked_subcommand is None:  # `rl-lb` alone: the help, and success
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def _without_flag_placeholders(command: Any) -> Any:
    """Flags take no value, so the help shows none (typer prints `<bool>` beside each)."""
    help_option = command.get_help_option(Context(command, help_option_names=HELP_NAMES))
    for param in [*command.params, help_option]:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            _without_flag_placeholders(sub)
    return command


_registered: set[str] = set()


def _register_wings() -> None:
    """Add the core's and every installed wing's commands, each once per process."""
    from rl_lb.scenarios import cli as scenario_cli

    scenario_cli.register(app)
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if entry.name in _registered:
            continue
        try:
            entry.load()(app)
        except ImportError as error:  # a wing whose optional dependencies are missing
            err_console.print(f"[yellow]rl-lb: commands of '{entry.name}' unavailable: {error}")
            continue
        _registered.add(entry.name)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one red line and exit status 2."""
    _register_wings()
    terminate = SigtermAsInterrupt()
    terminate.install()
    try:
        result = _run(argv, terminate)
    except KeyboardInterrupt:
        if not terminate.received:
            raise
        result = TERMINATED  # raised before or after click's own handling of it
    finally:
        terminate.uninstall()
    if terminate.received:
        err_console.print(TERMINATED_LINE, highlight=False)
        return TERMINATED
    return result


def _run(argv: list[str] | None, terminate: SigtermAsInterrupt) -> int:
    try:
        command = _without_flag_placeholders(typer.main.get_command(app))
        args = argv if argv is not None else sys.argv[1:]
        result = command.main(args=args, prog_name="rl-lb", standalone_mode=False)
    except RlLbError as error:
        err_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        return error.exit_code
    except typer.Exit as done:
        return int(done.exit_code or 0)
    except typer.Abort:
        if not terminate.received:
            err_console.print("[red]aborted")
        return INTERRUPTED
    except ClickException as error:
        error.show()
        return error.exit_code
    if result == INTERRUPTED and not terminate.received:
        # typer's answer to a Ctrl-C that the command left alone
        err_console.print(INTERRUPTED_LINE, highlight=False)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
