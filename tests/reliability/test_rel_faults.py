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
from rel_helpers import (
    SLACK_S,
    Background,
    ProcBackend,
    decisions_bound_s,
    eventually,
    leave_rotation_bound_s,
    open_loop,
    proxy_settings,
    rejoin_rotation_bound_s,
)

from rl_lb.control import EjectionSettings, HealthSettings
from serving.app import ProxyServer

RATE = 150.0
"""Requests/s: enough that a fault meets requests in flight, light enough for 2 shared cores."""
WARM_UP_S = 1.0
"""Load before the fault, so that it meets requests in flight and a pool with history."""
DOWN_S = 0.5
"""How long a backend stays down (or stopped) once the proxy has taken it out of rotation."""
MAX_LOAD_S = 60.0
"""Cap of a load that the test stops itself once it has seen the recovery."""
AFTER_RECOVERY_S = 1.0
"""Load kept up after the recovery: about 150 requests that must all succeed."""
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


def traffic_bound_s(proxy: ProxyServer) -> float:
    """Longest before a backend back in rotation gets a request: the next decision installs
    it in the picker, then round-robin's next turn (two requests at `RATE`)."""
    return decisions_bound_s(proxy.config, 1) + 2 / RATE


async def test_a_sigkilled_backend_is_retried_around_ejected_and_welcomed_back(
    proc_backends, client
) -> None:
    """The request path must eject it (5 failures: about 70 ms of round-robin at `RATE`) before
    the health checks can: their period leaves it `SLACK_S` to do so on a loaded machine."""
    b0, b1 = await proc_backends(), await proc_backends()
    ejection_s = 2 * EjectionSettings().consecutive_failures / RATE + SLACK_S
    config = proxy_settings(
        [b0.url, b1.url],
        balancer="round-robin",
        control={"health-interval": ejection_s / (HealthSettings().unhealthy_threshold - 1)},
    )
    stop = asyncio.Event()
    async with (
        ProxyServer(config) as proxy,
        Background(open_loop(url_of(proxy), RATE, MAX_LOAD_S, stop=stop)) as load,
    ):
        await asyncio.sleep(WARM_UP_S)
        await b0.kill()
        await eventually(lambda: not in_rotation(proxy, b0), leave_rotation_bound_s(config))
        await asyncio.sleep(DOWN_S)
        await b0.restart()
        await eventually(lambda: in_rotation(proxy, b0), rejoin_rotation_bound_s(config))
        await eventually(
            lambda: served_again(b0, client),
            traffic_bound_s(proxy),
            what="traffic back on the revived one",
        )
        stop.set()
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
    config = proxy_settings([b0.url, b1.url])
    stop = asyncio.Event()
    async with (
        ProxyServer(config) as proxy,
        Background(open_loop(url_of(proxy), RATE, MAX_LOAD_S, stop=stop)) as load,
    ):
        await asyncio.sleep(WARM_UP_S)
        b0.signal(signal.SIGSTOP)
        await eventually(lambda: not in_rotation(proxy, b0), leave_rotation_bound_s(config))
        await asyncio.sleep(DOWN_S)
        b0.signal(signal.SIGCONT)
        await eventually(lambda: in_rotation(proxy, b0), rejoin_rotation_bound_s(config))
        await eventually(lambda: proxy.controller.weights[b0.url] > 0, decisions_bound_s(config, 1))
        stop.set()
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
        [b0.url, b1.url], balancer="round-robin", health_path=None, control={"base-ejection": 2.0}
    )
    ejection = config.control.ejection
    stop = asyncio.Event()
    async with (
        ProxyServer(config) as proxy,
        Background(open_loop(url_of(proxy), RATE, MAX_LOAD_S, stop=stop)) as load,
    ):
        # Round-robin sends it every other request: the 5th garbage answer ejects it.
        ejected_within = 2 * ejection.consecutive_failures / RATE + SLACK_S
        await eventually(lambda: not in_rotation(proxy, b0), ejected_within)
        out_at = time.monotonic()
        b0.mode = "ok"
        await b0.restart()  # a slow restart may outlast the ejection: refused, ejected again
        # Back when the ejection in force runs out: the n-th lasts n x base-ejection (one more
        # if a refusal from before the restart is still being counted).
        times = proxy.monitor.detector.times_ejected[0] + 1
        longest = min(times * ejection.base_ejection_s, ejection.max_ejection_s)
        await eventually(lambda: in_rotation(proxy, b0), longest + SLACK_S)
        await eventually(
            lambda: served_again(b0, client),
            traffic_bound_s(proxy),
            what="traffic back on the revived one",
        )
        stop.set()
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
        assert len(cut) < config.control.ejection.consecutive_failures, (
            f"{len(cut)} cut, never ejected"
        )
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
    ejected_within = 2 * config.control.ejection.consecutive_failures / RATE + SLACK_S
    async with (
        ProxyServer(config) as proxy,
        Background(open_loop(url_of(proxy), RATE, 2.0)) as load,
    ):
        await eventually(lambda: not in_rotation(proxy, b0), ejected_within)
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
    failed = [o for o in run.outcomes if o.status != 200]
    assert {o.status for o in run.outcomes} <= {200, 503}
    assert failed, "the new backend was never probed"
    # Once the proxy has recorded one 503 (before the client has it), the 5 s penalty prices
    # that backend out of every comparison: only requests already sent may still have met it.
    first_answered = min(o.answered_at for o in failed)
    late = [o for o in failed if o.sent_at > first_answered]
    assert not late, f"least-latency kept feeding the fast-failing backend ({len(late)} more)"


async def test_all_backends_down_then_back(proc_backends) -> None:
    b0, b1 = await proc_backends(), await proc_backends()
    config = proxy_settings([b0.url, b1.url])
    stop = asyncio.Event()
    async with (
        ProxyServer(config) as proxy,
        Background(open_loop(url_of(proxy), RATE, MAX_LOAD_S, stop=stop)) as load,
    ):
        await asyncio.sleep(WARM_UP_S)
        await asyncio.gather(b0.kill(), b1.kill())
        await eventually(lambda: not proxy.ready, leave_rotation_bound_s(config))
        await asyncio.sleep(DOWN_S)
        await asyncio.gather(b0.restart(), b1.restart())
        await eventually(lambda: proxy.ready, rejoin_rotation_bound_s(config))
        back_at = time.monotonic()
        # docs/reliability.md: every request 200 again from 0.2 s after the first passing
        # check, i.e. two decisions at 0.1 s: counted here in decisions, not seconds.
        settled = proxy.controller.decisions + 2
        await eventually(
            lambda: proxy.controller.decisions >= settled, decisions_bound_s(config, 2)
        )
        settled_at = time.monotonic()
        await asyncio.sleep(AFTER_RECOVERY_S)
        stop.set()
        run = await load
    run.check_every_request_answered()
    assert set(run.statuses()) <= {200, 502, 503}
    cut_off = {(502, "connect-failed"), (502, "upstream-reset")}  # in flight, or just picked
    assert set(run.reasons()) <= cut_off | {(503, "no-backend")}
    assert run.reasons()[503, "no-backend"] > 0
    assert all(o.retry_after == "1" for o in run.outcomes if o.status == 503)
    assert all(o.status == 200 for o in run.outcomes if o.sent_at > settled_at)
    assert sum(o.status == 200 for o in run.outcomes if o.sent_at > back_at) >= 20
