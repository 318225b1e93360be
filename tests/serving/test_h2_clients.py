"""HTTP/2 clients in front of HTTP/1.1 backends (`http2 = true`, `backend-protocol = http1`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import trustme
from h2_client import H2Client
from serving_helpers import TestBackend, eventually, proxy_config

from serving.app import ProxyServer

Backends = Callable[[int], Awaitable[list[TestBackend]]]


async def test_streams_of_one_connection_spread_over_http1_backends(backends: Backends) -> None:
    pool = await backends(3)
    config = proxy_config(pool, http2=True, balancer="round-robin", health_path=None)
    async with ProxyServer(config) as proxy:
        client = await H2Client.connect(proxy.port)
        try:
            answers = []
            for _ in range(3):
                answers += await client.exchange([(b"GET", b"/", b"")] * 10)
            h2 = proxy.h2
            assert h2 is not None
            # answered streams are let go of: a long-lived connection holds no state for them
            await eventually(lambda: all(not c.streams for c in h2.connections))
        finally:
            await client.close()
        assert [a.status for a in answers] == [200] * 30
        names = Counter(a.body.decode() for a in answers)
        assert set(names) == {b.name for b in pool}
        assert all(count >= 5 for count in names.values()), names
        assert all(a.headers[b"x-backend"] == a.body for a in answers)
        assert sum(b.active for b in proxy.monitor.backends) == 0
        assert sum(proxy.monitor.metrics.in_flight) == 0
        assert proxy.stats.responses["2xx"] == 30


async def test_bodies_both_ways_keep_to_flow_control(backends: Backends) -> None:
    """1 MiB up (the client's window is 64 KiB) and 4 MB down through one stream each."""
    pool = await backends(1)
    config = proxy_config(pool, http2=True, health_path=None)
    async with ProxyServer(config) as proxy:
        client = await H2Client.connect(proxy.port)
        body = np.random.default_rng(1).bytes(1 << 20)
        try:
            upload, download, echo = await client.exchange(
                [
                    (b"POST", b"/upload", body),
                    (b"GET", b"/bytes/4000000", b""),
                    (b"POST", b"/echo?x=1", b"hello"),
                ]
            )
        finally:
            await client.close()
        assert upload.status == 200
        assert json.loads(upload.body) == {
            "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        assert download.status == 200
        assert len(download.body) == 4_000_000
        seen = json.loads(echo.body)
        assert seen["method"] == "POST"
        assert seen["path_qs"] == "/echo?x=1"
        assert seen["body"] == "hello"
        assert b"x-hop" not in echo.headers  # hop-by-hop headers stay behind
        assert any(k == "X-Forwarded-For" for k, _ in seen["headers"])


async def test_a_503_over_http2_counts_against_the_backend(backends: Backends) -> None:
    pool = await backends(1)
    config = proxy_config(pool, http2=True, health_path=None)
    async with ProxyServer(config) as proxy:
        client = await H2Client.connect(proxy.port)
        try:
            answers = await client.exchange([(b"GET", b"/status/503", b"")] * 4)
        finally:
            await client.close()
        assert [a.status for a in answers] == [503] * 4
        snapshot = proxy.monitor.metrics.snapshot(np.ones(1))
        assert float(snapshot.error_rate[0]) == 1.0
        assert proxy.monitor.backends[0].outcomes[4] == 4


async def test_http2_is_off_by_default(backends: Backends) -> None:
    """Without `http2` (and with HTTP/1.1 backends) the preface is refused like HTTP/1.1 junk."""
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, health_path=None)) as proxy:
        assert proxy.h2 is None
        client = await H2Client.connect(proxy.port)
        data = await client.reader.read(100)
        client.writer.close()
        assert data.startswith(b"HTTP/1.1 400")


async def test_h2_over_tls_is_chosen_by_alpn(backends: Backends, tmp_path: Path) -> None:
    pool = await backends(2)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    config = proxy_config(
        pool, http2=True, tls_cert=str(cert), tls_key=str(key), balancer="round-robin"
    )
    async with ProxyServer(dataclasses.replace(config, health_path=None)) as proxy:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        context.set_alpn_protocols(["h2", "http/1.1"])
        client = await H2Client.connect(proxy.port, context)
        try:
            chosen = client.writer.get_extra_info("ssl_object").selected_alpn_protocol()
            answers = await client.exchange([(b"GET", b"/", b"")] * 4)
        finally:
            await client.close()
    assert chosen == "h2"
    assert [a.status for a in answers] == [200] * 4
    assert {a.body.decode() for a in answers} == {b.name for b in pool}
