"""The gRPC load generator (`lab.bench_protocols`) ends its run when the server sends GOAWAY.

A proxy that closes a connection with GOAWAY ENHANCE_YOUR_CALM mid-run once left the load
generator hanging until it was stopped. The server here is the `h2` library answering gRPC
calls (an empty OK message) until it has served `SERVED` calls on a connection, then sends GOAWAY
ENHANCE_YOUR_CALM: either it closes the connection (what rl-lb does; new connections are served
again) or it keeps it, and every later connection, open and silent. Either way the run ends by
itself, every call has its record, and the generator's connections are closed when it returns.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, StreamEnded

from lab.bench_protocols import run_protocol_schedule
from lab.load_result import CAUSES

SERVED = 40
RATE = 100.0
CALLS = 150
TIMEOUT_S = 0.5
HANG_GUARD_S = 60.0
"""Far past the run's own bound (1.5 s of calls + their deadline + slack): only a hang hits it."""


class GoawayServer(asyncio.Protocol):
    """One connection of the fake gRPC server; `silent`: after the GOAWAY, nothing more.
    `state` counts across connections: `open` (those greeted with the server's preface: grpcio
    gives up a connection that never was only at its own connect timeout), `answered`,
    `goaways`."""

    def __init__(self, silent: bool, state: Counter[str], made: list[GoawayServer]) -> None:
        self.silent = silent
        self.state = state
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.served = 0
        self.gone_away = False
        self.greeted = False
        """The server's preface was sent (the silent server sends none after its GOAWAY)."""
        made.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.silent and self.state["goaways"]:
            self.gone_away = True  # the server has gone quiet: not even a preface
            return
        self.greeted = True
        self.state["open"] += 1
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.greeted:
            self.state["open"] -= 1

    def data_received(self, data: bytes) -> None:
        if self.gone_away or self.transport is None:
            return
        for event in self.h2.receive_data(data):
            if isinstance(event, DataReceived) and event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded) and event.stream_id:
                if self.served == SERVED:
                    self._goaway()
                    return
                self._answer(event.stream_id)
        self.transport.write(self.h2.data_to_send())

    def _answer(self, stream_id: int) -> None:
        self.served += 1
        self.state["answered"] += 1
        head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
        self.h2.send_headers(stream_id, head)
        self.h2.send_data(stream_id, b"\x00\x00\x00\x00\x00")  # one empty message
        self.h2.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)

    def _goaway(self) -> None:
        assert self.transport is not None
        self.gone_away = True
        self.state["goaways"] += 1
        self.h2.close_connection(error_code=ErrorCodes.ENHANCE_YOUR_CALM)
        self.transport.write(self.h2.data_to_send())
        if not self.silent:
            self.transport.close()


@pytest.mark.parametrize("silent", [False, True], ids=["closed", "silent"])
async def test_a_goaway_mid_run_ends_the_run(tmp_path: Path, silent: bool) -> None:
    loop = asyncio.get_running_loop()
    state: Counter[str] = Counter()
    made: list[GoawayServer] = []
    server = await loop.create_server(lambda: GoawayServer(silent, state, made), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = tmp_path / "load.npz"
    schedule = np.arange(CALLS) / RATE
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            start = time.monotonic() + 0.1
            url = f"http://127.0.0.1:{port}/"
            await run_protocol_schedule("grpc", [url], schedule, None, start, TIMEOUT_S, out)
        with np.load(out) as load:
            causes = Counter(CAUSES[c] for c in load["cause"])
            latency = load["latency_s"]
        assert state["goaways"] >= 1
        assert np.all(np.isfinite(latency))  # every call has its record
        assert sum(causes.values()) == CALLS
        assert causes["ok"] == state["answered"]
        if silent:  # the first connection's calls, then deadlines
            assert causes["ok"] == SERVED
            assert causes["timeout"] > 0
            assert set(causes) <= {"ok", "timeout", "5xx"}
        else:  # each new connection serves again: most calls succeed
            assert causes["ok"] > CALLS // 2
            assert set(causes) <= {"ok", "5xx", "timeout"}
        await _eventually(lambda: state["open"] == 0)  # the generator closed its connections
    finally:
        server.close()
        for connection in made:  # the one grpcio is still connecting (silent) is ours to close
            if connection.transport is not None:
                connection.transport.close()
        await server.wait_closed()


async def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
