"""An incremental server-sent-events parser: bytes in, events out.

It follows the WHATWG HTML "Server-sent events" parsing rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- lines end with CRLF, LF or CR, and *only* those: a raw U+2028, U+2029 or U+0085 inside a JSON
  string is part of the line (``str.splitlines`` would split there);
- a line starting with ``:`` is a comment (keep-alives are comments or blank lines);
- ``field:value`` drops one leading space of the value; a line without ``:`` is a field with
  an empty value; unknown fields are ignored;
- a blank line dispatches the event; a block without any ``data:`` line dispatches nothing,
  so ``id:``/``retry:``-only blocks produce no event (the id is remembered);
- one leading UTF-8 BOM is stripped; invalid UTF-8 becomes U+FFFD.

Splitting happens on bytes, before decoding: CR and LF never occur inside a multi-byte UTF-8
sequence, so a chunk boundary inside a character is harmless.

End of stream: the specification discards an event not closed by a blank line. The mistralai
SDK instead parses the leftover buffer at EOF (``utils/eventstreaming.py``, after its read
loop), so a final event without a trailing blank line still reaches the user.
``dispatch_at_eof=True`` mirrors the SDK for callers that must see what the user saw.

Memory is bounded: a line, or an event's accumulated data, longer than ``max_line_bytes``
makes the parser give up (``failed``) instead of growing without limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Default bound on one line and on one event's data.
MAX_LINE_BYTES = 8 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    event: str  # "message" when the block had no ``event:`` field
    data: str
    id: str | None = None  # the last event id seen so far in the stream, as the spec defines


def _decode(line: bytes) -> str:
    return line.decode("utf-8", "replace")


class SSEParser:
    """Feed it bytes in any chunking; it returns the events completed so far."""

    def __init__(
        self, *, max_line_bytes: int = MAX_LINE_BYTES, dispatch_at_eof: bool = False
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.dispatch_at_eof = dispatch_at_eof
        self.failed = False
        self.closed = False
        self._partial = bytearray()  # the line not yet terminated
        self._skip_lf = False  # the previous chunk ended with CR: a leading LF belongs to it
        self._bom_checked = False
        self._head = b""  # first bytes held back until the BOM question is settled
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0
        self._last_id: str | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        if self.failed or self.closed or not data:
            return []
        chunk = bytes(data)
        if not self._bom_checked:
            chunk = self._head + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._head = chunk  # maybe a BOM split across chunks: wait for more
                return []
            self._bom_checked = True
            self._head = b""
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        out: list[SSEEvent] = []
        start = 0
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                start = 1
        for match in _EOL.finditer(chunk, start):
            piece = chunk[start : match.start()]
            if self._partial:
                if len(self._partial) + len(piece) > self.max_line_bytes:
                    return self._give_up(out)
                self._partial += piece
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = piece
            if len(line) > self.max_line_bytes:
                return self._give_up(out)
            self._line(line, out)
            if self.failed:
                return out
            start = match.end()
        rest = chunk[start:]
        if chunk.endswith(b"\r"):
            # The CR has already ended its line; an LF at the start of the next chunk
            # completes the same CRLF and must not end an empty line (= dispatch).
            self._skip_lf = True
        if rest:
            if len(self._partial) + len(rest) > self.max_line_bytes:
                return self._give_up(out)
            self._partial += rest
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream. Returns the unterminated event only when ``dispatch_at_eof``."""
        if self.failed or self.closed:
            self.closed = True
            return []
        out: list[SSEEvent] = []
        if self.dispatch_at_eof:
            # A held-back head (a stream of one or two bytes of a BOM) holds no field: dropped.
            if self._partial:
                line = bytes(self._partial)
                self._partial.clear()
                self._line(line, out)
            if not self.failed:
                self._dispatch(out)
        self.closed = True
        self._partial.clear()
        self._data = []
        return out

    def _give_up(self, out: list[SSEEvent]) -> list[SSEEvent]:
        self.failed = True
        self._partial = bytearray()
        self._data = []
        return out

    def _line(self, line: bytes, out: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[:1] == b":":
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data_size += len(value) + 1
            if self._data_size > self.max_line_bytes:
                self._give_up(out)
                return
            self._data.append(_decode(value))
        elif name == b"event":
            self._event = _decode(value)
        elif name == b"id" and b"\x00" not in value:
            self._last_id = _decode(value)
        # "retry" only tunes reconnection, and unknown fields are ignored by the spec.

    def _dispatch(self, out: list[SSEEvent]) -> None:
        if self._data:
            out.append(SSEEvent(self._event or "message", "\n".join(self._data), self._last_id))
        self._event = ""
        self._data = []
        self._data_size = 0
