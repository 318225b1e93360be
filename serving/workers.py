"""One proxy across workers: worker 0's admin API speaks for every worker of `--workers N`.

Each worker is its own process with its own pool, metrics and control loop (they share only the
listening port). Without this module a scrape of worker 0's `/metrics` sees 1/N of the traffic,
and an admin change reaches worker 0 alone. So:

- every worker k > 0 serves its admin API on an ephemeral loopback port (same token) and writes
  that port to `worker-K.json` in a directory the parent process made (`RL_LB_WORKER_DIR`);
- worker 0's `/metrics` is its own exposition merged with every other worker's, each series
  labelled `worker="K"` (sum over `worker` for the proxy's totals, as the shipped rules do);
- a change through worker 0 (`POST`/`DELETE` under `/admin/`) is applied locally, then sent to
  every other worker; the reply lists each worker's status, and is a 502 naming the workers
  that did not apply it (the change stays where it was applied: retry, or restart);
- `/admin/state` gains `workers`: each other worker's mode, backends and decisions.

A worker that does not answer is reported (and counted in `/metrics` as `rl_lb_worker_up 0`),
never silently dropped.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from serving.prom import CONTENT_TYPE
from serving.prom_merge import merge_expositions

__all__ = ["WORKER_DIR_ENV", "Peers", "fan_out_middleware", "merge_expositions"]

WORKER_DIR_ENV = "RL_LB_WORKER_DIR"
_TIMEOUT_S = 2.0
"""A worker that takes longer to answer worker 0 is reported as not answering."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Peers:
    """The other workers of this proxy, as worker `worker` sees them through `directory`."""

    def __init__(self, directory: Path, worker: int, workers: int, token: str | None) -> None:
        self.directory = directory
        self.worker = worker
        self.workers = workers
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def from_environment(cls, worker: int, workers: int, token: str | None) -> Peers | None:
        """The peers of a `--workers N` proxy (None for a single worker or an embedded one)."""
        directory = os.environ.get(WORKER_DIR_ENV)
        if workers < 2 or not directory:
            return None
        return cls(Path(directory), worker, workers, token)

    def register(self, admin_port: int) -> None:
        """Publish this worker's admin port (written whole, then renamed: never half-read)."""
        path = self.directory / f"worker-{self.worker}.json"
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps({"admin_port": admin_port, "pid": os.getpid()}))
        partial.replace(path)

    def ports(self) -> dict[int, int | None]:
        """Every other worker's admin port (None: not registered yet, or gone)."""
        found: dict[int, int | None] = {}
        for k in range(self.workers):
            if k == self.worker:
                continue
            try:
                found[k] = int(
                    json.loads((self.directory / f"worker-{k}.json").read_text())["admin_port"]
                )
            except (OSError, ValueError, KeyError, TypeError):
                found[k] = None
        return found

    async def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[int, tuple[int, bytes]]:
        """The same request to every other worker: `{worker: (status, body)}`, status 0 when it
        did not answer (with the reason as the body)."""
        timeout = aiohttp.ClientTimeout(total=_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(port: int | None) -> tuple[int, bytes]:
                if port is None:
                    return 0, b"not registered"
                try:
                    async with session.request(
                        method,
                        f"http://127.0.0.1:{port}{path}",
                        data=body,
                        headers={**self._headers, **(headers or {})},
                    ) as response:
                        return response.status, await response.read()
                except (aiohttp.ClientError, TimeoutError) as error:
                    return 0, str(error).encode() or type(error).__name__.encode()

            ports = self.ports()
            replies = await asyncio.gather(*(one(port) for port in ports.values()))
        return dict(zip(ports, replies, strict=True))


def fan_out_middleware(peers: Peers) -> Any:
    """Worker 0's admin middleware: merged `/metrics`, changes sent to every worker, and the
    other workers in `/admin/state`."""

    @web.middleware
    async def fan_out(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if request.method == "GET" and path == "/metrics":
            return await _merged_metrics(request, handler, peers)
        if request.method == "GET" and path == "/admin/state":
            return await _state_with_workers(request, handler, peers)
        if request.method in ("POST", "DELETE") and path.startswith("/admin/"):
            return await _everywhere(request, handler, peers)
        return await handler(request)

    return fan_out


async def _merged_metrics(
    request: web.Request, handler: Handler, peers: Peers
) -> web.StreamResponse:
    own = await handler(request)
    if not isinstance(own, web.Response) or own.status != 200 or own.body is None:
        return own
    auth = request.headers.get("Authorization")
    replies = await peers.call("GET", "/metrics", headers={"Authorization": auth} if auth else None)
    parts = {peers.worker: bytes(own.body)}  # type: ignore[arg-type]  # aiohttp types body as a Payload union
    up = {peers.worker: True}
    for worker, (status, body) in replies.items():
        up[worker] = status == 200
        if status == 200:
            parts[worker] = body
    merged = merge_expositions(parts, up)
    return web.Response(body=merged, headers={"Content-Type": CONTENT_TYPE})


async def _state_with_workers(
    request: web.Request, handler: Handler, peers: Peers
) -> web.StreamResponse:
    own = await handler(request)
    if not isinstance(own, web.Response) or own.status != 200 or own.text is None:
        return own
    state = json.loads(own.text)
    workers: dict[str, Any] = {}
    for worker, (status, body) in (await peers.call("GET", "/admin/state")).items():
        if status != 200:
            workers[str(worker)] = {"answered": False, "error": body.decode(errors="replace")}
            continue
        peer = json.loads(body)
        workers[str(worker)] = {
            "answered": True,
            "mode": peer.get("mode"),
            "reason": peer.get("reason"),
            "decisions": peer.get("decisions"),
            "backends": [b.get("url") for b in peer.get("backends", [])],
            "policy": peer.get("version") or peer.get("policy"),
        }
    state["workers"] = workers
    return web.json_response(state, status=200)


async def _everywhere(request: web.Request, handler: Handler, peers: Peers) -> web.StreamResponse:
    """Apply locally; when that succeeds, on every other worker too; say where it did not."""
    body = await request.read()
    own = await handler(request)
    if not isinstance(own, web.Response) or not 200 <= own.status < 300:
        return own  # refused here (bad input): the others are not asked
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    replies = await peers.call(request.method, request.path_qs, body, headers)
    reply = json.loads(own.text) if own.text else {}
    statuses = {str(peers.worker): own.status, **{str(k): s for k, (s, _) in replies.items()}}
    reply["workers"] = statuses
    failed = {
        k: b.decode(errors="replace")[:200] for k, (s, b) in replies.items() if not 200 <= s < 300
    }
    if failed:
        names = ", ".join(f"worker {k}: {why or 'no answer'}" for k, why in sorted(failed.items()))
        reply.update(
            error=f"applied on worker {peers.worker} but not on every worker ({names}); "
            "send it again, or restart the proxy to make the workers agree",
            status=502,
        )
        return web.json_response(reply, status=502)
    return web.json_response(reply, status=own.status)
