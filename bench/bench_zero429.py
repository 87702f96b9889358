"""Zero 429s at the server, not only at the permit (issue 7, section 5).

Run: .venv/bin/python bench/bench_zero429.py [--requests 60] [--rps 8] [--rounds 3]

60 concurrent conversation starts through the real mistralai SDK (3.x on httpx2) and our
async transport, against the emulator's strictest mode: a sliding-window log of 8
requests per second, counted when each request *arrives* at the server. The ideal finish
is 7.0 s (eight per second, the first eight at once). Target: 0 429s issued by the server
and 60/60 done within 7.3 s, streamed and not.

"elapsed" is the client's wall time for the whole gather, which includes the SDK building 60
requests before the first one can leave (about 0.35 s on this machine, with or without this
library); "server span" runs from the first arrival at the server to the end of the last
response: the part the rate limit governs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx2
from mistralai.client import Mistral

from mistral_ratelimit import RatelimitConfig, RateLimiter
from mistral_ratelimit.accounting.tokenizer import tokenizer_info
from mistral_ratelimit.emulator import EmulatorProcess, RequestLog
from mistral_ratelimit.httpx2 import AsyncRateLimitTransport


async def run_once(url: str, n: int, rps: float, stream: bool) -> dict[str, Any]:
    cfg = RatelimitConfig(
        api_key="bench", requests_per_second=rps, tokens_per_minute=10_000_000, max_retries=3
    )
    limiter = RateLimiter(cfg)
    async with httpx2.AsyncClient(
        transport=AsyncRateLimitTransport(limiter=limiter, config=cfg),
        timeout=60,
        limits=httpx2.Limits(max_connections=100, max_keepalive_connections=100),
    ) as http:
        sdk = Mistral(api_key="bench", server_url=url, async_client=http)
        # A running program is warm: load the SDK's lazily imported models and the
        # vocabulary before the clock starts, without sending anything.
        _ = sdk.beta.conversations
        tokenizer_info()

        async def one(i: int) -> int:
            inputs = f"Question {i}: name a colour."
            if stream:
                events = await sdk.beta.conversations.start_stream_async(
                    inputs=inputs, model="mistral-small-latest", completion_args={"max_tokens": 16}
                )
                async with events:
                    async for _ in events:
                        pass
            else:
                await sdk.beta.conversations.start_async(
                    inputs=inputs, model="mistral-small-latest", completion_args={"max_tokens": 16}
                )
            return i

        start = time.monotonic()
        done = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        elapsed = time.monotonic() - start
    errors = [d for d in done if isinstance(d, BaseException)]
    return {"elapsed": elapsed, "ok": n - len(errors), "errors": errors, "stats": limiter.stats()}


def server_figures(log: RequestLog) -> tuple[int, float, float]:
    """429s issued, most arrivals in any 1 s, and the span from the first arrival to the
    end of the last response."""
    records = log.snapshot()
    span = max((r.finished or r.arrival) for r in records) - min(r.arrival for r in records)
    return log.count(429), log.max_in_window(1.0, arrivals=True), span


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rps", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ideal = (args.requests - 1) // int(args.rps)  # full bursts, the first at t=0
    print(
        f"{args.requests} concurrent starts, server: sliding window {args.rps:g} req/s "
        f"(ideal finish {ideal:.1f} s)"
    )
    print(
        f"{'mode':<10}{'round':>6}{'done':>8}{'elapsed s':>11}{'server span s':>15}"
        f"{'server 429s':>13}{'arrivals in 1 s':>16}{'client 429s seen':>18}"
    )
    for stream in (False, True):
        for rnd in range(args.rounds):
            # The server runs in its own process, as a real one would: arrival stamps are
            # then not skewed by the client's event loop holding the GIL.
            with EmulatorProcess(
                requests_per_second=args.rps,
                tokens_per_minute=10_000_000,
                algorithm="sliding",
                stream_tokens_per_second=400,
            ) as emu:
                out = asyncio.run(run_once(emu.url, args.requests, args.rps, stream))
                rejected, peak, span = server_figures(emu.log())
            print(
                f"{'stream' if stream else 'json':<10}{rnd + 1:>6}"
                f"{out['ok']:>5}/{args.requests:<2}{out['elapsed']:>11.2f}{span:>15.2f}{rejected:>13}"
                f"{peak:>16}{out['stats'].rate_limited_seen:>18}"
            )
            for err in out["errors"][:3]:
                print("   error:", type(err).__name__, str(err)[:120])


if __name__ == "__main__":
    main()
