"""What the proxy reads of gRPC on an HTTP/2 stream: the call's deadline, its status, its messages.

Only headers and the 5-byte length prefix of each message (gRPC's own framing inside DATA, not
an HTTP/2 frame) are looked at; message contents are never decoded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from serving.grpc_settings import GRPC_CODES

__all__ = ["MessageCounter", "grpc_status", "is_grpc", "proxy_status", "read_grpc_timeout"]

_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def is_grpc(content_type: bytes | None) -> bool:
    """`application/grpc`, `application/grpc+proto`, `application/grpc-web`… (any case)."""
    return content_type is not None and content_type[:16].lower() == b"application/grpc"


def read_grpc_timeout(value: bytes | None) -> float:
    """`grpc-timeout` (`100m`, `5S`, up to 8 digits and a unit) in seconds; inf when absent or
    malformed (the gRPC spec has a malformed timeout ignored rather than the call refused)."""
    if not value or len(value) > 9 or not value[:-1].isdigit():
        return math.inf
    scale = _UNITS.get(value[-1:])
    return int(value[:-1]) * scale if scale is not None else math.inf


def grpc_status(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The `grpc-status` among trailers (or a trailers-only response head); None if absent."""
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() else GRPC_CODES["UNKNOWN"]
    return None


def proxy_status(code: str, message: str) -> list[tuple[bytes, bytes]]:
    """A trailers-only gRPC answer made by the proxy: HTTP 200 with the status in the head."""
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(GRPC_CODES[code]).encode()),
        (b"grpc-message", _percent_encode(message)),
    ]


def _percent_encode(text: str) -> bytes:
    """grpc-message is percent-encoded outside printable ASCII (and `%` itself)."""
    out = bytearray()
    for byte in text.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


class MessageCounter:
    """Counts the length-prefixed gRPC messages in a byte stream fed in arbitrary pieces."""

    __slots__ = ("count", "header", "remaining")

    def __init__(self) -> None:
        self.count = 0
        self.remaining = 0
        """Bytes of the current message's body still to come."""
        self.header = b""
        """The part of a 5-byte prefix seen so far."""

    def feed(self, data: bytes) -> int:
        """Take the next bytes; returns the number of messages begun so far."""
        view = memoryview(data)
        while view:
            if self.remaining:
                step = min(self.remaining, len(view))
                self.remaining -= step
                view = view[step:]
                continue
            need = 5 - len(self.header)
            self.header += bytes(view[:need])
            view = view[need:]
            if len(self.header) == 5:
                self.count += 1
                self.remaining = int.from_bytes(self.header[1:5], "big")
                self.header = b""
        return self.count
