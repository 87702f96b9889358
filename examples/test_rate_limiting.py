"""A burst of sync calls, then a burst of async calls, at a low rate limit.

Every call is fired at once; the client spaces them out so that none is refused. For each
request it prints when it was called, when it left the limiter, when it completed and the
gap from the previous one; then the average gap against the one the limit implies, and a
verdict.

Real API when MISTRAL_API_KEY is set (at 0.8 requests/s, under the free tier's 1/s),
else the local emulator (at 1.5 requests/s, enforced by the emulator too).

    python examples/test_rate_limiting.py
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mistral_ratelimit import RatelimitConfig
from mistral_ratelimit.demo import CallRecord, Session, api_key_present, open_session

RPS = 0.8 if api_key_present() else 1.5
BURST = 5
ARGS: dict[str, Any] = {"completion_args": {"max_tokens": 16}}


def nominal_gap() -> float:
    """Seconds between requests that the limit implies (one request per 1/rps here)."""
    limit = RatelimitConfig(api_key="-", requests_per_second=RPS).engine_limits()[0][0]
    return limit.per_seconds / limit.amount


def sync_burst(session: Session) -> None:
    conv = session.client.beta.conversations

    def one(i: int) -> None:
        with session.tracker.call("sync", "sync"):
            conv.start(inputs=f"Sync request {i}: say hi.", model=session.model, **ARGS)

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        list(pool.map(one, range(BURST)))


async def async_burst(session: Session) -> None:
    conv = session.client.beta.conversations

    async def one(i: int) -> None:
        with session.tracker.call("async", "async"):
            await conv.start_async(
                inputs=f"Async request {i}: say hi.", model=session.model, **ARGS
            )

    await asyncio.gather(*(one(i) for i in range(BURST)))


def report(name: str, calls: list[CallRecord], origin: float) -> list[float]:
    """Print one line per request; return the gaps between consecutive sends."""
    print(f"\n{name} burst: {len(calls)} calls fired at once")
    print(f"{'#':>3} {'called':>8} {'sent':>8} {'done':>8} {'gap':>7}  result")
    gaps: list[float] = []
    previous: float | None = None
    ordered = sorted(calls, key=lambda c: c.sent if c.sent is not None else c.started)
    for i, c in enumerate(ordered, 1):
        sent = c.sent if c.sent is not None else c.started
        gap = None if previous is None else sent - previous
        if gap is not None:
            gaps.append(gap)
        previous = sent
        print(
            f"{i:>3} {c.started - origin:7.3f}s {sent - origin:7.3f}s "
            f"{(c.finished or sent) - origin:7.3f}s "
            f"{'' if gap is None else f'{gap:6.3f}s':>7}  {c.outcome}{' ' + c.error if c.error else ''}"
        )
    return gaps


def main() -> int:
    fields: dict[str, Any] = {"requests_per_second": RPS, "tokens_per_minute": 100_000}
    with open_session(**fields) as session:
        print(f"Running against {session.where} at {RPS} requests/s")
        sync_burst(session)
        asyncio.run(async_burst(session))
        calls = session.tracker.records()
        server_429 = None if session.emulator is None else session.emulator.log.count(429)
        margin = session.client.config.window_margin
    origin = min(c.started for c in calls)
    gaps = report("sync", [c for c in calls if c.mode == "sync"], origin)
    gaps += report("async", [c for c in calls if c.mode == "async"], origin)

    nominal = nominal_gap()
    average = sum(gaps) / len(gaps)
    reached = sum(c.outcome == "rate_limited" for c in calls)
    errors = sum(c.outcome == "error" for c in calls)
    print(
        f"\naverage gap {average:.3f} s; expected {nominal:.3f} s (1 / {RPS} requests/s), "
        f"about {nominal + margin:.3f} s with the engine's {margin * 1000:.0f} ms window margin"
    )
    print(
        f"429s that reached the caller: {reached}; other errors: {errors}; 429s the server "
        f"issued: {'unknown (real API)' if server_429 is None else server_429}"
    )
    # Faster than the limit would mean the client let a burst through; a little slower is
    # the engine's margin, more is a busy machine.
    fast_enough = average <= 1.5 * (nominal + margin)
    honoured = average >= 0.97 * nominal
    ok = honoured and reached == 0 and errors == 0
    if ok:
        note = "" if fast_enough else " (slower than expected: a busy machine?)"
        print(f"VERDICT: PASS, the limit was honoured with no 429s reaching the caller{note}")
    else:
        print("VERDICT: FAIL" + ("" if honoured else ": requests went faster than the limit"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
