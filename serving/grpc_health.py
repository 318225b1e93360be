"""Active health checks of gRPC backends: the standard `grpc.health.v1.Health/Check`.

A gRPC backend speaks HTTP/2 only, so the HTTP/1.1 `GET /health` check cannot reach it; with
`health-protocol = grpc` each check is one `Check` call (service "": the whole server) on an h2c
connection of its own per backend (kept between checks, apart from the request path's
connections so that a check never waits behind traffic), and passes when the answer is SERVING.

The two messages are tiny protobufs written and read here directly: the request is the empty
`HealthCheckRequest`, the answer's field 1 (`status`, a varint) is all that is read.
"""

from __future__ import annotations

import asyncio
import ssl

from serving.grpc_call import grpc_status
from serving.grpc_settings import GRPC_CODES
from serving.h2_upstream import H2UpstreamPool, Headers, StreamHandle

__all__ = ["GrpcHealth"]

CHECK_PATH = b"/grpc.health.v1.Health/Check"
_EMPTY_REQUEST = b"\x00\x00\x00\x00\x00"
"""One uncompressed gRPC message of 0 bytes: `HealthCheckRequest{service: ""}`."""
_SERVING = 1
_CODE_NAMES = {number: name for name, number in GRPC_CODES.items()}


class _Check:
    """One Check call: a `StreamListener` that settles `result` with a failure or None."""

    def __init__(self, result: asyncio.Future[str | None]) -> None:
        self.result = result
        self.stream: StreamHandle | None = None
        self.status = 0
        self.body = b""
        self.trailers: Headers = []

    def _settle(self, failure: str | None) -> None:
        if not self.result.done():
            self.result.set_result(failure)

    def on_stream_open(self, stream: StreamHandle) -> None:
        self.stream = stream
        stream.send(_EMPTY_REQUEST, True)

    def on_connect_failed(self, reason: str, message: str) -> None:
        self._settle(f"{reason}: {message}")

    def on_response(self, status: int, headers: Headers, end: bool) -> None:
        self.status = status
        if end:
            self.trailers = headers
            self.on_response_end()

    def on_response_data(self, data: bytes, flow: int) -> None:
        if len(self.body) < 64:  # a HealthCheckResponse is a few bytes
            self.body += data
        if self.stream is not None:
            self.stream.ack(flow)

    def on_trailers(self, headers: Headers) -> None:
        self.trailers = headers

    def on_response_end(self) -> None:
        code = grpc_status(self.trailers)
        if self.status != 200:
            self._settle(f"HTTP status {self.status}")
        elif code != 0:
            name = _CODE_NAMES.get(code or 0, str(code))
            hint = " (no grpc.health.v1 service)" if name == "UNIMPLEMENTED" else ""
            self._settle(f"gRPC status {name}{hint}")
        else:
            status = _status_field(self.body[5:])
            self._settle(None if status == _SERVING else f"health status {status} (not SERVING)")

    def on_body_sent(self, size: int) -> None:
        pass

    def on_upstream_error(self, reason: str, message: str, refused: bool) -> None:
        self._settle(f"{reason}: {message}")


def _status_field(message: bytes) -> int:
    """Field 1 (varint) of a protobuf message; 0 (UNKNOWN) when absent."""
    if len(message) >= 2 and message[0] == 0x08 and message[1] < 0x80:
        return message[1]
    return 0


class GrpcHealth:
    """The health-check connections to each backend."""

    def __init__(self, connect_timeout: float, tls: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.pools: dict[str, H2UpstreamPool] = {}

    async def check(self, url: str, timeout: float) -> str | None:
        """One Check call to the backend at `url`: None when SERVING, else why not."""
        pool = self.pools.get(url)
        if pool is None:
            pool = self.pools[url] = H2UpstreamPool(
                url,
                connections=1,
                connect_timeout=self.connect_timeout,
                read_timeout=timeout,
                tls=self.tls,
            )
        result: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        call = _Check(result)
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", pool.authority),
            (b":path", pool.prefix + CHECK_PATH),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"%dm" % max(1, int(timeout * 1000))),
        ]
        pool.open(call, headers, False)
        try:
            return await asyncio.wait_for(result, timeout)
        except TimeoutError:
            if call.stream is not None:
                call.stream.reset()
            pool.cancel(call)
            return f"no answer within {timeout:g} s"

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.pools.values()))
        self.pools.clear()
