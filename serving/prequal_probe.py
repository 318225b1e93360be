"""Prequal's probes from the proxy: `GET {prequal-probe-path}` on a backend, answers to the pool.

The `prequal` picker (`rl_lb.prequal`) asks for probes as it places a request; `Prober.send`
sends them off the request path (one task each) and puts each answer into the picker's pool when
it comes back, so it serves later requests, never the one that sent it. A backend answers with
JSON `{"rif": <requests in flight>, "latency_ms": <its latency estimate>}` (docs/proxy.md).

A backend that does not answer probes (no probe path configured, a non-2xx status other than
5xx, or a body that is not that JSON) is marked as such for `RECHECK_S`: meanwhile its probes are
answered from the proxy's own view (its in-flight count and peak-EWMA latency for that backend),
and `/admin/state` says so. Probing is bounded by a token bucket per backend
(`prequal-probe-rate` per second, bursts of as many); what the bucket refuses is skipped. Every
probe is counted by result for `/metrics`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import aiohttp
from prometheus_client.core import CounterMetricFamily, Metric

from rl_lb.balancers import Balancer, GuardedBalancer
from rl_lb.prequal import PrequalPicker, ProbePool
from rl_lb.prequal_answer import own_view_answer
from serving.config import ProxyConfig
from serving.monitor import Backend, Monitor

__all__ = ["PROBE_RESULTS", "RECHECK_S", "Prober", "read_answer"]

log = logging.getLogger("rl_lb.serving.prequal")

RECHECK_S = 30.0
"""How long a backend that did not answer a probe is served from the proxy's own view before
it is probed again (it may have been upgraded)."""
PROBE_RESULTS = ("answered", "failed", "limited", "own-view", "unsupported")
"""How a probe ended: an answer; no answer in time (or 5xx, refused); skipped by the rate limit;
answered from the proxy's own view; the backend answered, but not a probe."""


