"""RedisRateLimiter behaviour that only a shared backend has, against a real redis-server.

The contract every backend shares runs in test_limiter_contract.py. Here: the budget shared
between limiter objects (as between workers), the key layout, Redis's clock, leases, and
what happens when Redis goes away. Time is moved with a fake clock (the limiter's test-only
``_clock``, which its scripts read instead of Redis TIME), never by sleeping through windows.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import redis
from redis.crc import key_slot

from conftest import FakeClock
from mistral_ratelimit.config import Limit, RatelimitConfig
from mistral_ratelimit.errors import BackendUnavailable, BudgetExhausted
from mistral_ratelimit.limiter import ObservedLimit, State, aacquire, acquire
from mistral_ratelimit.redis import RedisRateLimiter
from mistral_ratelimit.redis.scripts import Keys
from redis_server import RedisServer, fresh_key, shared_server

pytestmark = pytest.mark.redis
LONG = 30.0


@pytest.fixture
def server() -> RedisServer:
    return shared_server()


@pytest.fixture
def r(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


def make(
    server: RedisServer,
    key: str,
    limits: list[Limit],
    clock: Callable[[], float] | None = None,
    **kw: Any,
) -> RedisRateLimiter:
    """A limiter on ``key``; with ``clock``, on that fake clock (every limiter sharing the key
    must then share it), with leases that outlast its jumps unless the test sets them."""
    kw.setdefault("window_margin", 0.0)
    kw.setdefault("on_backend_error", "fail")
    if clock is not None:
        kw.setdefault("lease_seconds", 1e9)
    return RedisRateLimiter(
        server.url,
        config=RatelimitConfig(api_key="sk-t"),
        key=key,
        limits=limits,
        _clock=clock,
        **kw,
    )


# -- sharing ------------------------------------------------------------------------------


def test_two_workers_share_one_budget(server: RedisServer) -> None:
    key = fresh_key()
    a = make(server, key, [Limit(4, LONG, "requests")])
    b = make(server, key, [Limit(4, LONG, "requests")])
    for lim in (a, b, a, b):
        assert lim.delay(lim.reserve(0)) == 0.0
    assert b.delay(b.reserve(0)) > LONG - 5
    other = make(server, fresh_key(), [Limit(4, LONG, "requests")])
    assert other.delay(other.reserve(0)) == 0.0  # another key: another budget


def test_the_namespace_is_a_hash_of_the_api_key_which_is_never_stored(
    server: RedisServer, r: redis.Redis
) -> None:
    secret = "sk-very-secret-0123456789"
    cfg = RatelimitConfig(api_key=secret, requests_per_second=None, tokens_per_minute=1000)
    a = RedisRateLimiter(server.url, config=cfg, on_backend_error="fail")
    b = RedisRateLimiter(server.url, config=cfg, on_backend_error="fail")
    assert a.namespace == b.namespace and secret not in a.namespace
    res = a.reserve(600)
    a.settle(res, 500)
    assert b.delay(b.reserve(600)) > 10  # same API key: same budget
    keys = list(r.scan_iter(match=f"*{a.namespace}*"))
    assert keys
    for k in keys:
        assert secret.encode() not in k
        assert secret.encode() not in (r.dump(k) or b"")
    assert secret not in repr(a)


def test_every_key_has_a_ttl_and_one_hash_tag(server: RedisServer, r: redis.Redis) -> None:
    key = fresh_key()
    lim = make(server, key, [Limit(2, LONG, "requests")], max_concurrency=1)
    first = lim.reserve(0)
    queued = lim.reserve(0)
    assert lim.delay(first) == 0.0 and lim.delay(queued) > 0
    lim.release(first)
    assert lim.delay(queued) == 0.0
    ahead = lim.reserve(0)  # booked a window ahead, held by a lease
    lim.settle(queued, 0)
    lim.pause_for(1.0)
    lim.adopt([ObservedLimit("requests", LONG, 2, 0)])
    keys = list(r.scan_iter(match=f"mrl:{{{key}}}:*"))
    assert len(keys) >= 5
    for k in keys:
        assert r.pttl(k) > 0, k
    assert len({key_slot(k) for k in keys}) == 1  # one Cluster slot: scripts may touch all
    lim.cancel(ahead)


def test_scripts_are_loaded_again_after_script_flush(server: RedisServer, r: redis.Redis) -> None:
    lim = make(server, fresh_key(), [Limit(5, LONG, "requests")])
    assert lim.delay(lim.reserve(0)) == 0.0
    r.script_flush()
    assert lim.delay(lim.reserve(0)) == 0.0
    assert lim.stats().requests_admitted == 2


# -- Redis's clock --------------------------------------------------------------------------


def test_time_is_redis_time(server: RedisServer, r: redis.Redis) -> None:
    lim = make(server, fresh_key(), [Limit(1, 10.0, "requests")])
    res = lim.reserve(0)
    seconds, micros = r.time()
    assert abs(res.at - (seconds + micros / 1e6)) < 1.0  # booked on Redis's clock
    assert abs(lim.now() - (seconds + micros / 1e6)) < 1.0


def test_the_budgets_time_never_goes_back(server: RedisServer) -> None:
    reading = [10_000.0]
    lim = make(server, fresh_key(), [Limit(1, 10.0, "requests")], clock=lambda: reading[0])
    res = lim.reserve(0)
    reading[0] -= 1000.0  # the clock jumps back
    nxt = lim.reserve(0)
    # Stored time did not go back: the window is still full for ~10 s after `res`.
    assert nxt.at >= res.at + 10.0
    assert lim.now() >= res.at
    assert lim.delay(nxt) > 5


def test_no_redis_writer_can_move_a_production_budgets_clock(
    server: RedisServer, r: redis.Redis
) -> None:
    """Production scripts read Redis TIME only: an ``offset`` (or any field) written into
    the state hash is ignored, and the test clock's scripts are different scripts."""
    key = fresh_key()
    lim = make(server, key, [Limit(1, 10.0, "requests")])
    assert lim.delay(lim.reserve(0)) == 0.0
    r.hset(Keys.for_namespace("mrl", key).state, mapping={"offset": 1e6, "clock": 1e12})
    assert 5 < lim.delay(lim.reserve(0)) < 11
    assert abs(lim.now() - time.time()) < 5


