"""The proxy's settings: one frozen `ProxyConfig`, read from flags and an optional TOML file.

Every setting is declared once. Those the proxy shares with the simulator (metrics window, EWMA,
error penalty, health, ejection, retries) live in `ProxyConfig.control`, a
`rl_lb.control.ControlSpec` declared in the core; the proxy's own are declared on the fields
below (`proxy_setting(default, Setting(...), Option(...))`). From those declarations come the key
table (`KEYS`), the checks, the `rl-lb serve` flags with their help and defaults
(serving/proxy_cli.py) and the settings tables of docs/proxy.md (`markdown_table`).

The TOML keys are the flag names without the dashes in front (`control-interval = 0.5`,
`backend = ["http://…"]`), so a config file is a saved command line. Flags override the file.
Every value is checked here, once, so that a typo stops `rl-lb serve` with one line naming the
file and the key instead of surfacing later as a half-working proxy.

This module is imported when `rl-lb` builds its commands: it stays free of heavy imports.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rl_lb.control import PROBE_PATH, ControlSpec, Setting
from rl_lb.errors import ConfigError
from rl_lb.toml_file import read_toml
from serving.config_values import (
    is_loopback,
    normalise_backend,
    read_address,
    read_backends,
    read_health_path,
    read_listen,
    read_name,
    read_switch,
    read_text,
    split_address,
)
from serving.discovery import read_sources
from serving.grpc_settings import (
    DEFAULT_ERROR_CODES,
    read_backend_protocol,
    read_grpc_codes,
    read_health_protocol,
)
from serving.settings import (
    ADMIN,
    BALANCING,
    DISCOVERY,
    HEALTH,
    LIMITS,
    Declared,
    Option,
    declare,
    duration,
    proxy_setting,
)
from serving.settings import markdown_table as settings_table
from serving.tls import read_pem_path
from serving.tunnel import read_upgrades

TLS = "TLS and upgrades"
"""The `rl-lb serve --help` panel of the TLS and tunnel settings."""
H2 = "HTTP/2 and gRPC"
"""The `rl-lb serve --help` panel of the HTTP/2 and gRPC settings (serving/h2_server.py)."""
RECORDING = "Recording"
"""The `rl-lb serve --help` panel of the recording settings (serving/recorder.py)."""

__all__ = [
    "KEYS",
    "ProxyConfig",
    "check_admin",
    "did_you_mean",
    "is_loopback",
    "load_config",
    "markdown_table",
    "normalise_backend",
    "restart_only_changes",
    "split_address",
]


@dataclass(frozen=True)
class ProxyConfig:
    """Everything `ProxyServer` needs. Durations are seconds; 0 disables a limit where noted."""

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
    discover: tuple[str, ...] = proxy_setting(
        (),
        Setting(
            "discover",
            "Discovery source dns://NAME:PORT, dns+srv://NAME or file://PATH; repeat for more.",
        ),
        Option(
            DISCOVERY,
            read_sources,
            "source URLs",
            none_means="",
            flag_type=list[str],
        ),
    )
    dns_resolver: str | None = proxy_setting(
        None,
        Setting("dns-resolver", "DNS server of the dns:// sources (HOST:PORT)."),
        Option(DISCOVERY, read_address, "HOST:PORT", "the system's", flag_type=str),
    )
    dns_ttl_min_s: float = duration(
        1.0, "dns-ttl-min", "A DNS answer is re-asked no sooner than this.", 0.01, DISCOVERY
    )
    dns_ttl_max_s: float = duration(
        300.0, "dns-ttl-max", "A DNS answer is re-asked at the latest after this.", 0.01, DISCOVERY
    )
    discovery_file_poll_s: float = duration(
        1.0,
        "discovery-file-poll",
        "How often a file:// source is checked for changes.",
        0.01,
        DISCOVERY,
    )
    tls_cert: str | None = proxy_setting(
        None,
        Setting("tls-cert", "PEM certificate chain of the listener: clients speak HTTPS."),
        Option(TLS, read_pem_path, "a PEM file", "cleartext HTTP", flag_type=str),
    )
    tls_key: str | None = proxy_setting(
        None,
        Setting("tls-key", "PEM private key of --tls-cert (both re-read on SIGHUP)."),
        Option(TLS, read_pem_path, "a PEM file", flag_type=str),
    )
    backend_ca_file: str | None = proxy_setting(
        None,
        Setting("backend-ca-file", "PEM CA bundle that https:// backends are verified with."),
        Option(TLS, read_pem_path, "a PEM file", "the system's CAs", flag_type=str),
    )
    backend_sni: str | None = proxy_setting(
        None,
        Setting(
            "backend-sni",
            "Server name sent to https:// backends and checked in their certificates.",
        ),
        Option(TLS, read_text, "a host name", "the backend URL's host", flag_type=str),
    )
    backend_client_cert: str | None = proxy_setting(
        None,
        Setting("backend-client-cert", "PEM client certificate shown to https:// backends (mTLS)."),
        Option(TLS, read_pem_path, "a PEM file", flag_type=str),
    )
    backend_client_key: str | None = proxy_setting(
        None,
        Setting("backend-client-key", "PEM private key of --backend-client-cert."),
        Option(TLS, read_pem_path, "a PEM file", flag_type=str),
    )
    allowed_upgrades: tuple[str, ...] = proxy_setting(
        ("websocket",),
        Setting(
            "allowed-upgrades",
            "Upgrade protocols tunnelled to the backend after its 101; repeat for more.",
        ),
        Option(TLS, read_upgrades, "protocol names", "", flag_type=list[str]),
    )
    tunnel_idle_timeout_s: float = duration(
        300.0,
        "tunnel-idle-timeout",
        "An upgraded connection (WebSocket) with no bytes either way this long is closed.",
        0.01,
        TLS,
    )
    tunnel_max_duration_s: float = duration(
        0.0,
        "tunnel-max-duration",
        "An upgraded connection is closed after this long, 0 for never.",
        0.0,
        TLS,
    )
    record: str | None = proxy_setting(
        None,
        Setting(
            "record",
            "Folder to record what the proxy sees in (Parquet; `rl-lb scenario fit` reads it).",
        ),
        Option(RECORDING, read_text, "a folder", flag_type=str),
    )
    record_sample: int = proxy_setting(
        1,
        Setting("record-sample", "Record 1 request in this many.", minimum=1, integer=True),
        Option(RECORDING),
    )
    record_file_size: int = proxy_setting(
        16 << 20,
        Setting(
            "record-file-size",
            "A recording file is closed at this size.",
            "bytes",
            minimum=4096,
            integer=True,
        ),
        Option(RECORDING),
    )
    record_max_bytes: int = proxy_setting(
        1 << 30,
        Setting(
            "record-max-bytes",
            "Bound on the recording's files (all workers); the oldest are deleted.",
            "bytes",
            minimum=4096,
            integer=True,
        ),
        Option(RECORDING),
    )
    backend_protocol: str = proxy_setting(
        "http1",
        Setting(
            "backend-protocol",
            "How HTTP/2 and gRPC client streams reach the backends: http1 or h2c (cleartext "
            "HTTP/2, needed for gRPC backends).",
        ),
        Option(H2, read_backend_protocol, "http1, h2c", flag_type=str),
    )
    h2_connections_per_backend: int = proxy_setting(
        2,
        Setting(
            "h2-connections-per-backend",
            "h2c connections to each backend that the streams are multiplexed over.",
            minimum=1,
            maximum=64,
            integer=True,
        ),
        Option(H2),
    )
    grpc_error_codes: tuple[str, ...] = proxy_setting(
        DEFAULT_ERROR_CODES,
        Setting(
            "grpc-error-codes",
            "gRPC statuses (trailer grpc-status) that count against the backend like a 5xx.",
        ),
        Option(H2, read_grpc_codes, "gRPC status names", "", flag_type=list[str]),
    )
    h2_max_concurrent_streams: int = proxy_setting(
        100,
        Setting(
            "h2-max-concurrent-streams",
            "Streams one HTTP/2 client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).",
            minimum=1,
            maximum=10000,
            integer=True,
        ),
        Option(H2),
    )
    h2_max_resets: int = proxy_setting(
        200,
        Setting(
            "h2-max-resets",
            "Stream resets a client may send per second before its connection is closed "
            "(GOAWAY ENHANCE_YOUR_CALM; the HTTP/2 rapid reset attack).",
            "resets/s",
            minimum=1,
            integer=True,
        ),
        Option(H2),
    )
    health_protocol: str = proxy_setting(
        "http",
        Setting(
            "health-protocol",
            "Active health check: http (GET health-path) or grpc (grpc.health.v1.Health/Check "
            "over h2c; health-path '' still turns checks off).",
        ),
        Option(HEALTH, read_health_protocol, "http, grpc", flag_type=str),
    )
    http2: bool = proxy_setting(
        False,
        Setting(
            "http2",
            "Serve HTTP/2 clients (h2c prior knowledge, ALPN h2) with HTTP/1.1 backends too; "
            "always on with backend-protocol h2c.",
        ),
        Option(H2, read_switch, "true or false", flag_type=bool, flags=("--http2/--no-http2",)),
    )
    control: ControlSpec = field(default_factory=ControlSpec)
    """The settings shared with the simulator (rl_lb/control/ declares them)."""
    config_path: str | None = None
    """The TOML file the settings came from, re-read on SIGHUP."""

    @property
    def serves_http2(self) -> bool:
        """HTTP/2 clients are served (handed over on the preface, ALPN h2 offered)."""
        return self.http2 or self.backend_protocol == "h2c"

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_address(self.listen, "listen")

    @property
    def admin_address(self) -> tuple[str, int] | None:
        return split_address(self.admin, "admin") if self.admin else None


_DECLARED: dict[str, Declared] = declare(ProxyConfig)
KEYS: dict[str, Declared] = {key: d for key, d in _DECLARED.items() if d.info.proxy}
"""Flag name (= TOML key) → its declaration: the proxy's own settings, then the shared ones
(the simulator-only ones, `Setting.proxy` False, are no flag or key of the proxy)."""


def _read_file(path: str) -> dict[str, Any]:
    data = read_toml(path)
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        # a simulator-only key: `from_flags` refuses it, saying where it is set instead
        ControlSpec.from_flags({k: data[k] for k in unknown if k in _DECLARED}, f"{path}: ")
        raise ConfigError(
            f"{path}: {unknown[0]}",
            "unknown key",
            did_you_mean(unknown[0], KEYS) + f"valid keys: {', '.join(sorted(KEYS))}",
        )
    return data


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`did you mean 'X'? ` for the closest of `choices` to a misspelled `word`, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def load_config(path: str | None = None, flags: Mapping[str, Any] | None = None) -> ProxyConfig:
    """The file's settings, then the flags (keys as in `KEYS`, None meaning "not given")."""
    own: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    sources = [(_read_file(path), f"{path}: ")] if path else []
    sources.append(({k: v for k, v in (flags or {}).items() if v is not None}, "--"))
    for data, prefix in sources:
        for key, raw in data.items():
            declared = KEYS.get(key)
            if declared is None:
                raise ConfigError(
                    f"{prefix}{key}", "not a setting of rl-lb serve", did_you_mean(key, KEYS)
                )
            value = declared.read(raw, f"{prefix}{key}")
            if declared.section is None:
                own[declared.field.name] = value
            else:
                shared[key] = value
    prefix = f"{path}: " if path else "--"
    config = ProxyConfig(config_path=path, control=_control(shared, prefix), **own)
    _check(config, prefix)
    return config


