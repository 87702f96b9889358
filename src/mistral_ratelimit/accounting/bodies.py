"""Request bodies of every Mistral endpoint, read defensively into template messages.

Each reader takes the parsed JSON (any type at all: a client may send anything) and returns
the prompt tokens it implies. Wrong types are skipped, never trusted: a field that is not
what the API expects contributes the tokens of its string values, so a malformed body still
gets a sensible, non-zero estimate.

Costs the chat template does not define are policy, chosen to be bounded and never zero
(the server's real figure is learnt later through the per-model correction):
``DOCUMENT_TOKENS`` per document or file, ``AUDIO_TOKENS`` per audio clip,
``BUILTIN_TOOL_TOKENS`` per built-in tool (web search, code interpreter, ...), and
``HANDOFF_TOKENS`` plus its names per agent handoff.
"""

from __future__ import annotations

import json
from typing import Any

from .images import image_url_tokens
from .template import Chunk, Count, Message, chat_tokens, fim_tokens

DOCUMENT_TOKENS = 2048
AUDIO_TOKENS = 1500
BUILTIN_TOOL_TOKENS = 100
HANDOFF_TOKENS = 8
#: Per embedding input: BOS and EOS around each text.
EMBEDDING_INPUT_OVERHEAD = 2

_CHUNK_TEXT_FIELDS = ("text", "title", "document_name", "file_name", "content")


class Reading:
    """What a body reader found beyond the token count."""

    __slots__ = ("exact",)

    def __init__(self) -> None:
        self.exact = True  # False once an unreadable image or a policy cost is used


def strings_in(value: Any) -> list[str]:
    """Every string value (not key) in a JSON value, iteratively (deep nesting is fine).

    Not bounded here: the estimator walks no body of more than ``MAX_WALKED_VALUES``.
    """
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def generic_tokens(value: Any, count: Count) -> int:
    """An unknown JSON body: its string values, plus one token for BOS."""
    return 1 + sum(count(s) for s in strings_in(value))


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return str(value)


def _text_of(value: Any) -> str:
    """A value the API expects as text: strings as is, anything else as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return _dumps(value)


def _chunk(item: Any, reading: Reading, count: Count) -> Chunk | None:
    if isinstance(item, str):
        return Chunk("text", item)
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind == "text" or (kind is None and isinstance(item.get("text"), str)):
        text = item.get("text")
        return Chunk("text", text if isinstance(text, str) else _text_of(text))
    if kind == "image_url" or (kind is None and "image_url" in item):
        tokens, exact = image_url_tokens(item.get("image_url"))
        reading.exact &= exact
        return Chunk("fixed", tokens=tokens)
    if kind == "thinking":
        thinking = item.get("thinking")
        if isinstance(thinking, list):
            text = "".join(
                str(t["text"])
                for t in thinking
                if isinstance(t, dict) and isinstance(t.get("text"), str)
            )
        else:
            text = _text_of(thinking)
        return Chunk("think", text, closed=item.get("closed", True) is not False)
    if kind in ("document_url", "file", "tool_file", "document"):
        reading.exact = False
        names = sum(count(item[f]) for f in _CHUNK_TEXT_FIELDS if isinstance(item.get(f), str))
        return Chunk("fixed", tokens=DOCUMENT_TOKENS + names)
    if kind in ("input_audio", "audio_url"):
        reading.exact = False
        return Chunk("fixed", tokens=AUDIO_TOKENS)
    # reference / tool_reference / anything new: what it says in words.
    return Chunk("fixed", tokens=sum(count(s) for s in strings_in(item)))


def _content(value: Any, reading: Reading, count: Count) -> str | list[Chunk] | None:
    if value is None or isinstance(value, str):
        return value
    items = value if isinstance(value, list) else [value]
    chunks = [c for c in (_chunk(i, reading, count) for i in items) if c is not None]
    return chunks


def function_tools(tools: Any, reading: Reading) -> tuple[list[dict[str, Any]], int]:
    """Function tools in ``mistral_common``'s dump order, and the policy cost of the others."""
    if not isinstance(tools, list):
        return [], 0
    out: list[dict[str, Any]] = []
    builtin = 0
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        fn = tool.get("function")
        kind = tool.get("type", "function")
        if kind == "function" and isinstance(fn, dict):
            name = fn.get("name")
            description = fn.get("description")
            parameters = fn.get("parameters")
            out.append(
                {
                    "type": "function",
                    "function": {
                        "name": name if isinstance(name, str) else _text_of(name),
                        "description": description if isinstance(description, str) else "",
                        "parameters": parameters if isinstance(parameters, dict) else {},
                    },
                }
            )
        else:
            reading.exact = False
            builtin += BUILTIN_TOOL_TOKENS
    return out, builtin


def _tool_call(call: Any) -> tuple[str, Any, str | None] | None:
    if not isinstance(call, dict):
        return None
    fn = call.get("function")
    fn = fn if isinstance(fn, dict) else call
    name = fn.get("name")
    cid = call.get("id", call.get("tool_call_id"))
    return (
        name if isinstance(name, str) else _text_of(name),
        fn.get("arguments"),
        cid if isinstance(cid, str) else None,
    )