def test_a_window_frees_once_it_has_passed(server: RedisServer) -> None:
    clock = FakeClock()
    lim = make(server, fresh_key(), [Limit(100, 10.0, "tokens")], clock=clock)
    acquire(lim, 100, sleep=clock.sleep)
    assert lim.delay(lim.reserve(1)) > 5
    clock.advance(10.0 + 0.1 + 0.2)  # a window, one slot, and slack
    assert lim.delay(lim.reserve(99)) == 0.0


# -- signals shared by every worker ----------------------------------------------------------


def test_a_pause_seen_by_one_worker_holds_back_all(server: RedisServer) -> None:
    key = fresh_key()
    a = make(server, key, [Limit(100, LONG, "requests")])
    b = make(server, key, [Limit(100, LONG, "requests")])
    waiting = b.reserve(0)
    a.pause_for(LONG)
    assert b.delay(b.reserve(0)) > LONG - 5
    time.sleep(HINT_GUARD)  # b's reply is older than a pause it has not seen itself
    assert b.delay(waiting) > LONG - 5
    assert b.stats().rate_limited_seen == 1


HINT_GUARD = 0.06  # longer than limiter.HINT_SECONDS


def test_the_servers_view_adopted_by_one_worker_binds_all(server: RedisServer) -> None:
    key = fresh_key()
    a = make(server, key, [Limit(1000, 60.0, "tokens")])
    b = make(server, key, [Limit(1000, 60.0, "tokens")])
    a.adopt([ObservedLimit("tokens", 60.0, 1000, 100)])
    assert b.delay(b.reserve(100)) == 0.0
    assert b.delay(b.reserve(10)) > 30


def test_limits_discovered_by_one_worker_reach_the_others(server: RedisServer) -> None:
    key = fresh_key()
    cfg = RatelimitConfig(api_key="sk-t")  # tier defaults: 1 rps, 500k tpm
    a = RedisRateLimiter(server.url, config=cfg, key=key, on_backend_error="fail")
    b = RedisRateLimiter(server.url, config=cfg, key=key, on_backend_error="fail")
    a.adopt([ObservedLimit("requests", 60.0, 720, 719), ObservedLimit("tokens", 60.0, 10**6, None)])
    # The per-minute rung comes with its per-second pace, as in memory.py's discovery.
    assert set(a.limits) == {
        Limit(720, 60.0, "requests"),
        Limit(12, 1.0, "requests"),
        Limit(10**6, 60.0, "tokens"),
    }
    b.cancel(b.reserve(0))  # any reply tells b that the shared limits changed
    assert set(b.limits) == set(a.limits)
    burst = [b.reserve(10) for _ in range(5)]
    assert [b.delay(x) for x in burst] == [0.0] * 5  # the 1 rps default is gone


# -- concurrency across workers -----------------------------------------------------------------


def test_the_concurrency_cap_is_shared_and_fifo(server: RedisServer) -> None:
    key = fresh_key()
    a = make(server, key, [Limit(100, LONG, "requests")], max_concurrency=1)
    b = make(server, key, [Limit(100, LONG, "requests")], max_concurrency=1)
    running = a.reserve(0)
    assert a.delay(running) == 0.0
    first, second = b.reserve(0), a.reserve(0)
    assert b.delay(first) > 0 and a.delay(second) > 0
    assert (a.stats().in_flight, a.stats().queued) == (1, 2)
    a.release(running)
    assert a.delay(second) > 0  # b's waiter came first
    assert b.delay(first) == 0.0
    b.release(first)
    assert a.delay(second) == 0.0


def test_a_dead_holders_slot_comes_back_after_its_lease(server: RedisServer) -> None:
    key = fresh_key()
    dead = make(server, key, [Limit(100, LONG, "requests")], max_concurrency=1, lease_seconds=0.3)
    assert dead.delay(dead.reserve(0)) == 0.0
    dead.close()  # stops its lease heartbeat, as a killed process would
    live = make(server, key, [Limit(100, LONG, "requests")], max_concurrency=1)
    res = live.reserve(0)
    deadline = time.monotonic() + 10
    while (wait := live.delay(res)) > 0:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(wait)
    assert live.stats().in_flight == 1