def _control(values: Mapping[str, Any], prefix: str) -> ControlSpec:
    """The shared settings; a rule tying two of them together is named with `prefix`."""
    try:
        return ControlSpec.from_flags(values, prefix)
    except ConfigError as error:
        if error.where.startswith(prefix):
            raise
        raise ConfigError(f"{prefix}{error.where}", error.what, error.fix) from None


def _check(config: ProxyConfig, prefix: str) -> None:
    """Rules that tie several settings together."""
    from rl_lb.balancers import make_balancer  # numpy and the policies: not at `rl-lb` start

    if not config.backends and not config.discover:
        raise ConfigError(
            f"{prefix}backend",
            "no backend given",
            "pass --backend URL or --discover SOURCE (both repeatable)",
        )
    if config.dns_ttl_min_s > config.dns_ttl_max_s:
        raise ConfigError(f"{prefix}dns-ttl-min", "is above dns-ttl-max", "lower it")
    if config.policy and not config.balancer.startswith("learned"):
        raise ConfigError(
            f"{prefix}policy",
            f"a policy file needs the learned balancer, not {config.balancer!r}",
            "add --balancer learned or drop --policy",
        )
    host, port = config.listen_address
    if config.workers > 1 and port == 0:
        raise ConfigError(f"{prefix}workers", "several workers need a fixed listen port")
    if not config.balancer.startswith("learned"):
        try:
            make_balancer(config.balancer)
        except ConfigError as error:
            hint = did_you_mean(config.balancer, _balancer_names())
            raise ConfigError(f"{prefix}balancer", error.what, hint + error.fix) from None
    check_admin(config, prefix)
    _check_tls(config, prefix)
    admin = config.admin_address
    if admin and admin[1] != 0 and admin == (host, port):
        raise ConfigError(f"{prefix}admin", "the admin API cannot share the proxy's address")


