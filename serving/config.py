"""The proxy's settings: one frozen `ProxyConfig`, read from flags and an optional TOML file.

The TOML keys are the flag names without the dashes in front (`control-interval = 0.5`,
`backend = ["http://…"]`), so a config file is a saved command line. Flags override the file.
Every value is checked here, once, so that a typo stops `rl-lb serve` with one line naming the
file and the key instead of surfacing later as a half-working proxy.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from rl_lb.balancers import make_balancer
from rl_lb.errors import ConfigError
from rl_lb.metrics import DEFAULT_EWMA_TAU_S, DEFAULT_WINDOW_S
from rl_lb.toml_file import read_toml

__all__ = [
    "KEYS",
    "ProxyConfig",
    "check_admin",
    "is_loopback",
    "load_config",
    "normalise_backend",
    "split_address",
]


@dataclass(frozen=True)
class ProxyConfig:
    """Everything `ProxyServer` needs. Durations are seconds; 0 disables a limit where noted."""

    backends: tuple[str, ...] = ()
    listen: str = "127.0.0.1:8080"
    balancer: str = "learned"
    policy: str | None = None
    """Model path or `models:/rl-lb-policy/N` for the learned balancer; None: the shipped one."""
    control_interval_s: float = 1.0
    max_staleness_s: float = 5.0
    """A snapshot older than this sends a learned balancer to its fallback (reason "stale")."""
    metrics_delay_s: float = 0.0
    metrics_window_s: float = DEFAULT_WINDOW_S
    """Sliding window of the latency quantiles, error rate and throughput the policy sees."""
    ewma_tau_s: float = DEFAULT_EWMA_TAU_S
    """Time constant of the peak-EWMA latency (features and the least-latency picker)."""
    admin: str | None = "127.0.0.1:9090"
    """None: no admin API."""
    admin_token: str | None = None
    health_path: str | None = "/health"
    """None: no active health checks."""
    health_interval_s: float = 5.0
    health_timeout_s: float = 2.0
    workers: int = 1
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 0.0
    """0: no bound on a whole exchange (a long download is fine while bytes keep coming)."""
    header_timeout_s: float = 60.0
    """A client connection that sends no complete request head for this long is closed."""
    max_body_bytes: int = 1 << 30
    """0: unlimited."""
    max_header_bytes: int = 8190
    max_connections: int = 10_000
    max_in_flight: int = 1_000
    """Per backend: a backend with this many exchanges open is not picked (circuit breaker)."""
    retries: int = 2
    retry_budget: float = 0.2
    preserve_host: bool = True
    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_percent: float = 10.0
    shutdown_timeout_s: float = 30.0
    config_path: str | None = None
    """The TOML file the settings came from, re-read on SIGHUP."""

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_address(self.listen, "listen")

    @property
    def admin_address(self) -> tuple[str, int] | None:
        return split_address(self.admin, "admin") if self.admin else None


def split_address(value: str, where: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ConfigError(where, f"{value!r} is not HOST:PORT", "write it like 127.0.0.1:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_backend(url: str, where: str = "backend") -> str:
    """`http(s)://host:port[/prefix]` without a trailing slash; anything else is refused."""
    if not isinstance(url, str):
        raise ConfigError(where, f"{url!r} is not a URL", "write it like http://10.0.0.5:8000")
    refused = ConfigError(where, f"{url!r} is not a backend URL", "write it like http://host:8000")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise refused from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise refused
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _number(
    minimum: float, integer: bool = False, maximum: float = math.inf
) -> Callable[[Any, str], Any]:
    def convert(value: Any, where: str) -> Any:
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(where, f"{value!r} is not {kind}")
        if integer and isinstance(value, float) and not value.is_integer():
            raise ConfigError(where, f"{value!r} is not {kind}")
        try:
            number: float = int(value) if integer else float(value)
        except ValueError:
            raise ConfigError(where, f"{value!r} is not {kind}") from None
        if not (math.isfinite(number) and minimum <= number <= maximum):
            bounds = f">= {minimum}" if maximum == math.inf else f"from {minimum} to {maximum}"
            raise ConfigError(where, f"{value!r} is out of range", f"use {kind} {bounds}")
        return number

    return convert


def _text(value: Any, where: str) -> str | None:
    if not isinstance(value, str):
        raise ConfigError(where, f"{value!r} is not a string")
    return value or None


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, f"{value!r} is not true or false")
    return value


def _backends(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(where, f"{value!r} is not a list of URLs")
    urls = tuple(normalise_backend(u, where) for u in items)
    if len(set(urls)) != len(urls):
        raise ConfigError(where, "a backend is listed twice", "list each URL once")
    return urls


def _health_path(value: Any, where: str) -> str | None:
    path = _text(value, where)
    if path is not None and not path.startswith("/"):
        raise ConfigError(where, f"{value!r} does not start with '/'", "write it like /health")
    return path


def _address(value: Any, where: str) -> str | None:
    text = _text(value, where)
    if text is not None:
        split_address(text, where)
    return text


KEYS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "backend": ("backends", _backends),
    "listen": ("listen", _address),
    "balancer": ("balancer", _text),
    "policy": ("policy", _text),
    "control-interval": ("control_interval_s", _number(0.01)),
    "max-staleness": ("max_staleness_s", _number(0.0)),
    "metrics-delay": ("metrics_delay_s", _number(0.0)),
    "metrics-window": ("metrics_window_s", _number(0.01)),
    "ewma-tau": ("ewma_tau_s", _number(0.01)),
    "admin": ("admin", _address),
    "admin-token": ("admin_token", _text),
    "health-path": ("health_path", _health_path),
    "health-interval": ("health_interval_s", _number(0.05)),
    "health-timeout": ("health_timeout_s", _number(0.01)),
    "workers": ("workers", _number(1, integer=True)),
    "connect-timeout": ("connect_timeout_s", _number(0.001)),
    "read-timeout": ("read_timeout_s", _number(0.001)),
    "total-timeout": ("total_timeout_s", _number(0.0)),
    "header-timeout": ("header_timeout_s", _number(0.01)),
    "max-body-size": ("max_body_bytes", _number(0, integer=True)),
    "max-header-size": ("max_header_bytes", _number(256, integer=True)),
    "max-connections": ("max_connections", _number(1, integer=True)),
    "max-in-flight": ("max_in_flight", _number(1, integer=True)),
    "retries": ("retries", _number(0, integer=True)),
    "retry-budget": ("retry_budget", _number(0.0)),
    "preserve-host": ("preserve_host", _flag),
    "consecutive-failures": ("consecutive_failures", _number(1, integer=True)),
    "base-ejection": ("base_ejection_s", _number(0.001)),
    "max-ejection-percent": ("max_ejection_percent", _number(0.0, maximum=100.0)),
    "shutdown-timeout": ("shutdown_timeout_s", _number(0.0)),
}
"""Flag name (= TOML key) → (ProxyConfig field, converter)."""


def _read_file(path: str) -> dict[str, Any]:
    data = read_toml(path)
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: {unknown[0]}", "unknown key", f"valid keys: {', '.join(sorted(KEYS))}"
        )
    return data


def load_config(path: str | None = None, flags: Mapping[str, Any] | None = None) -> ProxyConfig:
    """The file's settings, then the flags (keys as in `KEYS`, None meaning "not given")."""
    values: dict[str, Any] = {}
    sources = [(_read_file(path), f"{path}: ")] if path else []
    sources.append(({k: v for k, v in (flags or {}).items() if v is not None}, "--"))
    for data, prefix in sources:
        for key, raw in data.items():
            field, convert = KEYS[key]
            values[field] = convert(raw, f"{prefix}{key}")
    config = ProxyConfig(config_path=path, **values)
    _check(config, f"{path}: " if path else "--")
    return config


def _check(config: ProxyConfig, prefix: str) -> None:
    """Rules that tie several settings together."""
    if not config.backends:
        raise ConfigError(f"{prefix}backend", "no backend given", "pass --backend URL (repeatable)")
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
            raise ConfigError(f"{prefix}balancer", error.what, error.fix) from None
    check_admin(config, prefix)
    admin = config.admin_address
    if admin and admin[1] != 0 and admin == (host, port):
        raise ConfigError(f"{prefix}admin", "the admin API cannot share the proxy's address")


def check_admin(config: ProxyConfig, prefix: str = "--") -> None:
    """Refuse an admin API off loopback without a token, before anything is bound."""
    admin = config.admin_address
    if admin and not is_loopback(admin[0]) and not config.admin_token:
        raise ConfigError(
            f"{prefix}admin",
            f"the admin API on {config.admin} needs a token",
            "set --admin-token or RL_LB_ADMIN_TOKEN, or bind it to 127.0.0.1",
        )
