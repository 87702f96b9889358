"""What a request will cost, from its method, path and body bytes.

``Estimator.estimate`` never raises: whatever the body (malformed JSON, wrong types, 50 MB,
unreadable), it returns an :class:`Estimate`. ``Estimator.observe`` then learns from the
server's usage: the size of each stored conversation, and a per-model correction.

Endpoints (``Estimate.endpoint``):

======================== ============================================ =====================
endpoint                 path (POST)                                  completion reserve
======================== ============================================ =====================
conversations.start      /v1/conversations                            completion_args.max_tokens
conversations.append     /v1/conversations/{id}                       completion_args.max_tokens
conversations.restart    /v1/conversations/{id}/restart               completion_args.max_tokens
chat                     /v1/chat/completions                         max_tokens x n
fim                      /v1/fim/completions                          max_tokens
agents.completions       /v1/agents/completions                       max_tokens x n
embeddings               /v1/embeddings                               0
ocr                      /v1/ocr                                      0
no_usage                 /v1/(chat/)moderations, (chat/)classifications 0
other                    any other POST/PUT/PATCH                     max_tokens if given
read                     GET, DELETE, HEAD, OPTIONS                   0
======================== ============================================ =====================

Without a declared cap the completion reserve is ``default_max_tokens``. An append or restart
is billed for the stored conversation, so its prompt includes the tracked history size
(``unknown_history_tokens`` until the server has reported one).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import bodies
from .correction import ModelCorrection
from .history import ConversationHistory
from .images import MAX_IMAGE_TOKENS
from .template import Count
from .tokenizer import count_tokens, fallback_count, tokenizer_info
from .types import Estimate, Usage

if TYPE_CHECKING:
    from ..config import RatelimitConfig

logger = logging.getLogger(__name__)

#: Characters of text tokenised exactly per request; beyond this the rest of the body is
#: counted with the cheap bound (Tekken runs at ~10 MB/s, so this caps the work at ~0.2 s).
EXACT_TEXT_BUDGET = 2_000_000
#: Bodies larger than this are not parsed at all: their byte length is the estimate.
MAX_PARSE_BYTES = 64 * 1024 * 1024
#: JSON values (counted by their commas) beyond which a body is not parsed and walked:
#: reading a million messages takes seconds. Such a body is bounded from its bytes (about
#: 50 000 messages, already more than any context window holds, walk in ~0.1 s).
MAX_WALKED_VALUES = 100_000
#: The most one byte of a body can cost: an unreadable image chunk, ``{"image_url":0},``,
#: costs MAX_IMAGE_TOKENS in 16 bytes. The bound of a body too big to walk that is not
#: text only.
MAX_TOKENS_PER_BYTE = -(-MAX_IMAGE_TOKENS // 16)
#: Estimates awaiting their response (for the correction), bounded.
MAX_PENDING = 4096

_V1 = re.compile(r"(?:^|/)v1/(.*)$")
_NO_USAGE = frozenset(
    {"moderations", "chat/moderations", "classifications", "chat/classifications"}
)
_SIMPLE = {
    "chat/completions": "chat",
    "fim/completions": "fim",
    "agents/completions": "agents.completions",
    "embeddings": "embeddings",
    "ocr": "ocr",
}
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Endpoints whose text-only bodies the cheap estimate bounds without parsing them.
_SCANNABLE = frozenset(
    {"conversations.start", "conversations.append", "conversations.restart", "chat", "fim"}
)
#: Strings (keys or values) whose cost is not in the body's bytes. Bodies holding any of them
#: take the parsing path.
_NOT_IN_BYTES = frozenset(
    {
        # A URL or a reference stands for a whole image, document or clip, costed by policy
        # or by the image's size (bodies.py).
        b"image_url",
        b"image",
        b"document_url",
        b"document",
        b"file",
        b"file_id",
        b"tool_file",
        b"input_audio",
        b"audio_url",
        b"audio",
        # An agent's instructions and tools live on the server; n multiplies the output.
        b"agent_id",
        b"n",
        # Re-serialised by the chat template with ", " and ": " separators and Python's
        # spelling of floats (1e15 becomes 1000000000000000.0), so compact JSON grows:
        # tools, tool calls and their arguments, tool results, schemas, predictions.
        b"tools",
        b"tool_calls",
        b"arguments",
        b"result",
        b"tool",
        b"function.call",
        b"function.result",
        b"tool.execution",
        b"json_schema",
        b"prediction",
    }
)
#: Keys whose value is rendered as JSON when it is not a string (bodies._text_of).
_TEXT_KEYS = frozenset({b"text", b"thinking", b"prompt"})
#: Keys the cheap estimate reads.
_READ_KEYS = frozenset({b"max_tokens", b"stream", b"model", b"completion_args"})
_WATCHED = _NOT_IN_BYTES | _TEXT_KEYS | _READ_KEYS
#: A string this long is prose to the scan, which blanks it, all but a last backslash
#: (which may escape the quote after it). Every key and marker it looks for is shorter.
_PROSE_BYTES = 100
#: BOS and the few control tokens a chat template adds beyond a body's own JSON syntax.
SCAN_OVERHEAD_TOKENS = 16
#: An escaped backslash or quote; read left to right, this is exactly JSON's escaping.
_QUOTE_ESCAPE = re.compile(rb'\\[\\"]')
#: An ASCII character spelt as an escape: it could spell a key or a marker ("\u0074ools").
_ASCII_ESCAPE = re.compile(rb"\\u00[2-7]")
_NON_STRING_TEXT = re.compile(rb'"(?:text|thinking|prompt)"[ \t\r\n]*:[ \t\r\n]*[^" \t\r\n]')
_QUOTED_MARKER = re.compile(
    b'"(?:%s)"' % b"|".join(re.escape(m) for m in sorted(_NOT_IN_BYTES, key=len, reverse=True))
)
#: A body this small holds at most MAX_WALKED_VALUES: a value and its comma take 2 bytes.
_WALKED_BYTES = 2 * MAX_WALKED_VALUES


def _object_pattern() -> re.Pattern[bytes]:
    """The top-level object of a skeleton (see ``_scan``), capturing the members the cheap
    estimate reads: the last of each, as ``json.loads`` keeps the last duplicate key.

    Captures sit in atomic groups, not possessive repeats: Python 3.11 loses a capture made
    inside a possessive repeat.
    """
    ws = rb"[ \t\r\n]*+"
    string = rb'"[^"]*+"'  # a skeleton holds no escaped quote
    scalar = rb'[^"{}\[\],: \t\r\n]++'
    nested = rb'(?:[^"{}\[\]]++|' + string + rb")*+"
    for _ in range(16):  # deeper bodies do not match, and take the parsing path
        nested = rb'(?:[^"{}\[\]]++|' + string + rb"|[{\[]" + nested + rb"[}\]])*+"
    value = rb"(?:" + string + rb"|[{\[]" + nested + rb"[}\]]|" + scalar + rb")"

    def members(captures: list[tuple[bytes, str, bytes]]) -> bytes:
        """An object, capturing as ``group`` the ``pattern`` value of each ``key``."""
        named = b"|".join(
            b'"%s"%s:%s(?P<%s>%s)' % (key, ws, ws, group.encode(), pattern)
            for key, group, pattern in captures
        )
        other = string + ws + b":" + ws + value
        return rb"\{%s(?>(?:(?:%s|%s)%s(?:,|(?=\}))%s)*)\}" % (ws, named, other, ws, ws)

    args = members([(b"max_tokens", "args_max", value)]) + b"|" + value
    top = members(
        [
            (b"model", "model", value),
            (b"stream", "stream", value),
            (b"max_tokens", "max_tokens", value),
            (b"completion_args", "args", args),
        ]
    )
    return re.compile(top + ws)


_OBJECT = _object_pattern()
#: Group numbers of what ``_read`` takes from a match, for one ``Match.group`` call.
_MEMBERS = tuple(_OBJECT.groupindex[name] for name in ("model", "stream", "max_tokens", "args_max"))


def _skeleton(body: bytes) -> tuple[list[bytes], bytes]:
    """The strings of ``body``, prose blanked, and the body rebuilt with them."""
    pieces = body.split(b'"')
    # Blanked, not dropped: a dropped piece would merge its neighbours. Not cut to its last
    # byte either: "...\n" would end in "n", a marker.
    strings = [
        s if len(s) < _PROSE_BYTES else b"\\" if s.endswith(b"\\") else b"" for s in pieces[1::2]
    ]
    pieces[1::2] = strings
    return strings, b'"'.join(pieces)


Reading = tuple[int | None, bool, str | None]
#: Readings of recent skeletons. One program's requests come in a few shapes (the same
#: keys, model, cap and short values around different prose), and a skeleton determines
#: its reading, so each shape is read once.
_READINGS: dict[tuple[bytes, bool], Reading | None] = {}
_UNREAD: Reading = (-1, False, None)  # no reading has a negative cap
_MAX_READINGS = 256
#: Skeletons longer than this (bodies of many short strings) are read but not kept.
_MAX_KEPT_SKELETON = 4096


def _scan(body: bytes, conversation: bool) -> Reading | None:
    """The cheap estimate's reading of a body, without parsing it: ``(max_tokens, stream,
    model)``, or None when the body's bytes may not bound its cost.

    A Tekken token is at least one byte of UTF-8, JSON escaping only lengthens text, and
    every message spends more bytes on JSON syntax than the template spends control tokens
    on it, so the body's length (plus BOS) bounds its prompt, as long as the template
    renders no JSON of its own: bodies with tools, tool calls or results, schemas,
    predictions, or a text field that is not a string, are declined.
    ``conversation``: the output cap is ``completion_args.max_tokens``, not ``max_tokens``.

    The body is read as a skeleton: split at its quotes, every string of prose blanked, so
    the searches run over a couple of hundred bytes whatever the body's size.
    tests/test_estimate_scan.py checks the bound over the corpus and generated bodies.
    """
    if body[:1] != b"{" or body[1:2] == b"\x00":
        return None  # not an object, or UTF-16/32, which json.loads would decode
    strings, skeleton = _skeleton(body)
    if b"\\" in skeleton:
        if _ASCII_ESCAPE.search(skeleton):
            return None  # a key or a marker may be spelt with escapes: "\u0074ools"
        if b'\\"' in skeleton:
            # A quote may be escaped, which shifts which pieces are strings: mask escaped
            # quotes and backslashes, and split again.
            strings, skeleton = _skeleton(_QUOTE_ESCAPE.sub(b"\x00\x00", body))
    if len(skeleton) > _MAX_KEPT_SKELETON:
        return _read(strings, skeleton, conversation)
    key = (skeleton, conversation)
    reading = _READINGS.get(key, _UNREAD)
    if reading is _UNREAD:
        reading = _READINGS[key] = _read(strings, skeleton, conversation)
        if len(_READINGS) > _MAX_READINGS:
            _READINGS.clear()
    return reading


def _read(strings: list[bytes], skeleton: bytes, conversation: bool) -> Reading | None:
    """``_scan``'s reading of a skeleton and its strings."""
    found = _WATCHED.intersection(strings)
    if not found <= _READ_KEYS:
        if not found.isdisjoint(_NOT_IN_BYTES):
            return None
        if _NON_STRING_TEXT.search(skeleton):
            return None
    if found.isdisjoint(_READ_KEYS):
        return None, False, None
    members = _OBJECT.fullmatch(skeleton)
    if members is None:
        return None
    model, stream, cap, args_cap = members.group(*_MEMBERS)
    if conversation:
        # The cap of the last completion_args, which replaces any earlier one.
        late = args_cap is not None and members.start("args_max") > members.start("args")
        cap = args_cap if late else None
    if cap is not None and not (
        cap.isdigit() and len(cap) <= 18 and (cap[:1] != b"0" or cap == b"0")
    ):
        if cap[:1] in b"-0123456789":
            return None  # -0, 64.0, 064 or 19 digits: let the parser judge the number
        cap = None  # true, null, "64", ...: no cap, as for the parser
    if model is not None and model[:1] != b'"':
        model = None
    elif model is not None and (model == b'""' or b"\\" in model or b"\x00" in model):
        return None  # maybe a long name blanked, or escaped text: let the parser read it
    try:
        name = None if model is None else model[1:-1].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return (None if cap is None else int(cap)), stream == b"true", name


