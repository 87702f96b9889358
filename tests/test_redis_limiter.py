"""RedisRateLimiter behaviour that only a shared backend has, against a real redis-server.

The contract every backend shares runs in test_limiter_contract.py. Here: the budget shared
between limiter objects (as between workers), the key layout, Redis's clock, leases, and
what happens when Redis goes away. Time is moved with the state's test ``offset`` field
(added to Redis TIME inside the scripts), never by sleeping through windows.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from mistral_ratelimit.config import Limit, RatelimitConfig
from mistral_ratelimit.errors import BackendUnavailable
from mistral_ratelimit.limiter import ObservedLimit, State, acquire
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


def make(server: RedisServer, key: str, limits: list[Limit], **kw: Any) -> RedisRateLimiter:
    kw.setdefault("window_margin", 0.0)
    kw.setdefault("on_backend_error", "fail")
    return RedisRateLimiter(
        server.url, config=RatelimitConfig(api_key="sk-t"), key=key, limits=limits, **kw
    )


def advance(r: redis.Redis, key: str, seconds: float) -> None:
    """Move the budget's clock forward (the scripts add the state's offset to Redis TIME)."""
    r.hincrbyfloat(Keys.for_namespace("mrl", key).state, "offset", seconds)


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


def test_time_is_redis_time_and_never_goes_back(server: RedisServer, r: redis.Redis) -> None:
    key = fresh_key()
    lim = make(server, key, [Limit(1, 10.0, "requests")])
    advance(r, key, 1000.0)  # as if this host's clock were 1000 s behind Redis's
    res = lim.reserve(0)
    assert res.at > time.time() + 900  # booked on Redis's clock, not the caller's
    assert lim.now() > time.time() + 900
    advance(r, key, -1000.0)  # Redis's clock jumps back
    nxt = lim.reserve(0)
    # Stored time did not go back: the window is still full for ~10 s after `res`.
    assert nxt.at >= res.at + 10.0
    assert lim.delay(nxt) > 5


def test_a_window_frees_once_it_has_passed(server: RedisServer, r: redis.Redis) -> None:
    key = fresh_key()
    lim = make(server, key, [Limit(100, 10.0, "tokens")])
    acquire(lim, 100)
    assert lim.delay(lim.reserve(1)) > 5
    advance(r, key, 10.0 + 0.1 + 0.2)  # a window, one slot, and slack
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
    key = fresh_key()
    dead = make(server, key, [Limit(2, 10.0, "requests")], lease_seconds=0.3)
    ahead = [dead.reserve(0) for _ in range(6)]  # 2 now, then 2 and 2 windows ahead
    assert dead.delay(ahead[-1]) > 15
    dead.close()
    advance(r, key, 0.5)  # past the lease, still inside the first window
    live = make(server, key, [Limit(2, 10.0, "requests")])
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
    server: RedisServer, r: redis.Redis
) -> None:
    key = fresh_key()
    a = make(server, key, [Limit(1, 10.0, "requests")])
    b = make(server, key, [Limit(1, 10.0, "requests")])
    sent = a.reserve(0)
    assert a.delay(sent) == 0.0
    waiter = b.reserve(0)
    told = b.delay(waiter)
    assert 9 < told < 11
    a.anchor(sent, 3.0)
    advance(r, key, told + 0.01)  # b slept what it was told
    time.sleep(HINT_GUARD)
    # The booking only moved later: woken at its old time, b is early, never late.
    assert 2 < b.delay(waiter) < 4
    advance(r, key, 4.0)
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


def test_a_reaped_booking_is_not_given_back_twice(server: RedisServer, r: redis.Redis) -> None:
    """A worker that only looked dead (no lease renewal for a whole lease) and then cancels
    its waiters must not refund what the reaper already gave back: that would wipe other
    workers' charges from the same slots."""
    key = fresh_key()
    slow = make(server, key, [Limit(2, 10.0, "requests")], lease_seconds=0.3)
    assert [slow.delay(slow.reserve(0)) for _ in range(2)] == [0.0, 0.0]
    ahead = [slow.reserve(0), slow.reserve(0)]  # a window ahead
    assert all(slow.delay(res) > 5 for res in ahead)
    slow.close()  # its heartbeat stops
    advance(r, key, 0.5)  # past its lease
    live = make(server, key, [Limit(2, 10.0, "requests")])
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
