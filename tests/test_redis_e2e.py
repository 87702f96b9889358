"""The Redis backend end to end: the real mistralai SDK through ``MistralRatelimitClient``
with a ``RedisRateLimiter``, against the emulator on 127.0.0.1 and a throw-away
redis-server. Sync, async and streaming calls settle from the usage the server reported;
no 429 reaches a caller; a late request is anchored in Redis; and two client processes
sharing one Redis key stay inside one limit, measured where it counts: at the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
import redis

from garbage import collect_garbage
from mistral_ratelimit import MistralRatelimitClient, RatelimitConfig
from mistral_ratelimit.accounting.tokenizer import tokenizer_info
from mistral_ratelimit.emulator import Emulator, Fault
from mistral_ratelimit.limiter import LimiterStats
from mistral_ratelimit.redis import RedisRateLimiter
from mistral_ratelimit.redis.scripts import Keys
from mistral_ratelimit.sdk import detect_sdk_line
from redis_server import RedisServer, fresh_key, shared_server

pytestmark = [pytest.mark.redis, pytest.mark.sdk]

LINE = detect_sdk_line()
http: Any = LINE.http
MODEL = "mistral-small-latest"
#: The emulator never refuses at these rates: what the clients let through is measured,
#: not what the server had to stop.
OPEN: dict[str, Any] = {"requests_per_second": 1000, "tokens_per_minute": 100_000_000}


@pytest.fixture
def server() -> RedisServer:
    return shared_server()


@pytest.fixture(scope="module")
def open_emu() -> Iterator[Emulator]:
    # The emulator counts tokens with the same tokenizer; loaded inside its first request it
    # holds the GIL for a few hundred ms and delays the arrival of requests already sent.
    # That is the emulator's cold start, not the client's: load it before anything is sent.
    tokenizer_info()
    with Emulator(**OPEN) as emu:
        yield emu


@pytest.fixture
def emu(open_emu: Emulator) -> Emulator:
    open_emu.reset()
    return open_emu


def redis_limiter(server: RedisServer, key: str, **fields: Any) -> RedisRateLimiter:
    config = RatelimitConfig(api_key="sk-e2e", **fields)
    return RedisRateLimiter(server.url, config=config, key=key, on_backend_error="fail")


def settled_tokens(stats: LimiterStats) -> float:
    """What the budget holds for the finished requests once settled."""
    return stats.tokens_reserved - stats.tokens_refunded + stats.tokens_charged


def served_tokens(emu: Emulator) -> int:
    return sum(r.tokens for r in emu.log if r.admitted)


# -- one process ------------------------------------------------------------------------------


def test_sync_calls_and_a_stream_settle_from_usage_in_redis(
    server: RedisServer, emu: Emulator
) -> None:
    key = fresh_key()
    limiter = redis_limiter(server, key, requests_per_second=100, tokens_per_minute=1_000_000)
    with MistralRatelimitClient(server_url=emu.url, limiter=limiter, api_key="sk-e2e") as client:
        first = client.beta.conversations.start(inputs="What is 2 + 2?", model=MODEL)
        client.beta.conversations.append(conversation_id=first.conversation_id, inputs="And 3?")
        with client.beta.conversations.start_stream(inputs="Count to five", model=MODEL) as s:
            events = [e.event for e in s]
    assert first.usage.total_tokens > 0
    assert events[-1] == "conversation.response.done"
    stats = limiter.stats()
    assert stats.requests_admitted == 3 and stats.in_flight == 0
    assert emu.log.count(429) == 0 and len(emu.log.admitted()) == 3
    # The estimates were replaced by what the server reported, stream included.
    assert settled_tokens(stats) == pytest.approx(served_tokens(emu), abs=1)
    assert stats.tokens_reserved != pytest.approx(served_tokens(emu), abs=1)
    # The figures live in Redis: another worker on the key reads the same.
    other = redis_limiter(server, key, requests_per_second=100, tokens_per_minute=1_000_000)
    assert settled_tokens(other.stats()) == pytest.approx(settled_tokens(stats))
    limiter.close()
    other.close()


def test_async_calls_and_streams_under_a_binding_limit(server: RedisServer, emu: Emulator) -> None:
    rps, calls = 5, 12
    limiter = redis_limiter(server, fresh_key(), requests_per_second=rps, window_margin=0.25)
    client = MistralRatelimitClient(server_url=emu.url, limiter=limiter, api_key="sk-e2e")

    async def one(i: int) -> str:
        if i % 3 == 0:
            events = await client.beta.conversations.start_stream_async(
                inputs=f"stream {i}", model=MODEL
            )
            async with events:
                names: list[str] = [e.event async for e in events]
            return names[-1]
        reply = await client.beta.conversations.start_async(inputs=f"call {i}", model=MODEL)
        return "done" if reply.usage.total_tokens > 0 else "no usage"

    async def run() -> list[str]:
        try:
            return await asyncio.gather(*(one(i) for i in range(calls)))
        finally:
            await client.aclose()
            await limiter.aclose()

    out = asyncio.run(run())
    assert sorted(set(out)) == ["conversation.response.done", "done"]
    stats = limiter.stats()
    assert stats.requests_admitted == calls and stats.in_flight == 0
    assert settled_tokens(stats) == pytest.approx(served_tokens(emu), abs=1)
    assert len(emu.log.admitted()) == calls and emu.log.count(429) == 0
    assert emu.log.max_in_window(1.0) <= rps
    # Not vacuous: 12 calls at 5 a second took more than two windows.
    arrivals = sorted(r.arrival for r in emu.log)
    assert arrivals[-1] - arrivals[0] > 2.0


def test_a_stricter_server_429s_are_retried_on_a_pause_shared_in_redis(
    server: RedisServer,
) -> None:
    """The client believes in 6 requests a second, the server allows 2: the server's 429s
    pause the shared budget in Redis and are retried; none reaches the caller."""
    calls = 6
    key = fresh_key()
    limiter = redis_limiter(
        server, key, requests_per_second=6, base_delay=0.2, max_delay=1.0, max_retries=8
    )
    with Emulator(requests_per_second=2, tokens_per_minute=100_000_000) as strict:
        client = MistralRatelimitClient(server_url=strict.url, limiter=limiter, api_key="sk-e2e")

        async def run() -> list[Any]:
            try:
                return await asyncio.gather(
                    *(
                        client.beta.conversations.start_async(inputs=f"q {i}", model=MODEL)
                        for i in range(calls)
                    )
                )
            finally:
                await client.aclose()

        replies = asyncio.run(run())
        assert all(r.usage.total_tokens > 0 for r in replies)
        assert strict.log.count(429) > 0  # the server did refuse some
        assert len(strict.log.admitted()) == calls
    other = redis_limiter(server, key, requests_per_second=6)
    shared = other.stats()
    assert shared.rate_limited_seen == strict.log.count(429)  # every 429 paused every worker
    assert shared.requests_admitted >= calls
    limiter.close()
    other.close()


class LateSend:
    """An inner transport whose first request leaves ``delay`` seconds late, as on a cold
    connection through a slow proxy."""

    def __init__(self, delay: float) -> None:
        self.inner = http.HTTPTransport()
        self.delay = delay

    def handle_request(self, request: Any) -> Any:
        if self.delay:
            time.sleep(self.delay)
            self.delay = 0.0
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_request_that_left_late_is_anchored_for_every_worker(
    server: RedisServer, emu: Emulator
) -> None:
    key = fresh_key()
    per = 3.0  # one request per 3 s
    fields: dict[str, Any] = {"requests_per_second": 1 / per, "tokens_per_minute": 1_000_000}
    limiter = redis_limiter(server, key, **fields)
    late = LateSend(1.0)
    with MistralRatelimitClient(
        server_url=emu.url, limiter=limiter, transport=late, api_key="sk-e2e"
    ) as client:
        client.beta.conversations.start(inputs="late", model=MODEL)
    arrival = emu.log[0].arrival
    stats_key = Keys.for_namespace("mrl", key).stats
    r = redis.Redis.from_url(server.url)
    assert float(r.hget(stats_key, "anchored") or 0) == 1
    r.close()
    # Another worker counts the window from when the request reached the server (1 s after
    # its grant), not from its grant: it may go no sooner than a window after the arrival.
    other = redis_limiter(server, key, **fields)
    res = other.reserve(0)
    wait = other.delay(res)
    assert time.monotonic() + wait >= arrival + per
    other.cancel(res)
    limiter.close()
    other.close()


class LateAsyncSend:
    """The async twin of :class:`LateSend`; its request is cancelled before any reply."""

    def __init__(self, delay: float) -> None:
        self.inner = http.AsyncHTTPTransport()
        self.delay = delay

    async def handle_async_request(self, request: Any) -> Any:
        await asyncio.sleep(self.delay)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_an_async_request_that_left_late_is_anchored_even_if_cancelled(
    server: RedisServer, emu: Emulator
) -> None:
    """Counted from when it left as soon as its body is written: the reply it never got
    (cancelled in the meantime) is not needed for that."""
    key = fresh_key()
    limiter = redis_limiter(server, key, requests_per_second=1 / 3.0, tokens_per_minute=10**6)
    emu.inject(Fault("slow_first_byte", delay=2.0))  # the reply is slow to come
    body = {"inputs": "late", "model": MODEL, "completion_args": {"max_tokens": 8}}

    async def main() -> None:
        transport = LINE.transport_module.AsyncRateLimitTransport(
            LateAsyncSend(0.5), limiter=limiter
        )
        async with http.AsyncClient(transport=transport, base_url=emu.url) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.post("/v1/conversations", json=body), 0.9)

    asyncio.run(main())
    stats_key = Keys.for_namespace("mrl", key).stats
    r = redis.Redis.from_url(server.url)
    assert float(r.hget(stats_key, "anchored") or 0) == 1
    r.close()
    assert limiter.stats().in_flight == 0
    limiter.close()


# -- two processes, one key ---------------------------------------------------------------------

WORKER = r"""
import asyncio, json, sys, threading
from mistral_ratelimit import MistralRatelimitClient, RatelimitConfig
from mistral_ratelimit.redis import RedisRateLimiter