_GENERATION = frozenset(
    {
        "conversations.start",
        "conversations.append",
        "conversations.restart",
        "chat",
        "fim",
        "agents.completions",
    }
)


@functools.lru_cache(maxsize=4096)  # every request is routed, most to a handful of paths
def route(method: str, path: str) -> tuple[str, str | None]:
    """``(endpoint, conversation_id)`` for a method and URL path."""
    if str(method).upper() not in _WRITE_METHODS:
        return "read", None
    match = _V1.search(path or "")
    rest = (match.group(1) if match else (path or "").lstrip("/")).strip("/")
    if rest in _SIMPLE:
        return _SIMPLE[rest], None
    if rest in _NO_USAGE:
        return "no_usage", None
    parts = rest.split("/")
    if parts[0] == "conversations":
        if len(parts) == 1:
            return "conversations.start", None
        if len(parts) == 2 and parts[1]:
            return "conversations.append", parts[1]
        if len(parts) == 3 and parts[1] and parts[2] == "restart":
            return "conversations.restart", parts[1]
    return "other", None


def _accepts_sse(headers: Mapping[str, str] | None) -> bool:
    if not headers:
        return False
    try:
        # One lookup for httpx's case-insensitive Headers and the lowercased dicts the
        # transports build; other mappings may spell it "Accept", so look through them.
        value = headers.get("accept")
        if value is None:
            value = next((v for k, v in headers.items() if str(k).lower() == "accept"), None)
        return value is not None and "text/event-stream" in str(value).lower()
    except Exception:
        return False


