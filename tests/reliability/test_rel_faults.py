"""Backend faults under a steady open-loop load: every client request gets exactly one answer,
idempotent requests that meet a dead backend go elsewhere, the faulty backend leaves rotation
within the documented bound and comes back once it recovers, and every answer the proxy makes
itself carries its status and reason."""

from __future__ import annotations

import asyncio
import math
import signal
import time

import aiohttp
import pytest
from rel_helpers import Background, ProcBackend, eventually, open_loop, proxy_settings

from serving.app import ProxyServer

RATE = 150.0
"""Requests/s: enough that a fault meets requests in flight, light enough for 2 shared cores."""
HEALTH_BOUND_S = 2.0
"""Generous bound for leaving rotation by health checks: 2 failed checks at 0.2 s intervals with
a 0.3 s timeout take about 1 s."""
HUNG_BOUND = 6
"""504s a hung backend may cost: the requests waiting on it when it stopped, and the few the
picker sends before their in-flight count turns it away."""


def in_rotation(proxy: ProxyServer, backend: ProcBackend) -> bool:
    monitor = proxy.monitor
    found = monitor.find(backend.url)
    assert found is not None
    return bool(monitor.metrics.available[found.index])


async def served_again(backend: ProcBackend, client: aiohttp.ClientSession) -> bool:
    return await backend.hits(client) > 0


def url_of(proxy: ProxyServer) -> str:
    return f"http://127.0.0.1:{proxy.port}/work"


async def test_a_sigkilled_backend_is_retried_around_ejected_and_welcomed_back(
    proc_backends, client
) -> None:
    b0, b1 = await proc_backends(), await proc_backends()
    config = proxy_settings([b0.url, b1.url], balancer="round-robin")
    async with (
        ProxyServer(config) as proxy,
        Background(open_loop(url_of(proxy), RATE, 5.0)) as load,
    ):
        await asyncio.sleep(1.0)
        await b0.kill()
        await eventually(lambda: not in_rotation(proxy, b0), timeout=HEALTH_BOUND_S)
        await asyncio.sleep(0.5)
        await b0.restart()
        await eventually(lambda: in_rotation(proxy, b0), timeout=HEALTH_BOUND_S)
        await eventually(lambda: served_again(b0, client), what="traffic back on the revived one")
        run = await load
        ejections = proxy.monitor.detector.times_ejected[0]
        retries = proxy.stats.retries
    run.check_every_request_answered()
    assert run.statuses() == {200: run.scheduled}, run.reasons()
    assert retries >= 1
    assert ejections == 1, "75 failing requests/s must trip the 5-failure rule first"


async def test_a_sigstopped_backend_times_out_leaves_rotation_and_returns_on_sigcont(
    proc_backends,
) -> None:
    """Least-latency (the fallback of every learned balancer): the hung backend's in-flight count
    turns the picker away before the read timeout, so few requests wait for it. Traffic comes
    back only as its error penalty decays (see docs/reliability.md), so the return is checked
    as rotation and weight; the round-robin tests check returning traffic."""
    b0, b1 = await proc_backends(), await proc_backends()
    async with (
        ProxyServer(proxy_settings([b0.url, b1.url])) as proxy,
        Background(open_loop(url_of(proxy), RATE, 4.0)) as load,
    ):
        await asyncio.sleep(1.0)
        b0.signal(signal.SIGSTOP)
        await eventually(lambda: not in_rotation(proxy, b0), timeout=HEALTH_BOUND_S)
        await asyncio.sleep(0.5)
        b0.signal(signal.SIGCONT)
        await eventually(lambda: in_rotation(proxy, b0), timeout=HEALTH_BOUND_S)
        await eventually(lambda: proxy.controller.weights[b0.url] > 0, timeout=1.0)
        run = await load
    run.check_every_request_answered()
    statuses = run.statuses()
    assert set(statuses) <= {200, 504}, run.reasons()
    assert set(run.reasons()) <= {(504, "upstream-timeout")}
    assert statuses[504] <= HUNG_BOUND, "a hung backend kept being picked"


async def test_a_backend_answering_garbage_is_ejected_after_five_failures(
    proc_backends, client
) -> None:
    """Health checks are off so that the request path alone must eject it; once it answers HTTP
    again (restarted on its port) it is back when the ejection runs out."""
    b0, b1 = await proc_backends("garbage"), await proc_backends()
    config = proxy_settings(
        [b0.url, b1.url], balancer="round-robin", health_path=None, base_ejection_s=2.0
    )
    async with (
        ProxyServer(config) as proxy,
        Background(open_loop(url_of(proxy), RATE, 4.0)) as load,
    ):
        await eventually(lambda: not in_rotation(proxy, b0), timeout=HEALTH_BOUND_S)
        out_at = time.monotonic()
        b0.mode = "ok"
        await b0.restart()  # a slow restart may outlast the ejection: refused, ejected again
        await eventually(lambda: in_rotation(proxy, b0), timeout=3.0)
        await eventually(lambda: served_again(b0, client), what="traffic back on the revived one")
        run = await load
        ejections = proxy.monitor.detector.times_ejected[0]
    run.check_every_request_answered()
    assert set(run.statuses()) <= {200, 502}, run.reasons()
    assert set(run.reasons()) == {(502, "upstream-error")}
    assert all(o.sent_at < out_at for o in run.outcomes if o.status == 502)
    assert ejections >= 1


