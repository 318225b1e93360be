"""Reloading a running proxy (SIGHUP, `ProxyServer.reload`): the TLS certificate and the config.

A reload changes what can change under live traffic and nothing else: backends are added and
drained, the balancer is swapped, the certificate is re-read; settings that need new sockets or
pools (addresses, timeouts, limits) are kept as they are and named in a warning
(`restart_only_changes`). Whatever is refused (a config file that does not load, a balancer
that does not build, a certificate that does not read) leaves the old one in force: a reload
never stops a proxy that is serving.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from rl_lb.errors import ConfigError, RlLbError
from serving.config import ProxyConfig, load_config, restart_only_changes
from serving.controller import Controller, balancer_spec
from serving.discovery import Discovery
from serving.monitor import Monitor
from serving.tls import ListenerTls

__all__ = ["reload_config"]

log = logging.getLogger("rl_lb.serving")
"""The proxy's own logger: reload lines are logged as before this module was split out."""


async def reload_config(
    old: ProxyConfig,
    flags: Mapping[str, Any],
    tls: ListenerTls | None,
    controller: Controller,
    monitor: Monitor,
    discovery: Discovery | None,
) -> ProxyConfig | None:
    """Re-read the certificate and the config file, apply what changes live, and return the
    config now in force (None: no file, or refused; the old one stays). `flags` are the
    command-line overrides, applied over the file again."""
    if tls is not None:
        try:
            tls.reload()
        except ConfigError as error:
            log.error("reload: the TLS certificate stays as it was: %s", error)
    path = old.config_path
    if path is None:
        log.warning("reload: no config file to re-read (started without --config)")
        return None
    try:
        new = load_config(path, flags)
    except RlLbError as error:
        log.error("reload refused, the old config stays: %s", error)
        return None
    spec, new_spec = (
        balancer_spec(old.balancer, old.policy),
        balancer_spec(new.balancer, new.policy),
    )
    if new_spec != spec:
        try:
            await controller.swap_balancer(new_spec)
        except RlLbError as error:
            log.error("reload: balancer %s refused, the old one stays: %s", new_spec, error)
            new = dataclasses.replace(new, balancer=old.balancer, policy=old.policy)
    for url in new.backends:
        if monitor.find(url) is None:
            monitor.add(url)
    listed = discovery.urls() if discovery is not None else set()
    for url in old.backends:
        if url not in new.backends and url not in listed and monitor.find(url):
            monitor.drain(url)
    config, ignored = restart_only_changes(old, new)
    if ignored:
        log.warning(
            "reload: %s in %s take%s effect only at restart",
            ", ".join(ignored),
            path,
            "s" if len(ignored) == 1 else "",
        )
    log.info("reloaded %s", path)
    return config
