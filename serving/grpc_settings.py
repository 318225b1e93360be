"""What the HTTP/2 and gRPC settings accept: the backend protocol and the gRPC status codes.

Kept apart from serving/h2_server.py and serving/h2_upstream.py because serving/config.py reads
these when `rl-lb` builds its commands, and that must not import the `h2` library.
"""

from __future__ import annotations

from typing import Any

from rl_lb.errors import ConfigError

__all__ = [
    "BACKEND_PROTOCOLS",
    "DEFAULT_ERROR_CODES",
    "GRPC_CODES",
    "HEALTH_PROTOCOLS",
    "read_backend_protocol",
    "read_grpc_codes",
    "read_health_protocol",
]

BACKEND_PROTOCOLS = ("http1", "h2c")
"""How HTTP/2 client streams reach the backends: HTTP/1.1 requests, or h2c streams."""
HEALTH_PROTOCOLS = ("http", "grpc")
"""The active health check: `GET health-path` over HTTP/1.1, or grpc.health.v1.Health/Check."""
GRPC_CODES: dict[str, int] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
"""The gRPC status codes by name (grpc/doc/statuscodes.md)."""
DEFAULT_ERROR_CODES = (
    "UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
    "DEADLINE_EXCEEDED",
    "UNKNOWN",
)
"""gRPC statuses that count against a backend like an HTTP 5xx (the others are the caller's)."""


def read_backend_protocol(value: Any, where: str) -> str:
    """`http1` or `h2c`."""
    name = value.strip().lower() if isinstance(value, str) else value
    if name not in BACKEND_PROTOCOLS:
        raise ConfigError(
            where,
            f"{value!r} is not a backend protocol",
            f"write one of {', '.join(BACKEND_PROTOCOLS)}",
        )
    return str(name)


def read_health_protocol(value: Any, where: str) -> str:
    """`http` or `grpc`."""
    name = value.strip().lower() if isinstance(value, str) else value
    if name not in HEALTH_PROTOCOLS:
        choices = ", ".join(HEALTH_PROTOCOLS)
        raise ConfigError(where, f"{value!r} is not a health-check protocol", f"write {choices}")
    return str(name)


def read_grpc_codes(value: Any, where: str) -> tuple[str, ...]:
    """gRPC status names (one or a list, any case) or their numbers → upper-case names."""
    items = [value] if isinstance(value, str | int) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(where, f"{value!r} is not a list of gRPC status names")
    by_number = {number: name for name, number in GRPC_CODES.items()}
    names: list[str] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item in by_number:
            name = by_number[item]
        elif isinstance(item, str) and item.strip().upper() in GRPC_CODES:
            name = item.strip().upper()
        elif isinstance(item, str) and item.strip().isdigit() and int(item) in by_number:
            name = by_number[int(item)]
        else:
            raise ConfigError(
                where, f"{item!r} is not a gRPC status", "write a name like UNAVAILABLE or 14"
            )
        if name == "OK":
            raise ConfigError(where, "OK cannot count as an error", "drop it from the list")
        if name not in names:
            names.append(name)
    return tuple(names)
