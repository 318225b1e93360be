"""`rl-lb serve`: the proxy from the command line.

The options are not written here: each is built from a setting declared in serving/config.py
(the proxy's own) or rl_lb/control/ (those shared with the simulator; not the simulator-only
ones, `Setting.proxy` False), with that declaration's
help, default and help panel, so the flags, the `--config` TOML keys (same names, no dashes in
front; options given on the command line win) and docs/proxy.md cannot drift apart.

Imports of the proxy itself are deferred to the command body so that `rl-lb --help` stays fast
and the proxy starts accepting within ~1 s; the declarations are light.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import typer

from rl_lb.tracking_store import TRACKING_URI_HELP, use_tracking_uri
from serving.config import KEYS
from serving.settings import BALANCING, Declared

__all__ = ["option_help", "register", "serve"]

LOG_LEVELS = "debug | info | warning | error"


def serve(**values: Any) -> None:
    """Run the learning load balancer in front of BACKENDs."""
    from serving.config import load_config

    config: Path | None = values.pop("config")
    log_level: str = values.pop("log_level")
    use_tracking_uri(values.pop("tracking_uri"))  # for models:/ (the workers inherit it)
    flags = {name.replace("_", "-"): value for name, value in values.items()}
    flags["backend"] = flags["backend"] or None  # an empty list: none given
    proxy_config = load_config(str(config) if config else None, flags)
    _configure_logging(log_level)
    _run_workers(proxy_config, flags, log_level)


def _check_addresses(config: Any) -> None:
    """An address in use is refused before anything starts (no worker, no log line); the
    proxy's own bind gives the same one-line error if the port is taken in between."""
    import socket

    from serving.app import bind_error

    addresses = [
        ("listen", config.listen, config.listen_address),
        ("admin", config.admin, config.admin_address),
    ]
    for key, text, address in addresses:
        if address is None or address[1] == 0:
            continue
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        with socket.socket(family) as probe, bind_error(key, text):
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)


def _check_model(config: Any) -> None:
    """Refuse to start on a learned model that cannot load, before any worker or socket: the
    operator asked for that model, and serving the fallback instead is an opt-in."""
    from rl_lb.errors import ModelError
    from serving.controller import balancer_spec, build_balancer

    spec = balancer_spec(config.balancer, config.policy)
    if not spec.startswith("learned"):
        return
    try:
        build_balancer(spec, config.max_staleness_s, strict=True)
    except ModelError as error:
        flag = f"--policy {config.policy}" if config.policy else f"--balancer {spec}"
        meanwhile = "or add --allow-fallback-start to serve least-latency meanwhile"
        raise ModelError(
            flag,
            f"the model cannot load: {error.where}: {error.what}",
            f"{error.fix}; {meanwhile}" if error.fix else meanwhile,
        ) from None


def option_help(declared: Declared) -> str:
    """The declared help as typer shows it: typer reads option help as Rich markup, where a `[`
    would open a style tag (`[/PREFIX]`), so each one is escaped."""
    return declared.info.help.replace("[", "\\[")


def _option(declared: Declared) -> inspect.Parameter:
    """The `serve` parameter of one declared setting: None when not given, so the file's value
    (or the declared default) stands; the help shows the declared default."""
    option = typer.Option(
        None,
        *declared.option.flags,
        help=option_help(declared),
        show_default=declared.default_text() or False,
        rich_help_panel=declared.option.panel,
        envvar=declared.option.envvar,
    )
    return inspect.Parameter(
        declared.key.replace("-", "_"),
        inspect.Parameter.KEYWORD_ONLY,
        default=option,
        annotation=declared.flag_type | None,
    )


def _signature() -> inspect.Signature:
    """`serve`'s parameters as typer reads them: every declared setting, `--config` after the
    backends, `--log-level` last."""
    settings = {key: _option(declared) for key, declared in KEYS.items()}
    backend = settings.pop("backend")
    config = inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(None, "--config", "-c", help="proxy.toml; flags override it."),
        annotation=Path | None,
    )
    tracking_uri = inspect.Parameter(
        "tracking_uri",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            None, "--tracking-uri", help=TRACKING_URI_HELP, rich_help_panel=BALANCING
        ),
        annotation=str | None,
    )
    log_level = inspect.Parameter(
        "log_level",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option("info", help=LOG_LEVELS),
        annotation=str,
    )
    return inspect.Signature(
        [backend, config, *settings.values(), tracking_uri, log_level], return_annotation=None
    )


serve.__dict__["__signature__"] = _signature()  # what typer (inspect.signature) reads


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
    """Worker 0 runs here (with the admin API); the others are spawned processes. What would
    stop a worker at start-up is refused first, in one line, before any of them starts."""
    from serving.app import run

    _check_addresses(config)
    if not config.allow_fallback_start:
        _check_model(config)

    if config.workers == 1:
        run(config, flags)
        return
    import multiprocessing
    import os
    import shutil
    import signal
    import tempfile

    from serving.workers import WORKER_DIR_ENV

    # Where each worker publishes its admin port for worker 0 (serving/workers.py); the spawned
    # children inherit the environment.
    worker_dir = tempfile.mkdtemp(prefix="rl-lb-workers-")
    os.environ[WORKER_DIR_ENV] = worker_dir
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
    except BaseException:  # worker 0 could not start (a port in use): the others stop too
        forward(signal.SIGTERM)
        raise
    finally:
        for child in children:
            child.join(config.shutdown_timeout_s + 5)
            if child.is_alive():
                child.kill()
        shutil.rmtree(worker_dir, ignore_errors=True)


def register(app: typer.Typer) -> None:
    app.command()(serve)
