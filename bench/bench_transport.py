"""Transport overhead: requests/s through RateLimitTransport(MockTransport) vs bare MockTransport.

Run: .venv/bin/python bench/bench_transport.py [--seconds 2]
Compare with another tree, alternating short runs (see docs/benchmarks.md):
     .venv/bin/python bench/bench_transport.py --against ../old/src --runs 8 --seconds 0.7

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
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
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


LABELS = (
    ("bare", "bare MockTransport"),
    ("floor", "floor (see FloorTransport)"),
    ("ample", "RateLimitTransport, ample"),
    ("tight", "RateLimitTransport, tight"),
)


def measure(seconds: float, rounds: int) -> dict[str, dict[str, float]]:
    """µs per request of each path, sync and async: the median of ``rounds`` rounds."""
    out = {}
    for mode, fn in (
        ("sync", lambda: sync_round(seconds)),
        ("async", lambda: asyncio.run(async_round(seconds))),
    ):
        runs = [fn() for _ in range(rounds)]
        out[mode] = {k: 1e6 / statistics.median(r[k] for r in runs) for k in runs[0]}
    return out


def print_table(title: str, us: dict[str, float], spread: dict[str, tuple[float, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'path':<28}{'req/s':>10}{'us/req':>10}{'added us':>10}{'overhead':>10}")
    bare = us["bare"]
    for key, label in LABELS:
        if key not in us:  # the floor is measured sync only
            continue
        added = us[key] - bare
        line = f"  {label:<28}{1e6 / us[key]:>10.0f}{us[key]:>10.1f}{added:>10.1f}"
        line += f"{added / bare:>10.1%}"
        if key in spread and key != "bare":
            line += f"  [{spread[key][0]:.0f}, {spread[key][1]:.0f}]"
        print(line)


def compare(against: str, runs: int, seconds: float) -> None:
    """Alternate short runs of this tree's sources and of ``against`` (another checkout's
    ``src``), each in a fresh interpreter, so that the machine's load falls on both alike;
    report each path's median over the runs, and the range of its added µs."""
    here = str(Path(__file__).resolve().parents[1] / "src")
    got: dict[str, list[dict[str, dict[str, float]]]] = {here: [], against: []}
    for _ in range(runs):
        for src in (against, here):
            env = dict(os.environ, PYTHONPATH=src)
            command = [sys.executable, __file__, "--json", "--seconds", str(seconds)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            got[src].append(json.loads(done.stdout.splitlines()[-1]))
    for src, label in ((against, f"against {against}"), (here, "this tree")):
        for mode in ("sync", "async"):
            samples = [r[mode] for r in got[src]]
            med = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
            added = {k: [s[k] - s["bare"] for s in samples] for k in samples[0]}
            spread = {k: (min(v), max(v)) for k, v in added.items()}
            print_table(f"{label}, {mode}: median of {runs} runs of {seconds:g} s", med, spread)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--against", metavar="SRC", help="another tree's src/ to alternate runs with"
    )
    parser.add_argument("--runs", type=int, default=8, help="alternations, with --against")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.against:
        compare(args.against, args.runs, args.seconds)
        return
    count_tokens("warm up")  # load the vocabulary outside the timed loops
    if args.json:
        print(json.dumps(measure(args.seconds, 1)))
        return
    print(f"body: {len(BODY)} bytes, {count_tokens(BODY.decode())} Tekken tokens of raw JSON")
    for mode, us in measure(args.seconds, args.rounds).items():
        print_table(f"{mode}: median of {args.rounds} rounds of {args.seconds:g} s", us, {})


if __name__ == "__main__":
    main()
