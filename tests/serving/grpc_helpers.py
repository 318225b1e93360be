"""A grpcio test service (generic handlers, bytes messages: no protoc) for the gRPC tests."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

UNARY = "/test.Echo/Unary"
SERVER_STREAM = "/test.Echo/Count"
CHAT = "/test.Echo/Chat"
SLOW = "/test.Echo/Slow"


class GrpcBackend:
    """A grpcio server (its own threads) answering with its name; `fail` makes it UNAVAILABLE."""

    def __init__(self, name: str, *, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.calls: Counter[str] = Counter()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        )
        self.health = health.HealthServicer()
        """The standard grpc.health.v1 service; `set_serving(False)` turns the checks red."""
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def unary(self, request: bytes, context: Any) -> bytes:
        self.calls["unary"] += 1
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is down")
        return self.name.encode() + b":" + request

    def count(self, request: bytes, context: Any) -> Iterator[bytes]:
        self.calls["count"] += 1
        for i in range(int(request)):
            yield f"{self.name}:{i}".encode()

    def chat(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        self.calls["chat"] += 1
        for message in requests:
            yield self.name.encode() + b":" + message

    def slow(self, request: bytes, context: Any) -> bytes:
        """Answers after `request` seconds (or when the call is cancelled)."""
        self.calls["slow"] += 1
        deadline = time.monotonic() + float(request)
        while time.monotonic() < deadline and context.is_active():
            time.sleep(0.01)
        return b"late"

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse
        self.health.set("", status.SERVING if serving else status.NOT_SERVING)

    def stop(self) -> None:
        self.server.stop(grace=None)


def _bytes(value: bytes) -> bytes:
    return value


def as_bytes(value: bytes) -> bytes:
    return value
