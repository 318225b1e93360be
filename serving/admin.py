"""The admin API: state, snapshot, Prometheus metrics, and live changes to the pool and policy.

It listens on its own address (127.0.0.1 by default) so that it is never reachable through the
proxy port. With a token configured, every `/admin/` call must carry `Authorization: Bearer
TOKEN` (compared in constant time); `serving.config` refuses a non-loopback address without one.
`/healthz` and `/readyz` never ask for it (orchestrator probes carry no secret), and `/metrics`
asks for its own token when one is set (a scraper need not hold the admin token). Every error
body has the same two fields, `error` and `status`.

The routes see one worker through `AdminTarget`, which `serving.app.ProxyServer` builds: exactly
what the API reads or changes, so this module never depends on the server that embeds it.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from rl_lb.balancers import Balancer, GuardedBalancer
from rl_lb.errors import RlLbError
from rl_lb.features import FeatureEncoder
from rl_lb.types import SNAPSHOT_COLUMNS, PoolSnapshot
from serving.controller import EXTERNAL_WEIGHTS_LIFETIME, Controller, balancer_spec
from serving.discovery import Discovery
from serving.monitor import Monitor
from serving.prom import CONTENT_TYPE
from serving.workers import Peers, fan_out_middleware

__all__ = ["AdminTarget", "make_admin_app", "policy_info", "read_state", "snapshot_json"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, allow_nan=False))


def _error(message: str, status: int = 400) -> web.Response:
    return _json({"error": message, "status": status}, status)


def _refused(error: RlLbError, status: int = 400) -> web.Response:
    return _error(str(error), status)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": message, "status": 400}), content_type="application/json"
    )


PROBES = frozenset({"/healthz", "/readyz"})
"""Paths answered without a token."""


def policy_info(balancer: Balancer) -> dict[str, Any]:
    """Name and version of the policy behind a balancer (the primary one when guarded)."""
    inner = balancer.primary if isinstance(balancer, GuardedBalancer) else balancer
    policy = inner.policy if inner is not None else None
    return {
        "balancer": balancer.name,
        "policy": getattr(policy, "name", None),
        "version": getattr(policy, "version", None),
        "loaded": inner is not None,
    }


def snapshot_json(snapshot: PoolSnapshot, now: float) -> dict[str, Any]:
    data: dict[str, Any] = {
        "taken_at": snapshot.taken_at,
        "age_s": snapshot.age(now),
        "window_s": snapshot.window_s,
        "names": list(snapshot.names),
    }
    for column in SNAPSHOT_COLUMNS:
        data[column] = _finite(getattr(snapshot, column).tolist())
    return data


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _bad_request("the body is not JSON") from None


def _field(data: Any, *names: str) -> tuple[str, str]:
    if isinstance(data, dict):
        for name in names:
            if isinstance(data.get(name), str):
                return name, data[name]
    raise _bad_request(f"expected a JSON object with {' or '.join(names)}")


@dataclass(frozen=True)
class AdminTarget:
    """The proxy worker the admin API serves: its pool and control loop, its metrics page, and
    whether it is ready."""

    token: str | None
    """The bearer token every `/admin/` call must carry; None: no authentication."""
    monitor: Monitor
    controller: Controller
    render_metrics: Callable[[], bytes]
    """The worker's Prometheus exposition (`GET /metrics`)."""
    is_ready: Callable[[], bool]
    worker: int
    rollout_state: Callable[[], dict[str, Any] | None] = lambda: None
    """The registry rollout's state (serving/rollout.py); None when no alias is followed."""
    metrics_token: str | None = None
    """The bearer token `GET /metrics` must carry; None: open to scrapers."""
    discovery: Discovery | None = None
    """The worker's discovery sources (serving/discovery.py); None when there are none."""
    peers: Peers | None = None
    """The other workers of `--workers N` (serving/workers.py): worker 0 speaks for them."""


def _sources(target: AdminTarget, url: str) -> list[str]:
    """Where a backend comes from: `static` (flag, file, admin API) and/or discovery sources."""
    found = [] if target.discovery is None else target.discovery.sources_of(url)
    return found or ["static"]


