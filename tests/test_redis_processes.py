"""Several real processes sharing one budget through a real redis-server.

The "API" here is a tiny TCP server that enforces a sliding window itself: it logs each
request's arrival and answers 429 when the last window already holds its amount. The
limiter is judged by what that server saw, never by the limiter's own account.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import anyio
import pytest

from conftest import admitted_per_window
from mistral_ratelimit.config import Limit, RatelimitConfig
from mistral_ratelimit.errors import BackendUnavailable
from mistral_ratelimit.limiter import aacquire
from mistral_ratelimit.redis import RedisRateLimiter
from redis_server import RedisServer, fresh_key, shared_server

pytestmark = pytest.mark.redis


class CountingServer:
    """Each connection sends ``"<tokens>\\n"``; the reply is ``ok`` or ``429``.

    An asyncio server on its own thread; a request counts when its connection is accepted,
    as a real API counts a request when it arrives.
    """

    def __init__(self, requests: float, tokens: float, per: float) -> None:
        self.limits = (requests, tokens, per)
        self.log: list[tuple[float, float]] = []  # (arrival, tokens) of accepted requests
        self.rejected = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrival = time.monotonic()
        tokens = float(await reader.readline())
        writer.write(b"ok\n" if self.admit(arrival, tokens) else b"429\n")
        await writer.drain()
        writer.close()

    def admit(self, now: float, tokens: float) -> bool:
        max_requests, max_tokens, per = self.limits
        recent = [(t, c) for t, c in self.log if t > now - per]
        if len(recent) + 1 > max_requests or sum(c for _, c in recent) + tokens > max_tokens:
            self.rejected += 1
            return False
        self.log.append((now, tokens))
        return True

    def close(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.fixture
def api() -> Iterator[CountingServer]:
    srv = CountingServer(requests=40, tokens=4000, per=1.0)
    yield srv
    srv.close()


WORKER = r"""
import asyncio, json, random, sys, time
from mistral_ratelimit.config import Limit, RatelimitConfig
from mistral_ratelimit.limiter import aacquire
from mistral_ratelimit.redis import RedisRateLimiter

url, key, port, tasks, each, margin = sys.argv[1:7]
limiter = RedisRateLimiter(
    url, config=RatelimitConfig(api_key="sk-t"), key=key,
    limits=[Limit(40, 1.0, "requests"), Limit(4000, 1.0, "tokens")],
    window_margin=float(margin), max_concurrency=int(sys.argv[7]) or None,
    lease_seconds=float(sys.argv[8]) or None,  # 0: the default
)

async def one(rng):
    tokens = rng.randint(50, 150)
    res = await aacquire(limiter, tokens)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
        writer.write(f"{tokens}\n".encode())
        await writer.drain()
        # As the transports do: count it from when it left, not from when it was due.
        await limiter.aanchor(res, max(0.0, time.monotonic() - res.due_local))
        reply = (await reader.readline()).decode().strip()
        writer.close()
        await limiter.asettle(res, tokens)
        return reply
    finally:
        await limiter.arelease(res)

async def task(i):
    rng = random.Random(i)
    return [await one(rng) for _ in range(int(each))]

async def main():
    print("ready", flush=True)
    out = await asyncio.gather(*(task(i) for i in range(int(tasks))))
    print(json.dumps([c for codes in out for c in codes]), flush=True)

