"""Hostile and malformed input over raw sockets: each gets a 4xx or a closed connection, nothing
reaches a backend (or another host) that should not, and normal clients are served meanwhile."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from rel_helpers import SLACK_S, CountingBackend, normal_request, proxy_settings, raw_exchange

from serving.app import ProxyServer
from serving.config import ProxyConfig

MAX_BODY = 1024
HEADER_TIMEOUT_S = 1.0
H = b"Host: x\r\n"
KEPT_ALIVE = 0.0
"""`close_wait` of an exchange whose connection stays open and whose closing is not checked."""

MALFORMED: dict[str, bytes] = {
    "not a request line": b"GARBAGE\r\n\r\n",
    "no HTTP version (HTTP/0.9)": b"GET /\r\n\r\n",
    "unknown HTTP version": b"GET / HTTP/9.9\r\n" + H + b"\r\n",
    "NUL in the method": b"G\x00T / HTTP/1.1\r\n" + H + b"\r\n",
    "authority-form target with GET": b"GET 127.0.0.1:1/ HTTP/1.1\r\n" + H + b"\r\n",
    "HTTP/1.1 without Host": b"GET / HTTP/1.1\r\n\r\n",
    "two Host headers": b"GET / HTTP/1.1\r\n" + H + b"Host: y\r\n\r\n",
    "request line over the limit": b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\n" + H + b"\r\n",
    "header over the limit": b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 8200 + b"\r\n\r\n",
    "a head over 8 x the header limit": (
        b"GET / HTTP/1.1\r\n" + H + (b"X-A: " + b"b" * 1000 + b"\r\n") * 70 + b"\r\n"
    ),
    "bare CR in a value (injection)": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rX-Injected: 1\r\n\r\n",
    "bare LF in a value (injection)": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\nX-Injected: 1\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
    "space in a name": b"GET / HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n",
    "space before the colon": b"GET / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n",
    "obs-folded Transfer-Encoding": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
    ),
    "CL.TE": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nG"
    ),
    "TE.CL": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        b"5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n"
    ),
    "two different Content-Lengths": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"
    ),
    "a Content-Length list": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4, 5\r\n\r\nabcde",
    "a signed Content-Length": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +4\r\n\r\nabcd",
    "Transfer-Encoding: chunked, identity": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n"
        b"4\r\nabcd\r\n0\r\n\r\n"
    ),
    "two Transfer-Encoding lines": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity"
        b"\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
    ),
    "unknown transfer coding": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
    ),
    "chunk size not hex": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n"
    ),
    "negative chunk size": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-4\r\nabcd\r\n0\r\n\r\n"
    ),
    "chunk longer than its size": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcdXX\r\n0\r\n\r\n"
    ),
    "chunk size overflow": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffff\r\nabcd\r\n0\r\n\r\n"
    ),
    "CR/LF inside a chunk extension": (
        b"POST / HTTP/1.1\r\n" + H + b'Transfer-Encoding: chunked\r\n\r\n4;a="\r\n"\r\nabcd\r\n'
        b"0\r\n\r\n"
    ),
}
"""Requests no backend may see: the smuggling shapes, because a backend that read the body
differently would take its tail for a second request."""
PROMISED_REASON = {
    "not a request line": "bad-request",
    "unknown HTTP version": "bad-request",
    "NUL in the method": "bad-request",
    "authority-form target with GET": "bad-request",
    "request line over the limit": "header-too-large",
    "header over the limit": "header-too-large",
    "a head over 8 x the header limit": "header-too-large",
}
"""The X-RL-LB-Error docs/reliability.md names for a row (the others promise a 400 only)."""
PROMISED_MESSAGE = {
    "no HTTP version (HTTP/0.9)": "HTTP/0.9 is not served",
    "HTTP/1.1 without Host": "needs exactly one Host header",
    "two Host headers": "needs exactly one Host header",
}


@pytest.fixture
async def pool() -> AsyncIterator[tuple[CountingBackend, CountingBackend]]:
    """The proxy's backend, and a foreign server the proxy must never talk to."""
    backend, foreign = CountingBackend("c0"), CountingBackend("foreign")
    await backend.start()
    await foreign.start()
    yield backend, foreign
    await backend.stop()
    await foreign.stop()


