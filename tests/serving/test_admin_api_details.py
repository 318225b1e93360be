"""What an operator meets first with `rl-lb serve` (issue 13): ports in use, a model that cannot
load, misspelled settings, the start-up line, the admin API's probes, tokens, replies and error
bodies, and why an http(s) backend is unhealthy.

Everything runs on loopback with ephemeral ports; the https backends use a throw-away CA
(trustme), trusted by the proxy through SSL_CERT_FILE as an operator would trust a private CA.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from serving_helpers import admin_json, eventually, proxy_config

from rl_lb.cli import main
from rl_lb.errors import ConfigError, ModelError
from serving.app import ProxyServer
from serving.config import load_config

FAST_HEALTH = {"health-interval": 0.1, "health-timeout": 0.5, "unhealthy-threshold": 1}


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process (here: this socket) already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# -- start-up refusals: one line, exit 2 ----------------------------------------------------


@pytest.mark.parametrize("flag", ["--listen", "--admin"])
def test_a_port_in_use_is_one_line_naming_the_flag(
    flag: str, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "--admin" if flag == "--listen" else "--listen"
    argv = ["serve", "-b", "http://127.0.0.1:9", "--balancer", "least-latency"]
    code = main([*argv, flag, f"127.0.0.1:{taken_port}", other, "127.0.0.1:0"])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{flag} 127.0.0.1:{taken_port}: address already in use" in line
    assert "Traceback" not in line


async def test_an_embedded_proxy_releases_what_it_bound_when_the_admin_port_is_taken(
    taken_port: int,
) -> None:
    config = proxy_config([], backends=("http://127.0.0.1:9",), admin=f"127.0.0.1:{taken_port}")
    server = ProxyServer(config)
    with pytest.raises(ConfigError, match=r"--admin .*address already in use"):
        await server.start()
    assert server._server is not None
    assert not server._server.is_serving()


def test_a_model_that_cannot_load_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    argv = ["serve", "-b", "http://127.0.0.1:9", "--listen", "127.0.0.1:0", "--admin", ""]
    assert main([*argv, "--balancer", f"learned:{missing}"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--balancer learned:{missing}: the model cannot load" in line
    assert "--allow-fallback-start" in line
    assert main([*argv, "--policy", str(missing)]) == 2
    assert f"--policy {missing}" in _one_error_line(capsys.readouterr().err)


async def test_allow_fallback_start_serves_the_fallback_and_says_why(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    refused = proxy_config([], backends=("http://127.0.0.1:9",), balancer="learned", policy=missing)
    with pytest.raises(ModelError, match="no such model"):
        await ProxyServer(refused).start()
    allowed = proxy_config(
        [],
        backends=("http://127.0.0.1:9",),
        balancer="learned",
        policy=missing,
        allow_fallback_start=True,
    )
    async with ProxyServer(allowed) as proxy:
        assert (proxy.controller.mode, proxy.controller.reason) == ("fallback", "load-failed")


def test_a_misspelled_key_or_balancer_gets_a_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('backend = ["http://127.0.0.1:9"]\ncontroll-interval = 0.5\n')
    assert main(["serve", "--config", str(path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "controll-interval: unknown key (did you mean 'control-interval'?" in line
    assert main(["serve", "-b", "http://127.0.0.1:9", "--balancer", "least-latncy"]) == 2
    assert "did you mean 'least-latency'?" in _one_error_line(capsys.readouterr().err)
    assert main(["serve", "-b", "http://127.0.0.1:9", "--balancer", "capacity+p2c-latncy"]) == 2
    assert "did you mean 'capacity+p2c-latency'?" in _one_error_line(capsys.readouterr().err)


async def test_the_start_up_line_counts_backends_and_names_the_admin_address(
    backends, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await backends(1)
    caplog.set_level(logging.INFO, logger="rl_lb.serving")
    async with ProxyServer(proxy_config(pool)) as proxy:
        line = next(r.getMessage() for r in caplog.records if "proxy on" in r.getMessage())
        assert ", 1 backend, " in line
        assert f"admin API on 127.0.0.1:{proxy.admin_port}" in line


# -- the admin API ----------------------------------------------------------------------------


async def test_probes_answer_without_a_token_and_metrics_has_its_own(backends, client) -> None:
    pool = await backends(1)
    config = proxy_config(pool, admin_token="admin-secret", metrics_token="scrape-secret")
    async with ProxyServer(config) as proxy:
        await eventually(lambda: proxy.ready)
        healthz, _ = await admin_json(client, proxy, "GET", "/healthz")
        readyz, _ = await admin_json(client, proxy, "GET", "/readyz")
        metrics = {
            token: (await admin_json(client, proxy, "GET", "/metrics", token=token))[0]
            for token in (None, "admin-secret", "scrape-secret")
        }
        state, _ = await admin_json(client, proxy, "GET", "/admin/state", token="scrape-secret")
    assert (healthz, readyz) == (200, 200)
    assert metrics == {None: 401, "admin-secret": 401, "scrape-secret": 200}
    assert state == 401  # the metrics token opens /metrics only


async def test_metrics_are_open_without_a_metrics_token(backends, client) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, admin_token="admin-secret")) as proxy:
        status, body = await admin_json(client, proxy, "GET", "/metrics")
    assert status == 200
    assert "rl_lb" in body


async def test_posted_weights_say_when_they_expire_and_how_many_are_expected(
    backends, client
) -> None:
    pool = await backends(2)
    async with ProxyServer(proxy_config(pool, control_interval_s=0.5)) as proxy:
        await eventually(lambda: proxy.ready)
        ok, reply = await admin_json(client, proxy, "POST", "/admin/weights", [0.25, 0.75])
        wrong, refusal = await admin_json(client, proxy, "POST", "/admin/weights", [1.0])
    assert ok == 200
    assert reply["expires_in_s"] == 1.0
    assert "expire after 2 control intervals (1 s)" in reply["note"]
    assert wrong == 400
    assert refusal == {
        "error": "weights: wrong shape: expected 2 (one per backend, in /admin/state order), got 1",
        "status": 400,
    }


async def test_every_error_body_has_error_and_status(backends, client) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, admin_token="t")) as proxy:
        port = proxy.admin_port
        auth = {"Authorization": "Bearer t"}
        calls = [
            ("GET", "/admin/nope", auth, None),
            ("PUT", "/admin/weights", auth, None),
            ("POST", "/admin/backends", auth, b"{not json"),
            ("POST", "/admin/backends", auth, b'{"address": "x"}'),
            ("POST", "/admin/weights", auth, b'{"weights": "heavy"}'),
            ("GET", "/admin/state", {}, None),
        ]
        bodies = []
        for method, path, headers, data in calls:
            url = f"http://127.0.0.1:{port}{path}"
            async with client.request(method, url, headers=headers, data=data) as response:
                bodies.append((response.status, await response.json()))
    expected_statuses = [404, 405, 400, 400, 400, 401]
    assert [status for status, _ in bodies] == expected_statuses
    for status, body in bodies:
        assert set(body) == {"error", "status"}, body
        assert body["status"] == status
        assert isinstance(body["error"], str)
        assert body["error"]


# -- https backends and why a backend is unhealthy ---------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


class HttpsBackend:
    """A tiny https backend (certificate for 127.0.0.1 signed by the test CA)."""

    def __init__(self, ca: trustme.CA) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self.context)
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", _tls_ok)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.context).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def _tls_ok(request: web.Request) -> web.Response:
    return web.Response(text="tls ok")


@pytest.fixture
async def https_backend(ca: trustme.CA) -> AsyncIterator[HttpsBackend]:
    backend = HttpsBackend(ca)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


def _trust(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the test CA as an operator trusts a private one: SSL_CERT_FILE."""
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))


