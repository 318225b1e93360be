"""What the proxy passes on, changes and refuses: methods, targets, headers, bodies, statuses."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import aiohttp
import psutil
import pytest
from serving_helpers import CHUNK, proxy_config

from serving.app import ProxyServer

MIB = 1 << 20


async def raw_exchange(port: int, head: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes and return what comes back until the connection closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        writer.close()


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_methods_query_strings_and_bodies_reach_the_backend(
    backends, client: aiohttp.ClientSession, method: str
) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool)) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/echo?a=1&b=%20x&a=2"
        async with client.request(method, url, data=b"payload") as response:
            assert response.status == 200
            echo = await response.json()
    assert echo["method"] == method
    assert echo["path_qs"] == "/echo?a=1&b=%20x&a=2"
    assert echo["body"] == "payload"


async def test_head_passes_the_headers_without_a_body(backends, client) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool)) as proxy:
        response = await client.head(f"http://127.0.0.1:{proxy.port}/bytes/1000")
        assert response.status == 200
        assert response.headers["Content-Length"] == "1000"
        assert await response.read() == b""


@pytest.mark.parametrize("status", [201, 204, 301, 304, 404, 418, 500, 503])
async def test_status_codes_pass_through(backends, client, status: int) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool)) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/status/{status}"
        async with client.get(url, allow_redirects=False) as response:
            assert response.status == status
            assert "X-RL-LB-Error" not in response.headers


async def test_hop_by_hop_headers_are_dropped_and_forwarding_headers_added(
    backends, client
) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool)) as proxy:
        headers = {
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "must not pass",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic abc",
            "Upgrade": "h2c",
            "X-Forwarded-For": "203.0.113.9",
            "Via": "1.0 edge",
            "X-Custom": "kept",
        }
        url = f"http://127.0.0.1:{proxy.port}/echo"
        async with client.get(url, headers=headers) as response:
            echo = await response.json()
            returned = response.headers
        host = f"127.0.0.1:{proxy.port}"
    seen = {k.lower(): v for k, v in echo["headers"]}
    for hop in ("x-secret-hop", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert hop not in seen
    assert seen.get("connection", "keep-alive") == "keep-alive"  # the proxy's own, if any
    assert seen["x-custom"] == "kept"
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == host
    assert seen["via"] == "1.0 edge, 1.1 rl-lb"
    assert seen["host"] == host  # passed through by default
    # the backend's answer: "Connection: keep-alive, X-Hop" names X-Hop as hop-by-hop
    assert "X-Hop" not in returned
    assert returned["X-Backend"] == "b0"
    assert returned["Via"] == "1.1 rl-lb"


async def test_host_can_be_the_backends_own(backends, client) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, preserve_host=False)) as proxy:
        response = await client.get(f"http://127.0.0.1:{proxy.port}/echo")
        echo = await response.json()
    seen = {k.lower(): v for k, v in echo["headers"]}
    assert seen["host"] == f"127.0.0.1:{pool[0].port}"


@pytest.mark.parametrize("size", [0, MIB])
async def test_bodies_arrive_intact_both_ways(backends, client, size: int) -> None:
    pool = await backends(1)
    body = bytes(range(256)) * (size // 256)
    async with ProxyServer(proxy_config(pool)) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        async with client.post(f"{base}/upload", data=body) as response:
            assert await response.json() == {
                "bytes": size,
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        async with client.get(f"{base}/bytes/{size}") as response:
            assert response.headers["Content-Length"] == str(size)
            assert await response.read() == b"x" * size


async def test_expect_100_continue_is_answered_by_the_proxy(backends, client) -> None:
    pool = await backends(1)
    body = b"e" * 50_000
    async with ProxyServer(proxy_config(pool)) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/upload"
        response = await client.post(url, data=body, expect100=True)
        result = await response.json()
    assert result == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_chunked_upload_is_streamed_to_the_backend(backends, client) -> None:
    pool = await backends(1)
    parts = [bytes([k]) * 10_000 for k in range(20)]

    async def chunks() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await asyncio.sleep(0)

    async with ProxyServer(proxy_config(pool)) as proxy:
        response = await client.post(f"http://127.0.0.1:{proxy.port}/upload", data=chunks())
        result = await response.json()
    assert result == {"bytes": 200_000, "sha256": hashlib.sha256(b"".join(parts)).hexdigest()}


@pytest.mark.slow
async def test_100_mib_both_ways_keeps_memory_flat(backends, client) -> None:
    pool = await backends(1)
    size = 100 * MIB
    process = psutil.Process()
    peak = baseline = process.memory_info().rss

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.02)

    async def upload() -> AsyncIterator[bytes]:
        block = b"u" * CHUNK
        for _ in range(size // CHUNK):
            yield block

    sampler = asyncio.create_task(sample())
    try:
        async with ProxyServer(proxy_config(pool, max_body_bytes=0)) as proxy:
            base = f"http://127.0.0.1:{proxy.port}"
            async with client.post(f"{base}/upload", data=upload()) as response:
                assert (await response.json())["bytes"] == size
            received = 0
            async with client.get(f"{base}/bytes/{size}") as response:
                async for chunk in response.content.iter_any():
                    received += len(chunk)
            assert received == size
    finally:
        sampler.cancel()
    assert peak - baseline < 40 * MIB, f"RSS grew by {(peak - baseline) / MIB:.0f} MiB"


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(backends) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, max_body_bytes=1000)) as proxy:
        # Only the head is sent: a proxy that waited for the body would never answer.
        head = (
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        answer = await raw_exchange(proxy.port, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in answer
    assert b"X-RL-LB-Error: body-too-large" in answer
    assert pool[0].hits == 0


async def test_a_chunked_body_that_grows_over_the_limit_is_cut_with_413(backends, client) -> None:
    pool = await backends(1)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"z" * 1000

    async with ProxyServer(proxy_config(pool, max_body_bytes=10_000)) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/upload"
        # The proxy reads and drops the rest of the body before it closes, so the client can
        # always read the 413: a reset before it (ClientOSError) is a failure, not a skip.
        async with client.post(url, data=chunks()) as response:
            status = response.status
            error = json.loads(await response.read())
    assert status == 413
    assert error == {"error": "body over 10000 bytes", "status": 413, "backend": None}


async def test_connect_and_absolute_form_for_other_hosts_are_refused(backends) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool)) as proxy:
        connect = await raw_exchange(
            proxy.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        )
        other = await raw_exchange(
            proxy.port, b"GET http://example.com/echo HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        own_host = f"127.0.0.1:{proxy.port}".encode()
        own = await raw_exchange(
            proxy.port,
            b"GET http://" + own_host + b"/hello?x=1 HTTP/1.1\r\nHost: " + own_host + b"\r\n\r\n",
        )
    assert connect.startswith(b"HTTP/1.1 405 ")
    assert b"X-RL-LB-Error: connect" in connect
    assert other.startswith(b"HTTP/1.1 400 ")
    assert b"X-RL-LB-Error: absolute-form" in other
    assert own.startswith(b"HTTP/1.1 200 ")
    assert pool[0].hits == 1