async def left_rotation_at(proxy: ProxyServer, backend: ProcBackend) -> float:
    """The first moment (time.monotonic) the backend is seen out of rotation."""
    while in_rotation(proxy, backend):
        await asyncio.sleep(0.01)
    return time.monotonic()


@pytest.mark.parametrize("balancer", ["least-latency", "round-robin"])
async def test_a_backend_that_breaks_off_mid_body_stops_being_fed(proc_backends, balancer) -> None:
    """Its status line is a fine 200, so only the broken body can tell: that must count as a
    failure, or least-latency keeps feeding what looks like the fastest backend in the pool.
    Either the 5th cut ejects it and no request sent later is cut, or the picker turned away
    before 5 (least-latency's error penalty)."""
    b0, b1 = await proc_backends("midbody"), await proc_backends()
    config = proxy_settings([b0.url, b1.url], balancer=balancer, health_path=None)
    async with ProxyServer(config) as proxy, Background(left_rotation_at(proxy, b0)) as out:
        run = await open_loop(url_of(proxy), RATE, 2.0)
        broke = proxy.stats.errors["upstream-broke"]
        ejections = proxy.monitor.detector.times_ejected[0]
        out_at = out.result() if out.done() else math.inf
    assert len(run.outcomes) == run.scheduled
    cut = [o for o in run.outcomes if o.status == 0]
    assert {o.failure for o in cut} == {"ClientPayloadError"}, "a cut answer must not hang"
    assert all(o.status in (0, 200) for o in run.outcomes)
    assert broke == len(cut)
    if ejections == 0:
        assert len(cut) < config.consecutive_failures, f"{len(cut)} cut, never ejected"
    else:
        assert ejections == 1
        assert all(o.sent_at < out_at for o in cut), "cut answers after the ejection"
    if balancer == "round-robin":
        assert ejections == 1


async def test_the_fast_failure_trap_is_ejected_after_five_503s(proc_backends) -> None:
    """Round-robin keeps feeding it until the outlier detector ejects it (health checks are off
    so that the request path alone must do it); its 503s pass through as the backend's own."""
    b0, b1 = await proc_backends("fast503"), await proc_backends()
    config = proxy_settings([b0.url, b1.url], balancer="round-robin", health_path=None)
    async with (
        ProxyServer(config) as proxy,
        Background(open_loop(url_of(proxy), RATE, 2.0)) as load,
    ):
        await eventually(lambda: not in_rotation(proxy, b0), timeout=HEALTH_BOUND_S)
        out_at = time.monotonic()
        run = await load
        ejections = proxy.monitor.detector.times_ejected[0]
    run.check_every_request_answered()
    assert set(run.statuses()) <= {200, 503}
    assert set(run.reasons()) <= {(503, "")}, "the proxy had a live backend all along"
    assert ejections == 1
    assert all(o.sent_at < out_at for o in run.outcomes if o.status == 503)


async def test_least_latency_does_not_fall_into_the_fast_failure_trap(proc_backends) -> None:
    """Least-latency counts a 503 as a 5 s latency (the error penalty), so the 1 ms failures
    do not look fast: it turns away before the ejection threshold."""
    b0, b1 = await proc_backends("fast503"), await proc_backends()
    async with ProxyServer(proxy_settings([b0.url, b1.url], health_path=None)) as proxy:
        run = await open_loop(url_of(proxy), RATE, 2.0)
    run.check_every_request_answered()
    first = run.outcomes[0].sent_at
    failed = [o.sent_at - first for o in run.outcomes if o.status != 200]
    assert {o.status for o in run.outcomes} <= {200, 503}
    assert failed, "the new backend was never probed"
    assert max(failed) < 0.5, "least-latency kept feeding the fast-failing backend"


async def test_all_backends_down_then_back(proc_backends) -> None:
    b0, b1 = await proc_backends(), await proc_backends()
    async with (
        ProxyServer(proxy_settings([b0.url, b1.url])) as proxy,
        Background(open_loop(url_of(proxy), RATE, 6.0)) as load,
    ):
        await asyncio.sleep(1.0)
        await asyncio.gather(b0.kill(), b1.kill())
        await eventually(lambda: not proxy.ready, timeout=HEALTH_BOUND_S)
        await asyncio.sleep(0.5)
        await asyncio.gather(b0.restart(), b1.restart())
        await eventually(lambda: proxy.ready, timeout=HEALTH_BOUND_S)
        back_at = time.monotonic()
        run = await load
    run.check_every_request_answered()
    assert set(run.statuses()) <= {200, 502, 503}
    cut_off = {(502, "connect-failed"), (502, "upstream-reset")}  # in flight, or just picked
    assert set(run.reasons()) <= cut_off | {(503, "no-backend")}
    assert run.reasons()[503, "no-backend"] > 0
    assert all(o.retry_after == "1" for o in run.outcomes if o.status == 503)
    assert all(o.status == 200 for o in run.outcomes if o.sent_at > back_at + 0.2)
    assert sum(o.status == 200 for o in run.outcomes if o.sent_at > back_at) >= 20
