"""First-byte latency of a streamed response: through RateLimitTransport vs the bare transport.

Run: .venv/bin/python bench/bench_first_byte.py [--requests 200]

The emulator runs in its own process on 127.0.0.1 and streams a Conversations reply. For
each request we time from the call to the first raw chunk, alternating bare
``httpx2.HTTPTransport`` and ``RateLimitTransport`` around the same kind of transport, on
warm connections, with limits set high. Target: the median difference is within 1 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx2

from mistral_ratelimit import RatelimitConfig, RateLimiter
from mistral_ratelimit.emulator import EmulatorProcess
from mistral_ratelimit.httpx2 import RateLimitTransport

BODY = {
    "inputs": "Tell me about the sea.",
    "model": "mistral-small-latest",
    "stream": True,
    "completion_args": {"max_tokens": 24},
}


def first_byte(client: httpx2.Client, url: str) -> float:
    start = time.perf_counter()
    with client.stream("POST", url, json=BODY) as r:
        it = r.iter_raw()
        next(it)
        elapsed = time.perf_counter() - start
        for _ in it:
            pass
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    server = EmulatorProcess(
        requests_per_second=100_000, tokens_per_minute=1e12, stream_tokens_per_second=2000
    ).start()
    url = server.url + "/v1/conversations"
    cfg = RatelimitConfig(api_key="k", requests_per_second=1e9, tokens_per_minute=1e12)
    bare = httpx2.Client()
    ours = httpx2.Client(transport=RateLimitTransport(config=cfg, limiter=RateLimiter(cfg)))
    try:
        for c in (bare, ours):  # warm up connections and the tokenizer
            for _ in range(10):
                first_byte(c, url)
        times: dict[str, list[float]] = {"bare": [], "ours": []}
        for _ in range(args.requests):
            times["bare"].append(first_byte(bare, url))
            times["ours"].append(first_byte(ours, url))
    finally:
        bare.close()
        ours.close()
        server.stop()
    print(f"first byte of a streamed reply, {args.requests} requests each, alternating")
    print(f"  {'path':<24}{'median ms':>11}{'p95 ms':>10}")
    for name, label in (("bare", "bare HTTPTransport"), ("ours", "RateLimitTransport")):
        xs = sorted(times[name])
        print(
            f"  {label:<24}{statistics.median(xs) * 1e3:>11.3f}"
            f"{xs[int(0.95 * len(xs)) - 1] * 1e3:>10.3f}"
        )
    diff = statistics.median(times["ours"]) - statistics.median(times["bare"])
    paired = statistics.median(o - b for o, b in zip(times["ours"], times["bare"], strict=True))
    print(f"  median difference: {diff * 1e3:.3f} ms (paired: {paired * 1e3:.3f} ms)")


if __name__ == "__main__":
    main()