async def _state_of(client: aiohttp.ClientSession, proxy: ProxyServer, url: str) -> dict:
    _, state = await admin_json(client, proxy, "GET", "/admin/state")
    return next(b for b in state["backends"] if b["url"] == url)


async def test_an_https_backend_with_a_trusted_ca_serves_and_passes_its_checks(
    ca: trustme.CA,
    https_backend: HttpsBackend,
    client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _trust(ca, tmp_path, monkeypatch)
    config = proxy_config([], backends=(https_backend.url,), control=FAST_HEALTH)
    async with ProxyServer(config) as proxy:
        async with client.get(f"http://127.0.0.1:{proxy.port}/hello") as response:
            assert (response.status, await response.text()) == (200, "tls ok")
        assert await proxy.monitor.check(proxy.monitor.backends[0])
        row = await _state_of(client, proxy, https_backend.url)
    assert (row["healthy"], row["failure"]) == (True, None)


async def test_an_https_backend_added_live_shows_why_it_is_unhealthy(
    https_backend: HttpsBackend, backends, client, caplog: pytest.LogCaptureFixture
) -> None:
    """The test CA is not trusted here: the certificate is rejected, and the state and the log
    say so (not only an error rate)."""
    pool = await backends(1)
    caplog.set_level(logging.WARNING, logger="rl_lb.serving")
    async with ProxyServer(proxy_config(pool, control=FAST_HEALTH)) as proxy:
        added, _ = await admin_json(
            client, proxy, "POST", "/admin/backends", {"url": https_backend.url}
        )
        assert added == 201
        backend = proxy.monitor.find(https_backend.url)
        assert backend is not None
        await eventually(lambda: backend.failure is not None)
        row = await _state_of(client, proxy, https_backend.url)
    assert not row["healthy"]
    assert row["failure"].startswith("TLS certificate rejected")
    logged = [r.getMessage() for r in caplog.records if "unhealthy" in r.getMessage()]
    assert any(https_backend.url in m and "TLS certificate rejected" in m for m in logged)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{closed}", "connection refused"),
        ("http://name.invalid:80", "DNS lookup failed"),
        ("{plain}/status", "health check answered status"),
    ],
)
async def test_the_reason_of_a_failed_check_is_named(
    url: str, reason: str, backends, client
) -> None:
    pool = await backends(1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    pool[0].health_status = 503
    target = url.format(closed=closed, plain=pool[0].url).removesuffix("/status")
    config = proxy_config([], backends=(target,), control=FAST_HEALTH)
    async with ProxyServer(config) as proxy:
        assert not await proxy.monitor.check(proxy.monitor.backends[0])
        row = await _state_of(client, proxy, target)
    assert row["failure"].startswith(reason), row["failure"]


async def test_a_restart_only_change_is_named_by_its_file_key(
    backends, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await backends(1)
    path = tmp_path / "proxy.toml"
    lines = [
        f'backend = ["{pool[0].url}"]',
        'balancer = "least-latency"',
        'listen = "127.0.0.1:0"',
        'admin = "127.0.0.1:0"',
    ]
    path.write_text("\n".join([*lines, "control-interval = 0.1"]) + "\n")
    config = load_config(str(path))
    caplog.set_level(logging.WARNING, logger="rl_lb.serving")
    async with ProxyServer(config) as proxy:
        path.write_text("\n".join([*lines, "control-interval = 0.5"]) + "\n")
        assert await proxy.reload()
    warnings = [r.getMessage() for r in caplog.records if "only at restart" in r.getMessage()]
    assert warnings == [f"reload: control-interval in {path} takes effect only at restart"]


def test_a_port_in_use_is_the_only_line_the_command_prints(taken_port: int) -> None:
    """As a user runs it: no traceback, no log line before the error, exit status 2."""
    argv = ["serve", "-b", "http://127.0.0.1:9", "--balancer", "least-latency", "--admin", ""]
    done = subprocess.run(
        [sys.executable, "-m", "rl_lb.cli", *argv, "--listen", f"127.0.0.1:{taken_port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: --listen 127.0.0.1:{taken_port}: address already in use "
        "(stop what uses it or pick another port with --listen HOST:PORT)"
    ]