def _check_tls(config: ProxyConfig, prefix: str) -> None:
    """Certificates come with their keys, and every PEM file loads (one line naming it)."""
    from serving.tls import backend_context, listener_context

    for cert, key, name in (
        (config.tls_cert, config.tls_key, "tls"),
        (config.backend_client_cert, config.backend_client_key, "backend-client"),
    ):
        if bool(cert) != bool(key):
            given, missing = ("cert", "key") if cert else ("key", "cert")
            raise ConfigError(
                f"{prefix}{name}-{given}", f"needs --{name}-{missing} too", "give both files"
            )
    if config.tls_cert and config.tls_key:
        listener_context(config.tls_cert, config.tls_key)
    if config.backend_ca_file or config.backend_client_cert:
        backend_context(
            config.backend_ca_file,
            config.backend_sni,
            config.backend_client_cert,
            config.backend_client_key,
        )


def _balancer_names() -> list[str]:
    """The names a misspelled balancer is compared with: presets and POLICY+PICKER pairs."""
    from rl_lb.balancers import BALANCER_NAMES
    from rl_lb.pickers import PICKER_NAMES
    from rl_lb.policies import POLICY_NAMES

    pairs = [f"{p}+{k}" for p in POLICY_NAMES if p != "learned" for k in PICKER_NAMES]
    return [*BALANCER_NAMES, *pairs]