def test_a_live_holders_lease_is_renewed(server: RedisServer) -> None:
    key = fresh_key()
    holder = make(server, key, [Limit(100, LONG, "requests")], max_concurrency=1, lease_seconds=0.3)
    assert holder.delay(holder.reserve(0)) == 0.0
    other = make(server, key, [Limit(100, LONG, "requests")], max_concurrency=1)
    waiter = other.reserve(0)
    time.sleep(1.0)  # three leases: only the heartbeat keeps the slot
    assert other.delay(waiter) > 0
    assert other.stats().in_flight == 1
    holder.close()
    other.cancel(waiter)


def test_a_dead_workers_bookings_ahead_are_given_back(server: RedisServer, r: redis.Redis) -> None:
    key, clock = fresh_key(), FakeClock()
    dead = make(server, key, [Limit(2, 10.0, "requests")], clock, lease_seconds=0.3)
    ahead = [dead.reserve(0) for _ in range(6)]  # 2 now, then 2 and 2 windows ahead
    assert dead.delay(ahead[-1]) > 15
    dead.close()
    clock.advance(0.5)  # past the lease, still inside the first window
    live = make(server, key, [Limit(2, 10.0, "requests")], clock)
    res = live.reserve(0)
    # Only the two that went still count: the dead worker's four waiters are gone.
    assert 0 < live.delay(res) <= 10.0 + 0.1
    assert float(r.hget(Keys.for_namespace("mrl", key).stats, "requests_reaped") or 0) == 4


# -- re-booking: a pause or an anchor in one worker moves every worker's waiters ---------------


def test_an_anchor_in_one_worker_moves_the_waiters_of_another(server: RedisServer) -> None:
    key = fresh_key()
    a = make(server, key, [Limit(1, LONG, "requests")])
    b = make(server, key, [Limit(1, LONG, "requests")])
    sent = a.reserve(0)
    assert a.delay(sent) == 0.0
    waiter = b.reserve(0)
    told = b.delay(waiter)  # answered from the reserve reply
    booked = waiter.at
    a.anchor(sent, 10.0)  # a's request left 10 s after its grant
    assert sent.at > booked - LONG + 5  # a's own copy follows its booking in Redis
    time.sleep(HINT_GUARD)
    assert b.delay(waiter) > told + 5  # b asks Redis again, and finds its booking moved
    assert waiter.at > booked + 5
    newcomer = a.reserve(0)
    assert a.delay(newcomer) > b.delay(waiter)  # still behind b's waiter
    # b gives back its waiter where it moved to, a its newcomer: a fresh request then
    # waits for the anchored request alone.
    b.cancel(waiter)
    a.cancel(newcomer)
    assert LONG + 5 < a.delay(a.reserve(0)) < 2 * LONG


def test_a_waiter_asleep_until_its_old_time_learns_the_new_one_when_it_wakes(
    server: RedisServer,
) -> None:
    key, clock = fresh_key(), FakeClock()
    a = make(server, key, [Limit(1, 10.0, "requests")], clock)
    b = make(server, key, [Limit(1, 10.0, "requests")], clock)
    sent = a.reserve(0)
    assert a.delay(sent) == 0.0
    waiter = b.reserve(0)
    told = b.delay(waiter)
    assert 9 < told < 11
    a.anchor(sent, 3.0)
    clock.advance(told + 0.01)  # b slept what it was told
    # The booking only moved later: woken at its old time, b is early, never late.
    assert 2 < b.delay(waiter) < 4
    clock.advance(4.0)
    assert b.delay(waiter) == 0.0
    assert b.stats().requests_admitted == 2


def test_a_pause_in_one_worker_keeps_every_workers_waiters_in_arrival_order(
    server: RedisServer,
) -> None:
    key = fresh_key()
    a = make(server, key, [Limit(1, LONG, "requests")])
    b = make(server, key, [Limit(1, LONG, "requests")])
    assert a.delay(a.reserve(0)) == 0.0
    w1, w2, w3 = b.reserve(0), a.reserve(0), b.reserve(0)
    a.pause_for(LONG * 1.5)  # a 429: b's waiters are re-booked too, at once
    newcomer = a.reserve(0)
    time.sleep(HINT_GUARD)
    d1, d2, d3, dn = b.delay(w1), a.delay(w2), b.delay(w3), a.delay(newcomer)
    assert LONG * 1.5 - 5 < d1 < d2 < d3 < dn


def test_a_reaped_booking_is_not_given_back_twice(server: RedisServer) -> None:
    """A worker that only looked dead (no lease renewal for a whole lease) and then cancels
    its waiters must not refund what the reaper already gave back: that would wipe other
    workers' charges from the same slots."""
    key, clock = fresh_key(), FakeClock()
    slow = make(server, key, [Limit(2, 10.0, "requests")], clock, lease_seconds=0.3)
    assert [slow.delay(slow.reserve(0)) for _ in range(2)] == [0.0, 0.0]
    ahead = [slow.reserve(0), slow.reserve(0)]  # a window ahead
    assert all(slow.delay(res) > 5 for res in ahead)
    slow.close()  # its heartbeat stops
    clock.advance(0.5)  # past its lease
    live = make(server, key, [Limit(2, 10.0, "requests")], clock)
    first = live.reserve(0)  # reaps the two waiters: first takes their place
    for res in ahead:
        slow.cancel(res)
    second, third = live.reserve(0), live.reserve(0)
    d1, d2, d3 = live.delay(first), live.delay(second), live.delay(third)
    assert d1 > 5 and 5 < d2 < d3 - 5  # two per window: the third waits another window


