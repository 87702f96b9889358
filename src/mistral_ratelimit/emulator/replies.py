"""Deterministic replies: the same request always gets the same answer.

The seed is the request's content only: the model, the instructions, the tools,
``completion_args.random_seed`` and, for each entry of the history and the new inputs, what
the model sees of it (type, role, content, name, arguments, result). The ids and
timestamps the server gives entries are new on every call, so they stay out of it: the same
body sent twice, or to two emulators, gets the same reply.

* A plain message gets seeded filler text whose length follows the size of the new inputs
  (``min_tokens + ratio * input_tokens``, at most ``max_tokens_default``), capped by
  ``completion_args.max_tokens``.
* "reply with exactly X" (any case, in the inputs or the instructions) returns exactly X,
  so examples and tests can check an answer. It is not truncated by ``max_tokens``.
* With function tools, a request that names a function (or sets ``tool_choice`` to
  ``any``/``required``) gets a ``function.call`` with arguments built from its schema
  and the user's words (``arguments.py``), unless the newest input already is a function
  result.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .arguments import call_arguments
from .tokens import TOOL_CALL, content_text, count_text

_EXACTLY = re.compile(r"reply\s+with\s+exactly\s*:?\s*(.+)", re.IGNORECASE | re.DOTALL)
_QUOTES = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u00ab": "\u00bb"}
_PIECES = re.compile(r"\S+\s*|\s+")
#: What the model sees of an entry; everything else (id, created_at, ...) is the server's.
_CONTENT_FIELDS = ("type", "role", "content", "name", "arguments", "result")
_CALL_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"

_WORDS = tuple(
    [
        "the",
        "rate",
        "limit",
        "keeps",
        "every",
        "request",
        "inside",
        "its",
        "budget",
        "while",
        "tokens",
        "flow",
        "through",
        "a",
        "sliding",
        "window",
        "and",
        "the",
        "server",
        "reports",
        "usage",
        "after",
        "each",
        "reply",
        "so",
        "the",
        "client",
        "can",
        "settle",
        "what",
        "it",
        "reserved",
        "with",
        "what",
        "was",
        "really",
        "spent",
        "on",
        "this",
        "conversation",
        "today",
        "model",
        "answer",
        "stream",
        "window",
        "minute",
        "second",
        "month",
        "quota",
        "agent",
        "tool",
        "call",
        "result",
        "message",
        "history",
        "context",
        "prompt",
        "output",
        "input",
        "value",
        "number",
        "simple",
        "clear",
        "short",
        "long",
        "careful",
        "steady",
    ]
)


@dataclass(frozen=True)
class ReplyShape:
    """How long generated replies are."""

    min_tokens: int = 8
    ratio: float = 0.5
    max_tokens_default: int = 256


@dataclass(frozen=True)
class Reply:
    kind: Literal["message", "function_call"]
    #: Message text deltas, or argument fragments of a function call, in stream order.
    chunks: tuple[str, ...]
    #: Completion tokens billed for each chunk; they sum to ``completion_tokens``.
    chunk_tokens: tuple[int, ...]
    completion_tokens: int
    name: str | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.chunks)


@functools.lru_cache(maxsize=4096)
def _piece_tokens(piece: str) -> int:
    return count_text(piece)


def _rng(seed: int, *parts: Any) -> random.Random:
    digest = hashlib.sha256(
        json.dumps([seed, *parts], default=str, sort_keys=True).encode()
    ).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def exact_answer(texts: Sequence[str]) -> str | None:
    """X from the first "reply with exactly X" among ``texts`` (newest input first)."""
    for text in texts:
        match = _EXACTLY.search(text)
        if not match:
            continue
        rest = match.group(1).strip()
        close = _QUOTES.get(rest[:1])
        if close is not None:
            end = rest.find(close, 1)
            if end > 0:
                return rest[1:end]
        return rest.splitlines()[0].rstrip() if rest else rest
    return None


def _split(text: str) -> list[str]:
    return _PIECES.findall(text) or [text]


def _with_counts(
    kind: Literal["message", "function_call"], chunks: list[str], total: int, **extra: Any
) -> Reply:
    counts = [_piece_tokens(c) for c in chunks]
    # BPE can merge across chunk boundaries; the last chunk absorbs the difference so the
    # per-chunk charges add up to exactly the usage reported at the end.
    diff = total - sum(counts)
    i = len(counts) - 1
    while diff != 0 and i >= 0:
        new = max(0, counts[i] + diff)
        diff -= new - counts[i]
        counts[i] = new
        i -= 1
    return Reply(kind, tuple(chunks), tuple(counts), total, **extra)


def _filler(rng: random.Random, target: int, cap: int | None) -> list[str]:
    limit = target if cap is None else min(target, cap)
    limit = max(1, limit)
    chunks: list[str] = []
    used = 0
    while used < limit:
        word = rng.choice(_WORDS)
        piece = word.capitalize() if not chunks else " " + word
        if used + 1 >= limit:
            piece += "."
        chunks.append(piece)
        used += _piece_tokens(piece)
    if cap is not None:
        while len(chunks) > 1 and count_text("".join(chunks)) > cap:
            chunks.pop()
    return chunks


def _function_tools(tools: Sequence[Any] | None) -> list[Mapping[str, Any]]:
    out = []
    for tool in tools or ():
        if isinstance(tool, Mapping) and tool.get("type", "function") == "function":
            fn = tool.get("function")
            if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
                out.append(fn)
    return out


def _user_texts(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The text of each user message, newest first."""
    return [
        content_text(e.get("content"))[0]
        for e in reversed(entries)
        if e.get("type", "message.input") == "message.input"
    ]


