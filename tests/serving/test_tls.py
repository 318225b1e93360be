"""TLS both ways: HTTPS on the listener, verified https:// backends (CA bundle, SNI, mTLS).

Certificates are made per run by `trustme`; clients verify (never `ssl=False`), and everything
runs on loopback.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from serving_helpers import admin_json, eventually, proxy_config

from rl_lb.cli import main
from rl_lb.errors import ConfigError
from serving.app import ProxyServer
from serving.config import load_config

FAST_HEALTH = {"health-interval": 0.1, "health-timeout": 0.5, "unhealthy-threshold": 1}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _pem_pair(cert: trustme.LeafCert, directory: Path, name: str) -> tuple[str, str]:
    chain, key = directory / f"{name}.crt", directory / f"{name}.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return str(chain), str(key)


def _ca_file(ca: trustme.CA, directory: Path, name: str = "ca") -> str:
    path = directory / f"{name}.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class HttpsBackend:
    """An https backend answering `/who` with its name and whether a client cert was shown."""

    def __init__(self, cert: trustme.LeafCert, *, client_ca: trustme.CA | None = None) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.context)
        if client_ca is not None:  # mTLS: no client certificate, no handshake
            self.context.verify_mode = ssl.CERT_REQUIRED
            client_ca.configure_trust(self.context)
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> HttpsBackend:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.context).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        return web.json_response(
            {
                "client": subject.get("commonName") or subject.get("organizationName"),
                "proto": request.headers.get("X-Forwarded-Proto"),
            }
        )


@pytest.fixture
async def started() -> AsyncIterator[list[HttpsBackend]]:
    """Append a started `HttpsBackend`: it is stopped at the end of the test."""
    running: list[HttpsBackend] = []
    yield running
    for backend in running:
        await backend.stop()


async def _https_backend(
    started: list[HttpsBackend], cert: trustme.LeafCert, client_ca: trustme.CA | None = None
) -> HttpsBackend:
    backend = await HttpsBackend(cert, client_ca=client_ca).start()
    started.append(backend)
    return backend


# -- the listener -------------------------------------------------------------------------------


async def test_clients_reach_the_listener_over_verified_https_and_alpn_picks_http1(
    ca: trustme.CA, backends, tmp_path: Path
) -> None:
    pool = await backends(1)
    cert, key = _pem_pair(ca.issue_cert("127.0.0.1", "localhost"), tmp_path, "listener")
    async with ProxyServer(proxy_config(pool, tls_cert=cert, tls_key=key)) as proxy:
        connector = aiohttp.TCPConnector(ssl=_client_context(ca))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"https://127.0.0.1:{proxy.port}/echo") as response,
        ):
            assert response.status == 200
            echoed = await response.json()
        context = _client_context(ca)
        context.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port, ssl=context)
        chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        # a cleartext client is not served on the TLS port
        reader, plain = await asyncio.open_connection("127.0.0.1", proxy.port)
        plain.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(100), 5)
        plain.close()
    headers = dict(echoed["headers"])
    assert headers["X-Forwarded-Proto"] == "https"
    assert chosen == "http/1.1"  # h2 is offered only once an HTTP/2 server is registered
    assert not answer.startswith(b"HTTP/1.1 200")


async def test_reload_serves_the_new_certificate_and_open_connections_keep_theirs(
    backends, tmp_path: Path
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    pool = await backends(1)
    cert, key = _pem_pair(old_ca.issue_cert("127.0.0.1"), tmp_path, "listener")
    async with ProxyServer(proxy_config(pool, tls_cert=cert, tls_key=key)) as proxy:
        reader, early = await asyncio.open_connection(
            "127.0.0.1", proxy.port, ssl=_client_context(old_ca)
        )
        _pem_pair(new_ca.issue_cert("127.0.0.1"), tmp_path, "listener")  # same paths
        await proxy.reload()  # what SIGHUP runs
        assert proxy.tls is not None
        assert proxy.tls.reloads == 1
        _, fresh = await asyncio.open_connection(
            "127.0.0.1", proxy.port, ssl=_client_context(new_ca)
        )
        fresh.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", proxy.port, ssl=_client_context(old_ca))
        early.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")  # made before the reload
        status = await asyncio.wait_for(reader.readline(), 5)
        early.close()
        # a broken new key is refused: the certificate in use stays
        Path(key).write_text("not a key")
        await proxy.reload()
        assert proxy.tls.reloads == 1
        _, again = await asyncio.open_connection(
            "127.0.0.1", proxy.port, ssl=_client_context(new_ca)
        )
        again.close()
    assert status.startswith(b"HTTP/1.1 200")


async def test_sighup_reloads_the_certificate_of_a_running_rl_lb_serve(
    backends, tmp_path: Path
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    pool = await backends(1)
    cert, key = _pem_pair(old_ca.issue_cert("127.0.0.1"), tmp_path, "listener")
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        *_python_cli(),
        "serve",
        "--backend",
        pool[0].url,
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        "",
        "--balancer",
        "round-robin",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await _handshake_eventually(port, _client_context(old_ca))
        _pem_pair(new_ca.issue_cert("127.0.0.1"), tmp_path, "listener")
        process.send_signal(1)  # SIGHUP
        await _handshake_eventually(port, _client_context(new_ca))
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


def _python_cli() -> tuple[str, ...]:
    import sys

    return (sys.executable, "-m", "rl_lb.cli")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _handshake_eventually(port: int, context: ssl.SSLContext, timeout: float = 30) -> None:
    """A verified handshake succeeds within `timeout` (the process starts, or reloads)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        except (OSError, ssl.SSLError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return


@pytest.mark.parametrize("broken", ["cert", "key", "missing", "mismatch"])
def test_a_bad_certificate_file_is_one_line_naming_it_and_exit_2(
    ca: trustme.CA, tmp_path: Path, broken: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = _pem_pair(ca.issue_cert("127.0.0.1"), tmp_path, "good")
    _, other_key = _pem_pair(ca.issue_cert("127.0.0.1"), tmp_path, "other")
    bad = str(tmp_path / "bad.pem")
    Path(bad).write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    named = {
        "cert": (bad, key, bad),
        "key": (cert, bad, bad),
        "missing": (str(tmp_path / "nowhere.pem"), key, "nowhere.pem"),
        "mismatch": (cert, other_key, other_key),
    }
    tls_cert, tls_key, culprit = named[broken]
    argv = ["serve", "--backend", "http://127.0.0.1:9", "--admin", "", "--listen", "127.0.0.1:0"]
    assert main([*argv, "--tls-cert", tls_cert, "--tls-key", tls_key]) == 2
    error = capsys.readouterr().err.strip()
    assert culprit in error
    assert len(error.splitlines()) == 1 or culprit in error.splitlines()[0]


def test_a_certificate_without_its_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="tls-key"):
        load_config(None, {"backend": "http://127.0.0.1:9", "tls-cert": __file__})


# -- https:// backends --------------------------------------------------------------------------


async def _get(proxy: ProxyServer, path: str = "/who") -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{proxy.port}{path}") as response,
    ):
        body = await response.json(content_type=None)
        return response.status, body