def read_answer(body: bytes) -> tuple[int, float] | None:
    """(RIF, latency in seconds) from a probe answer, None when it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    rif, latency_ms = data.get("rif"), data.get("latency_ms")
    if isinstance(rif, bool) or not isinstance(rif, int) or rif < 0:
        return None
    if isinstance(latency_ms, bool) or not isinstance(latency_ms, int | float):
        return None
    if not (math.isfinite(latency_ms) and latency_ms >= 0):
        return None
    return rif, latency_ms / 1000.0


class Prober:
    """Sends the probes of every `prequal` picker of the balancer the controller serves."""

    def __init__(self, config: ProxyConfig, monitor: Monitor) -> None:
        self.monitor = monitor
        self.path = config.prequal_probe_path
        self.rate = config.prequal_probe_rate
        self.settings = config.control.prequal
        self.active = False
        """Whether the balancer served now has a prequal picker (else nothing is probed)."""
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        """Probes by backend URL and result (`PROBE_RESULTS`)."""
        self.unsupported_since: dict[str, float] = {}
        self._tokens: dict[str, tuple[float, float]] = {}
        """URL → (tokens, clock time they were counted)."""
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pickers: list[PrequalPicker] = []

    def attach(self, balancer: Balancer) -> None:
        """Give every prequal picker of `balancer` this prober, the proxy's clock and settings."""
        pickers = [balancer.picker]
        if isinstance(balancer, GuardedBalancer):
            pickers += [balancer.fallback.picker]
            if balancer.primary is not None:
                pickers.append(balancer.primary.picker)
        self.active = False
        self._pickers = []
        for picker in pickers:
            # A guarded balancer's own picker is its primary's: count each picker once.
            if isinstance(picker, PrequalPicker) and picker not in self._pickers:
                picker.clock = self.monitor.clock
                if picker.pool.settings != self.settings:
                    picker.pool = ProbePool(self.settings)
                picker.prober = partial(self.send, picker)
                self.active = True
                self._pickers.append(picker)

    def own_view(self, url: str, now: float) -> bool:
        """Whether probes of `url` are answered from the proxy's own view now."""
        if self.path is None:
            return True
        since = self.unsupported_since.get(url)
        return since is not None and now - since < RECHECK_S

    def send(self, picker: PrequalPicker, targets: Sequence[int]) -> None:
        """Probe `targets` (backend indexes) for `picker`; called on the request path."""
        monitor = self.monitor
        now = monitor.clock()
        for i in targets:
            backend = monitor.backends[i]
            counts = self.counts[backend.url]
            if self.own_view(backend.url, now):
                self._add_own_view(picker, i, now)
                counts["own-view"] += 1
            elif not self._take_token(backend.url, now):
                # Over the probe budget: answered from the proxy's own view too. Skipped, the
                # pool ran dry under load and Prequal drew blind (at random), which sent a
                # backend that fails fast its full share (docs/proxy.md, "Prequal probes").
                self._add_own_view(picker, i, now)
                counts["limited"] += 1
            else:
                task = asyncio.get_running_loop().create_task(self._probe(picker, backend))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _pick_counts(self) -> tuple[int, int]:
        """(picks, blind picks) of every prequal picker attached."""
        return sum(p.picks for p in self._pickers), sum(p.blind_picks for p in self._pickers)

    def _add_own_view(self, picker: PrequalPicker, i: int, now: float) -> None:
        """Backend i's probe answered at once from the proxy's own view (its in-flight count is
        both the answer's RIF and the pool's `local`)."""
        metrics = self.monitor.metrics
        rif = metrics.in_flight[i]
        answer = own_view_answer(
            rif, metrics.cost(i), metrics.error_rate(i), metrics.error_penalty_s
        )
        picker.pool.add(i, *answer, now, local=rif)

    def _take_token(self, url: str, now: float) -> bool:
        burst = max(self.rate, 1.0)
        tokens, then = self._tokens.get(url, (burst, now))
        tokens = min(burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._tokens[url] = (tokens, now)
            return False
        self._tokens[url] = (tokens - 1.0, now)
        return True

    async def _probe(self, picker: PrequalPicker, backend: Backend) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        counts = self.counts[backend.url]
        timeout = aiohttp.ClientTimeout(total=self.settings.max_age_s)
        try:
            async with self._session.get(
                f"{backend.url}{self.path}",
                timeout=timeout,
                allow_redirects=False,
                ssl=backend.pool.ssl or True,
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, RuntimeError):
            counts["failed"] += 1  # RuntimeError: the session closed under it (shutting down)
            return
        answer = read_answer(body) if 200 <= status < 300 else None
        if answer is None:
            if status >= 500:
                counts["failed"] += 1
                return
            counts["unsupported"] += 1
            if backend.url not in self.unsupported_since:
                log.info(
                    "backend %s does not answer prequal probes (%s %d); prequal uses the "
                    "proxy's own view of it",
                    backend.url,
                    self.path,
                    status,
                )
            self.unsupported_since[backend.url] = self.monitor.clock()
            return
        self.unsupported_since.pop(backend.url, None)
        counts["answered"] += 1
        i = backend.index
        if i >= 0 and picker.prober is not None:
            local = self.monitor.metrics.in_flight[i]  # in flight now: `choose` reads the change
            picker.pool.add(i, answer[0], answer[1], self.monitor.clock(), local=local)

    def state(self) -> dict[str, Any] | None:
        """For /admin/state: per backend, who answers its probes and how probes ended."""
        if not self.active:
            return None
        now = self.monitor.clock()
        picks, blind = self._pick_counts()
        return {
            "probe_path": self.path,
            "probe_rate_per_backend": self.rate,
            "picks": picks,
            "blind_picks": blind,
            "backends": {
                b.url: {
                    "answered_by": "proxy's own view" if self.own_view(b.url, now) else "backend",
                    **{result: self.counts[b.url][result] for result in PROBE_RESULTS},
                }
                for b in self.monitor.backends
            },
        }

    def metrics(self) -> Iterator[Metric]:
        if not (self.active or self.counts):
            return
        probes = CounterMetricFamily(
            "rl_lb_prequal_probes",
            "Prequal probes by backend and result (answered, failed, limited, own-view, "
            "unsupported)",
            labels=["backend", "result"],
        )
        for b in self.monitor.backends:
            for result in PROBE_RESULTS:
                probes.add_metric([b.url, result], self.counts[b.url][result])
        yield probes
        picks = CounterMetricFamily(
            "rl_lb_prequal_picks",
            "Prequal's picks: from probe answers, or blind (fewer than 2 usable answers: drawn "
            "at random by weight)",
            labels=["choice"],
        )
        total, blind = self._pick_counts()
        picks.add_metric(["answers"], total - blind)
        picks.add_metric(["blind"], blind)
        yield picks

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
