"""The basics with the async client: several conversations at once, on one budget.

Real API when MISTRAL_API_KEY is set, else the local emulator (nothing to set up).

    python examples/test_async.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from mistral_ratelimit.demo import Session, api_key_present, open_session

LIMITS: dict[str, Any] = (
    {} if api_key_present() else {"requests_per_second": 2, "tokens_per_minute": 100_000}
)
QUESTIONS = ("What is a token?", "What is a window?", "What is a budget?", "What is a 429?")


async def ask(conv: Any, model: str, question: str, t0: float) -> int:
    """One conversation: a question, then a streamed follow-up. Returns the tokens used."""
    r = await conv.start_async(inputs=question, model=model, completion_args={"max_tokens": 48})
    print(f"[{time.monotonic() - t0:5.2f} s] {question!r}: {r.usage.total_tokens} tokens")
    total = int(r.usage.total_tokens)
    events = await conv.append_stream_async(
        conversation_id=r.conversation_id,
        inputs="One more sentence, please.",
        completion_args={"max_tokens": 48},
    )
    async with events:
        async for event in events:
            if event.event == "conversation.response.done":
                total += int(event.data.usage.total_tokens)
    print(f"[{time.monotonic() - t0:5.2f} s] {question!r}: follow-up streamed")
    return total


async def run(session: Session) -> bool:
    conv = session.client.beta.conversations
    t0 = time.monotonic()
    # Eight requests at once: the limiter spaces them out instead of letting 429s through.
    tokens = await asyncio.gather(*(ask(conv, session.model, q, t0) for q in QUESTIONS))
    stats = session.client.stats()
    print(
        f"{sum(tokens)} tokens in {time.monotonic() - t0:.1f} s; "
        f"{stats.requests_admitted} requests admitted, {stats.rate_limited_seen} 429s "
        f"retried, longest wait {stats.wait_seconds_max:.2f} s"
    )
    return stats.requests_admitted == 2 * len(QUESTIONS) and all(tokens)


def main() -> int:
    # The client outlives the event loop: asyncio.run closes the loop's connections as it
    # ends, and leaving the `with` closes the rest.
    with open_session(**LIMITS) as session:
        print(f"Running against {session.where}")
        ok = asyncio.run(run(session))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
