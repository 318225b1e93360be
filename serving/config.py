"""The proxy's settings: one frozen `ProxyConfig`, read from flags and an optional TOML file.

Every setting is declared once. Those the proxy shares with the simulator (metrics window, EWMA,
error penalty, health, ejection, retries) live in `ProxyConfig.control`, a
`rl_lb.control.ControlSpec` declared in the core; the proxy's own are declared on the fields
of serving/config_core.py and serving/config_connections.py, which `ProxyConfig` inherits
(`proxy_setting(default, Setting(...), Option(...))`). From those declarations come the key
table (`KEYS`), the checks, the `rl-lb serve` flags with their help and defaults
(serving/proxy_cli.py) and the settings tables of docs/proxy.md (`markdown_table`).

The TOML keys are the flag names without the dashes in front (`control-interval = 0.5`,
`backend = ["http://…"]`), so a config file is a saved command line. Flags override the file.
Every value is checked here, once, so that a typo stops `rl-lb serve` with one line naming the
file and the key instead of surfacing later as a half-working proxy.

This module is imported when `rl-lb` builds its commands: it stays free of heavy imports.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rl_lb.control import ControlSpec
from rl_lb.errors import ConfigError
from rl_lb.toml_file import read_toml
from serving.config_connections import ConnectionSettings
from serving.config_values import (
    is_loopback,
    normalise_backend,
    split_address,
)
from serving.settings import (
    Declared,
    declare,
)
from serving.settings import markdown_table as settings_table

__all__ = [
    "KEYS",
    "ProxyConfig",
    "check_admin",
    "did_you_mean",
    "is_loopback",
    "load_config",
    "markdown_table",
    "normalise_backend",
    "restart_only_changes",
    "split_address",
]


@dataclass(frozen=True)
class ProxyConfig(ConnectionSettings):
    """Everything `ProxyServer` needs. Durations are seconds; 0 disables a limit where noted.

    The proxy's own settings are declared in serving/config_core.py and
    serving/config_connections.py; the shared ones are `control`.
    """

    control: ControlSpec = field(default_factory=ControlSpec)
    """The settings shared with the simulator (rl_lb/control/ declares them)."""
    config_path: str | None = None
    """The TOML file the settings came from, re-read on SIGHUP."""

    @property
    def serves_http2(self) -> bool:
        """HTTP/2 clients are served (handed over on the preface, ALPN h2 offered)."""
        return self.http2 or self.backend_protocol == "h2c"

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_address(self.listen, "listen")

    @property
    def admin_address(self) -> tuple[str, int] | None:
        return split_address(self.admin, "admin") if self.admin else None


_DECLARED: dict[str, Declared] = declare(ProxyConfig)
KEYS: dict[str, Declared] = {key: d for key, d in _DECLARED.items() if d.info.proxy}
"""Flag name (= TOML key) → its declaration: the proxy's own settings, then the shared ones
(the simulator-only ones, `Setting.proxy` False, are no flag or key of the proxy)."""


def _read_file(path: str) -> dict[str, Any]:
    data = read_toml(path)
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        # a simulator-only key: `from_flags` refuses it, saying where it is set instead
        ControlSpec.from_flags({k: data[k] for k in unknown if k in _DECLARED}, f"{path}: ")
        raise ConfigError(
            f"{path}: {unknown[0]}",
            "unknown key",
            did_you_mean(unknown[0], KEYS) + f"valid keys: {', '.join(sorted(KEYS))}",
        )
    return data


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`did you mean 'X'? ` for the closest of `choices` to a misspelled `word`, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def load_config(path: str | None = None, flags: Mapping[str, Any] | None = None) -> ProxyConfig:
    """The file's settings, then the flags (keys as in `KEYS`, None meaning "not given")."""
    own: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    sources = [(_read_file(path), f"{path}: ")] if path else []
    sources.append(({k: v for k, v in (flags or {}).items() if v is not None}, "--"))
    for data, prefix in sources:
        for key, raw in data.items():
            declared = KEYS.get(key)
            if declared is None:
                raise ConfigError(
                    f"{prefix}{key}", "not a setting of rl-lb serve", did_you_mean(key, KEYS)
                )
            value = declared.read(raw, f"{prefix}{key}")
            if declared.section is None:
                own[declared.field.name] = value
            else:
                shared[key] = value
    prefix = f"{path}: " if path else "--"
    config = ProxyConfig(config_path=path, control=_control(shared, prefix), **own)
    _check(config, prefix)
    return config


