"""`rl-lb bench live --protocol`: the live benchmark over HTTP/1.1, h2c or gRPC (issue 19).

One place says what each protocol changes in a live run, so `lab.bench` only asks:
- `http1`: today's run (aiohttp load over HTTP/1.1 keep-alive, emulated HTTP/1.1 backends);
- `h2c`: the proxy also serves HTTP/2 (`--http2`) and the load generator speaks h2c with prior
  knowledge (the `h2` library) over a few multiplexed connections; backends stay HTTP/1.1;
- `grpc`: the backends are the scenario's emulated backends served by grpcio
  (`lab.grpc_backends`), the proxy reaches them over h2c and health-checks them with
  grpc.health.v1, and the load is grpcio unary calls over one channel per proxy replica.

The load generators here fill the same arrays as `lab.loadgen.run_schedule` (send lag, latency,
an HTTP-like status and a cause), so the records and tables of a run do not depend on the
protocol. A gRPC call that ends in an error status is recorded as a 503 (`5xx`), one that runs
out of its deadline as a timeout, one that could not connect as a connect failure.

A run is bounded whatever the other side does (a GOAWAY, a peer gone silent, grpcio's own
deadline not coming back): each call by its deadline plus `CALL_SLACK_S`, the run by the last
call's deadline plus `RUN_SLACK_S` (calls still out then are recorded as timeouts), and closing
the connections by `STOP_GRACE_S`. The records are written before the connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import numpy as np

from lab.backends import EmulatedPool
from lab.load_result import _4XX, _5XX, _CONNECT, _IO, _OK, _TIMEOUT
from lab.loadgen import _Run
from rl_lb.errors import ConfigError
from rl_lb.scenarios import Scenario
from rl_lb.types import FloatArray, IntArray

__all__ = [
    "H2_CONNECTIONS",
    "PROTOCOLS",
    "backend_pool",
    "check_protocol",
    "protocol_flags",
    "run_protocol_schedule",
]

PROTOCOLS = ("http1", "h2c", "grpc")
H2_CONNECTIONS = 8
"""h2c connections per proxy replica that the load's streams are spread over (fewest open
streams first); the proxy's `h2-max-concurrent-streams` bounds each one's streams."""
GRPC_UNAVAILABLE_STATUS = 503
"""The HTTP-like status a failed gRPC call is recorded with (it counts as a 5xx)."""
CALL_SLACK_S = 1.0
"""How long past its deadline a call may stay out before the generator gives it up itself."""
RUN_SLACK_S = 5.0
"""How long past the last call's deadline a run waits for the calls still out."""
STOP_GRACE_S = 2.0
"""How long giving up the calls still out, and closing the connections, may take."""


def check_protocol(protocol: str) -> str:
    """`protocol` if it is one of `PROTOCOLS` and its libraries are installed."""
    if protocol not in PROTOCOLS:
        raise ConfigError(
            "--protocol", f"{protocol!r} is not a protocol", f"write one of {', '.join(PROTOCOLS)}"
        )
    if protocol == "grpc":
        _grpc()
    return protocol


def _grpc() -> Any:
    """grpcio, which only the gRPC benchmark needs (a development dependency)."""
    try:
        import grpc
    except ImportError as error:
        raise ConfigError(
            "--protocol grpc", "grpcio is not installed", "pip install grpcio"
        ) from error
    return grpc


def protocol_flags(protocol: str, balancer: str) -> list[str]:
    """The `rl-lb serve` flags a protocol adds to the scenario's."""
    if protocol == "h2c":
        return ["--http2"]
    if protocol == "grpc":
        if balancer.startswith("prequal"):
            raise ConfigError(
                "--protocol grpc",
                f"{balancer} probes backends over HTTP/1.1, which gRPC backends do not answer",
                "benchmark prequal with --protocol http1 or h2c",
            )
        return ["--backend-protocol", "h2c", "--health-protocol", "grpc"]
    return []


