"""The one MLflow tracking store every command reads and writes: which one, and whether it exists.

`rl-lb train` records runs and registers `rl-lb-policy` versions there; `rl-lb ui` browses it;
`learned:models:/rl-lb-policy/N` (serve, evaluate, bench) looks models up in it. They must agree,
so the choice is made here once: `--tracking-uri` on a command (which sets MLflow's own
`MLFLOW_TRACKING_URI` for the process, so MLflow and every wing see the same value), else that
variable, else `sqlite:///mlruns.db` in the current folder (MLflow's convention; existing runs
stay where they are).

A lookup must never create a store: opening a missing SQLite file with MLflow creates an empty
database (and prints its migrations), after which "model not found" hides the real mistake, a
command run from another folder. `require_store` refuses first, naming the store searched.

Only the standard library: the core imports no MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from rl_lb.errors import ModelError

__all__ = [
    "DEFAULT_TRACKING_URI",
    "ENV_VAR",
    "TRACKING_URI_HELP",
    "TrackingUriOption",
    "describe_store",
    "require_store",
    "sqlite_file",
    "tracking_uri",
    "use_tracking_uri",
]

ENV_VAR = "MLFLOW_TRACKING_URI"
_SQLITE = "sqlite:///"
DEFAULT_TRACKING_URI = f"{_SQLITE}mlruns.db"
"""The embedded MLflow store `rl-lb train` writes to when neither `--tracking-uri` nor
`MLFLOW_TRACKING_URI` names another."""
TRACKING_URI_HELP = (
    "MLflow tracking store of runs and registered models "
    f"(also {ENV_VAR}; default {DEFAULT_TRACKING_URI} in the current folder)."
)
"""The help of every command's `--tracking-uri` option."""
TrackingUriOption = Annotated[
    str | None, typer.Option("--tracking-uri", help=TRACKING_URI_HELP, show_default=False)
]
"""The `--tracking-uri` parameter of a command; pass its value to `use_tracking_uri`."""


def tracking_uri() -> str:
    """The store this process uses."""
    return os.environ.get(ENV_VAR) or DEFAULT_TRACKING_URI


def use_tracking_uri(uri: str | None) -> str:
    """Make `uri` (a command's `--tracking-uri`; None: not given) the store of this process and
    of what it starts (the MLflow UI, spawned workers), and return the store in use."""
    if uri:
        os.environ[ENV_VAR] = uri
    return tracking_uri()


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` store (relative to the current folder); None for
    any other kind of store."""
    if not uri.startswith(_SQLITE):
        return None
    return Path(uri.removeprefix(_SQLITE)).absolute()


def describe_store(uri: str | None = None) -> str:
    """The store as a user finds it: the URI, and the file's full path for SQLite."""
    uri = uri or tracking_uri()
    database = sqlite_file(uri)
    return f"{uri} ({database})" if database is not None else uri


def require_store(what: str, uri: str | None = None) -> str:
    """The store's URI, or a one-line `ModelError` when it is a SQLite file that does not exist
    (looking `what` up there would create an empty one)."""
    uri = uri or tracking_uri()
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        raise ModelError(
            what,
            f"no tracking store at {database} (searched {uri})",
            f"run it from the folder you trained in, or pass --tracking-uri / set {ENV_VAR}",
        )
    return uri