class _BudgetCount:
    """Exact counting up to a budget of characters, the cheap bound after it."""

    def __init__(self, budget: int) -> None:
        self.left = budget
        self.spilled = False

    def __call__(self, text: str) -> int:
        if len(text) <= self.left:
            self.left -= len(text)
            return count_tokens(text)
        self.spilled = True
        return fallback_count(text)


def _unwalked_prompt(endpoint: str, body: bytes) -> int:
    """A bound on the prompt of a body too big to walk (nor are its cap and stream read)."""
    if endpoint in _GENERATION:
        # Text only, as _scan defines it, searched for in the raw body: an escaped quote can
        # only make a marker appear where there is none, which costs a higher bound.
        text_only = not (
            _QUOTED_MARKER.search(body)
            or _NON_STRING_TEXT.search(body)
            or _ASCII_ESCAPE.search(body)
        )
        per_byte = 1 if text_only else MAX_TOKENS_PER_BYTE
        return len(body) * per_byte + SCAN_OVERHEAD_TOKENS
    if endpoint == "ocr":
        return max(bodies.DOCUMENT_TOKENS, MAX_IMAGE_TOKENS)
    # The other readers count strings only (and an embedding input's 2 tokens, which its
    # quotes pay for): no more tokens than bytes.
    return len(body) + 1


