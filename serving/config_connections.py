"""The declarations of the proxy's connection settings: discovery, TLS and upgrades,
recording, HTTP/2 and gRPC.

`serving.config.ProxyConfig` inherits them after the core ones (serving/config_core.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from rl_lb.control import Setting
from serving.config_core import CoreSettings
from serving.config_values import (
    read_address,
    read_switch,
    read_text,
)
from serving.discovery_sources import read_sources
from serving.grpc_settings import (
    DEFAULT_ERROR_CODES,
    read_backend_protocol,
    read_grpc_codes,
    read_health_protocol,
)
from serving.settings import (
    DISCOVERY,
    HEALTH,
    Option,
    duration,
    proxy_setting,
)
from serving.tls import read_pem_path
from serving.tunnel import read_upgrades

TLS = "TLS and upgrades"
"""The `rl-lb serve --help` panel of the TLS and tunnel settings."""
H2 = "HTTP/2 and gRPC"
"""The `rl-lb serve --help` panel of the HTTP/2 and gRPC settings (serving/h2_server.py)."""
RECORDING = "Recording"
"""The `rl-lb serve --help` panel of the recording settings (serving/recorder.py)."""

__all__ = ["H2", "RECORDING", "TLS", "ConnectionSettings"]


@dataclass(frozen=True)
class ConnectionSettings(CoreSettings):
    """How the proxy finds backends and speaks to clients and backends."""

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
            "Premature stream resets (before any answer, on a young stream) a client may send "
            "per second before its connection is closed (GOAWAY ENHANCE_YOUR_CALM; the HTTP/2 "
            "rapid reset attack).",
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
