"""Usage from response bodies: whole JSON documents, and SSE streams sniffed on the side.

Where usage lives (reference, §1-§3):

- JSON responses (conversations start/append/restart, chat, FIM, agents, embeddings): a
  top-level ``usage`` object.
- Conversations streams: named events; only ``conversation.response.done`` carries
  ``usage``, and there is no ``[DONE]`` sentinel.
- Chat, FIM and agents-completions streams: data-only chunks; usage sits in the last chunk,
  the one with a ``finish_reason``, followed by ``data: [DONE]``.
- Anything else: the last ``usage`` object seen in any data JSON.

Field order varies and extra fields (``connector_tokens``, ``connectors``, padding) appear; only
the three counters are read, and values of the wrong type are ignored (with no valid total,
a garbage part makes the whole usage unbelievable: the other part alone would under-state it).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from .decoding import IncrementalDecoder
from .sse import SSEEvent, SSEParser
from .types import ResponseFacts, Usage

logger = logging.getLogger(__name__)

_COUNTERS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _count(value: Any) -> int | None:
    """A token counter, or None when the value is not a sane non-negative integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    return None


def usage_from(obj: Any) -> Usage | None:
    """A ``Usage`` from a ``usage`` object, or None when it holds no valid counter."""
    if not isinstance(obj, dict):
        return None
    prompt, completion, total = (obj.get(name) for name in _COUNTERS)
    if (  # the usual case, quickly
        type(prompt) is int
        and type(completion) is int
        and type(total) is int
        and min(prompt, completion, total) >= 0
    ):
        return Usage(prompt, completion, total)
    counts = {name: _count(obj.get(name)) for name in _COUNTERS}
    if all(v is None for v in counts.values()):
        return None
    if counts["total_tokens"] is None and any(
        counts[name] is None and obj.get(name) is not None for name in _COUNTERS[:2]
    ):
        # No total, and a part is garbage (not absent, not null): the other part alone
        # would under-state it.
        return None
    return Usage(
        prompt_tokens=counts["prompt_tokens"] or 0,
        completion_tokens=counts["completion_tokens"] or 0,
        total_tokens=counts["total_tokens"] or 0,
    )


def _conversation_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("conversation_id")
    return value if isinstance(value, str) and value else None


_DECODER = json.JSONDecoder()
_JSON_SPACE = " \t\n\r"


def load_json(body: bytes) -> Any:
    """``json.loads(body)``, at half its cost for the usual body: an object in UTF-8 (which
    ``json.loads`` would first sniff for UTF-16 and UTF-32, then decode, then strip)."""
    if type(body) is not bytes or body[:1] != b"{" or body[1:2] == b"\x00":
        return json.loads(body)  # a BOM, whitespace, UTF-16/32, not bytes: the long way
    text = body.decode("utf-8", "surrogatepass")  # as json.loads decodes UTF-8
    doc, end = _DECODER.raw_decode(text)
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        # As json.loads says it, position included.
        at = len(text) - len(text[end:].lstrip(_JSON_SPACE))
        raise json.JSONDecodeError("Extra data", text, at)
    return doc


def parse_json_response(body: bytes) -> ResponseFacts:
    """Usage and conversation id of a JSON response body; never raises."""
    try:
        doc = load_json(body)
    except Exception:  # bad JSON, bad encoding, or nesting deep enough for RecursionError
        return ResponseFacts()
    if not isinstance(doc, dict):
        return ResponseFacts()
    return ResponseFacts(usage=usage_from(doc.get("usage")), conversation_id=_conversation_id(doc))


def _text_chars(content: Any) -> int:
    """Characters of generated text in a delta's ``content``: a string or text chunk(s)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, dict):
        total = 0
        for key in ("text", "thinking", "content"):
            total += _text_chars(content.get(key))
        return total
    if isinstance(content, list):
        return sum(_text_chars(item) for item in content[:1000])
    return 0


def _str_len(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


class StreamSniffer:
    """Watches a streamed response's raw bytes for usage; never raises, never blocks bytes.

    Feed it every chunk the inner transport yields (still content-encoded), then ``close()``.
    Read ``facts``, ``finished``, ``error``, ``output_chars`` and ``failed`` at any time.
    """

    def __init__(self, content_encoding: str | None = None) -> None:
        self.facts = ResponseFacts()
        self.finished = False
        self.error: str | None = None
        self.output_chars = 0
        self.failed = False
        self._decoder = IncrementalDecoder(content_encoding)
        # The SDK hands the user a final event even without its closing blank line; so do we.
        self._parser = SSEParser(dispatch_at_eof=True)
        self._closed = False
        if self._decoder.failed:
            self.failed = True

    def feed(self, raw: bytes) -> None:
        if self.failed or self._closed:
            return
        try:
            data = self._decoder.feed(raw)
            if self._decoder.failed:
                self._give_up()
                return
            self._handle(self._parser.feed(data))
            if self._parser.failed:
                self._give_up()
        except Exception:
            logger.debug("usage sniffing stopped", exc_info=True)
            self._give_up()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.failed:
            return
        try:
            data = self._decoder.flush()
            if self._decoder.failed:
                self._give_up()
                return
            events = self._parser.feed(data)
            events.extend(self._parser.close())
            self._handle(events)
        except Exception:
            logger.debug("usage sniffing stopped", exc_info=True)
            self._give_up()

    def _give_up(self) -> None:
        if not self.failed:
            logger.debug("usage sniffing gave up; the stream itself is unaffected")
        self.failed = True

    def _handle(self, events: list[SSEEvent]) -> None:
        for event in events:
            self._event(event)

    def _event(self, event: SSEEvent) -> None:
        data = event.data.strip()
        if data == "[DONE]":
            self.finished = True
            return
        if not data.startswith("{"):
            return
        try:
            doc = json.loads(data)
        except Exception:
            return
        if not isinstance(doc, dict):
            return
        kind = event.event if event.event != "message" else doc.get("type")
        if not isinstance(kind, str):
            kind = ""

        conversation_id = _conversation_id(doc)
        if conversation_id is not None and conversation_id != self.facts.conversation_id:
            self.facts = ResponseFacts(self.facts.usage, conversation_id)

        usage = usage_from(doc.get("usage"))
        nested = doc.get("data")
        if usage is None and isinstance(nested, dict):
            usage = usage_from(nested.get("usage"))
        if usage is not None:
            self.facts = ResponseFacts(usage, self.facts.conversation_id)

        if kind == "conversation.response.done":
            self.finished = True
        elif kind == "conversation.response.error":
            message = doc.get("message")
            self.error = message if isinstance(message, str) else "conversation.response.error"
        elif kind == "message.output.delta":
            self.output_chars += _text_chars(doc.get("content"))
        elif kind in ("function.call.delta", "tool.execution.delta"):
            self.output_chars += _str_len(doc.get("arguments"))
        else:
            self._chat_chunk(doc, usage)

    def _chat_chunk(self, doc: dict[str, Any], usage: Usage | None) -> None:
        choices = doc.get("choices")
        if not isinstance(choices, list):
            return
        ended = False
        for choice in choices[:1000]:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason") is not None:
                ended = True
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            self.output_chars += _text_chars(delta.get("content"))
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls[:1000]:
                    if isinstance(call, dict) and isinstance(call.get("function"), dict):
                        self.output_chars += _str_len(call["function"].get("arguments"))
        if ended and usage is not None:
            self.finished = True
