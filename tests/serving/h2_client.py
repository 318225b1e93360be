"""A small HTTP/2 test client (the `h2` library over asyncio streams, h2c prior knowledge)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)


@dataclass
class Answer:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    reset: int | None = None


class H2Client:
    """One HTTP/2 connection; `exchange` sends requests as concurrent streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.writer.write(self.h2.data_to_send())

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext | None = None) -> H2Client:
        """h2c with prior knowledge, or h2 over TLS (`tls` should offer ALPN h2)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        return cls(reader, writer)

    async def exchange(
        self, requests: list[tuple[bytes, bytes, bytes]], timeout: float = 10.0
    ) -> list[Answer]:
        """(method, path, body) each on its own stream, all at once; answers in order."""
        h2 = self.h2
        answers: dict[int, Answer] = {}
        bodies: dict[int, memoryview] = {}
        order: list[int] = []
        for method, path, body in requests:
            sid = h2.get_next_available_stream_id()
            headers = [
                (b":method", method),
                (b":scheme", b"http"),
                (b":authority", b"proxy"),
                (b":path", path),
            ]
            h2.send_headers(sid, headers, end_stream=not body)
            answers[sid] = Answer()
            order.append(sid)
            if body:
                bodies[sid] = memoryview(body)
        done: set[int] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(done) < len(order):
            self._send_bodies(bodies)
            self.writer.write(h2.data_to_send())
            data = await asyncio.wait_for(self.reader.read(65536), deadline - loop.time())
            if not data:
                raise ConnectionError("the proxy closed the connection")
            for event in h2.receive_data(data):
                sid = getattr(event, "stream_id", 0)
                if isinstance(event, ResponseReceived):
                    headers = dict(event.headers or [])
                    answers[sid].status = int(headers[b":status"])
                    answers[sid].headers = headers
                elif isinstance(event, DataReceived):
                    answers[sid].body += event.data or b""
                    h2.acknowledge_received_data(event.flow_controlled_length or 0, sid)
                elif isinstance(event, TrailersReceived):
                    answers[sid].trailers = dict(event.headers or [])
                elif isinstance(event, StreamEnded):
                    done.add(sid)
                elif isinstance(event, StreamReset):
                    answers[sid].reset = int(event.error_code or 0)
                    done.add(sid)
        self.writer.write(h2.data_to_send())
        return [answers[sid] for sid in order]

    def _send_bodies(self, bodies: dict[int, memoryview]) -> None:
        h2 = self.h2
        for sid, rest in list(bodies.items()):
            while rest:
                window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk, rest = rest[:window], rest[window:]
                h2.send_data(sid, bytes(chunk), end_stream=not rest)
            bodies[sid] = rest
            if not rest:
                del bodies[sid]

    async def close(self) -> None:
        self.h2.close_connection()
        self.writer.write(self.h2.data_to_send())
        self.writer.close()
