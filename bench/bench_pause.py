"""How long one ``pause_for`` holds Redis when many bookings are waiting.

A pause re-books every waiting booking in one script, in order (docs/redis.md says why),
so Redis serves nobody else meanwhile. N bookings are made from one process under two
limits (10 per 1 s, 100,000 tokens per 60 s: they queue up to N / 10 s ahead), then one
``pause_for(5)`` is timed, and a second, longer one that moves them all again.

Usage: ``python bench/bench_pause.py [--waiters 1000,5000]`` (a throw-away redis-server is
started on a free port).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mistral_ratelimit.config import Limit, RatelimitConfig
from mistral_ratelimit.redis import RedisRateLimiter
from redis_server import RedisServer, fresh_key

LIMITS = [Limit(10, 1.0, "requests"), Limit(100_000, 60.0, "tokens")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--waiters", default="1000,5000")
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        print("| waiting bookings | first pause ms | second pause ms |")
        print("|---:|---:|---:|")
        for n in (int(x) for x in args.waiters.split(",")):
            limiter = RedisRateLimiter(
                server.url,
                config=RatelimitConfig(api_key="sk-bench"),
                key=fresh_key(),
                limits=LIMITS,
                on_backend_error="fail",
            )
            waiting = [limiter.reserve(10) for _ in range(n)]
            took = []
            for seconds in (5.0, 10.0):
                started = time.perf_counter()
                limiter.pause_for(seconds, rate_limited=False)
                took.append(1000 * (time.perf_counter() - started))
            print(f"| {n:,} | {took[0]:.1f} | {took[1]:.1f} |")
            for res in waiting:
                limiter.cancel(res)
            limiter.close()
    finally:
        server.close()


if __name__ == "__main__":
    main()