redis_url, key, emu_url, calls, rps, margin = sys.argv[1:7]
config = RatelimitConfig(
    api_key="sk-e2e", requests_per_second=float(rps), tokens_per_minute=100_000_000,
    window_margin=float(margin),
)
limiter = RedisRateLimiter(redis_url, config=config, key=key, on_backend_error="fail")
client = MistralRatelimitClient(config, server_url=emu_url, limiter=limiter)
model = "mistral-small-latest"


def sync_calls(n, out):
    for i in range(n):
        try:
            reply = client.beta.conversations.start(inputs=f"sync {i}", model=model)
            out.append("done" if reply.usage.total_tokens > 0 else "no usage")
        except Exception as exc:
            out.append(f"error {type(exc).__name__}: {exc}")


async def one(i):
    if i % 2:
        events = await client.beta.conversations.start_stream_async(inputs=f"s {i}", model=model)
        async with events:
            names = [e.event async for e in events]
        return "done" if names[-1] == "conversation.response.done" else names[-1]
    reply = await client.beta.conversations.start_async(inputs=f"a {i}", model=model)
    return "done" if reply.usage.total_tokens > 0 else "no usage"


async def main():
    n = int(calls)
    sync_out = []
    print("ready", flush=True)
    sys.stdin.readline()  # every worker starts at once
    thread = threading.Thread(target=sync_calls, args=(n // 4, sync_out))
    thread.start()
    out = await asyncio.gather(*(one(i) for i in range(n - n // 4)), return_exceptions=True)
    await asyncio.to_thread(thread.join)
    await client.aclose()
    out = [o if isinstance(o, str) else f"error {type(o).__name__}: {o}" for o in out]
    print(json.dumps(out + sync_out), flush=True)


asyncio.run(main())
"""


def spawn(server: RedisServer, key: str, emu: Emulator, calls: int, rps: int, margin: float) -> Any:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, server.url, key, emu.url, str(calls), str(rps), str(margin)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


#: The window margin the two-process test holds with, on a loaded 2-core machine.
MARGIN = float(os.environ.get("MRL_E2E_MARGIN", "0.5"))


def test_two_client_processes_on_one_key_stay_inside_one_limit(
    server: RedisServer, emu: Emulator
) -> None:
    rps, calls = 8, 12  # per process: 24 requests at 8 a second, three windows
    key = fresh_key()
    procs = [spawn(server, key, emu, calls, rps, MARGIN) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outs = []
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0
            outs.append(json.loads(out.splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # No caller saw an error, each process got all its replies...
    assert [len(o) for o in outs] == [calls, calls]
    assert all(o == ["done"] * calls for o in outs), outs
    # ...and at the server, no one-second window held more than the one shared limit.
    assert len(emu.log.admitted()) == 2 * calls and emu.log.count(429) == 0
    arrivals = sorted(r.arrival for r in emu.log)
    assert emu.log.max_in_window(1.0) <= rps, " ".join(f"{t - arrivals[0]:.3f}" for t in arrivals)
    assert arrivals[-1] - arrivals[0] > 1.5  # not vacuous: the limit bound them
    # Both settled into the one budget, from the usage the server reported.
    reader = redis_limiter(server, key, requests_per_second=rps)
    shared = reader.stats()
    reader.close()
    assert shared.requests_admitted == 2 * calls
    assert settled_tokens(shared) == pytest.approx(served_tokens(emu), abs=2)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stream_dropped_unclosed_gives_its_slot_back_on_redis(
    server: RedisServer, emu: Emulator, mode: str
) -> None:
    """With a concurrency cap, an SDK event stream the caller drops without reading or
    closing it must not hold its slot: the heartbeat would renew its lease for ever."""
    config = RatelimitConfig(api_key="sk-test", max_concurrency=1, **OPEN)
    limiter = RedisRateLimiter(server.url, config=config, key=fresh_key())
    client = MistralRatelimitClient(config=config, limiter=limiter, server_url=emu.url)

    async def drop_then_call() -> int:
        events = await client.beta.conversations.start_stream_async(inputs="hi", model=MODEL)
        del events
        # The loop still holds the response for a turn (a finished future's wake-up); after
        # it the stream is garbage in a reference cycle, finalized by the next collection.
        await asyncio.sleep(0)
        collect_garbage()
        reply = await asyncio.wait_for(
            client.beta.conversations.start_async(inputs="again", model=MODEL), 10
        )
        return int(reply.usage.total_tokens or 0)

    with client:
        if mode == "sync":
            events = client.beta.conversations.start_stream(inputs="hi", model=MODEL)
            del events
            collect_garbage()
            done: list[int] = []
            worker = threading.Thread(
                target=lambda: done.append(
                    client.beta.conversations.start(inputs="again", model=MODEL).usage.total_tokens
                )
            )
            worker.start()
            worker.join(timeout=10)
            assert done and done[0] > 0
        else:
            assert asyncio.run(drop_then_call()) > 0
        assert limiter.stats().in_flight == 0
    limiter.close()
