"""The basics with the blocking client: start, append, stream, read the history.

Real API when MISTRAL_API_KEY is set, else the local emulator (nothing to set up).

    python examples/test_sync.py
"""

from __future__ import annotations

import sys
import time
from typing import Any

from mistral_ratelimit.demo import api_key_present, open_session

LIMITS: dict[str, Any] = (
    {} if api_key_present() else {"requests_per_second": 2, "tokens_per_minute": 100_000}
)


def main() -> int:
    with open_session(**LIMITS) as session:
        print(f"Running against {session.where}")
        conv = session.client.beta.conversations
        t0 = time.monotonic()

        r = conv.start(
            inputs="Reply with exactly: hello",
            model=session.model,
            completion_args={"max_tokens": 32},
        )
        print(
            f"[{time.monotonic() - t0:5.2f} s] start: {r.outputs[0].content!r}  "
            f"({r.usage.prompt_tokens} prompt + {r.usage.completion_tokens} completion tokens)"
        )
        cid = r.conversation_id

        r = conv.append(conversation_id=cid, inputs="Reply with exactly: again")
        print(f"[{time.monotonic() - t0:5.2f} s] append: {r.outputs[0].content!r}")

        text = []
        with conv.append_stream(conversation_id=cid, inputs="Now stream a short reply.") as ev:
            for event in ev:
                if event.event == "message.output.delta":
                    text.append(str(event.data.content))
        print(f"[{time.monotonic() - t0:5.2f} s] append_stream: {''.join(text)!r}")

        history = conv.get_history(conversation_id=cid)
        print(f"[{time.monotonic() - t0:5.2f} s] history: {len(history.entries)} entries")

        stats = session.client.stats()
        print(
            f"{stats.requests_admitted} requests admitted, {stats.rate_limited_seen} 429s "
            f"retried, longest wait {stats.wait_seconds_max:.2f} s"
        )
        ok = len(history.entries) >= 6 and bool(text)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
