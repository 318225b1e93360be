"""HTTP/1.1 messages as the proxy sees them: parsed request heads, the heads it writes.

Header names and values stay bytes end to end (no decoding, no header dictionary): a request
head is rewritten in one pass over the list llhttp produced, which is both the cheapest way and
the one that forwards obs-text and odd spellings exactly as received.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Protocol
from urllib.parse import urlsplit

__all__ = [
    "HOP_BY_HOP",
    "NOT_FORWARDED",
    "Request",
    "Sink",
    "error_response",
    "origin_form",
    "request_head",
    "response_head",
]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"trailer",
    }
)
"""RFC 9110 §7.6.1: meaningful for one connection only, never forwarded (lower-case)."""
NOT_FORWARDED = HOP_BY_HOP | {
    b"expect",
    b"via",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
"""Also rewritten by the proxy itself (Expect: 100-continue is answered here)."""
Headers = list[tuple[bytes, bytes, bytes]]
"""(lower-case name, name, value) as received."""


class Sink(Protocol):
    """Where a request's body and fate go (implemented by `serving.exchange.Exchange`)."""

    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...
    def on_request_error(self, message: str) -> None: ...
    def on_client_paused(self, paused: bool) -> None: ...


class Request:
    """A parsed request head; the body is delivered to `sink` once `attached`."""

    __slots__ = (
        "attached",
        "buffered",
        "chunked",
        "complete",
        "connection",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "length",
        "method",
        "received_at",
        "sink",
        "status",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self, method: bytes, target: bytes, version: str, headers: Headers) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = True
        self.chunked = False
        self.length: int | None = None
        self.expect_continue = False
        self.host: bytes | None = None
        self.connection: frozenset[bytes] = frozenset()
        """Header names the Connection header lists (hop-by-hop for this hop only)."""
        self.complete = False
        self.buffered: list[bytes] = []
        self.sink: Sink | None = None
        self.attached = False
        self.upgrade: bytes | None = None
        """The Upgrade header's value when Connection lists upgrade (WebSocket...)."""
        self.received_at = 0.0
        """Loop time of the complete head: the client's exchange starts here."""
        self.status = 0
        """The status the client gets (0 until a response head leaves; 0 at the end: broken)."""

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


def error_response(
    status: int,
    reason: str,
    message: str,
    backend: str | None = None,
    *,
    close: bool = False,
    extra: dict[str, str] | None = None,
) -> bytes:
    """A complete response the proxy makes itself: JSON body, reason in X-RL-LB-Error."""
    body = json.dumps({"error": message, "status": status, "backend": backend}).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"X-RL-LB-Error: {reason}",
        *(f"{k}: {v}" for k, v in (extra or {}).items()),
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def request_head(
    request: Request,
    prefix: bytes,
    netloc: bytes,
    peer: str,
    preserve_host: bool,
    proto: bytes = b"http",
) -> bytes:
    """The request head for a backend (path `prefix`, Host `netloc`): hop-by-hop headers out,
    forwarding headers in (`proto`: the client's scheme); the request's Upgrade, when it is
    set (the forwarder keeps only allowed ones: see `serving.tunnel`), is asked of it too."""
    drop = NOT_FORWARDED | request.connection if request.connection else NOT_FORWARDED
    if not preserve_host:
        drop = drop | {b"host"}
    out = [request.method, b" ", prefix, request.target, b" HTTP/1.1\r\n"]
    forwarded_for: list[bytes] = []
    via: list[bytes] = []
    for lower, name, value in request.headers:
        if lower in drop:
            if lower == b"x-forwarded-for":
                forwarded_for.append(value)
            elif lower == b"via":
                via.append(value)
            continue
        out += (name, b": ", value, b"\r\n")
    if request.host is None or not preserve_host:
        out += (b"Host: ", netloc, b"\r\n")
    forwarded_for.append(peer.encode())
    via.append(request.version.encode() + b" rl-lb")
    out += (b"X-Forwarded-For: ", b", ".join(forwarded_for), b"\r\nX-Forwarded-Proto: ")
    out += (proto, b"\r\n")
    if request.host is not None:
        out += (b"X-Forwarded-Host: ", request.host, b"\r\n")
    out += (b"Via: ", b", ".join(via), b"\r\n")
    if request.chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if request.upgrade is not None:
        out += (b"Connection: Upgrade\r\nUpgrade: ", request.upgrade, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def response_head(
    status: int, reason: bytes, headers: list[tuple[bytes, bytes]], version: str
) -> tuple[list[bytes], bool]:
    """The client's response head (without its final CRLF) and whether it has a length."""
    lowered = [(name.lower(), name, value) for name, value in headers]
    drop = HOP_BY_HOP
    for lower, _, value in lowered:
        if lower == b"connection":
            drop = drop | {t.strip().lower() for t in value.split(b",")}
    out = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    via: list[bytes] = []
    length = False
    for lower, name, value in lowered:
        if lower in drop:
            continue
        if lower == b"via":
            via.append(value)
            continue
        if lower == b"content-length":
            length = True
        out += (name, b": ", value, b"\r\n")
    via.append(version.encode() + b" rl-lb")
    out += (b"Via: ", b", ".join(via), b"\r\n")
    return out, length


def origin_form(target: bytes, sockname: tuple[str, int] | None) -> bytes | None:
    """The origin-form of an absolute-form target naming this very socket; None otherwise.

    The Host header cannot decide it (the client writes both), so the target must name the
    address and port the connection arrived on.
    """
    try:
        url = urlsplit(target.decode("latin-1"))
        port = url.port
    except ValueError:
        return None
    if url.scheme != "http" or not sockname or port != sockname[1]:
        return None
    if url.hostname not in (sockname[0], "localhost"):
        return None
    path = url.path or "/"
    return (path + (f"?{url.query}" if url.query else "")).encode("latin-1")
