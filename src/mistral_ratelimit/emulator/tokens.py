"""Usage as the emulator bills it: Tekken token counts plus Mistral's chat-template overhead.

The text itself is counted by the project's tokenizer (``accounting.tokenizer``), imported
at call time so this module never loads the vocabulary before it is needed. The overhead
follows the shape of Mistral's instruct templates (mistral_common, Tekken v7+):

    <s>[SYSTEM_PROMPT]instructions[/SYSTEM_PROMPT][AVAILABLE_TOOLS]tools json
    [/AVAILABLE_TOOLS][INST]user[/INST]reply</s>

so: one BOS per request, ``[INST]``/``[/INST]`` around each user message, an EOS after
each assistant message, two control tokens around the instructions, the tools block and
each tool call or result. It is written independently of the client's estimator
(``accounting``), so the demo's estimate error measures something; the two agree to a token
or two per request. The numbers are a close, documented model, not a promise of identity
with the live service.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

BOS = 1
USER_MESSAGE = 2  # [INST] ... [/INST]
ASSISTANT_MESSAGE = 1  # </s>
INSTRUCTIONS = 2  # [SYSTEM_PROMPT] ... [/SYSTEM_PROMPT]
TOOLS_BLOCK = 2  # [AVAILABLE_TOOLS] ... [/AVAILABLE_TOOLS]
TOOL_CALL = 4  # [TOOL_CALLS] + the JSON wrapper around name and arguments
TOOL_RESULT = 4  # [TOOL_RESULTS] ... [/TOOL_RESULTS] + the call id marker
NON_TEXT_CHUNK = 256  # an image or document chunk: bounded, never its base64 length


def count_text(text: str) -> int:
    """Tekken tokens in ``text``."""
    if not text:
        return 0
    from ..accounting.tokenizer import count_tokens

    return int(count_tokens(text))


def content_text(content: Any) -> tuple[str, int]:
    """The text of a message content (a string or a chunk list) and its non-text cost."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    parts: list[str] = []
    extra = 0
    for chunk in content:
        if isinstance(chunk, str):
            parts.append(chunk)
        elif isinstance(chunk, Mapping):
            if isinstance(chunk.get("text"), str):
                parts.append(chunk["text"])
            elif chunk.get("type") == "thinking":
                text, more = content_text(chunk.get("thinking"))
                parts.append(text)
                extra += more
            else:
                extra += NON_TEXT_CHUNK
    return "".join(parts), extra


def entry_tokens(entry: Mapping[str, Any]) -> int:
    """Template tokens of one conversation entry (input or stored output)."""
    kind = entry.get("type", "message.input")
    if kind in ("message.input", "message.output"):
        text, extra = content_text(entry.get("content"))
        role = entry.get("role", "assistant" if kind == "message.output" else "user")
        overhead = ASSISTANT_MESSAGE if role == "assistant" else USER_MESSAGE
        return count_text(text) + extra + overhead
    if kind == "function.call":
        args = entry.get("arguments")
        args_text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        return count_text(str(entry.get("name", ""))) + count_text(args_text) + TOOL_CALL
    if kind == "function.result":
        return count_text(str(entry.get("result", ""))) + TOOL_RESULT
    if kind == "tool.execution":
        return count_text(str(entry.get("arguments", ""))) + TOOL_CALL
    return 0  # agent.handoff and unknown entries carry no model-visible text


def prompt_tokens(
    entries: Iterable[Mapping[str, Any]],
    *,
    instructions: str | None = None,
    tools: list[Any] | None = None,
) -> int:
    """Prompt tokens for a request whose model sees ``entries`` (stored history + inputs)."""
    total = BOS + sum(entry_tokens(e) for e in entries)
    if instructions:
        total += count_text(instructions) + INSTRUCTIONS
    if tools:
        total += count_text(json.dumps(tools, ensure_ascii=False)) + TOOLS_BLOCK
    return total


__all__ = [
    "ASSISTANT_MESSAGE",
    "BOS",
    "INSTRUCTIONS",
    "TOOLS_BLOCK",
    "TOOL_CALL",
    "TOOL_RESULT",
    "USER_MESSAGE",
    "content_text",
    "count_text",
    "entry_tokens",
    "prompt_tokens",
]
