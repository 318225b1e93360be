"""`--workers N` is one proxy to an operator (issue 20): worker 0's /metrics counts every
worker's requests, and an admin change reaches every worker (or says which did not)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from serving_helpers import TestBackend
from test_lifecycle import _wait_exit, _wait_for_port, free_port

from serving.workers import merge_expositions

RL_LB = str(Path(sys.executable).with_name("rl-lb"))


def _count(text: str, name: str) -> dict[str, float]:
    """`{worker: value}` summed over the other labels, for one sample name."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            worker = labels.split('worker="', 1)[1].split('"', 1)[0]
            found[worker] = found.get(worker, 0.0) + float(value)
    return found


async def _admin(
    client: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with client.request(method, url, json=body) as response:
        return response.status, await response.json()


@pytest.mark.slow
async def test_two_workers_are_one_proxy_to_scrapes_and_admin_changes(
    backends: Any, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pool: list[TestBackend] = await backends(2)
    port, admin = free_port(), free_port()
    log = (tmp_path / "stderr.log").open("wb")
    process = subprocess.Popen(
        [
            *(RL_LB, "serve", "--backend", pool[0].url, "--listen", f"127.0.0.1:{port}"),
            *("--workers", "2", "--admin", f"127.0.0.1:{admin}", "--health-path", ""),
            *("--balancer", "round-robin", "--control-interval", "0.2"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{admin}"
    try:
        await _wait_for_port(port, process, timeout=30)
        await _wait_for_port(admin, process, timeout=30)
        # Worker 1 publishes its admin port once it serves: wait until the state lists it.
        for _ in range(300):
            _, state = await _admin(client, "GET", f"{base}/admin/state")
            if state.get("workers", {}).get("1", {}).get("answered"):
                break
            await asyncio.sleep(0.1)
        assert state["workers"]["1"]["answered"], state.get("workers")
        sent = 200
        for _ in range(sent):  # a new connection each time: the kernel spreads them
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.get(f"http://127.0.0.1:{port}/x") as r,
            ):
                assert r.status == 200
        async with client.get(f"{base}/metrics") as response:
            text = await response.text()
        per_worker = _count(text, "rl_lb_requests_total")
        assert sum(per_worker.values()) == sent, per_worker
        assert set(per_worker) == {"0", "1"}
        assert _count(text, "rl_lb_worker_up") == {"0": 1.0, "1": 1.0}

        status, reply = await _admin(client, "POST", f"{base}/admin/backends", {"url": pool[1].url})
        assert status == 201, reply
        assert reply["workers"] == {"0": 201, "1": 201}
        _, state = await _admin(client, "GET", f"{base}/admin/state")
        assert [b["url"] for b in state["backends"]] == [pool[0].url, pool[1].url]
        assert state["workers"]["1"]["backends"] == [pool[0].url, pool[1].url]
        status, reply = await _admin(client, "POST", f"{base}/admin/backends", {"url": "nope"})
        assert status == 400, reply  # refused by worker 0: the others are not asked
        assert "workers" not in reply
        process.send_signal(signal.SIGTERM)
        assert await _wait_exit(process, timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def test_merged_expositions_label_every_sample_with_its_worker() -> None:
    a = b'# HELP x_total X\n# TYPE x_total counter\nx_total{code="2xx"} 3.0\n'
    b = b'# HELP x_total X\n# TYPE x_total counter\nx_total{code="2xx"} 4.0\n'
    text = merge_expositions({0: a, 1: b}, {0: True, 1: True, 2: False}).decode()
    assert 'x_total{code="2xx",worker="0"} 3.0' in text
    assert 'x_total{code="2xx",worker="1"} 4.0' in text
    assert text.count("# TYPE x_total counter") == 1
    assert 'rl_lb_worker_up{worker="2"} 0.0' in text
