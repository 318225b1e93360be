"""Each proxy setting is declared once; the flags, the TOML keys, the docs and the proxy follow.

The shared settings are declared in rl_lb/control/, the proxy's own on `ProxyConfig`'s fields
(serving/config.py). These tests check everything derived from the declarations against them:
the `rl-lb serve` options (names, help, defaults, panels), docs/proxy.md's settings tables, a
config file written from `ControlSpec.flags()`, and the objects the proxy builds from its config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import serving.config
from rl_lb.balancers import make_balancer
from rl_lb.control import ControlSpec, markdown_table, spec_settings
from rl_lb.errors import ConfigError
from serving import proxy_cli
from serving.config import KEYS, ProxyConfig, load_config, restart_only_changes
from serving.controller import Controller
from serving.monitor import Monitor
from serving.proxy import Forwarder, ProxyStats
from serving.upstream import UpstreamPool

DOC = Path(__file__).parents[1] / "docs" / "proxy.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"
BACKEND = "http://127.0.0.1:8001"
CLI_ONLY = {"config", "log_level", "tracking_uri"}
"""`serve` parameters that are not settings: the file to read, and the log level."""


def serve_app() -> typer.Typer:
    """A typer app with `serve` alone (a one-command app runs it without its name)."""
    app = typer.Typer(add_completion=False)
    proxy_cli.register(app)
    return app


def changed_spec() -> ControlSpec:
    """A spec with every shared setting off its default (each one doubled, or halved where its
    double is out of range, as a quantile's; a default of 0, a switched-off feature, becomes 4),
    within bounds."""
    bounds = {info.key: info.maximum for _, _, info in spec_settings()}
    return ControlSpec.from_flags(
        {
            key: (2 * value if 2 * value <= bounds[key] else value / 2) if value else 4
            for key, value in ControlSpec().flags().items()
        }
    )


def test_the_docs_settings_tables_are_the_generated_ones() -> None:
    text = DOC.read_text()
    assert (text.count(BEGIN), text.count(END)) == (1, 1), f"{DOC} lost its settings markers"
    block = text.split(BEGIN)[1].split(END)[0]
    tables: list[list[str]] = []
    previous = ""
    for line in block.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    expected = [serving.config.markdown_table(), markdown_table()]
    if ["\n".join(t) for t in tables] != expected:
        pytest.fail(
            f"{DOC}'s settings tables are stale: between the markers, the proxy's own settings "
            "then the shared ones must read\n\n" + "\n\n".join(expected)
        )


def test_every_serve_option_is_built_from_a_declaration() -> None:
    params = {p.name: p for p in typer.main.get_command(serve_app()).params if p.name != "help"}
    assert set(params) == {key.replace("-", "_") for key in KEYS} | CLI_ONLY
    for key, declared in KEYS.items():
        param = params[key.replace("-", "_")]
        assert f"--{key}" in param.opts, key
        assert param.default is None, f"--{key} must default to None so a file can set it"
        assert param.help == proxy_cli.option_help(declared)
        assert param.help.replace("\\[", "[") == declared.info.help
        assert param.show_default == (declared.default_text() or False), key
        assert param.rich_help_panel == declared.option.panel, key
    assert params["backend"].opts == ["--backend", "-b"]
    assert params["preserve_host"].secondary_opts == ["--backend-host"]
    assert params["admin_token"].envvar == "RL_LB_ADMIN_TOKEN"


def test_the_serve_help_shows_each_setting_with_its_declared_default() -> None:
    result = CliRunner().invoke(serve_app(), ["--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for key, declared in KEYS.items():
        line = next((line for line in lines if f"--{key} " in line), None)
        assert line is not None, f"--{key} is not in the help"
        assert declared.info.help in line, key
        if declared.default_text():
            assert f"[default: ({declared.default_text()})]" in line, line


def test_serve_hands_every_flag_to_load_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[ProxyConfig] = []
    monkeypatch.setattr(proxy_cli, "_run_workers", lambda config, *_: started.append(config))
    path = tmp_path / "proxy.toml"
    path.write_text(f'backend = ["{BACKEND}"]\nretries = 5\nhealth-interval = 7.0\n')
    spec = changed_spec()
    flags = [f"--{key}={value!r}" for key, value in spec.flags().items() if key != "retries"]
    argv = ["-c", str(path), "-b", "http://127.0.0.1:8002", *flags, "--backend-host"]
    result = CliRunner().invoke(
        serve_app(), [*argv, "--admin", ""], env={"RL_LB_ADMIN_TOKEN": "t0ken"}
    )
    assert result.exit_code == 0, result.output
    [config] = started
    assert config.backends == ("http://127.0.0.1:8002",)  # the flag overrides the file
    assert config.control == dataclasses.replace(
        spec, retries=dataclasses.replace(spec.retries, retries=5)
    )
    assert (config.preserve_host, config.admin, config.admin_token) == (False, None, "t0ken")


def test_control_spec_flags_round_trip_through_load_config(tmp_path: Path) -> None:
    spec = changed_spec()
    assert spec != ControlSpec()
    path = tmp_path / "proxy.toml"
    lines = [f'backend = ["{BACKEND}"]'] + [f"{k} = {v!r}" for k, v in spec.flags().items()]
    path.write_text("\n".join(lines) + "\n")
    assert load_config(str(path)).control == spec
    assert load_config(None, {"backend": [BACKEND], **spec.flags()}).control == spec
    assert load_config(None, {"backend": [BACKEND]}).control == ControlSpec()


@pytest.mark.parametrize(("source", "prefix"), [("file", "proxy.toml: "), ("flags", "--")])
def test_a_rule_between_two_shared_settings_names_the_source(
    tmp_path: Path, source: str, prefix: str
) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(f'backend = ["{BACKEND}"]\nbase-ejection = 400.0\n')
    args: tuple[Any, ...] = (
        (str(path),) if source == "file" else (None, {"backend": [BACKEND], "base-ejection": 400.0})
    )
    with pytest.raises(ConfigError) as caught:
        load_config(*args)
    where = f"{path}: max-ejection" if source == "file" else "--max-ejection"
    assert caught.value.where == where
    assert prefix in str(caught.value)


def test_proxy_config_holds_no_copy_of_a_shared_setting() -> None:
    own = {f.name for f in dataclasses.fields(ProxyConfig)}
    shared = {(name, f.name) for name, f, _ in spec_settings()}
    assert not own & {field for _, field in shared}
    assert not own & {key.replace("-", "_") for key in ControlSpec().flags()}
    undeclared = [f.name for f in dataclasses.fields(ProxyConfig) if "setting" not in f.metadata]
    assert undeclared == ["control", "config_path"]


async def test_the_proxy_runs_the_spec_it_is_given() -> None:
    """The monitor's trackers and the forwarder's retries are built from `config.control`."""
    spec = changed_spec()
    config = ProxyConfig(backends=(BACKEND,), balancer="round-robin", control=spec)
    monitor = Monitor(
        config, lambda url: UpstreamPool(url, limit=4, connect_timeout=1.0, read_timeout=1.0)
    )
    metrics = monitor.metrics
    assert (metrics.window_s, metrics.ewma_tau_s, metrics.error_penalty_s) == (
        spec.metrics.window_s,
        spec.metrics.ewma_tau_s,
        spec.metrics.error_penalty_s,
    )
    assert monitor.detector.settings == spec.ejection
    assert monitor.checker.settings == spec.health
    controller = Controller(config, monitor, make_balancer("round-robin"))
    forwarder = Forwarder(config, monitor, controller, ProxyStats())
    assert forwarder.retries == spec.retries.retries
    assert forwarder.budget.settings == spec.retries


def test_a_reload_keeps_what_needs_a_restart_and_names_it_by_key() -> None:
    old = ProxyConfig(backends=(BACKEND,))
    new = dataclasses.replace(
        old,
        backends=("http://127.0.0.1:8002",),
        balancer="jsq",
        listen="127.0.0.1:8181",
        control=changed_spec(),
    )
    kept, keys = restart_only_changes(old, new)
    assert (kept.backends, kept.balancer) == (new.backends, "jsq")
    assert (kept.listen, kept.control) == (old.listen, old.control)
    assert keys == ["listen", *ControlSpec().flags()]


def test_a_simulator_only_setting_is_no_proxy_flag_key_or_docs_row(tmp_path: Path) -> None:
    """`prequal-probe-rtt` (`Setting.proxy` False) is left out of everything the proxy offers,
    kept in the scenario table, and refused with a line that says where it is set."""
    from lab.bench_proxy import control_flags
    from rl_lb.control import Setting

    simulator_only = [info for _, _, info in spec_settings() if not info.proxy]
    assert [info.key for info in simulator_only] == ["prequal-probe-rtt"]
    [info] = simulator_only
    params = {p.name for p in typer.main.get_command(serve_app()).params}
    assert "prequal_probe_rtt" not in params
    assert info.key not in KEYS
    assert info.key not in ControlSpec().flags()
    assert f"--{info.key}" not in control_flags(changed_spec())  # `bench live`'s child proxies
    assert f"`--{info.key}`" not in markdown_table()
    assert f"`{info.scenario}`" in markdown_table(scenario=True)
    with pytest.raises(ConfigError) as caught:
        ControlSpec.from_flags({info.key: 0.002})
    assert caught.value.where == f"--{info.key}"
    assert str(info.scenario) in str(caught.value)
    path = tmp_path / "proxy.toml"
    path.write_text(f'backend = ["{BACKEND}"]\n{info.key} = 0.002\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.where == f"{path}: {info.key}"
    assert "simulator-only" in str(caught.value)
    with pytest.raises(ValueError, match="needs a scenario key"):
        Setting("x-rtt", "A simulator-only setting nothing could set.", proxy=False)