# -- Redis going away ---------------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    yield srv
    srv.close()


def test_fail_mode_raises_a_clear_error_and_recovers(own_server: RedisServer) -> None:
    lim = make(own_server, fresh_key(), [Limit(100, LONG, "requests")], on_backend_error="fail")
    assert lim.delay(lim.reserve(0)) == 0.0
    own_server.stop()
    with pytest.raises(BackendUnavailable) as info:
        lim.reserve(0)
    assert f"127.0.0.1:{own_server.port}" in str(info.value)
    assert "on_backend_error='fail'" in str(info.value)
    own_server.start()
    assert lim.delay(lim.reserve(0)) == 0.0  # no restart of the limiter needed


def test_a_full_redis_is_an_outage_under_the_chosen_mode(own_server: RedisServer) -> None:
    """maxmemory with noeviction refuses writes: that is Redis unable to serve, like a
    connection refused, not a bug to hand the caller raw."""
    lim = make(own_server, fresh_key(), [Limit(100, LONG, "requests")], on_backend_error="fail")
    assert lim.delay(lim.reserve(0)) == 0.0
    admin = redis.Redis.from_url(own_server.url)
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", used // 2)  # already over: every write is refused
    try:
        with pytest.raises(BackendUnavailable):
            lim.reserve(0)
    finally:
        admin.config_set("maxmemory", 0)
    assert lim.delay(lim.reserve(0)) == 0.0
    admin.close()


def test_local_mode_falls_back_to_its_share_and_comes_back(own_server: RedisServer) -> None:
    lim = make(
        own_server,
        fresh_key(),
        [Limit(10, LONG, "requests")],
        on_backend_error="local",
        local_share=0.3,
        probe_interval=0.05,
    )
    own_server.stop()
    local = [lim.reserve(0) for _ in range(4)]
    assert all(res.tag == "local" for res in local)
    assert [lim.delay(res) > 0 for res in local] == [False] * 3 + [True]  # 30 % of 10
    own_server.start()
    time.sleep(0.1)  # past the probe interval
    back = lim.reserve(0)
    assert back.tag != "local"
    # What this process spent while away was charged to the shared budget on return.
    assert lim.delay(back) == 0.0
    more = [lim.reserve(0) for _ in range(7)]
    assert lim.delay(more[-2]) == 0.0  # 3 spent locally + 1 + 6 = 10
    assert lim.delay(more[-1]) > LONG - 5
    for res in local:
        lim.cancel(res)


def test_wait_mode_holds_the_request_until_redis_is_back(own_server: RedisServer) -> None:
    lim = make(own_server, fresh_key(), [Limit(100, LONG, "requests")], on_backend_error="wait")
    own_server.stop()
    got: list[Any] = []
    worker = threading.Thread(target=lambda: got.append(acquire(lim, 0)))
    worker.start()
    worker.join(0.5)
    assert worker.is_alive() and not got  # held, never sent without a reservation
    own_server.start()
    worker.join(10)
    assert got and got[0].state is State.GRANTED and got[0].tag != "local"
    assert lim.stats().requests_admitted == 1  # booked in Redis


def test_wait_mode_gives_up_after_backend_timeout(own_server: RedisServer) -> None:
    lim = make(
        own_server,
        fresh_key(),
        [Limit(100, LONG, "requests")],
        on_backend_error="wait",
        backend_timeout=0.3,
    )
    own_server.stop()
    with pytest.raises(BackendUnavailable):
        lim.reserve(0)


# -- giving up while Redis is away: at once, and nothing kept from the budget -------------------

#: How much later than its bound a caller may hear, on a loaded machine: a refused connection
#: costs milliseconds, and before the fix these callers were held 2 to 3 s longer.
SLACK = 1.5


@pytest.fixture
def nowhere() -> Iterator[RedisServer]:
    """A loopback port with nothing listening: connections are refused."""
    srv = RedisServer()
    yield srv
    srv.close()


def outage(
    lim: RedisRateLimiter, monkeypatch: pytest.MonkeyPatch, after: str = "", lose: str = ""
) -> list[bool]:
    """Redis, as ``lim`` sees it, goes away while the returned flag is set (every call fails
    as a refused connection does; the server and its state stay). ``after``: the flag is set
    once that script's reply is in. ``lose``: that script still runs while away, but its
    reply never arrives."""
    real_sync, real_async = lim._call_sync, lim._call_async
    down = [False]

    def check(step: Any) -> None:
        if down[0] and getattr(step, "script", None) != lose:
            raise redis.exceptions.ConnectionError("Connection refused (test outage)")

    def then(step: Any) -> None:
        if down[0]:
            raise redis.exceptions.ConnectionError("Connection reset (test outage)")
        if after and getattr(step, "script", None) == after:
            down[0] = True

    def call_sync(step: Any) -> Any:
        check(step)
        reply = real_sync(step)
        then(step)
        return reply

    async def call_async(step: Any) -> Any:
        check(step)
        reply = await real_async(step)  # under trio, through call_sync: no harm checked twice
        then(step)
        return reply

    monkeypatch.setattr(lim, "_call_sync", call_sync)
    monkeypatch.setattr(lim, "_call_async", call_async)
    return down


