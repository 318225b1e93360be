"""`serving.h2_connection`: the proxy's h2 connection handles frames exactly as h2's own, without
formatting them for a discarded trace log, and encodes headers that decode to the same fields."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from grpc_helpers import UNARY, call_headers
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from hpack import Decoder, Encoder
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from serving.h2_connection import (
    HPACK_LOGGERS,
    REVIEWED_RECEIVE_FRAME,
    PlainEncoder,
    ProxyH2Connection,
    quiet_hpack_logging,
    receive_frame_source_hash,
)

REQUEST = [*call_headers(UNARY), (b"grpc-timeout", b"4999813u")]


def test_the_copied_receive_frame_is_the_installed_h2s() -> None:
    assert receive_frame_source_hash() == REVIEWED_RECEIVE_FRAME, (
        "h2's H2Connection._receive_frame changed: compare it with "
        "serving.h2_connection.ProxyH2Connection._receive_frame_quietly, then update "
        "REVIEWED_RECEIVE_FRAME"
    )
    assert ProxyH2Connection._receive_frame is ProxyH2Connection._receive_frame_quietly


def _client_bytes() -> bytes:
    """A client's preface and frames, including the error paths of `_receive_frame`: data on a
    stream it reset (answered with RST_STREAM) and a WINDOW_UPDATE on a stream ended both ways."""
    encoder = Encoder()
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    out = client.data_to_send()
    for stream_id in (1, 3, 5):
        client.send_headers(stream_id, REQUEST)
        client.send_data(stream_id, b"\x00\x00\x00\x00\x02hi", end_stream=stream_id != 3)
    out += client.data_to_send()
    out += RstStreamFrame(3, error_code=ErrorCodes.CANCEL).serialize()
    out += DataFrame(3, b"late").serialize()  # after its own RST_STREAM
    headers = HeadersFrame(7, encoder.encode(REQUEST), flags=["END_HEADERS", "END_STREAM"])
    out += headers.serialize()
    out += WindowUpdateFrame(0, window_increment=1000).serialize()
    return bytes(out)


def _serve(connection: H2Connection, data: bytes) -> tuple[list[str], bytes]:
    connection.initiate_connection()
    events: list[str] = []
    for start in range(0, len(data), 37):  # frames split across reads, as from a socket
        events += [repr(e) for e in connection.receive_data(data[start : start + 37])]
    return events, connection.data_to_send()


def _server_config() -> H2Configuration:
    return H2Configuration(client_side=False, header_encoding=None)


@pytest.fixture
def frames_must_not_be_formatted(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Frame) -> str:
        raise AssertionError("a received frame was formatted")

    monkeypatch.setattr(Frame, "__repr__", refuse)


def test_frames_are_handled_as_h2_does(frames_must_not_be_formatted: None) -> None:
    data = _client_bytes()
    events, _ = _serve(ProxyH2Connection(_server_config()), data)
    assert any("StreamEnded" in e for e in events)
    with pytest.raises(AssertionError, match="formatted"):
        _serve(H2Connection(_server_config()), data)  # h2's own formats every frame


def test_same_events_and_answers_as_h2() -> None:
    data = _client_bytes()
    proxy_events, proxy_out = _serve(ProxyH2Connection(_server_config()), data)
    h2_events, h2_out = _serve(H2Connection(_server_config()), data)
    assert proxy_events == h2_events
    assert any("StreamReset" in e for e in proxy_events)
    assert proxy_out == h2_out  # SETTINGS ack, the RST_STREAM for the late data
    assert RstStreamFrame(3, error_code=ErrorCodes.STREAM_CLOSED).serialize() in proxy_out


def _outcome(connection: H2Connection, data: bytes) -> tuple[str, list[str], bytes]:
    try:
        events, out = _serve(connection, data)
    except ProtocolError as error:
        return type(error).__name__, [], connection.data_to_send()
    return "", events, out


@pytest.mark.parametrize(
    "trailing",
    [
        DataFrame(1, b"after end", flags=["END_STREAM"]),  # on a stream the client ended
        DataFrame(11, b"idle"),  # on a stream never opened
        HeadersFrame(3, b"\x82", flags=["END_HEADERS"]),  # on a stream the client reset
        WindowUpdateFrame(5, window_increment=10),
    ],
    ids=["data-after-end", "data-on-idle", "headers-after-reset", "window-update"],
)
def test_every_path_ends_as_h2s_does(trailing: Frame) -> None:
    data = _client_bytes() + trailing.serialize()
    ours = _outcome(ProxyH2Connection(_server_config()), data)
    assert ours == _outcome(H2Connection(_server_config()), data)


def test_a_connection_error_is_raised_as_h2_raises_it() -> None:
    data = _client_bytes() + DataFrame(11, b"idle").serialize()
    error, _, goaway = _outcome(ProxyH2Connection(_server_config()), data)
    assert error
    assert goaway


def test_plain_literals_decode_to_the_same_fields() -> None:
    decoder, encoder = Decoder(), PlainEncoder()
    for call in range(5):  # the second and later blocks mostly index the table
        fields = [*REQUEST[:-1], (b"grpc-timeout", f"{4999000 + call}u".encode())]
        assert decoder.decode(encoder.encode(fields), raw=True) == fields
    # without Huffman coding the literal's bytes are in the block as they are (RFC 7541 §5.2)
    value = b"application/grpc+custom"
    assert value in PlainEncoder().encode([(b"x-literal", value)])
    assert value not in Encoder().encode([(b"x-literal", value)])


def test_proxy_connections_encode_plainly() -> None:
    connection = ProxyH2Connection(H2Configuration(client_side=True, header_encoding=None))
    assert isinstance(connection.encoder, PlainEncoder)
    connection.initiate_connection()
    connection.send_headers(1, [*REQUEST, (b"x-trace", b"abcdefghijklmnop")], end_stream=True)
    assert b"abcdefghijklmnop" in connection.data_to_send()


@pytest.fixture
def hpack_loggers() -> Iterator[list[logging.Logger]]:
    loggers = [logging.getLogger(name) for name in HPACK_LOGGERS]
    levels = [logger.level for logger in loggers]
    yield loggers
    for logger, level in zip(loggers, levels, strict=True):
        logger.__dict__.pop("debug", None)
        logger.setLevel(level)


def test_hpack_debug_logging_is_skipped_when_off(
    hpack_loggers: list[logging.Logger], caplog: pytest.LogCaptureFixture
) -> None:
    for logger in hpack_loggers:
        logger.setLevel(logging.INFO)
    assert quiet_hpack_logging()
    with caplog.at_level(logging.DEBUG, logger="hpack"):
        for logger in hpack_loggers:
            logger.setLevel(logging.DEBUG)  # enabled after start-up: not looked at again
        Decoder().decode(Encoder().encode(REQUEST))
    assert not [r for r in caplog.records if r.name.startswith("hpack")]


def test_hpack_debug_logging_is_kept_when_on(
    hpack_loggers: list[logging.Logger], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="hpack"):
        assert not quiet_hpack_logging()
        Decoder().decode(Encoder().encode(REQUEST))
    assert [r for r in caplog.records if r.name.startswith("hpack")]