def chat_messages(raw: Any, reading: Reading, count: Count) -> list[Message]:
    """``messages`` of a chat / agents completion body."""
    if not isinstance(raw, list):
        raw = [] if raw is None else [raw]
    out: list[Message] = []
    for item in raw:
        if isinstance(item, str):
            out.append(Message("user", item))
            continue
        if not isinstance(item, dict):
            continue
        role = item.get("role")
        role = role if role in ("system", "user", "assistant", "tool") else "user"
        content = _content(item.get("content"), reading, count)
        if role == "assistant":
            calls_raw = item.get("tool_calls")
            calls = [
                c for c in map(_tool_call, calls_raw if isinstance(calls_raw, list) else []) if c
            ]
            out.append(
                Message("assistant", content, tool_calls=calls, prefix=item.get("prefix") is True)
            )
        elif role == "tool":
            cid = item.get("tool_call_id")
            out.append(Message("tool", content, tool_call_id=cid if isinstance(cid, str) else None))
        else:
            out.append(Message(role, content))
    return out


def conversation_messages(inputs: Any, reading: Reading, count: Count) -> tuple[list[Message], int]:
    """``inputs`` of a conversation body: the messages, and policy tokens outside them."""
    if isinstance(inputs, str):
        return [Message("user", inputs)], 0
    if isinstance(inputs, dict):
        inputs = [inputs]
    if not isinstance(inputs, list):
        return [], 0
    out: list[Message] = []
    extra = 0
    for entry in inputs:
        if isinstance(entry, str):
            out.append(Message("user", entry))
            continue
        if not isinstance(entry, dict):
            continue
        kind = entry.get("type")
        if kind is None:
            if "role" in entry or "content" in entry:
                kind = "message.input"
            elif "result" in entry:
                kind = "function.result"
            elif "arguments" in entry:
                kind = "function.call"
        if kind in ("message.input", "message.output"):
            role = (
                "assistant"
                if kind == "message.output" or entry.get("role") == "assistant"
                else "user"
            )
            content = _content(entry.get("content"), reading, count)
            out.append(
                Message(role, content, prefix=role == "assistant" and entry.get("prefix") is True)
            )
        elif kind == "function.call":
            call = _tool_call(entry)
            if call is not None:
                out.append(Message("assistant", None, tool_calls=[call]))
        elif kind == "function.result":
            cid = entry.get("tool_call_id")
            out.append(
                Message(
                    "tool",
                    _text_of(entry.get("result")),
                    tool_call_id=cid if isinstance(cid, str) else None,
                )
            )
        elif kind == "tool.execution":
            # A built-in tool the server ran: rendered like a call and its result.
            reading.exact = False
            name = entry.get("name")
            eid = entry.get("id")
            cid = eid if isinstance(eid, str) else None
            out.append(
                Message(
                    "assistant", None, tool_calls=[(_text_of(name), entry.get("arguments"), cid)]
                )
            )
            out.append(Message("tool", _text_of(entry.get("info") or {}), tool_call_id=cid))
        elif kind == "agent.handoff":
            reading.exact = False
            extra += HANDOFF_TOKENS + sum(count(s) for s in strings_in(entry))
        else:
            reading.exact = False
            extra += sum(count(s) for s in strings_in(entry))
    return out, extra


def output_extras(args: Any, count: Count) -> int:
    """``response_format`` schemas and ``prediction`` text, counted as prompt."""
    if not isinstance(args, dict):
        return 0
    total = 0
    fmt = args.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        schema = fmt.get("json_schema")
        total += count(_dumps(schema)) if schema is not None else 0
    prediction = args.get("prediction")
    if isinstance(prediction, dict):
        total += count(_text_of(prediction.get("content")))
    elif isinstance(prediction, str):
        total += count(prediction)
    return total


def chat_body_tokens(body: dict[str, Any], reading: Reading, count: Count) -> int:
    messages = chat_messages(body.get("messages"), reading, count)
    tools, builtin = function_tools(body.get("tools"), reading)
    return chat_tokens(messages, tools or None, count) + builtin + output_extras(body, count)


def conversation_body_tokens(
    body: dict[str, Any], reading: Reading, count: Count, *, bos: bool = True
) -> int:
    messages, extra = conversation_messages(body.get("inputs"), reading, count)
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.insert(0, Message("system", instructions))
    tools, builtin = function_tools(body.get("tools"), reading)
    total = chat_tokens(messages, tools or None, count) + builtin + extra
    total += output_extras(body.get("completion_args"), count)
    return total if bos else max(total - 1, 0)


def fim_body_tokens(body: dict[str, Any], count: Count) -> int:
    prompt = body.get("prompt")
    suffix = body.get("suffix")
    return fim_tokens(_text_of(prompt), suffix if isinstance(suffix, str) else None, count)


def embedding_tokens(body: dict[str, Any], count: Count) -> int:
    value = body.get("input", body.get("inputs"))
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(i, int) for i in items):
        return len(items)  # one input given as token ids
    total = 0
    for item in items:
        if isinstance(item, str):
            total += count(item) + EMBEDDING_INPUT_OVERHEAD
        elif isinstance(item, list) and all(isinstance(i, int) for i in item):
            total += len(item)
        elif item is not None:
            total += sum(count(s) for s in strings_in(item)) + EMBEDDING_INPUT_OVERHEAD
    return total


def ocr_tokens(body: dict[str, Any], reading: Reading, count: Count) -> int:
    document = body.get("document")
    reading.exact = False
    if isinstance(document, dict) and (
        document.get("type") == "image_url" or "image_url" in document
    ):
        tokens, _ = image_url_tokens(document.get("image_url"))
        return tokens
    return DOCUMENT_TOKENS


def max_output(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