def _content(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: e[k] for k in _CONTENT_FIELDS if k in e} for e in entries]


def _wants_call(fn_name: str, text: str) -> bool:
    low = text.lower()
    name = fn_name.lower()
    return name in low or name.replace("_", " ") in low


def generate(
    *,
    inputs: Sequence[Mapping[str, Any]],
    input_tokens: int,
    history: Sequence[Mapping[str, Any]] = (),
    model: str | None = None,
    instructions: str | None = None,
    tools: Sequence[Any] | None = None,
    completion_args: Mapping[str, Any] | None = None,
    shape: ReplyShape = ReplyShape(),
    seed: int = 0,
) -> Reply:
    """The reply to new ``inputs`` (entries) of ``input_tokens`` prompt tokens, after the
    stored ``history``."""
    args = completion_args or {}
    new_texts = _user_texts(inputs)
    user_texts = [*new_texts, *_user_texts(history)]
    rng = _rng(
        seed,
        model,
        instructions,
        tools,
        args.get("random_seed"),
        _content(history),
        _content(inputs),
    )

    functions = _function_tools(tools)
    last_is_result = bool(inputs) and inputs[-1].get("type") == "function.result"
    choice = args.get("tool_choice")
    if functions and not last_is_result and choice != "none":
        newest = new_texts[0] if new_texts else ""
        chosen = next((f for f in functions if _wants_call(f["name"], newest)), None)
        if chosen is None and choice in ("any", "required"):
            chosen = functions[0]
        if chosen is not None:
            name = str(chosen["name"])
            arguments = json.dumps(call_arguments(chosen.get("parameters"), user_texts, name))
            third = max(1, len(arguments) // 3)
            pieces = [arguments[i : i + third] for i in range(0, len(arguments), third)]
            total = count_text(name) + count_text(arguments) + TOOL_CALL
            call_id = "".join(rng.choice(_CALL_ID_ALPHABET) for _ in range(9))
            return _with_counts("function_call", pieces, total, name=name, tool_call_id=call_id)

    exact = exact_answer([*new_texts, instructions or ""])
    if exact is not None:
        chunks = _split(exact) if exact else [""]
        return _with_counts("message", chunks, count_text(exact))

    max_tokens = args.get("max_tokens")
    cap = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None
    target = min(shape.max_tokens_default, shape.min_tokens + int(shape.ratio * input_tokens))
    chunks = _filler(rng, target, cap)
    return _with_counts("message", chunks, count_text("".join(chunks)))


__all__ = ["Reply", "ReplyShape", "exact_answer", "generate"]
