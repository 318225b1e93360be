"""Emulated gRPC backends: a scenario's `[[backends]]` served by grpcio, for `--protocol grpc`.

Each backend is an `EmulatedBackend` (same seeded service times, FIFO slots, queue limit, events,
pauses) whose listener is a `grpc.aio` server instead of aiohttp's: the unary method `CALL`
answers after the emulated service time, and what the HTTP/1.1 backend would answer with a 503
(an injected error, a full queue) becomes the gRPC status `UNAVAILABLE`, which the proxy counts
against the backend like a 503. The timing model is not copied: each call runs the inherited
aiohttp handler on a stand-in request, so both protocols follow one model. Down windows stop the
gRPC server (its connections are closed) and start a new one on the same port. The standard
`grpc.health.v1.Health/Check` answers SERVING, for the proxy's `health-protocol grpc`.
"""

from __future__ import annotations

from typing import Any, cast

import grpc
from aiohttp import web

from lab.backends import HOST, EmulatedBackend, EmulatedPool
from rl_lb.errors import ConfigError
from rl_lb.scenarios import Scenario

__all__ = ["CALL", "GrpcEmulatedBackend", "GrpcEmulatedPool"]

SERVICE = "rllb.bench.Emulated"
CALL = f"/{SERVICE}/Call"
"""The unary method the load generator calls (bytes in, the backend's name out)."""
SERVING = b"\x08\x01"
"""`HealthCheckResponse{status: SERVING}` on the wire (field 1, varint 1): no protoc needed."""


def _identity(message: bytes) -> bytes:
    return message


class _CallRequest:
    """What `EmulatedBackend._handle` reads of a request: a path, a method and a body."""

    path = "/"
    method = "POST"

    async def read(self) -> bytes:
        return b""


_STAND_IN = cast(web.BaseRequest, _CallRequest())


class GrpcEmulatedBackend(EmulatedBackend):
    """An `EmulatedBackend` listening with grpcio; `adopt` turns a built one into this class."""

    _grpc: Any = None  # grpc.aio.Server (grpcio ships no type hints)

    @classmethod
    def adopt(cls, backend: EmulatedBackend) -> GrpcEmulatedBackend:
        """The same backend (its seeded generators, port, shared clock), served over gRPC."""
        backend.__class__ = cls
        return cast(GrpcEmulatedBackend, backend)

    @property
    def up(self) -> bool:
        return self._grpc is not None

    async def _call(self, request: bytes, context: Any) -> bytes:
        response = cast(web.Response, await self._handle(_STAND_IN))
        if response.status != 200:
            await context.abort(grpc.StatusCode.UNAVAILABLE, response.text or "unavailable")
        return bytes(cast(bytes, response.body))

    async def _check(self, request: bytes, context: Any) -> bytes:
        return SERVING

    async def open(self) -> None:
        """Serve (again) on this backend's port; the first call fixes an ephemeral port."""
        server = grpc.aio.server()
        call = grpc.unary_unary_rpc_method_handler(
            self._call, request_deserializer=_identity, response_serializer=_identity
        )
        check = grpc.unary_unary_rpc_method_handler(
            self._check, request_deserializer=_identity, response_serializer=_identity
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(SERVICE, {"Call": call}),
                grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": check}),
            )
        )
        try:
            port = server.add_insecure_port(f"{HOST}:{self.port}")
        except RuntimeError as error:
            port = 0
            reason = str(error)
        else:
            reason = "the port is taken"
        if not port:
            raise ConfigError(
                f"port {self.port}",
                f"cannot listen for gRPC backend {self.name}: {reason}",
                "free the port",
            )
        await server.start()
        self.port = port
        self._grpc = server

    async def close(self) -> None:
        """Stop serving: calls under way are cancelled, connections closed, connects refused."""
        server, self._grpc = self._grpc, None
        if server is not None:
            await server.stop(None)

    async def shutdown(self) -> None:
        await self.close()


class GrpcEmulatedPool(EmulatedPool):
    """`EmulatedPool` whose backends speak gRPC (URLs stay `http://…`: h2c to the proxy)."""

    def __init__(self, scenario: Scenario, *, seed: int = 0, time_scale: float = 1.0) -> None:
        super().__init__(scenario, seed=seed, time_scale=time_scale)
        self.backends = tuple(GrpcEmulatedBackend.adopt(b) for b in self.backends)
