"""Mistral's chat template, as token arithmetic.

The model does not read the JSON body: the server renders the messages into one token
sequence with control tokens. These rules reproduce ``mistral_common``'s v3 Tekken instruct
template (``InstructRequestNormalizer`` + ``InstructTokenizerV3``), which is the reference the
corpus test compares against:

* one BOS per request;
* consecutive messages of the same role are merged (text joined with a blank line), system
  messages become one system prompt, placed before the *last* user message's text; a
  conversation that does not start with a user turn gets an empty one;
* user turn: ``[INST] text [/INST]``; the last one is preceded by
  ``[AVAILABLE_TOOLS] <tools as JSON> [/AVAILABLE_TOOLS]`` when tools are declared;
* assistant turn: its text with trailing spaces stripped, or ``[TOOL_CALLS] <calls as JSON>``,
  then EOS (no EOS for a ``prefix`` message);
* tool result: ``[TOOL_RESULTS] {"content": ..., "call_id": ...} [/TOOL_RESULTS]``;
* an image: its patch grid (see :mod:`.images`).

Newer templates (v7+) move the system prompt into ``[SYSTEM_PROMPT]`` tokens and spell tool
calls differently; they differ by a few tokens per message, which the per-model correction
absorbs. Thinking chunks follow the v13 rule (``[THINK] text [/THINK]``) because v3 has none.

Everything here is pure: text is counted through the ``count`` function it is given, so the
same rules give the exact count (Tekken BPE) or the cheap bound (UTF-8 bytes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Count = Callable[[str], int]

JOIN = "\n\n"
#: ``_encode_infilling`` drops the first two tokens of ``"☺" + suffix``; in Tekken "☺" is two
#: tokens, so the rule is reproduced literally rather than as "suffix tokens".
FIM_SMILEY = "\u263a"


@dataclass
class Chunk:
    """One piece of message content: text, or something with a precomputed token cost."""

    kind: str  # "text" | "think" | "fixed"
    text: str = ""
    tokens: int = 0  # for "fixed" (images, documents, ...)
    closed: bool = True  # for "think"


@dataclass
class Message:
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str | list[Chunk] | None = None
    #: (name, arguments as sent: a JSON string or an object, id or None)
    tool_calls: list[tuple[str, Any, str | None]] = field(default_factory=list)
    tool_call_id: str | None = None
    prefix: bool = False


def _dumps(obj: Any) -> str:
    # mistral_common re-serialises with json.dumps(..., ensure_ascii=False): default separators.
    return json.dumps(obj, ensure_ascii=False)


def _normalize_json_text(text: str | None) -> str:
    if not text:
        return "{}"
    try:
        return _dumps(json.loads(text))
    except (ValueError, RecursionError):
        return text


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _arguments_text(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    if arguments is None:
        return ""
    return _dumps(arguments)


def _merge_contents(contents: list[str | list[Chunk] | None]) -> str | list[Chunk]:
    """Coalesce text across messages (blank line) and across adjacent chunks (blank line)."""
    out: list[Chunk] = []
    parts: list[str] = []

    def flush() -> None:
        if parts:
            out.append(Chunk("text", "".join(parts)))
            parts.clear()

    for content in contents:
        new_message = bool(parts)
        if not content:
            continue
        if isinstance(content, str):
            parts.append((JOIN if new_message else "") + content)
            continue
        for chunk in content:
            if chunk.kind == "text":
                if not chunk.text:
                    continue
                parts.append(("" if not parts else JOIN) + chunk.text)
                new_message = False
            else:
                flush()
                out.append(chunk)
    if not out:
        return "".join(parts)
    flush()
    return out


def _content_text(content: str | list[Chunk] | None) -> str:
    merged = _merge_contents([content])
    if isinstance(merged, str):
        return merged
    return JOIN.join(c.text for c in merged if c.kind in ("text", "think"))


@dataclass
class _Turn:
    role: str
    content: str | list[Chunk] | None
    tool_calls: list[tuple[str, Any, str | None]] = field(default_factory=list)
    tool_call_id: str | None = None
    prefix: bool = False


def _normalize(messages: list[Message]) -> tuple[str | None, list[_Turn]]:
    system_parts = [_content_text(m.content) for m in messages if m.role == "system" and m.content]
    system_prompt = JOIN.join(system_parts) if system_parts else None

    turns: list[_Turn] = []
    run: list[Message] = []

    def close_run() -> None:
        if not run:
            return
        role = run[0].role
        if role == "user":
            turns.append(_Turn("user", _merge_contents([m.content for m in run])))
        elif role == "assistant":
            calls = [
                (name, _normalize_json_text(_arguments_text(args)), cid)
                for m in run
                for name, args, cid in m.tool_calls
            ]
            turns.append(
                _Turn(
                    "assistant",
                    _merge_contents([m.content for m in run]),
                    tool_calls=calls,
                    prefix=any(m.prefix for m in run),
                )
            )
        elif role == "tool":
            for m in run:
                text = _normalize_json_text(_content_text(m.content))
                turns.append(_Turn("tool", text, tool_call_id=m.tool_call_id))
        run.clear()

    for message in messages:
        if run and run[0].role != message.role:
            close_run()
        run.append(message)
    close_run()
    if not turns or turns[0].role != "user":
        turns.insert(0, _Turn("user", ""))
    return system_prompt, turns


def _chunk_tokens(chunk: Chunk, count: Count) -> int:
    if chunk.kind == "text":
        return count(chunk.text)
    if chunk.kind == "think":
        return 1 + count(chunk.text) + (1 if chunk.closed else 0)
    return chunk.tokens


def _user_tokens(
    content: str | list[Chunk] | None, system_prompt: str | None, is_last: bool, count: Count
) -> int:
    with_system = is_last and bool(system_prompt)
    if not isinstance(content, list):
        text = content or ""
        if with_system:
            text = f"{system_prompt}{JOIN}{text}"
        return count(text)
    chunks = content
    # mistral_common puts a trailing image first when every other chunk is text.
    if (
        len(chunks) >= 2
        and chunks[-1].kind == "fixed"
        and all(c.kind == "text" for c in chunks[:-1])
    ):
        chunks = [chunks[-1], *chunks[:-1]]
    total = count(f"{system_prompt}{JOIN}") if with_system and chunks else 0
    return total + sum(_chunk_tokens(c, count) for c in chunks)


def _assistant_tokens(turn: _Turn, count: Count) -> int:
    total = 0
    if turn.tool_calls:
        calls = []
        for name, arguments, cid in turn.tool_calls:
            call: dict[str, Any] = {"name": name, "arguments": _parse_json(arguments)}
            if cid and cid != "null":
                call["id"] = cid
            calls.append(call)
        total += 1 + count(_dumps(calls))
    content = turn.content
    if isinstance(content, str):
        total += count(content.rstrip(" "))
    elif content:
        total += sum(_chunk_tokens(c, count) for c in content)
    return total + (0 if turn.prefix else 1)


def chat_tokens(messages: list[Message], tools: list[dict[str, Any]] | None, count: Count) -> int:
    """Prompt tokens of a chat request: the messages rendered through the template."""
    system_prompt, turns = _normalize(messages)
    last_user = max(i for i, t in enumerate(turns) if t.role == "user")
    total = 1  # BOS
    for i, turn in enumerate(turns):
        if turn.role == "user":
            if i == last_user and tools:
                total += 2 + count(_dumps(tools))
            total += 2 + _user_tokens(turn.content, system_prompt, i == last_user, count)
        elif turn.role == "assistant":
            total += _assistant_tokens(turn, count)
        else:
            text = turn.content if isinstance(turn.content, str) else ""
            result = {"content": _parse_json(text), "call_id": turn.tool_call_id}
            total += 2 + count(_dumps(result))
    return total


def fim_tokens(prompt: str, suffix: str | None, count: Count) -> int:
    """``[BOS] [SUFFIX] suffix [PREFIX] prompt``, as ``InstructTokenizerV2.encode_fim``."""
    suffix_tokens = max(count(FIM_SMILEY + suffix) - 2, 0) if suffix else 0
    return 3 + suffix_tokens + count(prompt)
