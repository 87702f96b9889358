"""The in-memory engine on the real clock: threads, asyncio and trio at once; cancellation
races; a limiter reused across ``asyncio.run()`` calls.

Every test here is short (about a second) and asserts on the engine's own decisions
(``Reservation.at``) and on ordering, never on how long something took: the machine is
shared and noisy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest
import trio
import trio.testing

from conftest import admitted_per_window
from mistral_ratelimit.config import Limit, RatelimitConfig
from mistral_ratelimit.limiter import RateLimiter, Reservation, aacquire, acquire

pytestmark = [pytest.mark.realclock]


class Recording:
    """Delegates to a limiter and remembers every reservation made through it, by label."""

    def __init__(self, limiter: Any) -> None:
        self.limiter = limiter
        self.made: list[Reservation] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.limiter, name)

    def reserve(self, tokens: float, requests: float = 1.0) -> Reservation:
        res = self.limiter.reserve(tokens, requests)
        with self._lock:
            self.made.append(res)
        return res

    async def areserve(self, tokens: float, requests: float = 1.0) -> Reservation:
        return self.reserve(tokens, requests)


def make(limits: list[Limit], **kwargs: Any) -> RateLimiter:
    return RateLimiter(
        RatelimitConfig(api_key="sk-test"), limits=limits, window_margin=0.0, **kwargs
    )


@pytest.mark.timeout(30)
def test_threads_asyncio_and_trio_share_one_limiter() -> None:
    per = 0.25
    limits = [Limit(8, per, "requests"), Limit(800, per, "tokens")]
    limiter = make(limits)
    grants: list[tuple[str, Reservation, float]] = []  # (who, reservation, woke at)
    lock = threading.Lock()

    def record(who: str, res: Reservation) -> None:
        woke = time.monotonic()
        with lock:
            grants.append((who, res, woke))

    def thread_worker(n: int) -> None:
        for i in range(n):
            res = acquire(limiter, 40 + 10 * (i % 3))
            record("thread", res)
            limiter.settle(res, 30)  # refunds make room for others
            limiter.release(res)

    async def async_worker(who: str, n: int) -> None:
        for _ in range(n):
            res = await aacquire(limiter, 100)
            record(who, res)
            await limiter.asettle(res, 100)
            await limiter.arelease(res)

    async def asyncio_main() -> None:
        await asyncio.gather(*(async_worker("asyncio", 3) for _ in range(4)))

    async def trio_main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(async_worker, "trio", 3)

    start = threading.Barrier(5)

    def run(fn: Callable[[], object]) -> None:
        start.wait()
        fn()

    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(run, lambda: thread_worker(4)) for _ in range(3)]
        futures.append(pool.submit(run, lambda: asyncio.run(asyncio_main())))
        futures.append(pool.submit(run, lambda: trio.run(trio_main)))
        for f in futures:
            f.result(timeout=25)

    assert {who for who, _, _ in grants} == {"thread", "asyncio", "trio"}
    assert len(grants) == 3 * 4 + 4 * 3 + 4 * 3
    # Nobody went before the time the engine gave it ...
    assert all(woke >= res.at for _, res, woke in grants)
    # ... and those times never put more than a window's amount in any window.
    requests = [(res.at, 1.0) for _, res, _ in grants]
    tokens = [(res.at, res.tokens) for _, res, _ in grants]  # settled amounts
    assert admitted_per_window(requests, per) <= 8
    assert admitted_per_window(tokens, per) <= 800 + 1e-6
    stats = limiter.stats()
    assert stats.requests_admitted == len(grants)
    assert (stats.in_flight, stats.queued) == (0, 0)
    used = stats.tokens_reserved - stats.tokens_refunded + stats.tokens_charged
    assert abs(used - sum(r.tokens for _, r, _ in grants)) < 1e-6


@pytest.mark.timeout(30)
def test_concurrency_cap_shared_by_threads_and_event_loops() -> None:
    limiter = make([Limit(1000, 1.0, "requests")], max_concurrency=2)
    running = 0
    peak = 0
    lock = threading.Lock()

    def enter() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        with lock:
            running -= 1

    def thread_worker() -> None:
        for _ in range(3):
            res = acquire(limiter, 1)
            enter()
            time.sleep(0.01)
            leave()
            limiter.release(res)

    async def async_worker() -> None:
        for _ in range(3):
            res = await aacquire(limiter, 1)
            enter()
            await asyncio.sleep(0.01)
            leave()
            limiter.release(res)

    async def trio_worker() -> None:
        for _ in range(3):
            res = await aacquire(limiter, 1)
            enter()
            await trio.sleep(0.01)
            leave()
            limiter.release(res)

    async def asyncio_main() -> None:
        await asyncio.gather(async_worker(), async_worker())

    async def trio_main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_worker)
            nursery.start_soon(trio_worker)

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(thread_worker) for _ in range(2)]
        futures.append(pool.submit(asyncio.run, asyncio_main()))
        futures.append(pool.submit(trio.run, trio_main))
        for f in futures:
            f.result(timeout=25)
    assert peak <= 2
    stats = limiter.stats()
    assert stats.requests_admitted == 18
    assert (stats.in_flight, stats.queued) == (0, 0)


# -- the cancellation race ------------------------------------------------------------------


def make_on(backend: str, limits: list[Limit]) -> Any:
    if backend == "memory":
        return make(limits)
    from mistral_ratelimit.redis import RedisRateLimiter
    from redis_server import fresh_key, shared_server

    return RedisRateLimiter(
        shared_server().url,
        config=RatelimitConfig(api_key="sk-test"),
        key=fresh_key(),
        limits=limits,
        window_margin=0.0,
        on_backend_error="fail",
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.parametrize("offset_ms", [-2.0, -0.5, 0.0, 0.5, 2.0])
def test_asyncio_cancel_at_the_moment_the_turn_comes(offset_ms: float, backend: str) -> None:
    """B is cancelled by a timer set at B's own turn (plus or minus a little).

    Whichever side wins, the outcome is consistent: either B went (and holds its capacity)
    or B was cancelled (and its capacity is back at once). The waiter after B goes at the
    time it was given either way. On Redis the race also spans the check's round trip: a
    cancel that lands while its grant reply is in flight must give it back.
    """
    per = 0.1
    limiter = Recording(make_on(backend, [Limit(100, per, "tokens")]))

    async def main() -> tuple[bool, float, float, Reservation]:
        loop = asyncio.get_running_loop()
        await aacquire(limiter, 100)
        b_task = asyncio.create_task(aacquire(limiter, 100))
        c_task = asyncio.create_task(aacquire(limiter, 100))
        while len(limiter.made) < 3:
            await asyncio.sleep(0)
        b = limiter.made[1]
        probe_at: list[float] = []

        def cancel_b() -> None:
            b_task.cancel()

        # B's turn on the loop's clock (the in-memory limiter's is the loop's; Redis's is
        # its server TIME).
        loop.call_at(loop.time() + b.at - limiter.now() + offset_ms / 1000, cancel_b)
        try:
            await b_task
            went = True
        except asyncio.CancelledError:
            went = False
        probe = limiter.reserve(100)
        probe_at.append(probe.at)
        limiter.cancel(probe)
        res_c = await c_task
        return went, probe_at[0], time.monotonic(), res_c

    went, probe_at, c_woke, res_c = asyncio.run(main())
    b, c = limiter.made[1], limiter.made[2]
    stats = limiter.stats()
    assert backend != "memory" or c_woke >= c.at  # the loop's clock is this limiter's
    assert res_c is c
    if went:
        assert stats.requests_admitted == 3
        assert stats.requests_cancelled == 1  # the probe
    else:
        assert stats.requests_admitted == 2
        assert stats.requests_cancelled == 2  # B and the probe
        assert stats.tokens_reserved == 200
    # C goes a window after B counts, and no later: after B's booked slot if B was
    # cancelled, after its grant if B went (a grant given late, on a busy machine, counts
    # from when it was given, and C is moved behind it just that far).
    b_counts_from = b.at if went else b.due_at
    assert c.due_at - b_counts_from <= per * 1.01 + 1e-6
    # The probe, made after B's fate was sealed, queued behind C only (FIFO), and its
    # booking never counted B's capacity twice.
    assert probe_at >= c.due_at


@pytest.mark.timeout(30)
def test_trio_cancel_in_the_turn_the_grant_comes_gives_capacity_back() -> None:
    """On trio's mock clock the cancel deadline and B's wake-up fall in the same instant."""
    outcomes: list[bool] = []

    async def main() -> None:
        limiter = Recording(
            RateLimiter(
                RatelimitConfig(api_key="sk-test"),
                limits=[Limit(100, 1.0, "tokens")],
                window_margin=0.0,
                clock=trio.current_time,
            )
        )
        for _round in range(10):
            await trio.sleep(5)  # an empty window
            first = await aacquire(limiter, 60)
            scope = trio.CancelScope()
            went: list[Reservation] = []

            async def waiter_b(
                scope: trio.CancelScope = scope, went: list[Reservation] = went
            ) -> None:
                with scope:
                    went.append(await aacquire(limiter, 60))

            async with trio.open_nursery() as nursery:
                made = len(limiter.made)
                nursery.start_soon(waiter_b)
                while len(limiter.made) == made:
                    await trio.sleep(0)  # a checkpoint that never lets the mock clock jump
                b = limiter.made[-1]
                assert b.at > trio.current_time()
                scope.deadline = b.at  # expires exactly when B's turn comes
                c = await aacquire(limiter, 40)
            assert c.at == b.at  # C shares B's window slot and is never held up
            probe = limiter.reserve(60)
            if went:
                outcomes.append(True)
                assert probe.at > trio.current_time()  # B's 60 + C's 40 fill the window
            else:
                outcomes.append(False)
                assert probe.at == trio.current_time()  # B's 60 came back at once
            limiter.cancel(probe)
            del first

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(outcomes) == 10
    # On the mock clock the race is deterministic: the cancel wins the instant of the turn,
    # so the give-back path above really ran.
    assert not all(outcomes)


# -- reuse across event loops -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_limiter_reused_across_asyncio_runs_with_queued_waiters() -> None:
    """Waiters left queued (behind the window and behind the concurrency cap) when the first
    ``asyncio.run`` ends are cancelled by it; the second run finds everything returned."""
    limiter = make([Limit(3, 30.0, "requests"), Limit(300, 30.0, "tokens")], max_concurrency=2)

    async def first_run() -> None:
        running = [await aacquire(limiter, 100) for _ in range(2)]
        for _ in range(6):  # four behind the cap, and the window is nearly spent
            asyncio.get_running_loop().create_task(aacquire(limiter, 50))
        await asyncio.sleep(0.05)
        assert limiter.stats().queued == 6
        for res in running:
            limiter.settle(res, 100)
            limiter.release(res)
        await asyncio.sleep(0.05)  # two promoted: one fits now, one waits a window

    asyncio.run(first_run())
    stats = limiter.stats()
    assert (stats.in_flight, stats.queued) == (1, 0)  # the one that went still runs
    assert stats.requests_cancelled == 5
    assert stats.requests_admitted == 3

    async def second_run() -> list[float]:
        loop_id = id(asyncio.get_running_loop())
        assert loop_id  # a different loop; nothing in the limiter is bound to the first
        res = await limiter.areserve(0)
        wait = await limiter.adelay(res)
        limiter.cancel(res)
        return [wait]

    # Window: 3 requests (2 + 1 went). A fourth waits for the window of the first ones;
    # the four cancelled waiters left nothing behind them (no extra windows of waiting).
    (wait,) = asyncio.run(second_run())
    assert 0 < wait <= 30.0 * 1.01 + 1


@pytest.mark.timeout(30)
def test_limiter_reused_across_asyncio_runs_and_trio() -> None:
    limiter = make([Limit(2, 0.2, "requests")])

    async def burst() -> list[Reservation]:
        return [await aacquire(limiter, 0) for _ in range(4)]

    async def trio_burst() -> list[Reservation]:
        return [await aacquire(limiter, 0) for _ in range(4)]

    grants = asyncio.run(burst()) + trio.run(trio_burst) + asyncio.run(burst())
    assert admitted_per_window([(r.at, 1.0) for r in grants], 0.2) <= 2
    assert [r.at for r in grants] == sorted(r.at for r in grants)


class CountingDelays:
    """Delegates to a limiter and counts its delay() calls (each one is a poll)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.delays = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.limiter, name)

    def delay(self, res: Reservation) -> float:
        with self._lock:
            self.delays += 1
        return self.limiter.delay(res)

    async def adelay(self, res: Reservation) -> float:
        return self.delay(res)


