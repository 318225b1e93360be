"""Upgraded connections (WebSocket and any Upgrade the user allows): bytes spliced both ways.

After the backend's `101 Switching Protocols` the proxy no longer speaks HTTP on either
connection: both transports get a `_Side` protocol that writes what it reads to the other one,
with flow control (a full write buffer on one side pauses reading on the other), a half-close
passed on where the transport can (cleartext TCP), and a close of either side closing both.

A tunnel is not a request: it left the balancer's in-flight count when the 101 arrived (the
time to the 101 was its latency sample), and it is counted per backend in `UpstreamPool.tunnels`
(`rl_lb_backend_tunnels` in /metrics). Idle and maximum durations are checked by `Tunnels.sweep`,
which the proxy's periodic sweep calls, not by a timer per tunnel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rl_lb.errors import ConfigError

if TYPE_CHECKING:
    from serving.http_connection import ClientConnection
    from serving.upstream import UpstreamConnection

__all__ = ["Tunnel", "Tunnels", "open_tunnel", "read_upgrades", "upgrade_headers"]

log = logging.getLogger("rl_lb.serving.tunnel")


def read_upgrades(value: Any, where: str) -> tuple[str, ...]:
    """Upgrade protocol names (one or a list; case does not matter): `websocket`, `h2c`…"""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(where, f"{value!r} is not a list of protocol names")
    names: list[str] = []
    for item in items:
        name = item.strip().lower() if isinstance(item, str) else ""
        if not name or not all(c.isalnum() or c in "-._/" for c in name):
            raise ConfigError(
                where, f"{item!r} is not an Upgrade protocol name", "write it like websocket"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


class Tunnels:
    """The open tunnels of one proxy worker, with their limits."""

    def __init__(self, idle_timeout: float, max_duration: float) -> None:
        self.idle_timeout = idle_timeout
        self.max_duration = max_duration
        self.open: set[Tunnel] = set()
        self.opened = 0
        """Tunnels opened so far."""

    def sweep(self, now: float) -> None:
        """Close the tunnels idle too long, or open longer than the maximum duration."""
        idle, longest = self.idle_timeout, self.max_duration
        for tunnel in [t for t in self.open if now - t.active > idle]:
            tunnel.close("idle")
        if longest:
            for tunnel in [t for t in self.open if now - t.started > longest]:
                tunnel.close("max-duration")

    def close_all(self) -> None:
        for tunnel in list(self.open):
            tunnel.close("shutdown")


class Tunnel:
    """One client connection spliced to one backend connection."""

    def __init__(
        self,
        tunnels: Tunnels,
        client: asyncio.Transport,
        backend: asyncio.Transport,
        on_close: Callable[[], None],
    ) -> None:
        self.tunnels = tunnels
        self.loop = asyncio.get_running_loop()
        self.started = self.active = self.loop.time()
        self.on_close = on_close
        """Called once when the tunnel is over (the backend's tunnel count comes down)."""
        self.closed = False
        self.client = _Side(self, client)
        self.backend = _Side(self, backend)
        self.client.peer, self.backend.peer = self.backend, self.client
        tunnels.open.add(self)
        tunnels.opened += 1

    def start(self, to_client: bytes, to_backend: bytes, client_paused: bool) -> None:
        """Switch both transports over; the bytes each side sent after the HTTP heads go on."""
        for side in (self.client, self.backend):
            side.transport.set_protocol(side)
        if to_client:
            self.client.transport.write(to_client)
        if to_backend:
            self.backend.transport.write(to_backend)
        if client_paused:
            self.client.pause_writing()
        for side in (self.client, self.backend):
            if side.transport.is_closing():
                self.close("closed")
                return
            if not side.peer_paused:
                side.resume_reading()

    def close(self, why: str) -> None:
        """Close both connections (what is buffered for writing still goes out)."""
        if self.closed:
            return
        self.closed = True
        self.tunnels.open.discard(self)
        log.debug("tunnel closed: %s", why)
        for side in (self.client, self.backend):
            side.transport.close()
        self.on_close()


class _Side(asyncio.Protocol):
    """One end of a tunnel: what it reads is written to `peer`."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: _Side = self
        self.peer_paused = False
        """The peer's write buffer is full: this side is not read from."""
        self.eof = False

    def resume_reading(self) -> None:
        transport = self.transport
        if not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.tunnel.active = self.tunnel.loop.time()
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        """Pass the half-close on where the other transport can (not TLS): close otherwise."""
        self.eof = True
        peer = self.peer.transport
        if self.peer.eof or not peer.can_write_eof():
            self.tunnel.close("eof")
            return False
        peer.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close("connection lost")

    def pause_writing(self) -> None:
        peer = self.peer
        peer.peer_paused = True
        if not peer.transport.is_closing() and peer.transport.is_reading():
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.peer_paused = False
        self.peer.resume_reading()


def upgrade_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The end of a 101 head for the client: the backend's Upgrade, which `response_head`
    drops with the other hop-by-hop headers, and the Connection header naming it."""
    upgrade = next((v for n, v in headers if n.lower() == b"upgrade"), None)
    if upgrade is None:
        return b"Connection: Upgrade\r\n\r\n"
    return b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n\r\n"


def open_tunnel(
    tunnels: Tunnels, conn: ClientConnection, up: UpstreamConnection, to_client: bytes
) -> None:
    """Take both connections out of HTTP and splice them (`to_client`: the 101 head and the
    backend's first bytes; the client's first bytes wait in `conn.upgraded`)."""
    pool = up.pool
    client_paused = conn.write_paused
    to_backend = conn.upgraded
    backend = pool.hand_over(up)
    client = conn.hand_over()

    def closed() -> None:
        pool.tunnel_closed()
        conn.tunnel_closed()

    if backend is None or client is None:
        for transport in (backend, client):
            if transport is not None:
                transport.close()
        if backend is not None:
            pool.tunnel_closed()
        conn.tunnel_closed()
        return
    tunnel = Tunnel(tunnels, client, backend, closed)
    tunnel.start(to_client, to_backend, client_paused)
