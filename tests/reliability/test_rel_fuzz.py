"""Fuzzing with hypothesis: request headers through a live proxy, and the config parser.

The proxy runs on its own event loop in a thread for the whole module, because hypothesis drives
examples synchronously and one proxy per example would spend the budget on start-ups.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rel_helpers import CountingBackend, RawAnswer, proxy_settings, raw_exchange

from rl_lb.errors import ConfigError
from serving.app import ProxyServer
from serving.config import KEYS, ProxyConfig, load_config

EXCHANGE_TIMEOUT_S = 5.0


class ThreadedProxy:
    """A backend and a proxy in front of it, on an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.backend = CountingBackend("c0")
        self.proxy: ProxyServer | None = None

    def __enter__(self) -> ThreadedProxy:
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(EXCHANGE_TIMEOUT_S + 5)

    async def _start(self) -> None:
        await self.backend.start()
        config = proxy_settings([self.backend.url], health_path=None, read_timeout_s=0.5)
        self.proxy = ProxyServer(config)
        await self.proxy.start()

    async def _stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
        await self.backend.stop()

    def exchange(self, payload: bytes) -> RawAnswer:
        assert self.proxy is not None
        return self.run(raw_exchange(self.proxy.port, payload, EXCHANGE_TIMEOUT_S, close_wait=0.0))


@pytest.fixture(scope="module")
def live() -> Iterator[ThreadedProxy]:
    with ThreadedProxy() as proxy:
        yield proxy


TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""RFC 9110 tchar: what a field name is made of."""
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"}
HOP_BY_HOP |= {"proxy-authenticate", "proxy-authorization", "trailer"}
"""RFC 9110 §7.6.1: not forwarded."""
SPECIAL = {"host", "content-length", "expect", "x-forwarded-for", "x-forwarded-proto"}
SPECIAL |= {"x-forwarded-host", "via", *HOP_BY_HOP}
"""Names the proxy handles itself: their values need not arrive as sent."""

names = st.text(alphabet=TOKEN, min_size=1, max_size=40)
visible = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\t"),
    max_size=200,
)
any_bytes = st.binary(max_size=200)


def request_with(name: bytes, value: bytes) -> bytes:
    return b"GET /fuzz HTTP/1.1\r\nHost: x\r\n" + name + b": " + value + b"\r\n\r\n"


def check_clean(answer: RawAnswer) -> None:
    """Answered, never by a 5xx, and any 200 came from the backend."""
    assert answer.status is not None, "closed without an answer"
    assert answer.status < 500, answer
    if answer.status == 200:
        assert answer.headers.get("x-backend") == "c0"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, value=visible)
def test_a_valid_header_reaches_the_backend_as_sent(live: ThreadedProxy, name, value) -> None:
    answer = live.exchange(request_with(name.encode(), value.encode()))
    check_clean(answer)
    if name.lower() in SPECIAL:
        return
    assert answer.status == 200, answer
    received = [v for k, v in json.loads(answer.body)["headers"] if k.lower() == name.lower()]
    assert received == [value.strip(" \t")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.binary(min_size=1, max_size=40), value=any_bytes)
@example(name=b"X-A", value=b"a\r\nX-Injected: 1")
@example(name=b"Content-Length", value=b"-1")
@example(name=b"Expect", value=b"100-continue")
@example(name=b"Transfer-Encoding", value=b"chunked")
@example(name=b"Connection", value=b"Upgrade")
def test_any_header_bytes_get_an_answer_and_never_a_5xx(live: ThreadedProxy, name, value) -> None:
    check_clean(live.exchange(request_with(name, value)))


# -- the config parser ---------------------------------------------------------------------


def toml_string(text: str) -> str:
    escaped = []
    for ch in text:
        if ch in '"\\':
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\u{ord(ch):04x}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


text_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
addresses = st.builds(
    lambda host, port: f"{host}:{port}",
    st.sampled_from(["127.0.0.1", "0.0.0.0", "[::1]", "localhost", "", "[::"]),
    st.text(st.characters(categories=["Nd", "No"]), max_size=6) | st.integers(-1, 70000),
)
urls = st.builds(
    lambda scheme, host, rest: f"{scheme}://{host}{rest}",
    st.sampled_from(["http", "https", "ftp", ""]),
    st.sampled_from(["127.0.0.1", "[::1]", "[::1", "h", "", "h:99999", "h:80x"]),
    text_values,
)
scalars = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.booleans()
    | text_values
    | addresses
    | urls
    | st.sampled_from(["1e400", "-0", "0x10", "1_000", " 5 ", "nan"])
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text_values, inner, max_size=3),
    max_leaves=8,
)
documents = st.dictionaries(st.sampled_from(sorted(KEYS)) | text_values, toml_values, max_size=6)


def accepted_or_config_error(path: str | None, flags: dict[str, Any] | None = None) -> None:
    try:
        config = load_config(path, flags)
    except ConfigError:
        return
    assert isinstance(config, ProxyConfig)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=documents)
@example(document={"backend": ["http://127.0.0.1:8000"], "listen": "127.0.0.1:²"})
@example(document={"backend": ["http://[::1"]})
def test_any_toml_config_is_a_config_or_a_config_error(tmp_path: Path, document) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text("\n".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in document.items()))
    accepted_or_config_error(str(path))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=300))
@example(raw=b'backend = "\xff"\n')
def test_any_file_bytes_are_a_config_or_a_config_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "proxy.toml"
    path.write_bytes(raw)
    accepted_or_config_error(str(path))


@settings(max_examples=300, deadline=None)
@given(flags=st.dictionaries(st.sampled_from(sorted(KEYS)), toml_values, max_size=6))
@example(flags={"backend": "http://[::1"})
def test_any_flags_are_a_config_or_a_config_error(flags) -> None:
    accepted_or_config_error(None, flags)


@pytest.mark.parametrize(
    ("key", "value"),
    [("max-ejection-percent", 150.0), ("balancer", "no-such-balancer")],
)
async def test_values_the_proxy_cannot_start_with_are_refused_by_load_config(key, value) -> None:
    """The config module promises one check, at load time, naming the key: a value that only
    fails once the proxy starts is a half-working `rl-lb serve` (or a SIGHUP reload that
    passes and then breaks)."""
    flags = {"backend": ["http://127.0.0.1:9"], "listen": "127.0.0.1:0", "admin": "", key: value}
    try:
        config = load_config(None, flags)
    except ConfigError as error:
        refused_at = error.where
    else:
        refused_at = ""
    if refused_at:
        assert key in refused_at
        return
    proxy = ProxyServer(config)
    try:
        await proxy.start()
    except ConfigError as error:
        pytest.fail(
            f"load_config accepted {key} = {value!r}, the proxy refused it at start: {error}"
        )
    await proxy.stop()