@pytest.mark.timeout(60)
def test_queued_waiters_sleep_until_a_release_wakes_them() -> None:
    """Threads, asyncio tasks and trio tasks queued behind ``max_concurrency=1`` ask the
    limiter about twice each while they wait (no polling), and every release wakes the
    next one at once, whichever thread or event loop it waits in."""
    per_kind = 40
    limiter = CountingDelays(make([Limit(100_000, 1.0, "requests")], max_concurrency=1))
    gate = acquire(limiter, 0)
    done: list[str] = []
    done_lock = threading.Lock()
    go = threading.Event()  # every waiter holds its slot until the test lets them through

    def finish(kind: str, res: Reservation) -> None:
        with done_lock:
            done.append(kind)
        limiter.release(res)

    def thread_waiter() -> None:
        res = acquire(limiter, 0)
        go.wait(30)
        finish("thread", res)

    async def async_waiters() -> None:
        async def one() -> None:
            res = await aacquire(limiter, 0)
            finish("asyncio", res)

        await asyncio.gather(*(one() for _ in range(per_kind)))

    async def trio_waiters() -> None:
        async def one() -> None:
            res = await aacquire(limiter, 0)
            finish("trio", res)

        async with trio.open_nursery() as nursery:
            for _ in range(per_kind):
                nursery.start_soon(one)

    with ThreadPoolExecutor(max_workers=per_kind + 2) as pool:
        futures = [pool.submit(thread_waiter) for _ in range(per_kind)]
        futures.append(pool.submit(asyncio.run, async_waiters()))
        futures.append(pool.submit(trio.run, trio_waiters))
        deadline = time.monotonic() + 10
        while limiter.stats().queued < 3 * per_kind:
            assert time.monotonic() < deadline, "the waiters never queued"
            time.sleep(0.01)
        before = limiter.delays
        time.sleep(0.5)  # 100 polls each at the old 5 ms interval
        assert limiter.delays - before <= 3 * per_kind  # a re-ask each, and no polling
        started = time.monotonic()
        go.set()
        limiter.release(gate)
        for f in futures:
            f.result(timeout=30)
    # 120 hand-overs, each woken by the release before it (a missed wake-up would cost the
    # 5 s safety interval).
    assert time.monotonic() - started < 10
    assert sorted(set(done)) == ["asyncio", "thread", "trio"] and len(done) == 3 * per_kind
    assert limiter.stats().in_flight == 0


