"""The in-process engine next to aiolimiter and pyrate-limiter, in one run.

1. Uncontended cost, in µs per call, with limits far above the load so nothing waits:
   ``reserve`` + ``settle`` and ``acquire`` + ``settle`` (+ ``release``), sync and async.
   Peers get the same two limits (requests per second, tokens per minute):
   pyrate-limiter (v4) holds both rates in one in-memory bucket (its weight counts against
   both, it has no separate units); aiolimiter has one rate per limiter, so two limiters
   are acquired one after the other, as its users do.
2. 10,000 async waiters arriving at once on 2,000 requests per 0.2 s:
   the memory they hold while parked (tracemalloc, above a baseline of 10,000 bare tasks
   sleeping), whether they wake in arrival order (inversions), the time to let all through,
   and the most admitted in any 0.2 s window, measured on the wall clock when each waiter
   returns from its acquire call.

Usage: ``python bench/bench_engine.py [--calls 20000] [--waiters 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

RPS = 1_000_000_000  # far above the load: the figure is the limiter's own cost
TPM = 1_000_000_000_000
REPEATS = 5

WAVE = 2_000  # waiters admitted per window in the 10k workload
WAVE_SECONDS = 0.2


# -- uncontended cost -----------------------------------------------------------------------


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    """Median over ``REPEATS`` runs of the µs per call."""
    samples = []
    for _ in range(REPEATS):
        gc.collect()
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - t0) / calls / 1000)
    return statistics.median(samples)


def aper_call_us(make: Callable[[], Callable[[], Awaitable[object]]], calls: int) -> float:
    async def run() -> float:
        fn = make()
        samples = []
        for _ in range(REPEATS):
            gc.collect()
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                await fn()
            samples.append((time.perf_counter_ns() - t0) / calls / 1000)
        return statistics.median(samples)

    return asyncio.run(run())


def ours(n_limits: int = 2) -> Any:
    from mistral_ratelimit.config import Limit, RatelimitConfig
    from mistral_ratelimit.limiter import RateLimiter

    limits = [Limit(TPM, 60.0, "tokens"), Limit(RPS, 1.0, "requests")][:n_limits]
    return RateLimiter(RatelimitConfig(api_key="sk-bench"), limits=limits)


def ours_reserve_settle(n_limits: int) -> Callable[[], object]:
    limiter = ours(n_limits)

    def call() -> None:
        res = limiter.reserve(100)
        limiter.settle(res, 80)
        limiter.release(res)

    return call


def ours_acquire_settle() -> Callable[[], object]:
    from mistral_ratelimit.limiter import acquire

    limiter = ours()

    def call() -> None:
        res = acquire(limiter, 100)
        limiter.settle(res, 80)
        limiter.release(res)

    return call


def ours_grant_now_settle() -> Callable[[], object]:
    """The transports' express lane: granted in one step when nothing holds a request back."""
    limiter = ours()

    def call() -> None:
        res = limiter.grant_now(100.0)
        limiter.settle(res, 80)
        limiter.release(res)

    return call


def ours_areserve_settle() -> Callable[[], Awaitable[object]]:
    limiter = ours()

    async def call() -> None:
        res = await limiter.areserve(100)
        await limiter.asettle(res, 80)
        await limiter.arelease(res)

    return call


def ours_aacquire_settle() -> Callable[[], Awaitable[object]]:
    from mistral_ratelimit.limiter import aacquire

    limiter = ours()

    async def call() -> None:
        res = await aacquire(limiter, 100)
        await limiter.asettle(res, 80)
        await limiter.arelease(res)

    return call


def pyrate(rates: Sequence[tuple[int, int]]) -> Any:
    from pyrate_limiter import Limiter, Rate

    return Limiter([Rate(limit, interval_ms) for limit, interval_ms in rates])


# pyrate-limiter wants each longer rate to be less dense; both are far above the load anyway.
PYRATE_RATES = [(RPS, 1_000), (RPS * 30, 60_000)]


def pyrate_sync() -> tuple[Callable[[], object], Any]:
    limiter = pyrate(PYRATE_RATES)
    return (lambda: limiter.try_acquire("bench", 100)), limiter


def pyrate_async() -> tuple[Callable[[], Awaitable[object]], Any]:
    limiter = pyrate(PYRATE_RATES)
    return (lambda: limiter.try_acquire_async("bench", 100)), limiter


def aiolimiter_async() -> Callable[[], Awaitable[object]]:
    from aiolimiter import AsyncLimiter

    per_second, per_minute = AsyncLimiter(RPS, 1.0), AsyncLimiter(TPM, 60.0)

    async def call() -> None:
        await per_second.acquire(1)
        await per_minute.acquire(100)

    return call


@dataclass
class CostRow:
    library: str
    operation: str
    sync_us: float | None
    async_us: float | None