def check_admin(config: ProxyConfig, prefix: str = "--") -> None:
    """Refuse an admin API off loopback without a token, before anything is bound."""
    admin = config.admin_address
    if admin and not is_loopback(admin[0]) and not config.admin_token:
        raise ConfigError(
            f"{prefix}admin",
            f"the admin API on {config.admin} needs a token",
            "set --admin-token or RL_LB_ADMIN_TOKEN, or bind it to 127.0.0.1",
        )


LIVE = frozenset({"backends", "balancer", "policy", "config_path"})
"""The `ProxyConfig` fields a reload (SIGHUP) applies to a running proxy."""


def restart_only_changes(old: ProxyConfig, new: ProxyConfig) -> tuple[ProxyConfig, list[str]]:
    """`new` with every setting a running proxy cannot change kept as in `old`, and the keys of
    those that differ (they take effect at the next start)."""
    changed = [
        d for d in KEYS.values() if d.field.name not in LIVE and d.value(old) != d.value(new)
    ]
    holders = {d.field.name if d.section is None else "control" for d in changed}
    return dataclasses.replace(new, **{name: getattr(old, name) for name in holders}), [
        d.key for d in changed
    ]


def markdown_table() -> str:
    """The proxy's own settings as a Markdown table (docs/proxy.md, beside
    `rl_lb.control.markdown_table()` for the shared ones)."""
    return settings_table(KEYS.values())