def backend_pool(protocol: str, scenario: Scenario, seed: int) -> EmulatedPool:
    """The scenario's emulated backends, served over gRPC for `grpc`, HTTP/1.1 otherwise."""
    if protocol == "grpc":
        from lab.grpc_backends import GrpcEmulatedPool

        return GrpcEmulatedPool(scenario, seed=seed)
    return EmulatedPool(scenario, seed=seed)


class _H2Connection(asyncio.Protocol):
    """One h2c (prior knowledge) client connection: streams are GETs, answered by futures."""

    def __init__(self, authority: str) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.authority = authority.encode()
        self.transport: asyncio.Transport | None = None
        self.answers: dict[int, asyncio.Future[int]] = {}
        self.statuses: dict[int, int] = {}
        self.lost = False
        self.room = asyncio.Event()
        self.room.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport
        self.h2.initiate_connection()
        self._flush()

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())

    @property
    def open_streams(self) -> int:
        return len(self.answers)

    def has_room(self) -> bool:
        return not self.lost and self.open_streams < self.h2.remote_settings.max_concurrent_streams

    def get(self, path: bytes) -> asyncio.Future[int]:
        """Send GET `path`; the future gets the response status once the stream has ended."""
        stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", self.authority),
            (b":path", path),
        ]
        self.h2.send_headers(stream_id, headers, end_stream=True)
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.answers[stream_id] = answer
        if not self.has_room():
            self.room.clear()
        self._flush()
        return answer

    def _settle(self, stream_id: int, error: BaseException | None = None) -> None:
        answer = self.answers.pop(stream_id, None)
        status = self.statuses.pop(stream_id, 0)
        if answer is not None and not answer.done():
            answer.set_exception(error) if error else answer.set_result(status)
        if self.has_room():
            self.room.set()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            self.connection_lost(error)
            return
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(b":status", b"0")
                self.statuses[event.stream_id] = int(status)
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._settle(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self._settle(event.stream_id, ConnectionResetError("stream reset"))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.connection_lost(ConnectionResetError("GOAWAY"))
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for stream_id in list(self.answers):
            self._settle(stream_id, exc or ConnectionResetError("connection closed"))
        self.room.set()
        if self.transport is not None:
            self.transport.close()


class _H2Client:
    """`H2_CONNECTIONS` h2c connections to one proxy, opened on demand, reopened when lost."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = (parts.path or "/").encode()
        self.connections: list[_H2Connection] = []
        self._lock = asyncio.Lock()

    async def _connection(self) -> _H2Connection:
        async with self._lock:
            self.connections = [c for c in self.connections if not c.lost]
            while True:
                roomy = [c for c in self.connections if c.has_room()]
                if roomy:
                    return min(roomy, key=lambda c: c.open_streams)
                if len(self.connections) < H2_CONNECTIONS:
                    loop = asyncio.get_running_loop()
                    _, made = await loop.create_connection(
                        self._protocol_factory, self.host, self.port
                    )
                    self.connections.append(made)
                    return made
                waits = [asyncio.ensure_future(c.room.wait()) for c in self.connections]
                _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for wait in pending:
                    wait.cancel()
                self.connections = [c for c in self.connections if not c.lost]

    def _protocol_factory(self) -> _H2Connection:
        return _H2Connection(f"{self.host}:{self.port}")

    async def get(self) -> int:
        connection = await self._connection()
        return await connection.get(self.path)

    def close(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()


class _ProtocolRun(_Run):
    """`lab.loadgen`'s open-loop dispatcher, with each request sent by `_send`."""

    def __init__(
        self,
        urls: Sequence[str],
        targets: IntArray,
        schedule: FloatArray,
        protocol: str,
        timeout: float,
    ) -> None:
        n = len(schedule)
        self.urls, self.targets, self.schedule = urls, targets, schedule
        self.latency = np.full(n, math.nan)
        self.lag = np.zeros(n)
        self.status = np.zeros(n, dtype=np.int16)
        self.cause = np.zeros(n, dtype=np.int8)
        self.pending: set[asyncio.Task[None]] = set()
        self.protocol, self.timeout = protocol, timeout
        self.h2_clients = [_H2Client(url) for url in urls] if protocol == "h2c" else []
        self.channels: list[Any] = []
        self.calls: list[Any] = []
        if protocol == "grpc":
            from lab.grpc_backends import CALL

            grpc = _grpc()
            for url in urls:
                parts = urlsplit(url)
                channel = grpc.aio.insecure_channel(f"{parts.hostname}:{parts.port}")
                self.channels.append(channel)
                self.calls.append(channel.unary_unary(CALL))

    async def _one(self, j: int, intended: float) -> None:
        status, cause = 0, _OK
        target = int(self.targets[j])
        try:
            if self.protocol == "grpc":
                grpc = _grpc()
                try:
                    async with asyncio.timeout(self.timeout + CALL_SLACK_S):
                        await self.calls[target](b"", timeout=self.timeout)
                    status = 200
                except grpc.aio.AioRpcError as error:
                    status, cause = _grpc_outcome(error.code())
            else:
                async with asyncio.timeout(self.timeout):
                    status = await self.h2_clients[target].get()
                cause = _5XX if status >= 500 else _4XX if status >= 400 else _OK
        except TimeoutError:
            cause = _TIMEOUT
        except ConnectionRefusedError:
            cause = _CONNECT
        except (OSError, h2.exceptions.H2Error):  # a refused stream, a closed connection
            cause = _IO
        self.latency[j] = time.monotonic() - intended
        self.status[j] = status
        self.cause[j] = cause

    async def finish(self, start: float, give_up_at: float) -> None:
        """Wait for the calls still out until `give_up_at` (monotonic); those still out then are
        cancelled and recorded as timeouts, their latency running from their intended send time
        (`start` + schedule) to the moment given up."""
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=max(give_up_at - time.monotonic(), 0))
        await self.cancel()
        unanswered = np.isnan(self.latency)
        self.latency[unanswered] = time.monotonic() - (start + self.schedule[unanswered])
        self.cause[unanswered] = _TIMEOUT

    async def cancel(self) -> None:
        """Cancel the calls still out, waiting `STOP_GRACE_S` at most for them to go."""
        for task in self.pending:
            task.cancel()
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=STOP_GRACE_S)

    async def close(self) -> None:
        """Close the connections (grpcio cancels what is still on them), `STOP_GRACE_S` at most."""
        for client in self.h2_clients:
            client.close()
        closing = [asyncio.ensure_future(channel.close()) for channel in self.channels]
        if closing:
            _, late = await asyncio.wait(closing, timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()


def _grpc_outcome(code: Any) -> tuple[int, int]:
    """(status, cause) of a gRPC call that ended in `code`."""
    if code == _grpc().StatusCode.DEADLINE_EXCEEDED:
        return 0, _TIMEOUT
    return GRPC_UNAVAILABLE_STATUS, _5XX


async def run_protocol_schedule(
    protocol: str,
    urls: Sequence[str],
    schedule: FloatArray,
    targets: IntArray | None,
    start_at: float,
    timeout: float,
    out: Path,
) -> None:
    """Run `schedule` over h2c or gRPC; save the arrays `lab.bench_load` saves to `out`."""
    if targets is None:
        targets = np.zeros(len(schedule), dtype=np.int64)
    run = _ProtocolRun(urls, targets, schedule, protocol, timeout)
    last_due = float(schedule[-1]) if len(schedule) else 0.0
    try:
        last = await run.dispatch(start_at)
        await run.finish(start_at, start_at + last_due + timeout + CALL_SLACK_S + RUN_SLACK_S)
        np.savez(
            out,
            sent_s=schedule,
            latency_s=run.latency,
            lag_s=run.lag,
            status=run.status,
            cause=run.cause,
            meta=np.array([start_at, last - start_at]),
        )
    finally:
        await run.cancel()
        with contextlib.suppress(Exception):
            await run.close()
