"""The declarations of the proxy's core settings: pool, balancing, admin API, limits, rollout.

`serving.config.ProxyConfig` inherits them (with the connection settings of
serving/config_connections.py); the module only holds declarations, read and checked in
serving/config.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from rl_lb.control import PROBE_PATH, Setting
from serving.config_values import (
    read_address,
    read_backends,
    read_health_path,
    read_listen,
    read_name,
    read_switch,
    read_text,
)
from serving.settings import (
    ADMIN,
    BALANCING,
    HEALTH,
    LIMITS,
    Option,
    duration,
    proxy_setting,
)

__all__ = ["CoreSettings"]


@dataclass(frozen=True)
class CoreSettings:
    """The proxy's core settings, in the order `rl-lb serve --help` and docs/proxy.md list them."""

    backends: tuple[str, ...] = proxy_setting(
        (),
        Setting("backend", "Backend URL http(s)://HOST:PORT[/PREFIX]; repeat the flag for more."),
        Option(
            read=read_backends,
            accepts="URLs",
            none_means="",
            flag_type=list[str],
            flags=("--backend", "-b"),
        ),
    )
    listen: str = proxy_setting(
        "127.0.0.1:8080",
        Setting("listen", "Address the proxy accepts clients on."),
        Option(read=read_listen, accepts="HOST:PORT", flag_type=str),
    )
    balancer: str = proxy_setting(
        "learned",
        Setting(
            "balancer",
            "Who sets the weights: learned, least-latency, round-robin, jsq, "
            "capacity, … or POLICY+PICKER.",
        ),
        Option(BALANCING, read_name, "a preset or POLICY+PICKER", flag_type=str),
    )
    policy: str | None = proxy_setting(
        None,
        Setting(
            "policy",
            "Model directory, .npz, models:/rl-lb-policy/N, or models:/rl-lb-policy@ALIAS "
            "(followed: see policy-poll-interval) for the learned balancer.",
        ),
        Option(BALANCING, read_text, "a path or URI", "the shipped policy", flag_type=str),
    )
    allow_fallback_start: bool = proxy_setting(
        False,
        Setting(
            "allow-fallback-start",
            "Start on the fallback (least-latency) when the learned model cannot load, "
            "instead of refusing to start.",
        ),
        Option(
            BALANCING,
            read_switch,
            "true or false",
            flag_type=bool,
            flags=("--allow-fallback-start",),
        ),
    )
    control_interval_s: float = proxy_setting(
        1.0,
        Setting("control-interval", "Seconds between two weight decisions.", "s", minimum=0.01),
        Option(BALANCING),
    )
    max_staleness_s: float = duration(
        5.0,
        "max-staleness",
        "Older metrics send a learned balancer to its fallback (reason stale).",
        0.0,
        BALANCING,
    )
    metrics_delay_s: float = duration(
        0.0,
        "metrics-delay",
        "Give the balancer metrics this old (a scenario's metrics.delay_s).",
        0.0,
        BALANCING,
    )
    admin: str | None = proxy_setting(
        "127.0.0.1:9090",
        Setting("admin", "Address of the admin API and /metrics; '' for none."),
        Option(ADMIN, read_address, "HOST:PORT or ''", flag_type=str),
    )
    admin_token: str | None = proxy_setting(
        None,
        Setting("admin-token", "Bearer token the /admin/ routes ask for (needed off loopback)."),
        Option(ADMIN, read_text, "a string", flag_type=str, envvar="RL_LB_ADMIN_TOKEN"),
    )
    metrics_token: str | None = proxy_setting(
        None,
        Setting(
            "metrics-token",
            "Bearer token /metrics asks for; none: open to scrapers (as /healthz, /readyz are).",
        ),
        Option(ADMIN, read_text, "a string", flag_type=str, envvar="RL_LB_METRICS_TOKEN"),
    )
    health_path: str | None = proxy_setting(
        "/health",
        Setting("health-path", "Path of the active health check (GET, 2xx passes); '' for none."),
        Option(HEALTH, read_health_path, "/PATH or ''", flag_type=str),
    )
    prequal_probe_path: str | None = proxy_setting(
        PROBE_PATH,
        Setting(
            "prequal-probe-path",
            "Path the prequal balancer probes (GET, JSON rif and latency_ms); '' for none: "
            "prequal runs on the proxy's own view.",
        ),
        Option(BALANCING, read_health_path, "/PATH or ''", flag_type=str),
    )
    prequal_probe_rate: float = proxy_setting(
        100.0,
        Setting(
            "prequal-probe-rate",
            "Most prequal probes per second to one backend (the others are skipped).",
            "requests/s",
            minimum=0.0,
        ),
        Option(BALANCING),
    )
    workers: int = proxy_setting(
        1,
        Setting(
            "workers",
            "Processes sharing the port (SO_REUSEPORT), each deciding on its own.",
            minimum=1,
            integer=True,
        ),
    )
    connect_timeout_s: float = duration(
        2.0,
        "connect-timeout",
        "A backend connection not made in time fails (504, retried on another backend).",
        0.001,
        LIMITS,
    )
    read_timeout_s: float = duration(
        30.0,
        "read-timeout",
        "Longest wait for the next bytes from a backend (504).",
        0.001,
        LIMITS,
    )
    total_timeout_s: float = duration(
        0.0,
        "total-timeout",
        "Bound on a whole exchange, 0 for none (a long download is fine while bytes keep coming).",
        0.0,
        LIMITS,
    )
    header_timeout_s: float = duration(
        60.0,
        "header-timeout",
        "A client connection idle, or with an unfinished request head, this long is closed.",
        0.01,
        LIMITS,
    )
    max_body_bytes: int = proxy_setting(
        1 << 30,
        Setting("max-body-size", "Largest request body (413), 0 for none.", "bytes", integer=True),
        Option(LIMITS),
    )
    max_header_bytes: int = proxy_setting(
        8190,
        Setting(
            "max-header-size",
            "Longest request line or header line (400).",
            "bytes",
            minimum=256,
            integer=True,
        ),
        Option(LIMITS),
    )
    max_connections: int = proxy_setting(
        10_000,
        Setting(
            "max-connections",
            "Client connections at once; more get a 503 and are closed.",
            minimum=1,
            integer=True,
        ),
        Option(LIMITS),
    )
    max_in_flight: int = proxy_setting(
        1_000,
        Setting(
            "max-in-flight",
            "Open exchanges that make a backend full: it is not picked (all full: 503).",
            minimum=1,
            integer=True,
        ),
        Option(LIMITS),
    )
    preserve_host: bool = proxy_setting(
        True,
        Setting(
            "preserve-host",
            "Pass the client's Host header on; --backend-host sends the backend's own.",
        ),
        Option(
            read=read_switch,
            accepts="true or false",
            flag_type=bool,
            flags=("--preserve-host/--backend-host",),
        ),
    )
    shutdown_timeout_s: float = duration(
        30.0,
        "shutdown-timeout",
        "On SIGTERM, how long open exchanges may take to finish.",
        0.0,
        LIMITS,
    )
    policy_poll_interval_s: float = duration(
        30.0,
        "policy-poll-interval",
        "With --policy models:/NAME@ALIAS: how often the alias is read; 0: load it once.",
        0.0,
        BALANCING,
    )
    canary_share: float = proxy_setting(
        0.1,
        Setting(
            "canary-share",
            "Share of the requests a new registry version serves before it is promoted.",
            minimum=0.0,
            maximum=0.5,
            min_exclusive=True,
        ),
        Option(BALANCING),
    )
    canary_duration_s: float = duration(
        30.0,
        "canary-duration",
        "How long a new registry version serves its canary share before the verdict.",
        0.01,
        BALANCING,
    )
    canary_tolerance: float = proxy_setting(
        1.25,
        Setting(
            "canary-tolerance",
            "A canary whose requests cost more than this many times the current policy's is "
            "rolled back.",
            minimum=1.0,
            min_exclusive=True,
        ),
        Option(BALANCING),
    )
