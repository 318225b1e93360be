"""Why a backend could not be reached, in the words an operator searches for.

A health check or a connection fails with one of a dozen exception types (aiohttp's wrappers
around OSError, ssl and DNS errors, timeouts); the log and `/admin/state` need the cause
behind them: a DNS failure, a refused connection, a timeout, a TLS handshake or certificate
problem, or the status the backend answered. One function names it, for both.
"""

from __future__ import annotations

import socket
import ssl

import aiohttp

__all__ = ["describe_failure", "describe_status"]


def _cause(error: BaseException) -> BaseException:
    """The error aiohttp wraps (`certificate_error`, `os_error`), else the error itself."""
    for attribute in ("certificate_error", "os_error"):
        inner = getattr(error, attribute, None)
        if isinstance(inner, BaseException):
            return inner
    return error


def describe_failure(error: BaseException, timeout_s: float | None = None) -> str:
    """One short phrase naming the cause of a failed connection or exchange."""
    cause = _cause(error)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {cause.verify_message or cause.reason}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.reason or cause}"
    if isinstance(error, aiohttp.ClientConnectorDNSError) or isinstance(cause, socket.gaierror):
        return f"DNS lookup failed: {getattr(cause, 'strerror', None) or cause}"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError):
        return f"timeout: no answer within {timeout_s:g} s" if timeout_s else "timeout"
    if isinstance(cause, OSError):
        return f"connection failed: {cause.strerror or cause}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def describe_status(status: int) -> str:
    """A health check that got an answer, but not a 2xx one."""
    return f"health check answered status {status}"
