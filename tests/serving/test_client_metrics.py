"""/metrics counts what clients got, not only what backends said (issue 20): the series an SLO
and a burn-rate alert are written on (deploy/prometheus/)."""

from __future__ import annotations

from typing import Any

import aiohttp
from serving_helpers import proxy_config

from serving.app import ProxyServer


def _samples(text: str, name: str) -> dict[str, float]:
    """`{labels: value}` of one metric's samples in an exposition."""
    found = {}
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            key, value = line.rsplit(" ", 1)
            found[key[len(name) :]] = float(value)
    return found


async def test_requests_by_status_class_and_whole_exchange_durations(
    backends: Any, client: aiohttp.ClientSession
) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool)) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        for _ in range(10):
            async with client.get(f"{base}/x") as response:
                assert response.status == 200
        for _ in range(3):
            async with client.get(f"{base}/status/503") as response:
                assert response.status == 503
        async with client.get(f"{base}/status/404") as response:
            assert response.status == 404
        async with client.get(f"{base}/x", headers={"Content-Length": "bad"}) as response:
            assert response.status == 400  # refused by the proxy itself: the client got a 4xx
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as response:
            text = await response.text()
    requests = _samples(text, "rl_lb_requests_total")
    assert requests['{code="2xx"}'] == 10
    assert requests['{code="5xx"}'] == 3
    assert requests['{code="4xx"}'] == 2
    assert requests['{code="broken"}'] == 0
    assert _samples(text, "rl_lb_request_duration_seconds_count") == {"": 15.0}
    assert _samples(text, "rl_lb_request_duration_seconds_sum")[""] > 0
    below_inf = _samples(text, "rl_lb_request_duration_seconds_bucket")['{le="+Inf"}']
    assert below_inf == 15
