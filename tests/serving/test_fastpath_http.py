"""The fast path's HTTP/1.1 handling over raw sockets: framing, pipelining, limits, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from serving_helpers import proxy_config

from serving.app import ProxyServer
from serving.config import ProxyConfig

SCRIPT: dict[bytes, bytes] = {
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"/eof": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    b"/hints": (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ),
    b"/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
    b"/early": b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope",
    b"/slow": b"",
    b"/": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
}
"""Target → the backend's raw answer, sent as soon as the request head arrives (/slow: none,
it waits for a body)."""


class ScriptedBackend(asyncio.Protocol):
    connections = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ScriptedBackend.connections += 1
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not data.split(b" ", 1)[0].isalpha():
            return  # body bytes
        target = data.split(b" ", 2)[1]
        answer = SCRIPT.get(target, SCRIPT[b"/"])
        self.transport.write(answer)
        if target == b"/eof":
            self.transport.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ProxyServer]:
    ScriptedBackend.connections = 0
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ScriptedBackend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = ProxyConfig(
        backends=(f"http://127.0.0.1:{port}",),
        listen="127.0.0.1:0",
        admin=None,
        balancer="round-robin",
        health_path=None,
        read_timeout_s=0.5,
        max_body_bytes=1000,
    )
    async with ProxyServer(config) as running:
        yield running
    server.close()


async def talk(port: int, data: bytes, *, until_closed: bool = True) -> bytes:
    """Send `data`, return what came back until the proxy closes (or 1 s of silence)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 2.0 if until_closed else 0.5)
            if not chunk:
                break
            received += chunk
    except TimeoutError:
        pass
    writer.close()
    return received


def get(target: bytes, version: bytes = b"1.1", extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/" + version + b"\r\nHost: t\r\n" + extra + b"\r\n"


async def test_a_chunked_response_is_re_chunked_for_http11_and_eof_framed_for_http10(proxy):
    new = await talk(proxy.port, get(b"/chunked"), until_closed=False)
    old = await talk(proxy.port, get(b"/chunked", b"1.0"))
    assert b"Transfer-Encoding: chunked" in new
    assert new.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert b"Transfer-Encoding" not in old
    assert b"Connection: close" in old
    assert old.endswith(b"\r\n\r\nhello")


async def test_a_response_delimited_by_close_reaches_the_client_whole(proxy):
    answer = await talk(proxy.port, get(b"/eof"), until_closed=False)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert answer.endswith(b"\r\n\r\nd\r\nuntil the end\r\n0\r\n\r\n")


async def test_interim_responses_are_not_relayed(proxy):
    answer = await talk(proxy.port, get(b"/hints"), until_closed=False)
    assert answer.count(b"HTTP/1.1") == 1
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert answer.endswith(b"ok")


async def test_head_ends_with_the_head_and_the_connection_is_reused(proxy):
    head = b"HEAD /head HTTP/1.1\r\nHost: t\r\n\r\n"
    answer = await talk(proxy.port, head + get(b"/"), until_closed=False)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert b"Content-Length: 1000" in answer
    assert answer.endswith(b"\r\n\r\nok")
    assert ScriptedBackend.connections == 1


async def test_pipelined_requests_are_answered_in_order(proxy):
    answer = await talk(
        proxy.port, get(b"/chunked") + get(b"/") + get(b"/hints"), until_closed=False
    )
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.index(b"hello") < answer.index(b"\r\n\r\nok")


async def test_an_answer_before_the_body_closes_the_client_connection(proxy):
    request = b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    answer = await talk(proxy.port, request)
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized")
    assert answer.endswith(b"nope")


async def test_a_body_that_never_arrives_is_408_and_not_held_against_the_backend(proxy):
    request = b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    answer = await talk(proxy.port, request)
    backend = proxy.monitor.backends[0]
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"X-RL-LB-Error: client-timeout" in answer
    assert backend.outcomes[-1] == 0  # no connection failure recorded
    assert proxy.monitor.metrics.in_flight == [0]


@pytest.mark.parametrize(
    "request_bytes",
    [
        get(b"/" + b"a" * 9000),
        get(b"/", extra=b"X-Big: " + b"b" * 9000 + b"\r\n"),
        get(b"/", extra=b"X-A: 1\r\n" * 150),
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET /\r\n\r\n",
    ],
    ids=["long target", "long header", "many headers", "no Host", "HTTP/0.9"],
)
async def test_oversized_or_malformed_heads_get_400_and_a_close(proxy, request_bytes):
    answer = await talk(proxy.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"X-RL-LB-Error: " in answer
    assert ScriptedBackend.connections == 0


async def test_stop_closes_idle_keep_alive_connections(backends) -> None:
    pool = await backends(1)
    proxy = ProxyServer(proxy_config(pool, health_path=None))
    await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(get(b"/"))
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(proxy.stop(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b"b0"  # the body, then the close
    writer.close()