def _control(values: Mapping[str, Any], prefix: str) -> ControlSpec:
    """The shared settings; a rule tying two of them together is named with `prefix`."""
    try:
        return ControlSpec.from_flags(values, prefix)
    except ConfigError as error:
        if error.where.startswith(prefix):
            raise
        raise ConfigError(f"{prefix}{error.where}", error.what, error.fix) from None


def _check(config: ProxyConfig, prefix: str) -> None:
    """Rules that tie several settings together."""
    from rl_lb.balancers import make_balancer  # numpy and the policies: not at `rl-lb` start

    if not config.backends and not config.discover:
        raise ConfigError(
            f"{prefix}backend",
            "no backend given",
            "pass --backend URL or --discover SOURCE (both repeatable)",
        )
    if config.dns_ttl_min_s > config.dns_ttl_max_s:
        raise ConfigError(f"{prefix}dns-ttl-min", "is above dns-ttl-max", "lower it")
    if config.policy and not config.balancer.startswith("learned"):
        raise ConfigError(
            f"{prefix}policy",
            f"a policy file needs the learned balancer, not {config.balancer!r}",
            "add --balancer learned or drop --policy",
        )
    host, port = config.listen_address
    if config.workers > 1 and port == 0:
        raise ConfigError(f"{prefix}workers", "several workers need a fixed listen port")
    if not config.balancer.startswith("learned"):
        try:
            make_balancer(config.balancer)
        except ConfigError as error:
            hint = did_you_mean(config.balancer, _balancer_names())
            raise ConfigError(f"{prefix}balancer", error.what, hint + error.fix) from None
    check_admin(config, prefix)
    _check_tls(config, prefix)
    admin = config.admin_address
    if admin and admin[1] != 0 and admin == (host, port):
        raise ConfigError(f"{prefix}admin", "the admin API cannot share the proxy's address")


def _check_tls(config: ProxyConfig, prefix: str) -> None:
    """Certificates come with their keys, and every PEM file loads (one line naming it)."""
    from serving.tls import backend_context, listener_context

    for cert, key, name in (
        (config.tls_cert, config.tls_key, "tls"),
        (config.backend_client_cert, config.backend_client_key, "backend-client"),
    ):
        if bool(cert) != bool(key):
            given, missing = ("cert", "key") if cert else ("key", "cert")
            raise ConfigError(
                f"{prefix}{name}-{given}", f"needs --{name}-{missing} too", "give both files"
            )
    if config.tls_cert and config.tls_key:
        listener_context(config.tls_cert, config.tls_key)
    if config.backend_ca_file or config.backend_client_cert:
        backend_context(
            config.backend_ca_file,
            config.backend_sni,
            config.backend_client_cert,
            config.backend_client_key,
        )


def _balancer_names() -> list[str]:
    """The names a misspelled balancer is compared with: presets and POLICY+PICKER pairs."""
    from rl_lb.balancers import BALANCER_NAMES
    from rl_lb.pickers import PICKER_NAMES
    from rl_lb.policies import POLICY_NAMES

    pairs = [f"{p}+{k}" for p in POLICY_NAMES if p != "learned" for k in PICKER_NAMES]
    return [*BALANCER_NAMES, *pairs]


def check_admin(config: ProxyConfig, prefix: str = "--") -> None:
    """Refuse an admin API off loopback without a token, before anything is bound."""
    admin = config.admin_address
    if admin and not is_loopback(admin[0]) and not config.admin_token:
        raise ConfigError(
            f"{prefix}admin",
            f"the admin API on {config.admin} needs a token",
            "set --admin-token or RL_LB_ADMIN_TOKEN, or bind it to 127.0.0.1",
        )


LIVE = frozenset({"backends", "balancer", "policy", "config_path"})
"""The `ProxyConfig` fields a reload (SIGHUP) applies to a running proxy."""


def restart_only_changes(old: ProxyConfig, new: ProxyConfig) -> tuple[ProxyConfig, list[str]]:
    """`new` with every setting a running proxy cannot change kept as in `old`, and the keys of
    those that differ (they take effect at the next start)."""
    changed = [
        d for d in KEYS.values() if d.field.name not in LIVE and d.value(old) != d.value(new)
    ]
    holders = {d.field.name if d.section is None else "control" for d in changed}
    return dataclasses.replace(new, **{name: getattr(old, name) for name in holders}), [
        d.key for d in changed
    ]


def markdown_table() -> str:
    """The proxy's own settings as a Markdown table (docs/proxy.md, beside
    `rl_lb.control.markdown_table()` for the shared ones)."""
    return settings_table(KEYS.values())