def make_admin_app(target: AdminTarget) -> web.Application:
    """The admin routes of one proxy worker."""
    admin_token = _bearer(target.token)
    metrics_token = _bearer(target.metrics_token)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        expected = None if path in PROBES else metrics_token if path == "/metrics" else admin_token
        if expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _error("missing or wrong bearer token", 401)
        return await handler(request)

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp's own refusals (404, 405, 413) get the JSON body every other error has."""
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400 or error.content_type == "application/json":
                raise
            return _error(f"{error.reason}: {request.method} {request.path}", error.status)

    monitor, controller = target.monitor, target.controller

    async def state(request: web.Request) -> web.Response:
        snapshot = controller.current_snapshot()
        detector = monitor.detector
        backends = []
        for b, row in zip(monitor.backends, snapshot.backends, strict=True):
            backends.append(
                {
                    "url": b.url,
                    "healthy": row.healthy,
                    "ejected": row.ejected,
                    "times_ejected": detector.times_ejected[b.index],
                    "draining": b.draining,
                    "in_flight": row.in_flight,
                    "open_exchanges": b.active,
                    "ewma_s": _finite(row.ewma_s),
                    "p50_s": _finite(row.p50_s),
                    "p99_s": _finite(row.p99_s),
                    "error_rate": row.error_rate,
                    "throughput_rps": row.throughput_rps,
                    "weight": row.weight,
                    "failure": b.failure,
                    "sources": _sources(target, b.url),
                }
            )
        external = controller.external
        return _json(
            {
                "backends": backends,
                "mode": controller.mode,
                "reason": controller.reason,
                "fallback_counts": dict(controller.fallback_counts),
                "mode_changes": controller.switches,
                "mode_changes_to": dict(controller.switch_counts),
                "outcome_guard": controller.guard_state(),
                "prequal": controller.prober.state(),
                "rollout": target.rollout_state(),
                "discovery": None if target.discovery is None else target.discovery.state(),
                "decisions": controller.decisions,
                **policy_info(controller.balancer),
                "external_weights": None if external is None else external.fixed.values.tolist(),
                "control_interval_s": controller.interval,
                "metrics_delay_s": controller.delay,
                "inference_s": _finite(controller.inference_s),
                "ready": target.is_ready(),
                "worker": target.worker,
            }
        )

    async def snapshot(request: web.Request) -> web.Response:
        current = controller.snapshot or controller.current_snapshot()
        data = snapshot_json(current, monitor.clock())
        encoder = FeatureEncoder()
        data["observation"] = encoder.encode(current).tolist() if len(current) else None
        data["feature_names"] = list(encoder.names)
        return _json(data)

    async def post_policy(request: web.Request) -> web.Response:
        key, value = _field(await _body(request), "path", "uri", "balancer")
        spec = value if key == "balancer" else balancer_spec("learned", value)
        try:
            installed = await controller.swap_balancer(spec)
        except RlLbError as error:
            return _refused(error)
        return _json(
            {**policy_info(installed), "mode": controller.mode, "reason": controller.reason}
        )

    async def post_weights(request: web.Request) -> web.Response:
        data = await _body(request)
        weights = data.get("weights") if isinstance(data, dict) else data
        if not isinstance(weights, list):
            return _error("expected a JSON list of weights")
        count = len(monitor.backends)
        if len(weights) != count:
            return _error(
                f"weights: wrong shape: expected {count} (one per backend, in /admin/state order), "
                f"got {len(weights)}"
            )
        try:
            decision = controller.set_external(weights)
        except RlLbError as error:
            return _refused(error)
        lifetime = EXTERNAL_WEIGHTS_LIFETIME * controller.interval
        return _json(
            {
                "mode": decision.mode,
                "weights": decision.weights.tolist(),
                "expires_in_s": lifetime,
                "note": f"these weights expire after {EXTERNAL_WEIGHTS_LIFETIME} control "
                f"intervals ({lifetime:g} s) unless posted again; then the fallback decides",
            }
        )

    async def delete_weights(request: web.Request) -> web.Response:
        decision = controller.clear_external()
        return _json({"mode": decision.mode, "reason": decision.reason})

    async def post_backend(request: web.Request) -> web.Response:
        _, url = _field(await _body(request), "url")
        try:
            backend = monitor.add(url)
        except RlLbError as error:
            return _refused(error)
        return _json({"url": backend.url, "backends": len(monitor.backends)}, 201)

    async def delete_backend(request: web.Request) -> web.Response:
        _, url = _field(await _body(request), "url")
        try:
            backend = monitor.drain(url)
        except RlLbError as error:
            return _refused(error, 404)
        return _json({"url": backend.url, "draining": backend.index >= 0}, 202)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=target.render_metrics(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = target.is_ready()
        return _json({"ready": ready}, 200 if ready else 503)

    middlewares = [json_errors, authenticate]
    if target.peers is not None and target.worker == 0:
        middlewares.append(fan_out_middleware(target.peers))
    app = web.Application(middlewares=middlewares)
    app.add_routes(
        [
            web.get("/admin/state", state),
            web.get("/admin/snapshot", snapshot),
            web.post("/admin/policy", post_policy),
            web.post("/admin/weights", post_weights),
            web.delete("/admin/weights", delete_weights),
            web.post("/admin/backends", post_backend),
            web.delete("/admin/backends", delete_backend),
            web.get("/metrics", metrics),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
        ]
    )
    return app


def _bearer(token: str | None) -> bytes | None:
    """The Authorization header value a token asks for; None: no token, no check."""
    return f"Bearer {token}".encode() if token else None


async def read_state(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    """`GET /admin/state` from a client (the demo, the live benchmark): None when unreachable."""
    try:
        async with session.get(url) as response:
            return await response.json() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None