def hostile_config(backend: CountingBackend, **changes: object) -> ProxyConfig:
    return proxy_settings(
        [backend.url],
        max_body_bytes=MAX_BODY,
        header_timeout_s=HEADER_TIMEOUT_S,
        health_path=None,
        **changes,
    )


async def still_serving(client: aiohttp.ClientSession, proxy: ProxyServer) -> None:
    assert await normal_request(client, proxy.port) == (200, "c0")


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_requests_are_refused_and_reach_no_backend(pool, client, name) -> None:
    backend, foreign = pool
    async with ProxyServer(hostile_config(backend)) as proxy:
        answer = await raw_exchange(proxy.port, MALFORMED[name])
        await still_serving(client, proxy)
    assert answer.status == 400, answer
    assert answer.closed
    assert json.loads(answer.body)["status"] == 400
    if name in PROMISED_REASON:
        assert answer.headers["x-rl-lb-error"] == PROMISED_REASON[name]
    if name in PROMISED_MESSAGE:
        assert PROMISED_MESSAGE[name] in json.loads(answer.body)["error"]
    assert backend.complete == 1, "only the normal request may reach the backend"
    assert foreign.heads == 0


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("Content-Length", b"Content-Length: 2048\r\n\r\n" + b"a" * 2048),
        ("chunked", b"Transfer-Encoding: chunked\r\n\r\n800\r\n" + b"a" * 2048 + b"\r\n0\r\n\r\n"),
    ],
)
async def test_a_body_over_the_limit_is_413_and_never_whole_at_a_backend(
    pool, client, name, payload
) -> None:
    """A declared length is refused before any backend is picked; a chunked body is streamed,
    so the backend may see its head, but never the whole request."""
    backend, _ = pool
    async with ProxyServer(hostile_config(backend)) as proxy:
        answer = await raw_exchange(proxy.port, b"POST /upload HTTP/1.1\r\n" + H + payload)
        await still_serving(client, proxy)
    assert answer.status == 413
    assert answer.headers["x-rl-lb-error"] == "body-too-large"
    assert json.loads(answer.body)["status"] == 413
    assert answer.closed
    assert backend.complete == 1


@pytest.mark.parametrize(
    ("target", "status", "reason"),
    [
        (b"GET http://127.0.0.1:FOREIGN/ HTTP/1.1", 400, "absolute-form"),
        (b"GET http://localhost:FOREIGN/ HTTP/1.1", 400, "absolute-form"),
        (b"GET http://127.0.0.1:PROXY@127.0.0.1:FOREIGN/ HTTP/1.1", 400, "absolute-form"),
        (b"GET https://127.0.0.1:FOREIGN/ HTTP/1.1", 400, "absolute-form"),
        (b"OPTIONS * HTTP/1.1", 400, "absolute-form"),
        (b"CONNECT 127.0.0.1:FOREIGN HTTP/1.1", 405, "connect"),
    ],
)
async def test_requests_for_another_host_never_leave_for_it(
    pool, client, target, status, reason
) -> None:
    backend, foreign = pool
    async with ProxyServer(hostile_config(backend)) as proxy:
        line = target.replace(b"FOREIGN", b"%d" % foreign.port).replace(
            b"PROXY", b"%d" % proxy.port
        )
        answer = await raw_exchange(proxy.port, line + b"\r\nHost: 127.0.0.1\r\n\r\n")
        await still_serving(client, proxy)
    assert (answer.status, answer.headers["x-rl-lb-error"]) == (status, reason)
    assert answer.closed
    assert foreign.heads == 0
    assert backend.complete == 1


async def test_a_host_header_naming_another_host_still_goes_to_the_pool(pool) -> None:
    backend, foreign = pool
    async with ProxyServer(hostile_config(backend)) as proxy:
        host = b"Host: 127.0.0.1:%d\r\n" % foreign.port
        answer = await raw_exchange(
            proxy.port, b"GET /x HTTP/1.1\r\n" + host + b"\r\n", close_wait=KEPT_ALIVE
        )
    assert answer.status == 200
    assert json.loads(answer.body)["backend"] == "c0"
    assert foreign.heads == 0