def acquire_in(style: str, lim: RedisRateLimiter) -> None:
    """One acquire, from a thread (``"sync"``) or on an ``asyncio`` or ``trio`` loop."""
    if style == "sync":
        acquire(lim, 0)
    else:
        anyio.run(aacquire, lim, 0, backend=style)


@pytest.mark.parametrize("timeout", [0.5, 2.0])
@pytest.mark.parametrize("style", ["sync", "asyncio", "trio"])
def test_backend_timeout_bounds_the_wait_for_redis(
    nowhere: RedisServer, style: str, timeout: float
) -> None:
    """BackendUnavailable comes at backend_timeout, plus one try: the cancel of what Redis
    may have booked is tried once and kept for later, not retried for 2 s more after the
    deadline (it came at 2.8 s for 0.5, 7.4 s for 5), and no back-off sleeps past it."""
    lim = make(
        nowhere,
        fresh_key(),
        [Limit(100, LONG, "requests")],
        on_backend_error="wait",
        backend_timeout=timeout,
    )
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable):
        acquire_in(style, lim)
    elapsed = time.monotonic() - t0
    assert timeout * 0.9 < elapsed < timeout + SLACK
    assert len(lim._later) == 1  # the cancel, for when Redis answers
    lim.close()


@pytest.mark.parametrize("style", ["sync", "asyncio", "trio"])
def test_backend_timeout_bounds_a_wait_redis_left_midway(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    """Booked, then Redis goes away while the caller sleeps to its turn: it hears
    BackendUnavailable backend_timeout after the first failed check, plus one try."""
    lim = make(
        server,
        fresh_key(),
        [Limit(1, 0.2, "requests")],
        on_backend_error="wait",
        backend_timeout=0.5,
    )
    assert lim.delay(lim.reserve(0)) == 0.0
    outage(lim, monkeypatch, after="reserve")  # the next booking is the last reply
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable):
        acquire_in(style, lim)
    elapsed = time.monotonic() - t0  # the first check fails after ~0.2 s of waiting its turn
    assert 0.5 < elapsed < 0.2 + 0.5 + SLACK
    assert len(lim._later) == 1
    lim.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_waiter_cancelled_while_redis_is_away_returns_at_once(
    nowhere: RedisServer, backend: str
) -> None:
    """No backend_timeout: the caller's own deadline ends the wait, and the cancel that
    follows (shielded) is tried once, not retried for 2 s (it returned after 3.1 to 3.4 s)."""
    lim = make(nowhere, fresh_key(), [Limit(100, LONG, "requests")], on_backend_error="wait")

    async def caller() -> float:
        t0 = time.monotonic()
        with anyio.move_on_after(0.5) as scope:
            await aacquire(lim, 0)
        assert scope.cancelled_caught
        return time.monotonic() - t0

    assert 0.45 < anyio.run(caller, backend=backend) < 0.5 + SLACK
    assert len(lim._later) == 1
    lim.close()


@pytest.mark.parametrize("lost", [False, True], ids=["refused", "reply-lost"])
@pytest.mark.parametrize("style", ["sync", "asyncio", "trio"])
def test_a_cancel_redis_missed_is_sent_once_it_is_back(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, style: str, lost: bool
) -> None:
    """1 per 10 s: w waits a window ahead; Redis goes away and w is cancelled. The cancel
    returns at once, and the heartbeat sends it when Redis answers again: w's place comes
    back (the next booking takes it, not the window after), and only once, even when the
    first attempt did reach Redis and only its reply was lost (the cancel runs once per
    member). The fake clock stands still, so no lease lapses in the meantime: only the kept
    cancel can give the place back."""
    key, clock = fresh_key(), FakeClock()
    # Leases of 0.3 s: the heartbeat beats every 0.1 s of real time.
    lim = make(
        server, key, [Limit(1, 10.0, "requests")], clock, on_backend_error="wait", lease_seconds=0.3
    )
    assert lim.delay(lim.reserve(0)) == 0.0
    w = lim.reserve(0)
    assert 9 < lim.delay(w) < 11
    down = outage(lim, monkeypatch, lose="cancel" if lost else "")
    down[0] = True
    t0 = time.monotonic()
    if style == "sync":
        lim.cancel(w)
    else:
        anyio.run(lim.acancel, w, backend=style)
    assert time.monotonic() - t0 < 1.0
    assert w.state is State.CANCELLED and len(lim._later) == 1
    time.sleep(0.3)  # a few beats while Redis is still away: the cancel stays kept
    assert len(lim._later) == 1
    down[0] = False
    deadline = time.monotonic() + 5
    while lim._later and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not lim._later
    assert 9 < lim.delay(lim.reserve(0)) < 11  # w's place
    assert lim.delay(lim.reserve(0)) > 15  # given back once: the next waits a window more
    assert lim.stats().requests_cancelled == 1
    lim.close()


