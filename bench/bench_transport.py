"""Transport overhead: requests/s through RateLimitTransport(MockTransport) vs bare MockTransport.

Run: .venv/bin/python bench/bench_transport.py [--seconds 2]

Both are measured in the same run, interleaved, on a 2 KB conversation body of real prose,
sync and async, with limits set high. Two regimes:
* "ample": the token budget has plenty of room, so a cheap upper bound is reserved and the
  real usage settles it (the tokenizer stays off the hot path);
* "tight": the budget is close to binding, so every request is counted exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from mistral_ratelimit import RatelimitConfig, RateLimiter
from mistral_ratelimit.accounting.tokenizer import count_tokens
from mistral_ratelimit.httpx import AsyncRateLimitTransport, RateLimitTransport
from mistral_ratelimit.limiter.base import Reservation

PROSE = (
    "The history of the city begins long before the bridges and the boulevards. Fishermen "
    "settled on the islands of the river, trading salt and wine with the tribes upstream, "
    "and for centuries the settlement grew slowly, walled and rewalled as each age feared a "
    "different enemy. Merchants built halls along the quays; scholars gathered on the left "
    "bank and argued in Latin long after the rest of the country had forgotten it. "
)
BODY = json.dumps(
    {
        "inputs": [
            {
                "role": "user",
                "content": (PROSE * 6)[:1900],
                "object": "entry",
                "type": "message.input",
                "prefix": False,
            }
        ],
        "stream": False,
        "completion_args": {"max_tokens": 256},
        "model": "mistral-medium-latest",
    }
).encode()
RESPONSE = {
    "object": "conversation.response",
    "conversation_id": "conv_bench",
    "outputs": [],
    "usage": {"prompt_tokens": 400, "completion_tokens": 50, "total_tokens": 450},
}


#: What Mistral sends with every generation response (reference, mistral-wire.md §4), with
#: limits as high as the benchmark's own, so that adopting them never makes anyone wait.
HEADERS = {
    "x-ratelimit-limit-tokens-minute": "1000000000000",
    "x-ratelimit-remaining-tokens-minute": "999999990000",
    "x-ratelimit-tokens-query-cost": "450",
    "x-ratelimit-limit-req-minute": "60000000000",
    "x-ratelimit-remaining-req-minute": "59999999999",
    "mistral-correlation-id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
}


def handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=RESPONSE, headers=HEADERS)


def rate(fn: Callable[[], Any], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn()
        n += 50
    return n / elapsed


async def arate(fn: Callable[[], Any], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            await fn()
        n += 50
    return n / elapsed


class FloorTransport(httpx.BaseTransport):
    """What any rate-limiting transport must do at the least: take a lock, add to two
    counters, find ``max_tokens`` in the body, read the usage back. A yardstick only."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.requests = self.tokens = 0.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        at = body.find(b'"max_tokens":')
        cap = int(body[at + 13 : at + 24].split(b"}")[0].split(b",")[0]) if at >= 0 else 1024
        cost = len(body) + 16 + cap
        with self.lock:
            self.requests += 1
            self.tokens += cost
        response = self.inner.handle_request(request)
        usage = json.loads(response.read()).get("usage") or {}
        with self.lock:
            self.tokens += usage.get("total_tokens", cost) - cost
        return response


class TightLimiter(RateLimiter):
    """Reports almost no token room, so every request takes the exact-count path; the
    windows themselves are huge, so nothing ever waits and only the counting is timed."""

    def token_room(self) -> float | None:
        return 1.0

    def grant_now(self, tokens: float, room_share: float = 1.0) -> Reservation | None:
        return None  # no room to spare: as a nearly full token window declines the lane


def limiter_for(regime: str) -> tuple[RateLimiter, RatelimitConfig]:
    cfg = RatelimitConfig(
        api_key="x", requests_per_second=1e9, tokens_per_minute=1e12, max_retries=0
    )
    return (RateLimiter(cfg) if regime == "ample" else TightLimiter(cfg)), cfg


def sync_round(seconds: float) -> dict[str, float]:
    out = {}
    bare = httpx.Client(transport=httpx.MockTransport(handler), base_url="https://x")
    out["bare"] = rate(lambda: bare.post("/v1/conversations", content=BODY), seconds)
    floor = httpx.Client(
        transport=FloorTransport(httpx.MockTransport(handler)), base_url="https://x"
    )
    out["floor"] = rate(lambda: floor.post("/v1/conversations", content=BODY), seconds)
    for regime in ("ample", "tight"):
        limiter, cfg = limiter_for(regime)
        client = httpx.Client(
            transport=RateLimitTransport(httpx.MockTransport(handler), limiter=limiter, config=cfg),
            base_url="https://x",
        )
        out[regime] = rate(lambda c=client: c.post("/v1/conversations", content=BODY), seconds)
    return out


async def async_round(seconds: float) -> dict[str, float]:
    out = {}
    bare = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://x")
    out["bare"] = await arate(lambda: bare.post("/v1/conversations", content=BODY), seconds)
    for regime in ("ample", "tight"):
        limiter, cfg = limiter_for(regime)
        client = httpx.AsyncClient(
            transport=AsyncRateLimitTransport(
                httpx.MockTransport(handler), limiter=limiter, config=cfg
            ),
            base_url="https://x",
        )
        out[regime] = await arate(
            lambda c=client: c.post("/v1/conversations", content=BODY), seconds
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    count_tokens("warm up")  # load the vocabulary outside the timed loops
    print(f"body: {len(BODY)} bytes, {count_tokens(BODY.decode())} Tekken tokens of raw JSON")
    for mode, fn in (
        ("sync", lambda: sync_round(args.seconds)),
        ("async", lambda: asyncio.run(async_round(args.seconds))),
    ):
        rounds = [fn() for _ in range(args.rounds)]
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        bare_us = 1e6 / med["bare"]
        print(f"\n{mode}: median of {args.rounds} rounds of {args.seconds:g} s")
        print(f"  {'path':<28}{'req/s':>10}{'us/req':>10}{'added us':>10}{'overhead':>10}")
        for key, label in (
            ("bare", "bare MockTransport"),
            ("floor", "floor (see FloorTransport)"),
            ("ample", "RateLimitTransport, ample"),
            ("tight", "RateLimitTransport, tight"),
        ):
            if key not in med:  # the floor is measured sync only
                continue
            us = 1e6 / med[key]
            print(
                f"  {label:<28}{med[key]:>10.0f}{us:>10.1f}{us - bare_us:>10.1f}"
                f"{(us - bare_us) / bare_us:>10.1%}"
            )


if __name__ == "__main__":
    main()