def measure_costs(calls: int) -> list[CostRow]:
    rows = [
        CostRow(
            "mistral-ratelimit",
            "reserve + settle + release (1 limit)",
            per_call_us(ours_reserve_settle(1), calls),
            None,
        ),
        CostRow(
            "mistral-ratelimit",
            "reserve + settle + release (2 limits)",
            per_call_us(ours_reserve_settle(2), calls),
            aper_call_us(ours_areserve_settle, calls),
        ),
        CostRow(
            "mistral-ratelimit",
            "acquire + settle + release (2 limits)",
            per_call_us(ours_acquire_settle(), calls),
            aper_call_us(ours_aacquire_settle, calls),
        ),
        CostRow(
            "mistral-ratelimit",
            "grant_now + settle + release (2 limits)",
            per_call_us(ours_grant_now_settle(), calls),
            None,  # called directly by the async transports too: the limiter never blocks
        ),
    ]
    sync_fn, sync_lim = pyrate_sync()
    holder: list[Any] = []

    def make_async() -> Callable[[], Awaitable[object]]:
        fn, lim = pyrate_async()
        holder.append(lim)
        return fn

    rows.append(
        CostRow(
            "pyrate-limiter",
            "try_acquire (2 rates, 1 bucket)",
            per_call_us(sync_fn, calls),
            aper_call_us(make_async, calls),
        )
    )
    for lim in (sync_lim, *holder):
        lim.close()
    rows.append(
        CostRow(
            "aiolimiter",
            "acquire x2 (2 limiters)",
            None,
            aper_call_us(aiolimiter_async, calls),
        )
    )
    return rows


# -- 10,000 waiters -------------------------------------------------------------------------


@dataclass
class CrowdRow:
    library: str
    kib_per_waiter: float
    inversions: int
    overtaken_ms: float
    drain_seconds: float
    max_in_window: int
    max_granted_in_window: int | None  # by the engine's own grant times, where it has them
    max_late_ms: float | None  # how long after its grant time a waiter actually woke


def overtaken_seconds(woke: Sequence[int], stamps: Sequence[float]) -> float:
    """The longest any waiter woke after a waiter that arrived later than it."""
    at = dict(zip(woke, stamps, strict=True))
    worst, earliest_later = 0.0, float("inf")
    for i in sorted(at, reverse=True):
        worst = max(worst, at[i] - earliest_later)
        earliest_later = min(earliest_later, at[i])
    return worst


def inversions(order: Sequence[int]) -> int:
    """Pairs that woke in the opposite order of their arrival (merge-sort count)."""

    def sort(xs: list[int]) -> tuple[list[int], int]:
        if len(xs) <= 1:
            return xs, 0
        mid = len(xs) // 2
        left, a = sort(xs[:mid])
        right, b = sort(xs[mid:])
        merged, count, i, j = [], a + b, 0, 0
        while i < len(left) and j < len(right):
            if left[i] <= right[j]:
                merged.append(left[i])
                i += 1
            else:
                merged.append(right[j])
                count += len(left) - i
                j += 1
        merged.extend(left[i:])
        merged.extend(right[j:])
        return merged, count

    return sort(list(order))[1]


def max_in_window(times: Sequence[float], width: float) -> int:
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


Crowd = tuple[Callable[[], Awaitable[object]], Callable[[], None]]
AcquireFactory = Callable[[], Crowd]


def crowd_ours() -> Crowd:
    from mistral_ratelimit.config import Limit, RatelimitConfig
    from mistral_ratelimit.limiter import RateLimiter, aacquire

    limiter = RateLimiter(
        RatelimitConfig(api_key="sk-bench"), limits=[Limit(WAVE, WAVE_SECONDS, "requests")]
    )
    return (lambda: aacquire(limiter, 0)), (lambda: None)


def crowd_ours_anchored() -> Crowd:
    """As the transports use it: a waiter that woke late says so with ``anchor``, which
    books it from when it really went; waiters behind it re-check before they go."""
    from mistral_ratelimit.config import Limit, RatelimitConfig
    from mistral_ratelimit.limiter import RateLimiter, aacquire

    limiter = RateLimiter(
        RatelimitConfig(api_key="sk-bench"), limits=[Limit(WAVE, WAVE_SECONDS, "requests")]
    )

    async def acquire() -> object:
        res = await aacquire(limiter, 0)
        limiter.anchor(res, max(0.0, time.monotonic() - res.due_local))
        return res

    return acquire, (lambda: None)


def crowd_aiolimiter() -> Crowd:
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(WAVE, WAVE_SECONDS)
    return (lambda: limiter.acquire(1)), (lambda: None)


def crowd_pyrate() -> Crowd:
    limiter = pyrate([(WAVE, int(WAVE_SECONDS * 1000))])
    return (lambda: limiter.try_acquire_async("bench", 1)), limiter.close