def test_a_kept_cancel_is_dropped_once_it_is_too_old_to_send(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After LATER_SECONDS a kept cancel is dropped (sent later, one whose first attempt
    did reach Redis could give back twice); what it held lapses with its lease."""
    from mistral_ratelimit.redis import limiter as module

    lim = make(server, fresh_key(), [Limit(1, 10.0, "requests")], on_backend_error="wait")
    res = lim.reserve(0)
    down = outage(lim, monkeypatch)
    down[0] = True
    lim.cancel(res)
    assert len(lim._later) == 1
    down[0] = False
    monkeypatch.setattr(module, "LATER_SECONDS", 0.0)
    lim._send_later()
    assert not lim._later
    assert lim.stats().requests_cancelled == 0  # never sent
    lim.close()


# -- fork -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_uses_its_own_connection_and_shares_the_budget(
    server: RedisServer,
) -> None:
    lim = make(server, fresh_key(), [Limit(3, LONG, "requests")])
    assert [lim.delay(lim.reserve(0)) for _ in range(2)] == [0.0, 0.0]
    parent_id = lim._conns.sync.client_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        code = 1
        try:
            child_id = lim._conns.sync.client_id()
            went = lim.delay(lim.reserve(0)) == 0.0
            full = lim.delay(lim.reserve(0)) > LONG - 5
            os.write(write_end, f"{child_id != parent_id} {went} {full}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = os.read(read_end, 100).decode()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "True True True"  # own connection; 2 + 1 of 3; the 4th waits
    assert lim._conns.sync.client_id() == parent_id  # the parent's connection is untouched
    assert lim.delay(lim.reserve(0)) > LONG - 5


# -- replies that never arrive ------------------------------------------------------------------


def lose_reply(
    lim: RedisRateLimiter,
    script: str,
    monkeypatch: pytest.MonkeyPatch,
    scopes: list[anyio.CancelScope] | None = None,
) -> None:
    """The next call of ``script`` runs in Redis, then its caller is interrupted (sync) or
    the cancel scope in ``scopes`` cancelled (async) before it reads the reply."""
    real_sync, real_async = lim._call_sync, lim._call_async
    armed = [True]

    def call_sync(step: Any) -> Any:
        reply = real_sync(step)
        if armed[0] and getattr(step, "script", None) == script:
            armed[0] = False
            raise KeyboardInterrupt
        return reply

    async def call_async(step: Any) -> Any:
        reply = await real_async(step)
        if armed[0] and getattr(step, "script", None) == script:
            armed[0] = False
            assert scopes
            scopes[0].cancel()
            await anyio.sleep(0)  # the cancellation lands here, after the script ran
        return reply

    monkeypatch.setattr(lim, "_call_sync", call_sync)
    monkeypatch.setattr(lim, "_call_async", call_async)


@pytest.mark.parametrize("style", ["sync", "async"])
def test_a_grant_whose_reply_is_lost_is_given_back_once_by_the_cancel(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    """2 per 10 s: w and v are booked a window ahead, in one slot. w's grant reply never
    reaches it (its task is cancelled just then): the cancel gives w's request back, once,
    and leaves v's charge alone."""
    key, clock = fresh_key(), FakeClock()
    lim = make(server, key, [Limit(2, 10.0, "requests")], clock)
    assert [lim.delay(lim.reserve(0)) for _ in range(2)] == [0.0, 0.0]
    w, v = lim.reserve(0), lim.reserve(0)
    clock.set(w.at)
    assert lim.delay(v) == 0.0
    scopes: list[anyio.CancelScope] = []
    lose_reply(lim, "check", monkeypatch, scopes)
    if style == "sync":
        with pytest.raises(KeyboardInterrupt):
            lim.delay(w)
        lim.cancel(w)  # as acquire() does
    else:

        async def waiter() -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                try:
                    await lim.adelay(w)
                except BaseException:  # as aacquire() does
                    with anyio.CancelScope(shield=True):
                        await lim.acancel(w)
                    raise

        anyio.run(waiter)
        assert scopes[0].cancelled_caught
    lim.cancel(w)
    assert lim.delay(lim.reserve(0)) == 0.0  # w's place came back
    assert lim.delay(lim.reserve(0)) > 5  # ... once: v's charge still counts
    assert lim.stats().requests_cancelled == 1


def test_a_check_retried_after_its_grant_reply_was_lost_grants_the_same_booking(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, clock = fresh_key(), FakeClock()
    lim = make(server, key, [Limit(1, 10.0, "requests")], clock)
    assert lim.delay(lim.reserve(0)) == 0.0
    w = lim.reserve(0)
    clock.set(w.at)
    lose_reply(lim, "check", monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        lim.delay(w)
    assert lim.delay(w) == 0.0  # asked again (wait mode would): the grant it missed
    assert lim.stats().requests_admitted == 2
    assert lim.delay(lim.reserve(0)) > 5  # booked once, not twice: one window holds it


@pytest.mark.parametrize("style", ["sync", "async"])
def test_a_reserve_interrupted_in_flight_leaks_neither_booking_nor_slot(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    key, clock = fresh_key(), FakeClock()
    lim = make(server, key, [Limit(1, 10.0, "requests")], clock, max_concurrency=1)
    scopes: list[anyio.CancelScope] = []
    lose_reply(lim, "reserve", monkeypatch, scopes)
    if style == "sync":
        with pytest.raises(KeyboardInterrupt):
            lim.reserve(0)
    else:

        async def caller() -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                await lim.areserve(0)

        anyio.run(caller)
        assert scopes[0].cancelled_caught
    res = lim.reserve(0)
    assert lim.delay(res) == 0.0  # the in-flight slot and the window's request came back
    assert lim.stats().in_flight == 1


def test_a_reserve_that_arrives_after_its_cancel_books_nothing(server: RedisServer) -> None:
    """The abandoned call and the cancel travel on different connections: if the cancel
    runs first, the reserve, arriving late, must not book."""
    key, clock = fresh_key(), FakeClock()
    lim = make(server, key, [Limit(1, 10.0, "requests")], clock)
    res, b = lim._new_booking(0, 1)
    b.unsure = True
    lim.cancel(res)
    with pytest.raises(BudgetExhausted):
        lim._run(lim._reserve_op(res, b))
    assert lim.delay(lim.reserve(0)) == 0.0


# -- every key has a TTL, on every path ---------------------------------------------------------


def every_script_path(
    server: RedisServer, key: str, clock: FakeClock, r: redis.Redis
) -> Iterator[str]:
    """Drives every script through its paths, yielding after each step."""
    cfg = RatelimitConfig(api_key="sk-t")  # tier defaults, so that adopt discovers limits
    common: dict[str, Any] = {
        "config": cfg,
        "key": key,
        "on_backend_error": "fail",
        "_clock": clock,
        "lease_seconds": 1e9,
        "window_margin": 0.025,
    }
    lim = RedisRateLimiter(server.url, max_concurrency=2, **common)
    other = RedisRateLimiter(server.url, **common)
    # The auditor's path: a pause that is no 429, then a booking granted once it is due.
    lim.pause_for(0.3, rate_limited=False)
    first = lim.reserve(0)
    yield "pause, reserve"
    clock.advance(0.31)
    assert lim.delay(first) == 0.0
    yield "check: granted when due"
    second = lim.reserve(10)  # a second ahead (1 rps)
    third = lim.reserve(10)
    queued = lim.reserve(10)  # behind the cap of 2
    yield "reserve: ahead, queued"
    assert lim.delay(queued) > 0
    yield "check: queued"
    clock.advance(0.2)
    lim.anchor(first, 0.2)  # left late: moves the waiters' window
    yield "anchor"
    clock.set(second.at + 0.5)  # wakes late: checked and counted from now
    assert lim.delay(second) == 0.0
    yield "check: late grant"
    lim.settle(first, 5)
    lim.release(first)
    yield "settle, release"
    assert lim.delay(queued) >= 0
    yield "check: promoted"
    lim.pause_for(2.0)  # re-books the waiters
    yield "pause: re-booking"
    lim.cancel(third)
    lim.cancel(queued)
    yield "cancel"
    lim.adopt(
        [ObservedLimit("requests", 60.0, 720, 700), ObservedLimit("tokens", 60.0, 10**6, 10**5)]
    )
    yield "adopt: discovery"
    other.reserve(0)
    yield "reserve: another worker"
    lim._renew_leases()
    lim.stats()
    yield "renew, stats"
    lim._run(lim._recharge_op(lim._epoch))
    yield "charge"
    lim.close()
    other.close()


def assert_every_key_expires(r: redis.Redis, key: str, step: str) -> list[bytes]:
    keys = list(r.scan_iter(match=f"mrl:{{{key}}}:*"))
    assert keys
    for k in keys:
        assert r.pttl(k) != -1, (step, k)
    return keys


def test_every_key_gets_its_ttl_on_every_script_path(server: RedisServer, r: redis.Redis) -> None:
    key = fresh_key()
    for step in every_script_path(server, key, FakeClock(), r):
        assert_every_key_expires(r, key, step)


def test_every_key_gets_its_ttl_again_after_another_expired(
    server: RedisServer, r: redis.Redis
) -> None:
    """As if each key expired on its own in turn (they have different lives): whichever
    script writes it next gives it a TTL."""
    key = fresh_key()
    for i, step in enumerate(every_script_path(server, key, FakeClock(), r)):
        keys = assert_every_key_expires(r, key, step)
        r.delete(sorted(keys)[i % len(keys)])


def test_queued_waiters_back_off_instead_of_polling(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 callers queued behind a held slot: those near the front ask every queue_poll,
    the others back off (at the old fixed 20 ms, 1.5 s cost 4,500 script calls)."""
    lim = make(server, fresh_key(), [Limit(10_000, 1.0, "requests")], max_concurrency=1)
    checks = [0]
    real = lim._call_async

    async def counting(step: Any) -> Any:
        if getattr(step, "script", None) == "check":
            checks[0] += 1
        return await real(step)

    monkeypatch.setattr(lim, "_call_async", counting)

    async def main() -> None:
        holder = await aacquire(lim, 0)
        async with anyio.create_task_group() as tg:
            for _ in range(60):
                tg.start_soon(aacquire, lim, 0)
            while lim.local_stats().queued < 60:
                await anyio.sleep(0.01)
            before = checks[0]
            await anyio.sleep(1.5)
            assert checks[0] - before < 900
            tg.cancel_scope.cancel()
        await lim.arelease(holder)

    anyio.run(main)


def test_a_queue_keeps_moving_at_the_pace_of_its_releases(server: RedisServer) -> None:
    """Backing off must not starve the cap: 30 callers through one slot, each holding it
    20 ms, finish in about 30 hand-overs, not 30 backed-off sleeps."""
    lim = make(server, fresh_key(), [Limit(10_000, 1.0, "requests")], max_concurrency=1)

    async def one() -> None:
        res = await aacquire(lim, 0)
        await anyio.sleep(0.02)
        await lim.arelease(res)

    async def main() -> float:
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(one)
        return time.monotonic() - started

    assert anyio.run(main) < 10.0


def test_the_local_mode_needs_its_share_of_the_budget(server: RedisServer) -> None:
    """A default of the whole budget would let N workers in ``local`` mode spend N times it."""
    with pytest.raises(ValueError, match="local_share"):
        make(server, fresh_key(), [Limit(10, 1.0, "requests")], on_backend_error="local")
    lim = make(
        server,
        fresh_key(),
        [Limit(10, 1.0, "requests")],
        on_backend_error="local",
        local_share=0.25,
    )
    assert lim.backend_error_mode == "local"


def test_the_local_mode_warns_when_a_share_is_less_than_one_request(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """2 requests a second across 3 workers cannot be split into whole requests per second:
    found by a break-it helper (3 workers, one request each, all within one second)."""
    limits = [Limit(2, 1.0, "requests"), Limit(4000, 60.0, "tokens")]
    with caplog.at_level(logging.WARNING, logger="mistral_ratelimit.redis.limiter"):
        make(server, fresh_key(), limits, on_backend_error="local", local_share=0.5)
        assert caplog.records == []  # one request per second each: it holds
        make(server, fresh_key(), limits, on_backend_error="wait", local_share=1 / 3)
        assert caplog.records == []  # never served locally
        make(server, fresh_key(), limits, on_backend_error="local", local_share=1 / 3)
    [record] = caplog.records
    assert "less than one request per window" in record.getMessage()
    assert "2 requests per 1 s" in record.getMessage()


@pytest.mark.parametrize(
    ("limits", "lease"),
    [
        ([Limit(40, 1.0, "requests"), Limit(4000, 60.0, "tokens")], 2.0),  # the floor
        ([Limit(100, 10.0, "requests"), Limit(4000, 60.0, "tokens")], 10.0),  # the shortest
        ([Limit(4000, 60.0, "tokens"), Limit(10**6, 2_592_000.0, "tokens")], 30.0),  # the cap
    ],
)
def test_the_default_lease_follows_the_shortest_window(
    server: RedisServer, limits: list[Limit], lease: float
) -> None:
    assert make(server, fresh_key(), limits).lease_seconds == lease
    assert make(server, fresh_key(), limits, lease_seconds=7.0).lease_seconds == 7.0


def test_a_promotion_whose_reply_is_lost_is_the_one_asked_again(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, clock = fresh_key(), FakeClock()
    lim = make(server, key, [Limit(100, 10.0, "requests")], clock, max_concurrency=1)
    running, queued = lim.reserve(0), lim.reserve(0)
    assert lim.delay(running) == 0.0 and lim.delay(queued) > 0
    lim.release(running)
    lose_reply(lim, "check", monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        lim.delay(queued)  # promoted in Redis; the answer never arrives
    assert lim.delay(queued) == 0.0  # the same promotion, with its in-flight lease
    assert lim.stats().in_flight == 1
    lim.release(queued)  # gives the lease back: the next one goes at once
    assert lim.delay(lim.reserve(0)) == 0.0


def test_each_asyncio_run_closes_its_connections(server: RedisServer) -> None:
    """A limiter used from many ``asyncio.run()`` calls (a script, a test suite) makes a pool
    per loop; each is closed as its loop ends, not left open until the process exits."""
    import asyncio

    limiter = RedisRateLimiter(
        server.url,
        config=RatelimitConfig(api_key="sk-test", requests_per_second=1000),
        key=fresh_key(),
    )
    watcher = redis.Redis.from_url(server.url)

    async def use() -> None:
        res = await limiter.areserve(1)
        await limiter.adelay(res)
        await limiter.arelease(res)

    asyncio.run(use())
    clients_before = len(watcher.client_list())
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        asyncio.run(use())
    assert len(watcher.client_list()) <= clients_before + 1
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
    limiter.close()
    watcher.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("backend_timeout", float("nan")),  # waited forever
        ("backend_timeout", "5"),  # failed only at the first request
        ("backend_timeout", True),
        ("backend_timeout", -1),
        ("backend_timeout", 0),
        ("queue_poll", float("inf")),
        ("socket_timeout", False),
    ],
)
def test_bad_numbers_are_refused_when_the_limiter_is_made(
    server: RedisServer, name: str, value: object
) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a number > 0"):
        make(server, fresh_key(), [Limit(10, 1.0, "requests")], **{name: value})
