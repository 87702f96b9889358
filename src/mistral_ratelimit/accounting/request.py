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
    {
        "conversations.start",
        "conversations.append",
        "conversations.restart",
        "chat",
        "agents.completions",
        "fim",
    }
)
#: Parts whose cost is not in their bytes (a URL stands for a whole image or document;
#: built-in tools and agents are defined on the server), or that multiply the output
#: (``n``): bodies holding any of them take the parsing path. Plain substring tests, as
#: ``bytes.__contains__`` is an order of magnitude faster than a regular expression here.
_NOT_IN_BYTES = (
    b"image",  # image_url, image, image_generation
    b"document",  # document_url, document, document_library
    b'_url"',  # file_url, audio_url, ...
    b"audio",
    b"file_id",
    b'"n"',
    b"agent_id",
    b"web_search",
    b"code_interpreter",
    b"connector",
)
_WHITESPACE = b" \t\r\n"
#: BOS and the few control tokens a chat template adds beyond a body's own JSON syntax.
SCAN_OVERHEAD_TOKENS = 16


def _values_of(body: bytes, key: bytes) -> list[bytes]:
    """The raw text after each unescaped ``"key":`` in ``body`` (up to 220 bytes)."""
    out = []
    start = body.find(key)
    while start >= 0:
        after = start + len(key)
        if body[start - 1 : start] != b"\\":  # an escaped quote sits inside a string
            rest = body[after : after + 240].lstrip(_WHITESPACE)
            if rest[:1] == b":":
                out.append(rest[1:].lstrip(_WHITESPACE)[:220])
        start = body.find(key, after)
    return out


def _scan(body: bytes) -> tuple[int | None, bool, str | None] | None:
    """The cheap estimate's reading of a body, without parsing it: ``(max_tokens, stream,
    model)``, or None when the body's bytes do not bound its cost.

    A Tekken token is at least one byte of UTF-8, JSON escaping only lengthens text, and
    every message, tool call or result spends more bytes on JSON syntax than the template
    spends control tokens on it, so the body's length (plus BOS) bounds its prompt.
    tests/test_estimate_scan.py checks the bound over the whole corpus.
    """
    if any(marker in body for marker in _NOT_IN_BYTES):
        return None
    caps = []
    for raw in _values_of(body, b'"max_tokens"'):
        digits = raw[: len(raw) - len(raw.lstrip(b"0123456789"))]
        if 0 < len(digits) <= 12:
            caps.append(int(digits))
    streams = any(raw.startswith(b"true") for raw in _values_of(body, b'"stream"'))
    model = None
    for raw in _values_of(body, b'"model"'):
        end = raw.find(b'"', 1)
        if raw[:1] == b'"' and end > 1 and b"\\" not in raw[:end]:
            model = raw[1:end].decode("utf-8", "replace")
            break
    return (max(caps) if caps else None, streams, model)


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
        for key, value in headers.items():
            if str(key).lower() == "accept" and "text/event-stream" in str(value).lower():
                return True
    except Exception:
        return False
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
        if body is None or not isinstance(body, bytes):
            # A streaming upload that cannot be read without consuming it: assume a
            # typical prompt rather than nothing.
            prompt = self.unknown_history_tokens if generation else 0
            return Estimate(
                prompt + history,
                default_completion,
                stream,
                endpoint,
                conversation_id,
                history_model,
                False,
            )
        if not body.strip():
            return Estimate(history, 0, stream, endpoint, conversation_id, history_model, False)
        if len(body) > MAX_PARSE_BYTES:
            return Estimate(
                len(body) + history,
                default_completion,
                stream,
                endpoint,
                conversation_id,
                history_model,
                False,
            )
        if not exact and endpoint in _SCANNABLE:
            scanned = _scan(body)
            if scanned is not None:
                max_tokens, streams, model = scanned
                return Estimate(
                    len(body) + SCAN_OVERHEAD_TOKENS + history,
                    default_completion if max_tokens is None else max_tokens,
                    stream or streams,
                    endpoint,
                    conversation_id,
                    model or history_model,
                    False,
                )
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            # Not JSON (a multipart upload, or garbage the server will refuse).
            prompt = fallback_count(body.decode("utf-8", "replace")) if generation else 0
            return Estimate(
                prompt + history,
                default_completion if generation else 0,
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
        prompt = self.correction.apply(key, prompt) if counted_exactly else prompt
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
        # Estimates rebuilt by the caller (e.g. an explicit cost) are judged by their own flag.
        counted = pending.counted if pending is not None else bool(estimate.exact)
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
