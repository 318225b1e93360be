"""Service discovery: backends that come from DNS or from a watched file, mixed with static ones.

Real pools move (pods behind a headless service, autoscaling groups, deploys), so the proxy
follows them the way Envoy's STRICT_DNS clusters and HAProxy's `server-template` do:

- `dns://NAME:PORT`: every A and AAAA record of NAME is a backend `http://ADDRESS:PORT`,
  re-resolved when the answer's TTL runs out (bounded by `dns-ttl-min` and `dns-ttl-max`);
- `dns+srv://_SERVICE._PROTO.NAME`: every SRV target and port (addresses from the answer's
  additional section, else an A/AAAA lookup of the target);
- `file://PATH`: one backend URL a line (`#` comments), or a JSON list of URLs (or an object
  with a `backends` list), re-read when the file's size or modification time changes.

A `https+` prefix (`https+dns://…`) makes DNS-found backends `https://`. Lookups go through
c-ares (`aiodns`), which reports the TTL that `getaddrinfo` hides; `dns-resolver` names the
server (a deployment's own DNS server; tests run one on loopback).

The one rule that matters in production: a failed lookup, an empty answer or an unreadable file
keeps the last known set. DNS hiccups must never empty a pool. Failures are logged, counted in
`rl_lb_discovery_errors_total{source}` and shown in `/admin/state`. A change is applied like the
admin API's add and drain (a removed backend finishes its exchanges first).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from serving.config_values import split_address
from serving.discovery_sources import (  # the sources' syntax; re-exported for older importers
    DiscoverySource,
    parse_source,
    read_endpoint_file,
    read_sources,
)

if TYPE_CHECKING:
    from serving.config import ProxyConfig
    from serving.monitor import Monitor

__all__ = [
    "Discovery",
    "DiscoverySource",
    "discovery_for",
    "follow",
    "parse_source",
    "read_endpoint_file",
    "read_sources",
]

log = logging.getLogger("rl_lb.serving.discovery")

_RETRY_S = 1.0
"""A failed source is asked again after at most this long (or `dns-ttl-min`, if longer)."""


@dataclass
class SourceState:
    """What a source last found, and how its lookups are going (for /admin/state)."""

    source: DiscoverySource
    urls: frozenset[str] = frozenset()
    errors: int = 0
    last_error: str | None = None
    last_success: float | None = None
    """Wall-clock time of the last good answer."""
    next_refresh_s: float = 0.0
    _file_stamp: tuple[int, int] | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source.text,
            "backends": sorted(self.urls),
            "errors": self.errors,
            "last_error": self.last_error,
            "last_success": self.last_success,
            "next_refresh_s": round(self.next_refresh_s, 3),
        }


class Discovery:
    """Runs every source; calls `on_change()` when a source's set of backends changes.

    `resolver` is `(host, port)` of the DNS server (None: the system's). TTLs are clamped to
    `[ttl_min_s, ttl_max_s]`; files are checked every `file_poll_s`.
    """

    def __init__(
        self,
        sources: tuple[DiscoverySource, ...],
        on_change: Callable[[], None],
        *,
        resolver: tuple[str, int] | None = None,
        ttl_min_s: float = 1.0,
        ttl_max_s: float = 300.0,
        file_poll_s: float = 1.0,
        lookup_timeout_s: float = 2.0,
    ) -> None:
        self.states = [SourceState(s) for s in sources]
        self.on_change = on_change
        self.resolver = resolver
        self.ttl_min_s, self.ttl_max_s = ttl_min_s, ttl_max_s
        self.file_poll_s = file_poll_s
        self.lookup_timeout_s = lookup_timeout_s
        self._dns: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- what the proxy asks ----------------------------------------------------------------

    def urls(self) -> set[str]:
        """Every backend some source currently lists."""
        return set().union(*(state.urls for state in self.states))

    def sources_of(self, url: str) -> list[str]:
        return [state.source.text for state in self.states if url in state.urls]

    def state(self) -> list[dict[str, Any]]:
        return [state.as_json() for state in self.states]

    def metrics(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "rl_lb_discovery_errors",
            "Failed lookups or unreadable files per discovery source (the last set was kept)",
            labels=["source"],
        )
        found = GaugeMetricFamily(
            "rl_lb_discovery_backends", "Backends a discovery source lists now", labels=["source"]
        )
        for state in self.states:
            errors.add_metric([state.source.text], state.errors)
            found.add_metric([state.source.text], len(state.urls))
        yield errors
        yield found

    # -- running ----------------------------------------------------------------------------

    async def refresh_all(self) -> None:
        """One lookup of every source now (start-up: the first set before serving)."""
        await asyncio.gather(*(self._refresh(state) for state in self.states))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._follow(state)) for state in self.states]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._dns is not None:
            with contextlib.suppress(Exception):
                await self._dns.close()
            self._dns = None

    async def _follow(self, state: SourceState) -> None:
        while True:
            await asyncio.sleep(state.next_refresh_s)
            await self._refresh(state)

    async def _refresh(self, state: SourceState) -> None:
        source = state.source
        try:
            if source.kind == "file":
                urls, wait = self._read_file(state), self.file_poll_s
            else:
                urls, ttl = await asyncio.wait_for(self._lookup(source), self.lookup_timeout_s)
                wait = min(max(ttl, self.ttl_min_s), self.ttl_max_s)
        except Exception as error:
            state.errors += 1
            state.last_error = _describe(error)
            state.next_refresh_s = max(min(_RETRY_S, self.ttl_max_s), self.ttl_min_s)
            if source.kind == "file":
                state.next_refresh_s = self.file_poll_s
            log.warning(
                "discovery %s failed, keeping its %d backend%s: %s",
                source.text,
                len(state.urls),
                "" if len(state.urls) == 1 else "s",
                state.last_error,
            )
            return
        state.next_refresh_s = wait
        state.last_success = time.time()
        state.last_error = None
        if urls is None or frozenset(urls) == state.urls:
            return
        added, removed = set(urls) - state.urls, state.urls - set(urls)
        state.urls = frozenset(urls)
        log.info(
            "discovery %s: %d backend%s (+%d, -%d)",
            source.text,
            len(urls),
            "" if len(urls) == 1 else "s",
            len(added),
            len(removed),
        )
        self.on_change()

    def _read_file(self, state: SourceState) -> tuple[str, ...] | None:
        """The file's URLs, or None when it has not changed since the last read."""
        info = os.stat(state.source.path)
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == state._file_stamp:
            return None
        urls = read_endpoint_file(state.source.path)
        if not urls:
            raise ValueError("the file lists no backend")
        state._file_stamp = stamp
        return urls

    async def _lookup(self, source: DiscoverySource) -> tuple[tuple[str, ...], float]:
        """(backend URLs, TTL in seconds) for a DNS source; an empty answer is an error."""
        if source.kind == "dns":
            addresses, ttl = await self._addresses(source.name)
            urls = [_url(source.scheme, a, source.port) for a in addresses]
        else:
            urls, ttl = await self._srv(source)
        if not urls:
            raise LookupError(f"no records for {source.name}")
        return tuple(sorted(set(urls))), ttl

    async def _addresses(self, name: str) -> tuple[list[str], float]:
        dns = self._resolver()
        answers = await asyncio.gather(
            dns.query_dns(name, "A"), dns.query_dns(name, "AAAA"), return_exceptions=True
        )
        addresses: list[str] = []
        ttls: list[float] = []
        failures = [a for a in answers if isinstance(a, BaseException)]
        for answer in answers:
            if isinstance(answer, BaseException):
                continue
            for record in answer.answer:
                if record.type in (_A, _AAAA):
                    addresses.append(record.data.addr)
                    ttls.append(float(record.ttl))
        if not addresses and any(not _no_data(f) for f in failures):
            raise next(f for f in failures if not _no_data(f))
        return addresses, min(ttls, default=self.ttl_min_s)

    async def _srv(self, source: DiscoverySource) -> tuple[list[str], float]:
        result = await self._resolver().query_dns(source.name, "SRV")
        glue: dict[str, list[str]] = {}
        ttls: list[float] = []
        for record in result.additional:
            if record.type in (_A, _AAAA):
                glue.setdefault(record.name.rstrip(".").lower(), []).append(record.data.addr)
        urls: list[str] = []
        for record in result.answer:
            if record.type != _SRV:
                continue
            ttls.append(float(record.ttl))
            target = record.data.target.rstrip(".").lower()
            addresses = glue.get(target)
            if addresses is None:
                addresses, ttl = await self._addresses(target)
                ttls.append(ttl)
            urls.extend(_url(source.scheme, a, int(record.data.port)) for a in addresses)
        return urls, min(ttls, default=self.ttl_min_s)

    def _resolver(self) -> Any:
        if self._dns is None:
            import aiodns  # c-ares: TTLs and a configurable server, which getaddrinfo lacks

            options: dict[str, Any] = {"timeout": self.lookup_timeout_s / 2, "tries": 2}
            if self.resolver is not None:
                host, port = self.resolver
                options.update(nameservers=[host], udp_port=port, tcp_port=port)
            self._dns = aiodns.DNSResolver(**options)
        return self._dns


_A, _AAAA, _SRV = 1, 28, 33
"""DNS record types (RFC 1035, 3596, 2782)."""


def _no_data(error: BaseException) -> bool:
    """True for 'this name has no records of that type' (c-ares ENODATA = 1, ENOTFOUND = 4)."""
    return bool(getattr(error, "args", None)) and error.args[0] in (1, 4)


def _url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{scheme}://{host}:{port}"


def _describe(error: BaseException) -> str:
    """One line: c-ares' message, the OS error, a timeout, or the exception's text."""
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(error, FileNotFoundError):
        return f"no such file: {error.filename}"
    args: tuple[Any, ...] = tuple(getattr(error, "args", ()))
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return f"{args[1]} (c-ares {args[0]})"
    return str(error) or type(error).__name__


def discovery_for(config: ProxyConfig, on_change: Callable[[], None]) -> Discovery | None:
    """The discovery of a proxy's settings; None when it has no `discover` source."""
    if not config.discover:
        return None
    resolver = None
    if config.dns_resolver:
        resolver = split_address(config.dns_resolver, "dns-resolver")
    return Discovery(
        tuple(parse_source(text) for text in config.discover),
        on_change,
        resolver=resolver,
        ttl_min_s=config.dns_ttl_min_s,
        ttl_max_s=config.dns_ttl_max_s,
        file_poll_s=config.discovery_file_poll_s,
    )


def follow(
    discovery: Discovery, monitor: Monitor, static: tuple[str, ...], followed: set[str]
) -> set[str]:
    """Make the pool the static backends plus what the sources list now: add the new ones,
    drain those no source lists any more (never a static one). Returns the discovered set to
    pass back next time. A backend still draining from an earlier removal is added by a later
    call (`Discovery` calls again on the next change; the caller may retry sooner)."""
    wanted = set(static) | discovery.urls()
    for url in sorted(wanted):
        backend = monitor.find(url)
        if backend is None:
            monitor.add(url)
    for url in sorted(followed - wanted):
        backend = monitor.find(url)
        if backend is not None and not backend.draining:
            monitor.drain(url)
    return discovery.urls() - set(static)
