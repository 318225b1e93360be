"""Backends that die, hang, fail or fill up: retries, timeouts, 503s, ejection, limits."""

from __future__ import annotations

import asyncio

import aiohttp
from serving_helpers import admin_json, eventually, proxy_config

from serving.app import ProxyServer


async def _request(client: aiohttp.ClientSession, method: str, url: str) -> tuple[int, str]:
    async with client.request(method, url, data=b"body" if method == "POST" else None) as r:
        await r.read()
        return r.status, r.headers.get("X-RL-LB-Error", "")


async def test_a_backend_killed_mid_run_retries_idempotent_requests_only(backends, client) -> None:
    b0, b1 = await backends(2)
    config = proxy_config([b0, b1], balancer="round-robin", health_path=None)
    async with ProxyServer(config) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/sleep/0.6"
        calls = [_request(client, m, url) for m in ("GET", "POST") * 8]
        running = asyncio.gather(*calls)
        await asyncio.sleep(0.2)
        await b0.stop()  # in-flight exchanges on b0 are cut, new connections refused
        first = await asyncio.wait_for(running, 15)
        later = await asyncio.wait_for(
            asyncio.gather(*(_request(client, m, url) for m in ("GET", "POST") * 4)), 15
        )
        retries = proxy.stats.retries
    results = first + later
    gets = [r for k, r in enumerate(results) if k % 2 == 0]
    posts = [r for k, r in enumerate(results) if k % 2 == 1]
    assert all(status == 200 for status, _ in gets)
    assert all(status in (200, 502) for status, _ in posts)
    assert any(status == 502 for status, _ in posts)
    assert all(reason for status, reason in posts if status == 502)
    assert retries >= 1


async def test_a_hung_backend_gives_504_within_the_read_timeout(backends, client) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, read_timeout_s=0.3, health_path=None)) as proxy:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with client.get(f"http://127.0.0.1:{proxy.port}/hang") as response:
            body = await response.json()
        elapsed = loop.time() - started
    assert response.status == 504
    assert response.headers["X-RL-LB-Error"] == "upstream-timeout"
    assert body["status"] == 504
    assert body["backend"] == pool[0].url
    assert elapsed < 3.0


async def test_all_backends_down_gives_503_with_retry_after(backends, client) -> None:
    pool = await backends(2)
    async with ProxyServer(proxy_config(pool)) as proxy:
        for backend in pool:
            await backend.stop()
        await eventually(lambda: not any(proxy.monitor.metrics.healthy))
        async with client.get(f"http://127.0.0.1:{proxy.port}/") as response:
            body = await response.json()
        ready, _ = await admin_json(client, proxy, "GET", "/readyz")
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["X-RL-LB-Error"] == "no-backend"
    assert body == {"error": "no live backend", "status": 503, "backend": None}
    assert ready == 503


async def test_five_failures_eject_and_a_passing_health_check_returns(backends, client) -> None:
    b0, b1 = await backends(2)
    b0.fail_status = b0.health_status = 500
    # Slow start off: the returned backend's first seconds at a tenth of its share would make
    # "it gets requests again" a matter of luck (tests/test_slow_start.py tests the ramp).
    control = {"health-interval": 0.1, "slow-start-window": 0}
    config = proxy_config([b0, b1], balancer="round-robin", control=control)
    async with ProxyServer(config) as proxy:
        base = f"http://127.0.0.1:{proxy.port}/"
        statuses = [(await _request(client, "GET", base))[0] for _ in range(12)]
        _, state = await admin_json(client, proxy, "GET", "/admin/state")
        _, metrics = await admin_json(client, proxy, "GET", "/metrics")
        assert statuses.count(500) == 5  # passed through, and b0 is out after the fifth
        assert state["backends"][0]["ejected"] is True
        assert state["backends"][0]["times_ejected"] == 1
        assert f'rl_lb_backend_ejected{{backend="{b0.url}"}} 1.0' in metrics

        b0.fail_status, b0.health_status = 0, 200
        await eventually(lambda: proxy.monitor.view.available == [True, True])
        await eventually(lambda: proxy.controller.weights[b0.url] > 0)  # the next interval
        hits = b0.hits
        for _ in range(4):
            assert (await _request(client, "GET", base))[0] == 200
    assert b0.hits > hits


async def test_a_full_backend_is_not_picked(backends, client) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, max_in_flight=2, health_path=None)) as proxy:
        url = f"http://127.0.0.1:{proxy.port}"
        hung = [asyncio.create_task(_request(client, "GET", f"{url}/hang")) for _ in range(2)]
        await eventually(lambda: pool[0].hits == 2)
        status, reason = await _request(client, "GET", f"{url}/")
        pool[0].release.set()
        assert [s for s, _ in await asyncio.gather(*hung)] == [200, 200]
        after, _ = await _request(client, "GET", f"{url}/")
    assert (status, reason) == (503, "overloaded")
    assert after == 200


async def test_connections_over_the_limit_are_turned_away(backends) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, max_connections=1)) as proxy:
        _, first = await asyncio.open_connection("127.0.0.1", proxy.port)
        reader, second = await asyncio.open_connection("127.0.0.1", proxy.port)
        answer = await asyncio.wait_for(reader.read(), 5)
        first.close()
        second.close()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"X-RL-LB-Error: max-connections" in answer


async def test_a_slow_request_head_is_cut_off(backends) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, header_timeout_s=0.2)) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    assert pool[0].hits == 0