@pytest.mark.timeout(30)
def test_waiters_booked_at_an_assumed_pace_go_at_the_learnt_one() -> None:
    """No limits set: the tier default of 1 request a second books a burst over seconds.
    When the first response reports the real limit (10 a second), the waiting callers are
    booked again against it, in order, and woken: threads, asyncio and trio alike."""
    from mistral_ratelimit.limiter import ObservedLimit

    # A margin, so that a thread waking a little late is not re-counted from then (the
    # order checked below is the order of the bookings).
    limiter = Recording(RateLimiter(RatelimitConfig(api_key="sk-test"), window_margin=0.05))
    first = acquire(limiter, 0)  # goes at once, and its reply reports the tier
    granted: list[tuple[float, Reservation]] = []
    lock = threading.Lock()

    def note(res: Reservation) -> None:
        with lock:
            granted.append((time.monotonic(), res))

    async def one_async() -> None:
        note(await aacquire(limiter, 0))

    async def four_async() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(one_async)

    workers = [threading.Thread(target=lambda: note(acquire(limiter, 0))) for _ in range(4)]
    for backend in ("asyncio", "trio"):
        workers.append(
            threading.Thread(target=anyio.run, args=(four_async,), kwargs={"backend": backend})
        )
    started = time.monotonic()
    for w in workers:
        w.start()
    deadline = started + 5
    while len(limiter.made) < 13 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(limiter.made) == 13
    assumed = max(r.at for r in limiter.made) - first.at
    assert assumed >= 11  # twelve waiters at one a second
    booked = [(r.at, r) for r in limiter.made[1:]]
    limiter.adopt([ObservedLimit("requests", 1.0, 10, 9)])
    rebooked = {id(r): r.at for _, r in booked}
    for w in workers:
        w.join(10)
    assert len(granted) == 12
    # Woken, not left asleep until their old times: all gone within about a second.
    assert max(t for t, _ in granted) - started < 4
    ats = [r.at for r in limiter.made]
    assert admitted_per_window([(at, 1) for at in ats], 1.0) <= 10
    # In the order they were booked.
    moved = [rebooked[id(r)] for _, r in sorted(booked, key=lambda e: e[0])]
    assert moved == sorted(moved)
    assert all(rebooked[id(r)] < at for at, r in booked[2:])  # the later ones moved earlier
