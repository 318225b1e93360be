"""Discovery: the proxy follows a DNS name (A and SRV) and a watched file, and keeps the last
known set when a lookup fails (issue 20).

A small DNS server (dnslib) on loopback serves answers the test changes while the proxy runs;
backends listen on several loopback addresses (127.0.0.2, .3, …) with one port, as the pods of a
headless service do. Time bounds are the configured TTL floor and poll periods plus a slack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from serving_helpers import TestBackend, admin_json, eventually, proxy_config

from rl_lb.cli import main
from rl_lb.errors import ConfigError
from serving.app import ProxyServer
from serving.config import load_config
from serving.discovery import parse_source, read_endpoint_file

TTL_MIN_S = 0.2
SLACK_S = 5.0
"""Beyond the TTL floor and the poll period: a loaded CI machine may delay a lookup this long."""


class Zone(BaseResolver):
    """Answers the test sets: `a[name]` addresses, `srv[name]` (port, target) pairs, or a
    failure mode (`servfail`, `silent`) for every query."""

    def __init__(self) -> None:
        self.a: dict[str, list[str]] = {}
        self.srv: dict[str, list[tuple[int, str]]] = {}
        self.mode = "ok"
        self.queries = 0
        self.released = threading.Event()

    def resolve(self, request: Any, handler: Any) -> Any:
        self.queries += 1
        reply = request.reply()
        if self.mode == "silent":
            self.released.wait(3.0)  # longer than the proxy's lookup timeout: it gives up first
            return reply
        if self.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        name = str(request.q.qname).rstrip(".")
        kind = QTYPE[request.q.qtype]
        if kind == "A":
            for address in self.a.get(name, []):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=1))
        elif kind == "AAAA" and name.startswith("v6."):
            reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA("::1"), ttl=1))
        elif kind == "SRV":
            for port, target in self.srv.get(name, []):
                reply.add_answer(
                    RR(request.q.qname, QTYPE.SRV, rdata=SRV(0, 0, port, target), ttl=1)
                )
                reply.add_ar(RR(target, QTYPE.A, rdata=A("127.0.0.1"), ttl=1))
        return reply


@pytest.fixture
def zone() -> Iterator[tuple[Zone, int]]:
    resolver = Zone()
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    server = DNSServer(resolver, port=0, address="127.0.0.1", logger=quiet)
    server.start_thread()
    try:
        yield resolver, server.server.server_address[1]
    finally:
        resolver.released.set()  # answer what still waits, before the socket closes
        time.sleep(0.05)
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
async def pods() -> AsyncIterator[list[TestBackend]]:
    """Three backends on 127.0.0.2, .3 and .4, one port."""
    started: list[TestBackend] = []
    try:
        first = await TestBackend("pod0", "127.0.0.2").start()
        started.append(first)
        for k in (1, 2):
            started.append(await TestBackend(f"pod{k}", f"127.0.0.{k + 2}").start(first.port))
        yield started
    finally:
        for backend in started:
            await backend.stop()


async def _traffic(
    client: aiohttp.ClientSession, proxy: ProxyServer, stop: asyncio.Event
) -> list[int]:
    """Requests one after another until `stop`; the statuses."""
    statuses: list[int] = []
    while not stop.is_set():
        async with client.get(f"http://127.0.0.1:{proxy.port}/x") as response:
            await response.read()
            statuses.append(response.status)
        await asyncio.sleep(0.005)
    return statuses


@contextlib.asynccontextmanager
async def _load(client: aiohttp.ClientSession, proxy: ProxyServer) -> AsyncIterator[list[int]]:
    stop = asyncio.Event()
    task = asyncio.create_task(_traffic(client, proxy, stop))
    statuses: list[int] = []
    try:
        yield statuses
    finally:
        stop.set()
        statuses.extend(await task)


def _discovery_config(sources: list[str], dns_port: int | None = None, **changes: Any) -> Any:
    extra: dict[str, Any] = {
        "dns_ttl_min_s": TTL_MIN_S,
        "discovery_file_poll_s": 0.1,
        # Round-robin, so "a new backend gets traffic" tests discovery, not latency: under
        # least-latency one slow first request (a new connection on a busy CI machine) keeps a
        # new backend's peak-EWMA cost above its peer's for seconds (CI failure, session 8).
        "balancer": "round-robin",
    }
    if dns_port is not None:
        extra["dns_resolver"] = f"127.0.0.1:{dns_port}"
    extra.update(changes)
    # Slow start off: a new backend's first seconds at full weight make "it gets traffic" quick.
    return proxy_config([], control={"slow-start-window": 0}, discover=tuple(sources), **extra)


async def test_a_dns_name_is_followed_and_a_failed_lookup_keeps_the_last_set(
    zone: tuple[Zone, int], pods: list[TestBackend], client: aiohttp.ClientSession
) -> None:
    resolver, dns_port = zone
    port = pods[0].port
    resolver.a["svc.test"] = ["127.0.0.2"]
    config = _discovery_config([f"dns://svc.test:{port}"], dns_port)
    async with ProxyServer(config) as proxy:
        assert [b.url for b in proxy.monitor.backends] == [pods[0].url]
        async with _load(client, proxy) as statuses:
            resolver.a["svc.test"] = ["127.0.0.2", "127.0.0.3"]
            await eventually(lambda: pods[1].hits > 5, TTL_MIN_S + 1.0 + SLACK_S)
            resolver.a["svc.test"] = ["127.0.0.3"]
            await eventually(
                lambda: [b.url for b in proxy.monitor.backends] == [pods[1].url],
                TTL_MIN_S + 1.0 + SLACK_S,
            )
            hits = pods[0].hits
            await asyncio.sleep(0.3)
            assert pods[0].hits == hits, "a removed backend still gets requests"
            resolver.mode = "servfail"
            failures_before = resolver.queries
            await eventually(lambda: resolver.queries > failures_before + 2, 2 + SLACK_S)
            assert [b.url for b in proxy.monitor.backends] == [pods[1].url]
            _, state = await admin_json(client, proxy, "GET", "/admin/state")
            source = state["discovery"][0]
            assert source["errors"] >= 1, source
            assert "failure" in source["last_error"], source
            assert state["backends"][0]["sources"] == [f"dns://svc.test:{port}"]
            async with client.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as response:
                text = await response.text()
            line = next(
                x for x in text.splitlines() if x.startswith("rl_lb_discovery_errors_total")
            )
            assert float(line.split()[-1]) >= 1
            resolver.mode = "silent"
            # A SERVFAIL lookup may still be in flight: wait for the timeout to be the last error.
            discovery = proxy.discovery
            assert discovery is not None
            await eventually(
                lambda: "timeout" in (discovery.states[0].last_error or "").lower(),
                3.0 + SLACK_S,
            )
            assert [b.url for b in proxy.monitor.backends] == [pods[1].url]
            resolver.mode = "ok"
    assert statuses
    assert set(statuses) == {200}, f"failed requests: {set(statuses)}"


async def test_srv_targets_and_ports_are_backends(
    zone: tuple[Zone, int], backends: Any, client: aiohttp.ClientSession
) -> None:
    resolver, dns_port = zone
    pool = await backends(3)
    name = "_http._tcp.svc.test"
    resolver.srv[name] = [(pool[0].port, "a.test"), (pool[1].port, "b.test")]
    async with ProxyServer(_discovery_config([f"dns+srv://{name}"], dns_port)) as proxy:
        assert sorted(b.url for b in proxy.monitor.backends) == sorted(b.url for b in pool[:2])
        resolver.srv[name] = [(pool[2].port, "c.test")]
        await eventually(
            lambda: [b.url for b in proxy.monitor.backends] == [pool[2].url],
            TTL_MIN_S + 1.0 + SLACK_S,
        )
        async with client.get(f"http://127.0.0.1:{proxy.port}/x") as response:
            assert response.status == 200
        assert pool[2].hits == 1


async def test_a_watched_file_is_followed_and_a_bad_one_keeps_the_last_set(
    tmp_path: Path, backends: Any, client: aiohttp.ClientSession
) -> None:
    pool = await backends(3)
    path = tmp_path / "backends.txt"
    path.write_text(f"# the pool\n{pool[0].url}\n")
    config = _discovery_config([f"file://{path}"], backends=(pool[2].url,))
    async with ProxyServer(config) as proxy:
        assert sorted(b.url for b in proxy.monitor.backends) == sorted([pool[0].url, pool[2].url])
        async with _load(client, proxy) as statuses:
            path.write_text(json.dumps({"backends": [pool[0].url, pool[1].url]}))
            await eventually(lambda: pool[1].hits > 3, 0.1 + SLACK_S)
            path.write_text(f"{pool[1].url}\n")
            await eventually(lambda: proxy.monitor.find(pool[0].url) is None, 0.1 + SLACK_S)
            path.write_text("not a url\n")
            discovery = proxy.discovery
            assert discovery is not None
            await eventually(lambda: discovery.states[0].errors >= 1, 0.1 + SLACK_S)
            path.unlink()
            await eventually(
                lambda: "no such file" in (discovery.states[0].last_error or ""), 0.1 + SLACK_S
            )
        urls = sorted(b.url for b in proxy.monitor.backends)
        assert urls == sorted([pool[1].url, pool[2].url]), "the static backend must stay"
        assert "no such file" in (discovery.states[0].last_error or "")
    assert set(statuses) == {200}


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("svc:80", "is not a discovery source"),
        ("ftp://svc:80", "unknown source kind"),
        ("dns://svc", "is not HOST:PORT"),
        ("dns+srv://_http._tcp.svc:80", "SRV records carry the port"),
        ("file://relative.txt", "must be absolute"),
        ("dns://bad..name:80", "is not a DNS name"),
    ],
)
def test_a_bad_source_is_one_clear_error(text: str, what: str) -> None:
    with pytest.raises(ConfigError, match=what) as error:
        load_config(flags={"discover": [text]})
    assert str(error.value).startswith("--discover")
    assert "\n" not in str(error.value)


def test_serve_with_a_bad_source_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--discover", "ftp://svc:80"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--discover" in err, err


def test_discovery_alone_is_a_pool_and_sources_parse() -> None:
    config = load_config(flags={"discover": ["dns://svc.test:8080"]})
    assert config.backends == ()
    assert config.discover == ("dns://svc.test:8080",)
    assert parse_source("https+dns://svc.test:443").scheme == "https"
    with pytest.raises(ConfigError, match="no backend"):
        load_config(flags={})


def test_endpoint_files_in_both_formats(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text("http://10.0.0.1:80/\n  # comment\nhttp://10.0.0.2:80 # inline\n\n")
    assert read_endpoint_file(str(text)) == ("http://10.0.0.1:80", "http://10.0.0.2:80")
    listed = tmp_path / "b.json"
    listed.write_text('["http://10.0.0.3:80"]')
    assert read_endpoint_file(str(listed)) == ("http://10.0.0.3:80",)
    listed.write_text('{"pods": []}')
    with pytest.raises(ValueError, match="backends"):
        read_endpoint_file(str(listed))


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_name_that_never_resolved_starts_with_the_static_pool(
    backends: Any, client: aiohttp.ClientSession
) -> None:
    pool = await backends(1)
    dead = _free_udp_port()  # nothing answers there: every lookup times out
    config = _discovery_config(["dns://svc.test:80"], dead, backends=(pool[0].url,))
    async with ProxyServer(config) as proxy:
        assert [b.url for b in proxy.monitor.backends] == [pool[0].url]
        assert proxy.discovery is not None
        assert proxy.discovery.states[0].errors == 1
        async with client.get(f"http://127.0.0.1:{proxy.port}/x") as response:
            assert response.status == 200
