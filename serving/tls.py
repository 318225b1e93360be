"""TLS on both sides of the proxy: the listener's certificate and the backends' verification.

Listener: `ListenerTls` holds the certificate the proxy presents. The socket is created once with
one `ssl.SSLContext`, so a reload (SIGHUP) cannot swap it; instead that context's SNI callback,
which OpenSSL runs during every handshake (with or without a server name), moves the handshake
onto the newest context. A reload builds and checks a whole new context first
(`load_cert_chain`), so a bad new file leaves the old certificate serving, and connections
already open keep the certificate they were made with.

ALPN offers `http/1.1`, and `h2` only when an HTTP/2 handler is registered with
`serving.http_server.HttpServer.alpn_handoff`: the protocol the client picked is in
`ClientConnection.alpn`, and a connection that picked a registered protocol is handed over.

Backends: `backend_context` is the one client context of every `https://` backend (the request
path and the health checks): verification always on, the system's CAs or a CA bundle, an
optional client certificate (mTLS), an optional SNI name that replaces the backend's host in
the handshake and in the certificate check (as nginx's `proxy_ssl_name`).

Every unreadable or unusable PEM file is a one-line `ConfigError` naming the file.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rl_lb.errors import ConfigError

__all__ = [
    "HTTP1",
    "ListenerTls",
    "backend_context",
    "listener_context",
    "read_pem_path",
]

log = logging.getLogger("rl_lb.serving.tls")

HTTP1 = "http/1.1"
"""The ALPN name of HTTP/1.1, always offered by the listener."""


def read_pem_path(raw: Any, where: str) -> str | None:
    """A settings value naming a PEM file: it must exist and be readable ('' or None: none)."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ConfigError(
            where, f"expected a file path, got {raw!r}", "give the path of a PEM file"
        )
    _read_text(raw, where)
    return raw


def _read_text(path: str, where: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as error:
        raise ConfigError(
            f"{where} {path}",
            f"cannot read it: {error.strerror or error}",
            "give the path of a readable PEM file",
        ) from None


def _check_certificates(path: str, where: str) -> None:
    """`path` holds at least one PEM certificate that OpenSSL can parse."""
    text = _read_text(path, where)
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(
            f"{where} {path}", "no PEM certificate in it", "give a file with BEGIN CERTIFICATE"
        )
    try:
        ssl.create_default_context(cadata=text)  # parses every certificate in the file
    except (ssl.SSLError, ValueError) as error:
        raise ConfigError(
            f"{where} {path}", f"not a valid PEM certificate: {_reason(error)}", "re-export it"
        ) from None


def _load_chain(context: ssl.SSLContext, cert: str, key: str, keys: tuple[str, str]) -> None:
    """`load_cert_chain` with a failure naming the file at fault (`keys`: their setting names)."""
    cert_key, key_key = keys
    _check_certificates(cert, cert_key)
    if "PRIVATE KEY-----" not in _read_text(key, key_key):
        raise ConfigError(
            f"{key_key} {key}", "no PEM private key in it", "give a file with BEGIN PRIVATE KEY"
        )
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        reason = _reason(error)
        what = (
            f"does not match the certificate in {cert}"
            if "MISMATCH" in reason.upper()
            else f"not a usable private key: {reason}"
        )
        raise ConfigError(
            f"{key_key} {key}", what, "give the key the certificate was made for"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"{cert_key} {cert}", f"cannot load it: {error}", "check both PEM files"
        ) from None


def _reason(error: BaseException) -> str:
    return str(getattr(error, "reason", None) or error)


def listener_context(cert: str, key: str, alpn: Iterable[str] = (HTTP1,)) -> ssl.SSLContext:
    """The server context presenting `cert` (PEM chain) with `key`, offering `alpn`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key, ("--tls-cert", "--tls-key"))
    context.set_alpn_protocols(list(alpn))
    return context


class ListenerTls:
    """The listener's TLS: the context the socket is made with, and the newest certificate."""

    def __init__(self, cert: str, key: str, alpn: Iterable[str] = (HTTP1,)) -> None:
        self.cert = cert
        self.key = key
        self.alpn = tuple(alpn)
        self.current = listener_context(cert, key, self.alpn)
        """The newest certificate's context: every new handshake ends up on it."""
        self.context = self.current
        """What the listening socket holds; its SNI callback moves handshakes to `current`."""
        self.context.sni_callback = self._use_current
        self.reloads = 0

    def _use_current(self, connection: Any, server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self.current
        return

    def reload(self) -> None:
        """Read the certificate and key again (new handshakes only); `ConfigError` keeps the old."""
        self.current = listener_context(self.cert, self.key, self.alpn)
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert)


class _NamedContext(ssl.SSLContext):
    """A client context whose handshakes send, and verify against, one fixed server name."""

    server_name_override: str | None = None

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        if self.server_name_override:
            kwargs["server_hostname"] = self.server_name_override
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.server_name_override:
            kwargs["server_hostname"] = self.server_name_override
        return super().wrap_socket(*args, **kwargs)


def backend_context(
    ca_file: str | None = None,
    sni: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
) -> ssl.SSLContext:
    """The context of every `https://` backend: verified (system CAs, or `ca_file`), with an
    optional client certificate and an optional SNI / verification name."""
    context = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([HTTP1])
    if ca_file:
        _check_certificates(ca_file, "--backend-ca-file")
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if client_cert and client_key:
        _load_chain(
            context, client_cert, client_key, ("--backend-client-cert", "--backend-client-key")
        )
    context.server_name_override = sni or None
    return context
