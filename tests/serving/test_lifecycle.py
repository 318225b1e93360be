"""Start-up, graceful shutdown and signals, in-process and through `rl-lb serve`."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from serving_helpers import eventually, proxy_config, write_model

from serving.app import ProxyServer

RL_LB = str(Path(sys.executable).with_name("rl-lb"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_stop_finishes_an_open_request_and_refuses_new_ones(backends, client) -> None:
    pool = await backends(1)
    proxy = ProxyServer(proxy_config(pool))
    await proxy.start()
    url = f"http://127.0.0.1:{proxy.port}"
    slow = asyncio.create_task(client.get(f"{url}/sleep/0.5"))
    await eventually(lambda: pool[0].hits == 1)
    stopping = asyncio.create_task(proxy.stop())
    await asyncio.sleep(0.1)
    assert not proxy.ready
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.get(f"{url}/")
    async with await slow as response:
        assert response.status == 200
        assert await response.text() == "b0"
    await asyncio.wait_for(stopping, 10)


async def _get_json(client: aiohttp.ClientSession, url: str) -> object:
    async with client.get(url) as response:
        return await response.json()


async def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert process.poll() is None, "the proxy exited"
            assert loop.time() - started < timeout, "the proxy did not start in time"
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return


async def _wait_exit(process: subprocess.Popen[bytes], timeout: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while process.poll() is None:
        if loop.time() > deadline:
            process.kill()
            raise AssertionError("the proxy did not exit in time")
        await asyncio.sleep(0.05)
    return process.returncode


async def test_serve_starts_reloads_on_sighup_and_stops_on_sigterm(
    backends, client, tmp_path: Path
) -> None:
    b0, b1 = await backends(2)
    port, admin = free_port(), free_port()
    config = tmp_path / "proxy.toml"
    settings = f'listen = "127.0.0.1:{port}"\nhealth-interval = 0.2\ncontrol-interval = 0.1\n'
    config.write_text(settings + f'backend = ["{b0.url}"]\n')
    log = (tmp_path / "stderr.log").open("wb")
    process = subprocess.Popen(
        [RL_LB, "serve", "--config", str(config), "--admin", f"127.0.0.1:{admin}"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        await _wait_for_port(port, process, timeout=20)
        async with client.get(f"http://127.0.0.1:{port}/") as response:
            assert await response.text() == "b0"
        config.write_text(settings + f'backend = ["{b1.url}"]\nbalancer = "jsq"\n')
        process.send_signal(signal.SIGHUP)
        state_url = f"http://127.0.0.1:{admin}/admin/state"
        for _ in range(100):
            state = await _get_json(client, state_url)
            if [b["url"] for b in state["backends"]] == [b1.url]:  # type: ignore[index]
                break
            await asyncio.sleep(0.05)
        assert state["balancer"] == "jsq"  # type: ignore[index]
        async with client.get(f"http://127.0.0.1:{port}/") as response:
            assert await response.text() == "b1"
        process.send_signal(signal.SIGTERM)
        assert await _wait_exit(process, timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.slow
async def test_several_workers_share_the_port(backends, client) -> None:
    pool = await backends(1)
    port = free_port()
    process = subprocess.Popen(
        [
            *(RL_LB, "serve", "--backend", pool[0].url, "--listen", f"127.0.0.1:{port}"),
            *("--workers", "2", "--admin", "", "--health-path", ""),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _wait_for_port(port, process, timeout=20)
        for _ in range(20):
            async with client.get(f"http://127.0.0.1:{port}/") as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert await _wait_exit(process, timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_proxy_with_a_learned_policy_never_imports_torch(tmp_path: Path) -> None:
    model = write_model(tmp_path / "model")
    code = (
        "import sys, serving.proxy_cli, serving.app\n"
        "from rl_lb.balancers import make_balancer\n"
        f"make_balancer({json.dumps('learned:' + str(model))})\n"
        "print('torch' in sys.modules, 'serving.app' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "True"]