async def test_https_backends_verified_with_a_ca_file_serve_and_pass_health_checks(
    ca: trustme.CA, started: list[HttpsBackend], tmp_path: Path, client
) -> None:
    backend = await _https_backend(started, ca.issue_cert("127.0.0.1"))
    config = proxy_config(
        [], backends=(backend.url,), backend_ca_file=_ca_file(ca, tmp_path), control=FAST_HEALTH
    )
    async with ProxyServer(config) as proxy:
        status, body = await _get(proxy)
        assert await proxy.monitor.check(proxy.monitor.backends[0])
        _, state = await admin_json(client, proxy, "GET", "/admin/state")
    assert (status, body["proto"]) == (200, "http")
    row = state["backends"][0]
    assert (row["healthy"], row["failure"]) == (True, None)


async def test_an_unverifiable_backend_certificate_is_refused_and_the_state_says_why(
    ca: trustme.CA, started: list[HttpsBackend], tmp_path: Path, client
) -> None:
    stranger = trustme.CA()  # signs the backend; the proxy trusts only `ca`
    backend = await _https_backend(started, stranger.issue_cert("127.0.0.1"))
    config = proxy_config(
        [], backends=(backend.url,), backend_ca_file=_ca_file(ca, tmp_path), control=FAST_HEALTH
    )
    async with ProxyServer(config) as proxy:
        status, body = await _get(proxy)
        found = proxy.monitor.backends[0]
        await eventually(lambda: found.failure is not None)
        _, state = await admin_json(client, proxy, "GET", "/admin/state")
    assert status == 502
    assert "certificate verify failed" in body["error"]
    assert state["backends"][0]["failure"].startswith("TLS certificate rejected")


async def test_the_sni_override_names_the_backend_in_the_handshake_and_the_check(
    ca: trustme.CA, started: list[HttpsBackend], tmp_path: Path
) -> None:
    backend = await _https_backend(started, ca.issue_cert("api.internal"))  # not 127.0.0.1
    ca_file = _ca_file(ca, tmp_path)
    plain = proxy_config([], backends=(backend.url,), backend_ca_file=ca_file)
    async with ProxyServer(plain) as proxy:
        refused, _ = await _get(proxy)
    named = proxy_config(
        [], backends=(backend.url,), backend_ca_file=ca_file, backend_sni="api.internal"
    )
    async with ProxyServer(named) as proxy:
        served, _ = await _get(proxy)
        assert await proxy.monitor.check(proxy.monitor.backends[0])  # health checks too
    assert (refused, served) == (502, 200)


async def test_mtls_backends_get_the_client_certificate(
    ca: trustme.CA, started: list[HttpsBackend], tmp_path: Path
) -> None:
    backend = await _https_backend(started, ca.issue_cert("127.0.0.1"), client_ca=ca)
    ca_file = _ca_file(ca, tmp_path)
    without = proxy_config([], backends=(backend.url,), backend_ca_file=ca_file)
    async with ProxyServer(without) as proxy:
        refused, _ = await _get(proxy)
    client_cert, client_key = _pem_pair(
        ca.issue_cert("rl-lb.proxy", common_name="rl-lb.proxy"), tmp_path, "client"
    )
    with_cert = proxy_config(
        [],
        backends=(backend.url,),
        backend_ca_file=ca_file,
        backend_client_cert=client_cert,
        backend_client_key=client_key,
    )
    async with ProxyServer(with_cert) as proxy:
        served, body = await _get(proxy)
    assert refused == 502
    assert (served, body["client"]) == (200, "rl-lb.proxy")
