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
BLOBS = "/test.Echo/Blobs"


def call_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The request headers of a gRPC call to `path`, as a raw h2 client sends them."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"proxy"),
        (b":path", path.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]


class GrpcBackend:
    """A grpcio server (its own threads) answering with its name; `fail` makes it UNAVAILABLE,
    `tls` (a trustme leaf certificate) makes it serve h2 over TLS."""

    def __init__(self, name: str, *, fail: bool = False, tls: Any = None) -> None:
        self.name = name
        self.scheme = "https" if tls is not None else "http"
        self.fail = fail
        self.calls: Counter[str] = Counter()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Blobs": grpc.unary_stream_rpc_method_handler(self.blobs),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        )
        self.health = health.HealthServicer()
        """The standard grpc.health.v1 service; `set_serving(False)` turns the checks red."""
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            chain = b"".join(blob.bytes() for blob in tls.cert_chain_pems)
            credentials = grpc.ssl_server_credentials([(tls.private_key_pem.bytes(), chain)])
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

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

    def blobs(self, request: bytes, context: Any) -> Iterator[bytes]:
        """`request` messages of 64 KiB each (`sent` counts those handed to grpcio)."""
        for _ in range(int(request)):
            self.calls["blobs-sent"] += 1
            yield b"b" * 65536

    def stop(self) -> None:
        self.server.stop(grace=None)


def _bytes(value: bytes) -> bytes:
    return value


def as_bytes(value: bytes) -> bytes:
    return value
