"""Reservations per second and latency of Redis-backed limiters, from 1, 4 and 16 processes.

Each client process reserves in a loop for ``--seconds`` against one local redis-server,
with two limits (requests per second and tokens per minute) set far above the load, so
every call is admitted and the figure is the limiter's own cost. The same run measures:

* ``mistral-ratelimit``: ``RedisRateLimiter.reserve`` (both limits, one script call);
* ``limits``: ``MovingWindowRateLimiter`` on ``RedisStorage``, one ``hit`` per limit;
* ``pyrate-limiter``: ``Limiter`` on a ``RedisBucket`` holding both rates, ``try_acquire``.

Usage: ``python bench/bench_redis.py [--seconds 3] [--clients 1,4,16] [--url redis://...]``
(without ``--url`` a throw-away redis-server is started on a free port).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from multiprocessing.synchronize import Barrier

RPS = 1_000_000_000
TPM = 1_000_000_000_000


def _ours(url: str, key: str) -> Callable[[], object]:
    from mistral_ratelimit.config import Limit, RatelimitConfig
    from mistral_ratelimit.redis import RedisRateLimiter

    limiter = RedisRateLimiter(
        url,
        config=RatelimitConfig(api_key="sk-bench"),
        key=key,
        limits=[Limit(RPS, 1.0, "requests"), Limit(TPM, 60.0, "tokens")],
        on_backend_error="fail",
    )
    return lambda: limiter.reserve(100)


def _limits(url: str, key: str) -> Callable[[], object]:
    from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter

    limiter = MovingWindowRateLimiter(RedisStorage(url, key_prefix=key))
    per_second, per_minute = RateLimitItemPerSecond(RPS), RateLimitItemPerMinute(TPM)

    def hit() -> bool:
        return limiter.hit(per_second, "bench") and limiter.hit(per_minute, "bench", cost=100)

    return hit


def _pyrate(url: str, key: str) -> Callable[[], object]:
    import redis
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

    bucket = RedisBucket.init(
        # pyrate wants a non-increasing rate per second down the list: 50 s of RPS a minute.
        [Rate(RPS, Duration.SECOND), Rate(RPS * 50, Duration.MINUTE)],
        redis.Redis.from_url(url),
        key,
    )
    limiter = Limiter(bucket)
    return lambda: limiter.try_acquire("bench", weight=1, blocking=False)


LIBRARIES: dict[str, Callable[[str, str], Callable[[], object]]] = {
    "mistral-ratelimit": _ours,
    "limits (moving window)": _limits,
    "pyrate-limiter (RedisBucket)": _pyrate,
}


def _client(
    lib: str, url: str, key: str, seconds: float, barrier: Barrier, out: mp.Queue[object]
) -> None:
    try:
        call = LIBRARIES[lib](url, key)
        for _ in range(50):  # connect, load scripts
            call()
    except Exception as exc:
        out.put(f"{lib}: {type(exc).__name__}: {exc}")
        barrier.abort()
        return
    barrier.wait()
    lat: list[float] = []
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        call()
        lat.append(time.perf_counter() - t0)
    out.put(lat)


def run(lib: str, url: str, clients: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(clients)
    out: mp.Queue[object] = ctx.Queue()
    key = f"bench-{uuid.uuid4().hex[:8]}"
    procs = [
        ctx.Process(target=_client, args=(lib, url, key, seconds, barrier, out))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    lat: list[float] = []
    for _ in procs:
        got = out.get(timeout=seconds + 60)
        if not isinstance(got, list):
            raise SystemExit(str(got))
        lat.extend(got)
    for p in procs:
        p.join()
    lat.sort()
    return {
        "per_second": len(lat) / seconds,
        "p50_ms": statistics.median(lat) * 1e3,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
    }


def _start_server() -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server, or pass --url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    return proc, f"redis://127.0.0.1:{port}/0", tmp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    proc, tmp = None, None
    url = args.url
    if url is None:
        proc, url, tmp = _start_server()
    try:
        print(f"# {os.cpu_count()} CPUs, {args.seconds:g} s per run, url={url}")
        print("| library | clients | reservations/s | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|---:|")
        for clients in (int(c) for c in args.clients.split(",")):
            for lib in LIBRARIES:
                r = run(lib, url, clients, args.seconds)
                print(
                    f"| {lib} | {clients} | {r['per_second']:,.0f} | "
                    f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} |",
                    flush=True,
                )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(5)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