asyncio.run(main())
"""


def spawn(
    url: str,
    key: str,
    port: int,
    tasks: int,
    each: int,
    margin: float,
    cap: int = 0,
    lease: float = 0.0,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            url,
            key,
            str(port),
            str(tasks),
            str(each),
            str(margin),
            str(cap),
            str(lease),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_four_processes_of_sixteen_tasks_stay_inside_the_servers_window(
    api: CountingServer,
) -> None:
    server = shared_server()
    key = fresh_key()
    # The margin absorbs the time from grant to arrival: here 64 tasks in 4 processes share
    # 2 cores with Redis and the server, and 40 of them wake together when a window opens.
    margin = float(os.environ.get("MRL_PROCS_MARGIN", "0.5"))
    procs = [spawn(server.url, key, api.port, 16, 2, margin=margin) for _ in range(4)]
    replies: list[str] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        replies.extend(json.loads(out.splitlines()[-1]))
    assert len(replies) == 4 * 16 * 2
    assert replies.count("429") == 0 and api.rejected == 0
    assert admitted_per_window([(t, 1.0) for t, _ in api.log], 1.0) <= 40
    assert admitted_per_window(api.log, 1.0) <= 4000
    # The test is not vacuous: the budget bound, 128 requests took several windows.
    assert api.log[-1][0] - api.log[0][0] > 2.0


def test_a_killed_process_gives_the_budget_back_within_a_window(api: CountingServer) -> None:
    """With the default lease: the shortest window (1 s here), at least 2 s."""
    server = shared_server()
    key = fresh_key()
    limits = [Limit(40, 1.0, "requests"), Limit(4000, 1.0, "tokens")]
    lease = RedisRateLimiter(server.url, config=RatelimitConfig(), limits=limits).lease_seconds
    assert lease == 2.0
    # 200 tasks at 40 a window: its waiters are booked up to 5 windows ahead.
    hog = spawn(server.url, key, api.port, 200, 50, margin=0.0)
    assert hog.stdout is not None
    assert hog.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 30
    while len(api.log) < 10:  # in the middle of its requests, with waiters queued ahead
        assert time.monotonic() < deadline and hog.poll() is None
        time.sleep(0.02)
    hog.send_signal(signal.SIGKILL)
    hog.wait()
    time.sleep(lease + 0.3)  # its leases lapse: nobody renews them any more
    limiter = RedisRateLimiter(
        server.url,
        config=RatelimitConfig(api_key="sk-t"),
        key=key,
        limits=limits,
        window_margin=0.0,
        on_backend_error="fail",
    )
    first = limiter.reserve(0)
    # Its waiters ahead were given back: only what it sent in the last window still counts.
    assert limiter.delay(first) <= 1.0 + 0.01 + 1e-6


@pytest.mark.parametrize("mode", ["wait", "local", "fail"])
def test_redis_restarted_mid_run(mode: str) -> None:
    srv = RedisServer().start()
    try:
        _restart_run(srv, mode)
    finally:
        srv.close()


def _restart_run(srv: RedisServer, mode: str) -> None:
    limiter = RedisRateLimiter(
        srv.url,
        config=RatelimitConfig(api_key="sk-t"),
        key=fresh_key(),
        limits=[Limit(1000, 1.0, "requests")],
        window_margin=0.0,
        on_backend_error=mode,  # type: ignore[arg-type]
        local_share=0.5 if mode == "local" else None,
        probe_interval=0.1,
    )
    grants: list[tuple[float, str]] = []
    errors: list[float] = []
    stop = anyio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                res = await aacquire(limiter, 1)
            except BackendUnavailable:
                errors.append(time.monotonic())
                await anyio.sleep(0.02)
                continue
            grants.append((time.monotonic(), res.tag))
            await limiter.asettle(res, 1)
            await limiter.arelease(res)
            await anyio.sleep(0.01)

    async def main() -> dict[str, float]:
        t: dict[str, float] = {}
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(client)
            await anyio.sleep(0.3)
            t["stopping"] = time.monotonic()
            srv.stop()  # blocks the loop until redis-server has exited
            t["down"] = time.monotonic()
            await anyio.sleep(0.6)
            t["starting"] = time.monotonic()
            srv.start()
            t["up"] = time.monotonic()
            await anyio.sleep(0.8)
            stop.set()
        return t

    t = anyio.run(main)
    # Replies read before the stop may still be handled just after it: allow 0.1 s.
    during = [tag for at, tag in grants if t["down"] + 0.1 < at < t["starting"]]
    after = [tag for at, tag in grants if at > t["up"] + 0.5]
    assert grants and after, "the clients must run before and after the restart"
    assert all(tag != "local" for tag in after)  # back on Redis without a restart
    if mode == "wait":
        assert not errors and not during  # held: nothing went without a Redis reservation
    elif mode == "local":
        assert not errors and during and all(tag == "local" for tag in during)
    else:
        assert errors and not during
        assert all(t["stopping"] <= e <= t["up"] + 0.5 for e in errors)
    stats = limiter.stats()
    # The new Redis is empty: what it counts started after the restart.
    assert 0 < stats.requests_admitted <= len([a for a, _ in grants if a > t["starting"]])


def test_grants_do_not_exceed_the_budget_across_a_restart_in_wait_mode() -> None:
    """After a restart Redis starts empty, but the requests sent in the last window still
    count at the API: the process charges them again (a new epoch) before it books anything
    more, so the budget holds across the restart, for the waiter booked before it and for
    new callers alike."""
    srv = RedisServer().start()
    try:
        limiter = RedisRateLimiter(
            srv.url,
            config=RatelimitConfig(api_key="sk-t"),
            key=fresh_key(),
            limits=[Limit(2, 30.0, "requests")],
            window_margin=0.0,
            on_backend_error="wait",
        )
        assert [limiter.delay(limiter.reserve(0)) for _ in range(2)] == [0.0, 0.0]
        waiting = limiter.reserve(0)
        assert limiter.delay(waiting) > 25
        srv.stop()
        srv.start()
        time.sleep(0.06)  # past the reserve reply's own answer
        assert limiter.delay(waiting) > 25  # the two sent before the restart still count
        fresh = limiter.reserve(0)
        assert limiter.delay(fresh) > 25
        other = RedisRateLimiter(  # another worker, which granted nothing before the restart
            srv.url,
            config=RatelimitConfig(api_key="sk-t"),
            key=limiter.namespace,
            limits=[Limit(2, 30.0, "requests")],
            window_margin=0.0,
        )
        assert other.delay(other.reserve(0)) > 25
    finally:
        srv.close()
