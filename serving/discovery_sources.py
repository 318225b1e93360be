"""Discovery sources as written: `--discover` values checked, and the endpoint file format.

Kept apart from serving/discovery.py (the lookups, their timing, the pool changes) because this
is what the settings check when they load (serving/config_connections.py) and what a user reads
to write a source: it needs none of the DNS client, the metrics or the running loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rl_lb.errors import ConfigError
from serving.config_values import normalise_backend, split_address

__all__ = [
    "SCHEMES",
    "DiscoverySource",
    "parse_source",
    "read_endpoint_file",
    "read_sources",
]

SCHEMES = ("dns", "dns+srv", "file")
_HOW = (
    "write it like dns://my-svc.default.svc.cluster.local:8080, dns+srv://_http._tcp.my-svc "
    "or file:///etc/rl-lb/backends.txt"
)


@dataclass(frozen=True)
class DiscoverySource:
    """One `--discover` value, checked."""

    text: str
    kind: str
    """`dns`, `dns+srv` or `file`."""
    name: str = ""
    port: int = 0
    path: str = ""
    scheme: str = "http"
    """The scheme of the backends a DNS source finds."""


def parse_source(text: str, where: str = "--discover") -> DiscoverySource:
    """`dns://NAME:PORT`, `dns+srv://NAME`, `file://PATH` (optionally `https+dns…`), or an error."""
    if not isinstance(text, str) or "://" not in text:
        raise ConfigError(where, f"{text!r} is not a discovery source", _HOW)
    kind, _, rest = text.partition("://")
    scheme = "http"
    if kind.startswith("https+"):
        scheme, kind = "https", kind.removeprefix("https+")
    if kind not in SCHEMES:
        raise ConfigError(where, f"{text!r}: unknown source kind {kind!r}", _HOW)
    if kind == "file":
        if not rest.startswith("/"):
            raise ConfigError(where, f"{text!r}: the file path must be absolute", _HOW)
        if scheme != "http":
            raise ConfigError(where, f"{text!r}: a file lists whole URLs, drop 'https+'", _HOW)
        return DiscoverySource(text, kind, path=rest)
    if kind == "dns":
        name, port = split_address(rest, where)
        _check_name(name, text, where)
        return DiscoverySource(text, kind, name=name, port=port, scheme=scheme)
    if ":" in rest or not rest:
        raise ConfigError(where, f"{text!r}: SRV records carry the port, write no port", _HOW)
    _check_name(rest, text, where)
    return DiscoverySource(text, kind, name=rest, scheme=scheme)


def read_sources(value: Any, where: str) -> tuple[str, ...]:
    """One source or a list of them (a setting's value), each checked, none twice."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(where, f"{value!r} is not a list of discovery sources", _HOW)
    texts = tuple(parse_source(item, where).text for item in items)
    if len(set(texts)) != len(texts):
        raise ConfigError(where, "a source is listed twice", "list each source once")
    return texts


def _check_name(name: str, text: str, where: str) -> None:
    if not all(label and len(label) < 64 for label in name.rstrip(".").split(".")):
        raise ConfigError(where, f"{text!r}: {name!r} is not a DNS name", _HOW)


def read_endpoint_file(path: str) -> tuple[str, ...]:
    """The backend URLs in a file: JSON (a list, or `{"backends": [...]}`) or one URL a line."""
    with open(path, encoding="utf-8") as file:
        text = file.read()
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        data = json.loads(text)
        items = data.get("backends") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ValueError('the JSON must be a list of URLs or {"backends": [...]}')
    else:
        items = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        items = [item for item in items if item]
    return tuple(dict.fromkeys(normalise_backend(item, path) for item in items))
