"""Incremental ``Content-Encoding`` decoding for the usage sniffer.

A transport sees the body *before* the client decodes it (the reference, §6 "Raw vs decoded
bytes"): with ``Accept-Encoding: gzip, deflate, br`` the SSE bytes that pass through are still
compressed. The sniffer decodes a private copy; the caller's bytes are never touched.

The decoder must never break the stream it observes, so it never raises: on corrupt input or
an unsupported coding it sets ``failed`` and returns ``b""`` from then on.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: Output allowed from one ``feed`` call. One network chunk that inflates beyond this is a
#: decompression bomb as far as sniffing is concerned; the sniffer gives up instead of
#: allocating it (the caller's own decoder is unaffected).
MAX_OUTPUT_PER_FEED = 64 * 1024 * 1024

# Pieces zlib/brotli produce at a time, so the bound above is checked before memory is used.
_STEP = 1024 * 1024


class _Stage(Protocol):
    def decode(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def decode(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Zlib:
    """gzip (possibly multi-member) or deflate, with output bounded per call."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        # "deflate" is meant to be zlib-wrapped (RFC 9110 §8.4.1.2) but some servers send raw
        # deflate. The two-byte zlib header (RFC 1950 §2.2) tells them apart, so the first
        # bytes are held until both have arrived, whatever the chunking.
        self._head: bytes | None = None if gzip else b""
        self._ignore_rest = False
        self._obj = self._new()

    def _new(self, raw: bool = False) -> Any:
        if self._gzip:
            return zlib.decompressobj(zlib.MAX_WBITS | 16)
        return zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)

    def decode(self, data: bytes) -> bytes:
        if self._head is not None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return b""
            self._head = None
            if not (data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0):
                self._obj = self._new(raw=True)
        return self._decode(data)

    def _decode(self, data: bytes) -> bytes:
        if self._ignore_rest:
            return b""
        out: list[bytes] = []
        total = 0
        pending = data
        while True:
            piece = self._obj.decompress(pending, _STEP)
            out.append(piece)
            total += len(piece)
            if total > MAX_OUTPUT_PER_FEED:
                raise _TooLarge
            pending = self._obj.unconsumed_tail
            if self._obj.eof:
                rest = self._obj.unused_data
                if self._gzip and rest[:2] == b"\x1f\x8b"[: len(rest)]:
                    # A gzip body may be several concatenated members (RFC 1952 §2.2).
                    self._obj = self._new()
                    pending = rest
                    continue
                # Trailing bytes after the stream: ignored, as the client's decoder does.
                self._ignore_rest = True
                break
            if not pending:
                break
        return b"".join(out)

    def flush(self) -> bytes:
        if self._ignore_rest:
            return b""
        return bytes(self._obj.flush())


class _Brotli:
    def __init__(self) -> None:
        import brotli  # optional at runtime: ImportError makes the decoder give up

        self._obj = brotli.Decompressor()
        self._bounded = True  # brotli < 1.2 has no output_buffer_limit

    def decode(self, data: bytes) -> bytes:
        if self._bounded:
            try:
                piece = self._obj.process(data, output_buffer_limit=_STEP)
            except TypeError:
                self._bounded = False
        if not self._bounded:
            return bytes(self._obj.process(data))  # unbounded, but still correct
        out: list[bytes] = []
        total = 0
        while True:
            out.append(piece)
            total += len(piece)
            if total > MAX_OUTPUT_PER_FEED:
                raise _TooLarge
            # A piece that reached the limit may have more behind it. brotli 1.2.1's
            # can_accept_more_data() says True even then, so it cannot be the test.
            if len(piece) < _STEP or self._obj.is_finished():
                break
            piece = self._obj.process(b"", output_buffer_limit=_STEP)
        return b"".join(out)

    def flush(self) -> bytes:
        return b""


class _TooLarge(Exception):
    pass


def _stage_for(coding: str) -> _Stage | None:
    if coding in ("gzip", "x-gzip"):
        return _Zlib(gzip=True)
    if coding == "deflate":
        return _Zlib(gzip=False)
    if coding == "br":
        try:
            return _Brotli()
        except ImportError:
            return None
    if coding in ("identity", ""):
        return _Identity()
    return None


class IncrementalDecoder:
    """Undo a ``Content-Encoding`` chain chunk by chunk; never raises."""

    def __init__(self, content_encoding: str | None) -> None:
        self.failed = False
        self._stages: list[_Stage] = []
        codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
        # Codings are listed in the order they were applied; decode in reverse.
        for coding in reversed(codings):
            if coding in ("identity", ""):
                continue
            stage = _stage_for(coding)
            if stage is None:
                logger.debug("usage sniffing disabled: unsupported content-encoding")
                self.failed = True
                self._stages = []
                return
            self._stages.append(stage)

    def feed(self, raw: bytes) -> bytes:
        if self.failed:
            return b""
        try:
            data = bytes(raw)
            for stage in self._stages:
                data = stage.decode(data)
            return data
        except Exception:
            logger.debug("usage sniffing disabled: content decoding failed", exc_info=True)
            self._give_up()
            return b""

    def flush(self) -> bytes:
        if self.failed:
            return b""
        try:
            data = b""
            for stage in self._stages:
                data = stage.decode(data) + stage.flush() if data else stage.flush()
            return data
        except Exception:
            logger.debug("usage sniffing disabled: content decoding failed", exc_info=True)
            self._give_up()
            return b""

    def _give_up(self) -> None:
        self.failed = True
        self._stages = []


def decode_body(raw: bytes, content_encoding: str | None) -> bytes | None:
    """A whole body's bytes as the client will see them, or None if they cannot be decoded."""
    decoder = IncrementalDecoder(content_encoding)
    data = decoder.feed(raw) + decoder.flush()
    return None if decoder.failed else data
