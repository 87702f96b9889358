"""CPU spent by callers queued behind ``max_concurrency`` while nothing frees a slot.

2,000 asyncio tasks queue behind one request that holds the only in-flight slot; for
``--seconds`` nothing is released. A queued caller has nothing to do, so the CPU it costs
is the limiter's waiting overhead: polling shows up here. Measured for this process
(``time.process_time``) and, for Redis, the redis-server (``INFO cpu``), as a share of one
core.

Usage: ``python bench/bench_queued.py [--waiters 2000] [--seconds 3]`` (a throw-away
redis-server is started on a free port; the Redis row is skipped without one).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mistral_ratelimit.config import Limit, RatelimitConfig
from mistral_ratelimit.limiter import RateLimiter, aacquire

LIMITS = [Limit(1_000_000, 1.0, "requests")]


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _measure(limiter: Any, waiters: int, seconds: float, redis_client: Any) -> str:
    holder = await aacquire(limiter, 0)
    stats = getattr(limiter, "local_stats", limiter.stats)
    # anyio's cancellation, not asyncio's Task.cancel(): it is delivered again at every
    # checkpoint, so a waiter that swallows one cancellation (a race inside asyncio's
    # Condition on Python 3.11, under redis-py's pool) still ends.
    async with anyio.create_task_group() as tg:
        for _ in range(waiters):
            tg.start_soon(aacquire, limiter, 0)
        deadline = time.monotonic() + 60
        while stats().queued < waiters:
            assert time.monotonic() < deadline, "the waiters never queued"
            await anyio.sleep(0.05)
        await anyio.sleep(1.0)  # past the first answers: the steady state
        cpu0, wall0 = time.process_time(), time.monotonic()
        server0 = _redis_cpu(redis_client) if redis_client is not None else 0.0
        await anyio.sleep(seconds)
        wall = time.monotonic() - wall0
        line = f"{100 * (time.process_time() - cpu0) / wall:.1f} %"
        if redis_client is not None:
            line += f" | {100 * (_redis_cpu(redis_client) - server0) / wall:.1f} %"
        tg.cancel_scope.cancel()
    await limiter.arelease(holder)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--waiters", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    cfg = RatelimitConfig(api_key="sk-bench")
    print(f"# {args.waiters} queued asyncio waiters, {args.seconds:g} s, max_concurrency=1")
    print("| backend | this process CPU | redis-server CPU |")
    print("|---|---:|---:|")
    memory = RateLimiter(cfg, limits=LIMITS, max_concurrency=1)
    print(f"| memory | {anyio.run(_measure, memory, args.waiters, args.seconds, None)} | n/a |")
    if shutil.which("redis-server") is None:
        return
    import redis

    from mistral_ratelimit.redis import RedisRateLimiter
    from redis_server import RedisServer, fresh_key

    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        limiter = RedisRateLimiter(
            server.url, config=cfg, key=fresh_key(), limits=LIMITS, max_concurrency=1
        )
        row = anyio.run(_measure, limiter, args.waiters, args.seconds, client)
        print(f"| redis | {row} |")
        limiter.close()
    finally:
        server.close()


if __name__ == "__main__":
    main()
