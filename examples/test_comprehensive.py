"""Every kind of Conversations call through one MistralRatelimitClient, checked.

Runs against the real API when MISTRAL_API_KEY is set; otherwise against the local
emulator, started in this process, with nothing to set up. Prints one PASS/FAIL line per
case and the token usage; exits non-zero when any case fails.

    python examples/test_comprehensive.py
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from mistral_ratelimit.demo import api_key_present, open_session

# The emulator can go faster than a free-tier key; the real API uses the key's own limits.
LIMITS: dict[str, Any] = (
    {} if api_key_present() else {"requests_per_second": 10, "tokens_per_minute": 200_000}
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def text_of(response: Any) -> str:
    """The text of the last message in a conversation response."""
    for entry in reversed(response.outputs):
        content = getattr(entry, "content", None)
        if isinstance(content, str):
            return content.strip()
        if isinstance(content, list):  # chunks: keep the text ones
            return "".join(getattr(c, "text", "") for c in content).strip()
    return ""


def same(answer: str, expected: str) -> bool:
    return answer.strip().strip(".!\"'").lower() == expected.lower()


class Cases:
    def __init__(self, conversations: Any, model: str) -> None:
        self.conv = conversations
        self.model = model
        self.usage: dict[str, int] = {}

    def count(self, name: str, usage: Any) -> None:
        self.usage[name] = self.usage.get(name, 0) + int(usage.total_tokens or 0)

    def basic(self) -> str:
        r = self.conv.start(inputs="Reply with exactly: Paris", model=self.model)
        self.count("basic", r.usage)
        assert same(text_of(r), "Paris"), f"expected 'Paris', got {text_of(r)!r}"
        return f"answer {text_of(r)!r}"

    def instructions(self) -> str:
        r = self.conv.start(
            inputs="What is the capital of Italy?",
            instructions="Reply with exactly: Rome",
            model=self.model,
        )
        self.count("instructions", r.usage)
        assert same(text_of(r), "Rome"), f"expected 'Rome', got {text_of(r)!r}"
        return f"answer {text_of(r)!r}"

    def completion_args(self) -> str:
        r = self.conv.start(
            inputs="Tell me everything you know about rate limiting, in detail.",
            model=self.model,
            completion_args={"max_tokens": 16, "temperature": 0.0},
        )
        self.count("completion_args", r.usage)
        assert r.usage.completion_tokens <= 16, f"{r.usage.completion_tokens} > max_tokens 16"
        return f"{r.usage.completion_tokens} completion tokens (max_tokens 16)"

    def multi_turn(self) -> str:
        first = self.conv.start(
            inputs="My name is Ada. Reply with exactly: Noted", model=self.model
        )
        second = self.conv.append(
            conversation_id=first.conversation_id,
            inputs="What is my name? Reply with exactly: Ada",
        )
        self.count("multi_turn", first.usage)
        self.count("multi_turn", second.usage)
        assert same(text_of(second), "Ada"), f"expected 'Ada', got {text_of(second)!r}"
        assert second.conversation_id == first.conversation_id
        # The service bills the whole history on every append.
        assert second.usage.prompt_tokens > first.usage.prompt_tokens
        return (
            f"prompt tokens {first.usage.prompt_tokens} -> {second.usage.prompt_tokens} "
            "(history billed)"
        )

    def tools(self) -> str:
        r = self.conv.start(
            inputs="What is the weather in Paris? Use the get_weather tool.",
            model=self.model,
            tools=[WEATHER_TOOL],
            completion_args={"tool_choice": "any"},
        )
        self.count("tools", r.usage)
        calls = [e for e in r.outputs if getattr(e, "type", "") == "function.call"]
        assert calls, f"no function call in {[getattr(e, 'type', '?') for e in r.outputs]}"
        call = calls[0]
        assert call.name == "get_weather", call.name
        result = self.conv.append(
            conversation_id=r.conversation_id,
            inputs=[
                {
                    "type": "function.result",
                    "tool_call_id": call.tool_call_id,
                    "result": '{"temperature_c": 22, "sky": "clear"}',
                }
            ],
        )
        self.count("tools", result.usage)
        assert text_of(result), "no answer after the function result"
        return f"called {call.name}({call.arguments}), then answered"

    def restart(self) -> str:
        first = self.conv.start(inputs="Reply with exactly: one", model=self.model)
        again = self.conv.restart(
            conversation_id=first.conversation_id,
            from_entry_id=first.outputs[0].id,
            inputs="Reply with exactly: two",
        )
        self.count("restart", first.usage)
        self.count("restart", again.usage)
        assert same(text_of(again), "two"), f"expected 'two', got {text_of(again)!r}"
        return f"new conversation {again.conversation_id[:12]}... answered {text_of(again)!r}"

    def streaming(self) -> str:
        names: list[str] = []
        pieces: list[str] = []
        usage: Any = None
        with self.conv.start_stream(
            inputs="Reply with exactly: streamed", model=self.model
        ) as events:
            for event in events:
                names.append(event.event)
                if event.event == "message.output.delta":
                    content = event.data.content
                    pieces.append(content if isinstance(content, str) else "")
                elif event.event == "conversation.response.done":
                    usage = event.data.usage
        assert names[0] == "conversation.response.started", names[:1]
        assert names[-1] == "conversation.response.done", names[-1:]
        assert usage is not None, "no usage in the stream"
        self.count("streaming", usage)
        text = "".join(pieces)
        assert same(text, "streamed"), f"expected 'streamed', got {text!r}"
        return f"{len(names)} events, text {text!r}"


def main() -> int:
    with open_session(**LIMITS) as session:
        print(f"Running against {session.where}\n")
        cases = Cases(session.client.beta.conversations, session.model)
        checks: list[tuple[str, Callable[[], str]]] = [
            ("basic conversation", cases.basic),
            ("instructions", cases.instructions),
            ("completion_args", cases.completion_args),
            ("multi-turn append", cases.multi_turn),
            ("tools (function call)", cases.tools),
            ("restart", cases.restart),
            ("streaming", cases.streaming),
        ]
        failed = 0
        for name, check in checks:
            try:
                detail = check()
            except Exception as exc:
                failed += 1
                print(f"FAIL  {name}: {type(exc).__name__}: {exc}")
            else:
                print(f"PASS  {name}: {detail}")
        stats = session.client.stats()
    print("\nToken usage by case:")
    for name, tokens in cases.usage.items():
        print(f"  {name:<16} {tokens:>6}")
    print(f"  {'total':<16} {sum(cases.usage.values()):>6}")
    print(
        f"\nLimiter: {stats.requests_admitted} requests admitted, waited "
        f"{stats.wait_seconds_total:.2f} s in all, {stats.rate_limited_seen} 429s retried"
    )
    print(f"\n{len(checks) - failed}/{len(checks)} cases passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