@dataclass
class _Pending:
    estimate: Estimate
    key: str  # correction key: model, agent or endpoint
    body_tokens: int  # prompt tokens from the body, before correction
    history_tokens: int
    counted: bool  # text counted with Tekken (not the cheap bound or the fallback)
    learn: bool  # counted, and the history size was known


class Estimator:
    """Request bodies -> :class:`Estimate`; responses -> history sizes and corrections."""

    def __init__(
        self,
        *,
        default_max_tokens: int = 1024,
        unknown_history_tokens: int = 2048,
        history_size: int = 10_000,
        history: ConversationHistory | None = None,
        correction: ModelCorrection | None = None,
    ) -> None:
        self.default_max_tokens = max(0, int(default_max_tokens))
        self.unknown_history_tokens = max(0, int(unknown_history_tokens))
        # What the server taught (conversation sizes, per-model corrections) may be shared
        # by estimators with different settings: see ``sharing``.
        self.history = history if history is not None else ConversationHistory(history_size)
        self.correction = correction if correction is not None else ModelCorrection()
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._lock = threading.Lock()
        #: Estimates that fell back to the body's byte length because reading it failed.
        self.failures = 0

    @classmethod
    def from_config(cls, config: RatelimitConfig) -> Estimator:
        return cls(
            default_max_tokens=config.default_max_tokens,
            unknown_history_tokens=config.unknown_history_tokens,
        )

    def sharing(self, config: RatelimitConfig) -> Estimator:
        """An estimator with ``config``'s settings that learns into the same history and
        corrections as this one (itself, when the settings are the same)."""
        if (self.default_max_tokens, self.unknown_history_tokens) == (
            config.default_max_tokens,
            config.unknown_history_tokens,
        ):
            return self
        return Estimator(
            default_max_tokens=config.default_max_tokens,
            unknown_history_tokens=config.unknown_history_tokens,
            history=self.history,
            correction=self.correction,
        )

    # -- estimating ---------------------------------------------------------------------

    def estimate(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str] | None = None,
        *,
        exact: bool = True,
    ) -> Estimate:
        """What this request is expected to cost. Never raises."""
        try:
            return self._estimate(method, path, body, headers, exact)
        except Exception as exc:
            self.failures += 1
            if self.failures == 1:
                logger.warning(
                    "mistral_ratelimit: could not estimate a request body (%s); "
                    "reserving its byte length",
                    type(exc).__name__,
                )
            return self._safe_estimate(method, path, body, headers)

    def _safe_estimate(
        self, method: Any, path: Any, body: Any, headers: Mapping[str, str] | None
    ) -> Estimate:
        try:
            endpoint, conversation_id = route(str(method), str(path))
        except Exception:
            endpoint, conversation_id = "other", None
        size = len(body) if isinstance(body, (bytes, bytearray, memoryview)) else 0
        if endpoint == "read":
            return Estimate(0, 0, False, "read", None, None, True)
        completion = self.default_max_tokens if endpoint in _GENERATION else 0
        return Estimate(
            prompt_tokens=size + self._history_tokens(conversation_id)[0],
            completion_tokens=completion,
            stream=_accepts_sse(headers),
            endpoint=endpoint,
            conversation_id=conversation_id,
            model=None,
            exact=False,
        )

    def _raised(self, key: str, tokens: int) -> int:
        """A bound raised by the learnt correction where it adds tokens (a server template
        longer than ours, an agent's hidden instructions), so that a bound stays above the
        exact estimate, which the correction also raises."""
        return max(tokens, self.correction.apply(key, tokens))

    def _history_tokens(self, conversation_id: str | None) -> tuple[int, bool, str | None]:
        if conversation_id is None:
            return 0, True, None
        state = self.history.get(conversation_id)
        if state is None:
            return self.unknown_history_tokens, False, None
        return state.tokens, True, state.model

    def _estimate(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str] | None,
        exact: bool,
    ) -> Estimate:
        endpoint, conversation_id = route(str(method), str(path))
        stream = _accepts_sse(headers)
        if endpoint == "read":
            return Estimate(0, 0, stream, "read", None, None, True)
        history, history_known, history_model = self._history_tokens(conversation_id)
        generation = endpoint in _GENERATION
        default_completion = self.default_max_tokens if generation else 0

        if isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        unparsed: int | None = None  # a prompt bound taken without reading the body
        if body is None or not isinstance(body, bytes):
            # A streaming upload that cannot be read without consuming it: assume a
            # typical prompt rather than nothing.
            unparsed = self.unknown_history_tokens if generation else 0
        elif not body or body.isspace():  # as `not body.strip()`, without copying it
            return Estimate(history, 0, stream, endpoint, conversation_id, history_model, False)
        elif len(body) > MAX_PARSE_BYTES:
            unparsed = len(body)
        elif len(body) > _WALKED_BYTES and body.count(b",") > MAX_WALKED_VALUES:
            unparsed = _unwalked_prompt(endpoint, body)
        if unparsed is not None or not isinstance(body, bytes):  # (the second follows)
            return Estimate(
                (unparsed or 0) + history,
                default_completion,
                stream,
                endpoint,
                conversation_id,
                history_model,
                False,
            )
        scanned = None
        if endpoint in _SCANNABLE and not exact:
            scanned = _scan(body, endpoint.startswith("conversations."))
        if scanned is not None:
            max_tokens, streams, model = scanned
            model = model or history_model
            return Estimate(
                self._raised(model or endpoint, len(body) + SCAN_OVERHEAD_TOKENS) + history,
                default_completion if max_tokens is None else max_tokens,
                stream or streams,
                endpoint,
                conversation_id,
                model,
                False,
            )
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            # Not JSON (a multipart upload, or garbage the server will refuse).
            # Its byte length: decoding would turn each invalid byte into a 3-byte U+FFFD.
            prompt = len(body) if generation else 0
            return Estimate(
                prompt + history,
                default_completion,
                stream,
                endpoint,
                conversation_id,
                history_model,
                False,
            )

        counter: Count
        budget: _BudgetCount | None = None
        if exact:
            budget = _BudgetCount(EXACT_TEXT_BUDGET)
            counter = budget
        else:
            counter = fallback_count
        reading = bodies.Reading()
        obj: dict[str, Any] = data if isinstance(data, dict) else {}
        if isinstance(obj.get("stream"), bool) and obj["stream"]:
            stream = True
        model = obj.get("model") if isinstance(obj.get("model"), str) else None
        agent = obj.get("agent_id") if isinstance(obj.get("agent_id"), str) else None

        completion: int | None
        if endpoint.startswith("conversations."):
            prompt = bodies.conversation_body_tokens(
                obj, reading, counter, bos=endpoint == "conversations.start"
            )
            args = obj.get("completion_args")
            completion = (
                bodies.max_output(args.get("max_tokens")) if isinstance(args, dict) else None
            )
            model = model or history_model
        elif endpoint in ("chat", "agents.completions"):
            prompt = bodies.chat_body_tokens(obj, reading, counter)
            completion = bodies.max_output(obj.get("max_tokens"))
            choices = bodies.max_output(obj.get("n"))
            if completion is not None and choices:
                completion *= min(choices, 128)
        elif endpoint == "fim":
            prompt = bodies.fim_body_tokens(obj, counter)
            completion = bodies.max_output(obj.get("max_tokens"))
        elif endpoint == "embeddings":
            prompt = bodies.embedding_tokens(obj, counter)
            completion = 0
        elif endpoint == "ocr":
            prompt = bodies.ocr_tokens(obj, reading, counter)
            completion = 0
        elif endpoint == "no_usage":
            value = next((obj[k] for k in ("input", "inputs", "messages") if k in obj), data)
            prompt = bodies.generic_tokens(value, counter)
            completion = 0
        else:
            prompt = bodies.generic_tokens(data, counter) if obj or data else 0
            completion = bodies.max_output(obj.get("max_tokens"))
            completion = completion if completion is not None else 0
        if completion is None:
            completion = default_completion

        key = model or (f"agent:{agent}" if agent else endpoint)
        counted_exactly = (
            exact
            and budget is not None
            and not budget.spilled
            and tokenizer_info().get("source") == "tekken"
        )
        body_tokens = prompt
        prompt = (
            self.correction.apply(key, prompt) if counted_exactly else self._raised(key, prompt)
        )
        estimate = Estimate(
            prompt_tokens=prompt + history,
            completion_tokens=completion,
            stream=stream,
            endpoint=endpoint,
            conversation_id=conversation_id,
            model=model,
            exact=counted_exactly and reading.exact and history_known,
        )
        self._remember(
            _Pending(
                estimate,
                key,
                body_tokens,
                history,
                counted_exactly,
                counted_exactly and history_known,
            )
        )
        return estimate

    # -- learning -----------------------------------------------------------------------

    def _remember(self, pending: _Pending) -> None:
        with self._lock:
            self._pending[id(pending.estimate)] = pending
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)

    def forget(self, estimate: Estimate) -> None:
        """Drop what ``estimate`` left to learn from: it will not be sent (a bound replaced
        by an exact count), and its entry would push out those of requests in flight."""
        self._take(estimate)

    def _take(self, estimate: Estimate) -> _Pending | None:
        with self._lock:
            pending = self._pending.pop(id(estimate), None)
        if pending is not None and pending.estimate is not estimate:
            return None
        return pending

    def observe(self, estimate: Estimate, usage: Usage | None, conversation_id: str | None) -> None:
        """Learn from a response: the conversation's new size, and the model's correction."""
        try:
            self._observe(estimate, usage, conversation_id)
        except Exception as exc:
            logger.debug("mistral_ratelimit: observe failed (%s)", type(exc).__name__)

    def _observe(
        self, estimate: Estimate, usage: Usage | None, conversation_id: str | None
    ) -> None:
        pending = self._take(estimate)
        conversational = str(estimate.endpoint).startswith("conversations.")
        conversation_id = conversation_id or estimate.conversation_id
        has_usage = usage is not None and usage.prompt_tokens > 0
        if conversational and conversation_id:
            if has_usage and usage is not None:
                size = usage.prompt_tokens + usage.completion_tokens
            else:
                size = estimate.prompt_tokens + estimate.completion_tokens
            self.history.record(str(conversation_id), size, estimate.model)
        if not has_usage or usage is None:
            return
        if pending is None and estimate.exact:
            # Not counted here (a cost forced through the request's extensions, or one
            # rebuilt by the caller): nothing of the estimator's own error to report.
            return
        counted = pending is not None and pending.counted
        self.correction.record_error(estimate.prompt_tokens, usage.prompt_tokens, exact=counted)
        if pending is not None and pending.learn:
            self.correction.observe(
                pending.key, pending.body_tokens, usage.prompt_tokens - pending.history_tokens
            )

    def error_stats(self) -> dict[str, float]:
        """Estimate error against the server's ``prompt_tokens``: count, mean, p95 abs, ..."""
        try:
            return self.correction.stats()
        except Exception:
            return {
                "count": 0.0,
                "mean": 0.0,
                "mean_abs": 0.0,
                "p95_abs": 0.0,
                "p95_abs_tokens": 0.0,
            }
