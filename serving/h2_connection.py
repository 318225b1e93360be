"""`ProxyH2Connection`: h2's connection without the per-frame work a proxy never reads.

After frames were coalesced into one write per turn (`serving.h2_output`), a gRPC call's CPU in
the proxy is mostly the `h2`/`hpack`/`hyperframe` Python (docs/benchmarks.md, "gRPC through
the proxy"). Three parts of it produce nothing the proxy uses:

- **the trace text of every received frame.** `H2Connection._receive_frame` formats
  `repr(frame)` for its trace log before the logger is asked, and h2's default logger discards
  it: ~4.5% of the proxy's CPU samples at 500 calls/s. `ProxyH2Connection` receives frames with
  the same code minus that line, for the h2 release it was reviewed against only: another
  release's `_receive_frame` (its source hash differs) is used unchanged.
- **Huffman coding of header strings.** RFC 7541 lets each string literal be sent plain or
  Huffman-coded; coding saves about a fifth of a literal's bytes and costs a Python loop per
  byte. Most of a call's fields are indexed (one or two bytes) after the first call on a
  connection, so plain literals add a few bytes per call. `PlainEncoder` sends them plain.
- **hpack's debug log.** hpack calls `logging.debug` for every field it encodes or decodes
  (about 130 calls a gRPC call through the proxy). `quiet_hpack_logging()`, called once by
  `rl-lb serve` after its logging is configured, replaces those calls by a no-op unless hpack's
  loggers are enabled for DEBUG then.

The code of `_receive_frame` below is h2's (MIT licence, Copyright (c) 2015-2020 Cory Benfield
and contributors) with the trace line removed.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Iterable
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import Event
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from hpack import Encoder
from hyperframe.frame import Frame, RstStreamFrame

__all__ = [
    "REVIEWED_RECEIVE_FRAME",
    "PlainEncoder",
    "ProxyH2Connection",
    "quiet_hpack_logging",
    "receive_frame_source_hash",
]

REVIEWED_RECEIVE_FRAME = "39b2e16b4fd74ed014ca144a0c6e388a"
"""The first 32 hex digits of the sha256 of `H2Connection._receive_frame`'s source in the h2
release `ProxyH2Connection._receive_frame` copies (h2 4.4.1). A test says when h2 changes it."""

HPACK_LOGGERS = ("hpack.hpack", "hpack.table")


def receive_frame_source_hash() -> str | None:
    """The installed h2's `_receive_frame` source, hashed; None when its source is unavailable."""
    try:
        source = inspect.getsource(H2Connection._receive_frame)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:32]


class PlainEncoder(Encoder):
    """An HPACK encoder that sends every string literal without Huffman coding (RFC 7541 §5.2:
    the choice is the sender's, per string)."""

    def encode(
        self, headers: Iterable[tuple[bytes | str, bytes | str]] | Any, huffman: bool = True
    ) -> bytes:
        return super().encode(headers, huffman=False)


class ProxyH2Connection(H2Connection):
    """`H2Connection` with plain HPACK literals and, for the reviewed h2 release, received
    frames handled without formatting each for a discarded trace log."""

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self.encoder = PlainEncoder()

    def _receive_frame_quietly(self, frame: Frame) -> list[Event]:
        """h2 4.4.1's `_receive_frame` without `trace("Received frame: %s", repr(frame))`."""
        events: list[Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # Closed by RST_STREAM: a stream error, answered with RST_STREAM; else a
            # connection error, raised on.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            # A frame for a stream already cleaned up, or implicitly closed by a higher ID.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    if receive_frame_source_hash() == REVIEWED_RECEIVE_FRAME:
        _receive_frame = _receive_frame_quietly


def _discard(*args: object, **kwargs: object) -> None:
    return None


def quiet_hpack_logging() -> bool:
    """Skip hpack's per-field `logging.debug` calls when its loggers would drop them anyway.

    Decided once, at start-up, from the logging configuration then; True when it did.
    """
    loggers = [logging.getLogger(name) for name in HPACK_LOGGERS]
    if any(logger.isEnabledFor(logging.DEBUG) for logger in loggers):
        return False
    for logger in loggers:
        logger.debug = _discard  # type: ignore[method-assign]
    return True