def crowd_bare() -> Crowd:
    """The baseline: tasks parked on an event, holding no limiter state."""
    opened = asyncio.Event()  # made inside the running loop: asyncio events bind to it
    return opened.wait, opened.set


@dataclass
class CrowdRun:
    woke: list[int]
    stamps: list[float]  # wall-clock wake times: the first window's, then the waiters'
    grants: list[tuple[float, float]]  # (grant time, woke at), where the limiter says
    elapsed: float
    parked_bytes: int


async def _crowd(make: AcquireFactory, waiters: int, traced: bool) -> CrowdRun:
    acquire, close = make()
    woke: list[int] = []
    stamps: list[float] = []
    grants: list[tuple[float, float]] = []

    async def go() -> None:
        res = await acquire()
        stamps.append(time.monotonic())
        at = getattr(res, "at", None)
        if at is not None:
            grants.append((at, stamps[-1]))

    if make is not crowd_bare:
        # Spend the first window so that every waiter really parks. These count in the
        # windows too: a limiter that refills while full would show it here.
        for _ in range(WAVE):
            await go()

    async def waiter(i: int) -> None:
        await go()
        woke.append(i)

    gc.collect()
    base = tracemalloc.get_traced_memory()[0] if traced else 0
    t0 = time.monotonic()
    tasks = [asyncio.create_task(waiter(i)) for i in range(waiters)]
    await asyncio.sleep(0.02)  # every task has started and parked; none can go yet
    parked = tracemalloc.get_traced_memory()[0] - base if traced else 0
    if make is crowd_bare:
        close()  # opens the event
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    close()
    return CrowdRun(woke, stamps, grants, elapsed, parked)


def measure_crowd(make: AcquireFactory, waiters: int) -> CrowdRun:
    run = asyncio.run(_crowd(make, waiters, traced=False))
    tracemalloc.start()
    try:
        run.parked_bytes = asyncio.run(_crowd(make, waiters, traced=True)).parked_bytes
    finally:
        tracemalloc.stop()
    return run


def measure_crowds(waiters: int) -> list[CrowdRow]:
    bare = measure_crowd(crowd_bare, waiters).parked_bytes
    rows = []
    for name, make in (
        ("mistral-ratelimit", crowd_ours),
        ("mistral-ratelimit + anchor", crowd_ours_anchored),
        ("aiolimiter", crowd_aiolimiter),
        ("pyrate-limiter", crowd_pyrate),
    ):
        run = measure_crowd(make, waiters)
        assert len(run.woke) == waiters and len(run.stamps) == waiters + WAVE
        rows.append(
            CrowdRow(
                name,
                (run.parked_bytes - bare) / waiters / 1024,
                inversions(run.woke),
                overtaken_seconds(run.woke, run.stamps[WAVE:]) * 1000,
                run.elapsed,
                max_in_window(run.stamps, WAVE_SECONDS),
                max_in_window([at for at, _ in run.grants], WAVE_SECONDS) if run.grants else None,
                max(w - at for at, w in run.grants) * 1000 if run.grants else None,
            )
        )
    return rows


# -- report ---------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(costs: list[CostRow], crowds: list[CrowdRow], waiters: int, calls: int) -> str:
    import aiolimiter
    import pyrate_limiter

    lines = [
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"aiolimiter {aiolimiter.__version__}, pyrate-limiter {pyrate_limiter.__version__}; "
        f"median of {REPEATS} runs of {calls} calls.",
        "",
        "| library | operation | sync µs/call | async µs/call |",
        "|---|---|---|---|",
    ]
    for c in costs:
        lines.append(f"| {c.library} | {c.operation} | {fmt(c.sync_us)} | {fmt(c.async_us)} |")
    lines += [
        "",
        f"{waiters:,} async waiters arriving at once, {WAVE:,} requests per {WAVE_SECONDS} s "
        "(first window already spent):",
        "",
        "| library | KiB per parked waiter (above a parked bare task) "
        "| inversions of arrival order | longest overtaken by a later arrival "
        f"| time to let all through | most woken in any {WAVE_SECONDS} s (limit {WAVE:,}) "
        f"| most granted in any {WAVE_SECONDS} s (engine's grant times) "
        "| longest woken after its grant time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in crowds:
        lines.append(
            f"| {r.library} | {r.kib_per_waiter:.2f} | {r.inversions:,} | "
            f"{r.overtaken_ms:.1f} ms | {r.drain_seconds:.2f} s | {r.max_in_window:,} | "
            f"{'n/a' if r.max_granted_in_window is None else f'{r.max_granted_in_window:,}'} | "
            f"{'n/a' if r.max_late_ms is None else f'{r.max_late_ms:.0f} ms'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--waiters", type=int, default=10_000)
    args = parser.parse_args(argv)
    costs = measure_costs(args.calls)
    crowds = measure_crowds(args.waiters)
    print(render(costs, crowds, args.waiters, args.calls))


if __name__ == "__main__":
    main()
