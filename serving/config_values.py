"""How the proxy reads a setting that is not a number: addresses, URLs, paths, names, switches.

Each reader takes the raw value (from TOML or a flag) and `where` (the file and key, or the flag)
and returns the value `ProxyConfig` holds, or raises a one-line `ConfigError` naming `where`.
Numbers need no reader here: `rl_lb.control.check_value` checks them against their `Setting`.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from rl_lb.errors import ConfigError

__all__ = [
    "is_loopback",
    "normalise_backend",
    "read_address",
    "read_backends",
    "read_health_path",
    "read_listen",
    "read_name",
    "read_switch",
    "read_text",
    "split_address",
]


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


def read_text(value: Any, where: str) -> str | None:
    """A string; '' means "none" (no admin API, no token, the shipped policy)."""
    if not isinstance(value, str):
        raise ConfigError(where, f"{value!r} is not a string")
    return value or None


def read_name(value: Any, where: str) -> str:
    """A string that may not be empty (a balancer name)."""
    text = read_text(value, where)
    if text is None:
        raise ConfigError(where, "is empty", "name one, like least-latency")
    return text


def read_switch(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, f"{value!r} is not true or false")
    return value


def read_backends(value: Any, where: str) -> tuple[str, ...]:
    """One URL or a list of them, each normalised, none twice."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(where, f"{value!r} is not a list of URLs")
    urls = tuple(normalise_backend(u, where) for u in items)
    if len(set(urls)) != len(urls):
        raise ConfigError(where, "a backend is listed twice", "list each URL once")
    return urls


def read_health_path(value: Any, where: str) -> str | None:
    path = read_text(value, where)
    if path is not None and not path.startswith("/"):
        raise ConfigError(where, f"{value!r} does not start with '/'", "write it like /health")
    return path


def read_listen(value: Any, where: str) -> str:
    """`HOST:PORT`, never none: the proxy must listen somewhere."""
    text = read_address(value, where)
    if text is None:
        raise ConfigError(where, "is empty", "write it like 127.0.0.1:8080")
    return text


def read_address(value: Any, where: str) -> str | None:
    """`HOST:PORT`, or '' for none."""
    text = read_text(value, where)
    if text is not None:
        split_address(text, where)
    return text