async def test_encoded_cr_lf_in_the_path_stays_encoded(pool) -> None:
    """Response splitting and header injection through the target: the proxy must forward the
    path as received, never decode it into the request it writes."""
    backend, _ = pool
    async with ProxyServer(hostile_config(backend)) as proxy:
        answer = await raw_exchange(
            proxy.port,
            b"GET /a%0d%0aX-Injected:%201 HTTP/1.1\r\n" + H + b"\r\n",
            close_wait=KEPT_ALIVE,
        )
    echoed = json.loads(answer.body)
    assert answer.status == 200
    assert echoed["path"] == "/a%0d%0aX-Injected:%201"
    assert all(name.lower() != "x-injected" for name, _ in echoed["headers"])


async def test_header_bytes_outside_utf8_are_forwarded_byte_for_byte(pool) -> None:
    """obs-text (RFC 9110 §5.5) is opaque: docs/reliability.md promises it is forwarded byte for
    byte (RFC 9110 would also allow a refusal; this proxy does not refuse it)."""
    backend, _ = pool
    async with ProxyServer(hostile_config(backend)) as proxy:
        answer = await raw_exchange(
            proxy.port, b"GET / HTTP/1.1\r\n" + H + b"X-F: caf\xe9\r\n\r\n", close_wait=KEPT_ALIVE
        )
    assert answer.status == 200, answer
    assert backend.complete == 1
    # aiohttp (the backend) decodes header bytes as UTF-8 with surrogateescape.
    sent = [value for name, value in json.loads(answer.body)["headers"] if name == "X-F"]
    assert [value.encode("utf-8", "surrogateescape") for value in sent] == [b"caf\xe9"]


async def test_slowloris_is_cut_off_after_the_header_timeout(pool, client) -> None:
    """Bytes that keep coming do not extend the time allowed for a request head."""
    backend, _ = pool
    bound = HEADER_TIMEOUT_S + SLACK_S
    async with ProxyServer(hostile_config(backend)) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        closed_after = None
        try:
            while time.monotonic() - started < 2 * bound:  # one byte every 0.1 s
                writer.write(b"a")
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    continue
            await still_serving(client, proxy)
        except ConnectionError:
            closed_after = time.monotonic() - started
        finally:
            writer.close()
    assert closed_after is not None, "the dribbling connection was never closed"
    assert closed_after < bound
    assert backend.complete == 1


async def test_a_flood_of_idle_connections_meets_the_limit_then_times_out(pool) -> None:
    backend, _ = pool
    limit = 20
    async with ProxyServer(hostile_config(backend, max_connections=limit)) as proxy:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as fresh:
            idle = [
                await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(limit - 1)
            ]
            try:
                served_below_limit = await normal_request(fresh, proxy.port)
                idle.append(await asyncio.open_connection("127.0.0.1", proxy.port))
                over = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\n" + H + b"\r\n")
                reader, _ = idle[0]
                closed = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT_S + SLACK_S)
                served_after = await normal_request(fresh, proxy.port)
            finally:
                for _, writer in idle:
                    writer.close()
    assert served_below_limit == (200, "c0")
    assert over.status == 503
    assert over.headers["x-rl-lb-error"] == "max-connections"
    assert closed == b"", "an idle connection outlived the header timeout"
    assert served_after == (200, "c0")


async def test_a_client_that_never_sends_its_body_cannot_get_the_backend_ejected(
    pool, client
) -> None:
    """The backend waits for a body the client announced and never sent: that is the client's
    fault. Answering 504 and counting it against the backend lets any client eject every
    backend with a handful of such requests."""
    backend, _ = pool
    config = hostile_config(backend, read_timeout_s=0.5)
    incomplete = b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\nabc"
    async with ProxyServer(config) as proxy:
        answers = await asyncio.gather(
            *(
                raw_exchange(proxy.port, incomplete)
                for _ in range(config.control.ejection.consecutive_failures + 1)
            )
        )
        served = await normal_request(client, proxy.port)
        ejected = proxy.monitor.detector.times_ejected[0]
    assert served == (200, "c0")
    assert ejected == 0
    for answer in answers:  # 408 client-timeout, said in the header and the JSON body
        assert (answer.status, answer.headers.get("x-rl-lb-error")) == (408, "client-timeout")
        assert json.loads(answer.body)["status"] == 408
    # The backend saw each head (the proxy streams bodies), never a whole request of them.
    assert (backend.heads, backend.complete) == (len(answers) + 1, 1)
