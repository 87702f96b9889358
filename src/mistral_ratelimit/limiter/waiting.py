"""Waiting for a reservation, outside every lock. The only sync/async split in the engine.

A caller queued behind ``max_concurrency`` does not poll: it hands the reservation a wake-up
(``Reservation.wake``) and sleeps until a backend that knows when a slot frees (the in-memory
one) calls it, or until ``delay()``'s answer has passed. On a backend that may move a booking
earlier (``wakes_scheduled``), a caller waiting for its booked time sleeps the same way (a backend that cannot tell, such as
Redis, answers with its own polling interval). The wake-up belongs to the waiting thread or
task, never to the limiter, so the limiter stays bound to no event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio

from .base import Limiter, Reservation, State

log = logging.getLogger("mistral_ratelimit")


def _priority_kwargs(limiter: Limiter, priority: int) -> dict[str, int]:
    if not priority:
        return {}
    if getattr(limiter, "supports_priority", False):
        return {"priority": priority}
    log.debug("%s has no priorities; priority=%d is ignored", type(limiter).__name__, priority)
    return {}


class _ThreadWake:
    """A sync caller's wake-up: a ``threading.Event`` the backend may set from any thread."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)
        # Cleared before the caller asks delay() again: a wake-up after that question is
        # kept for the next wait, one before it is already reflected in the answer.
        self._event.clear()


def _loop_caller() -> Callable[[Callable[[], object]], object]:
    """The running event loop's thread-safe "call soon" (trio's or asyncio's)."""
    trio: Any = sys.modules.get("trio")
    if trio is not None:
        with contextlib.suppress(RuntimeError):  # not inside trio.run
            return trio.lowlevel.current_trio_token().run_sync_soon  # type: ignore[no-any-return]
    return asyncio.get_running_loop().call_soon_threadsafe


class _TaskWake:
    """An async caller's wake-up: an ``anyio.Event`` set through its own loop's thread-safe
    entry point, so a release in another thread or event loop can wake it."""

    def __init__(self) -> None:
        self._call_soon = _loop_caller()
        self._event = anyio.Event()

    def set(self) -> None:
        event = self._event
        # The loop may have ended (a limiter outliving an asyncio.run()): nobody to wake.
        with contextlib.suppress(RuntimeError):
            self._call_soon(event.set)

    async def wait(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._event.wait()
        self._event = anyio.Event()  # replaced before the caller asks again (see _ThreadWake)


def _wakes_scheduled(limiter: Limiter) -> bool:
    """Whether a caller waiting for its booked time should sleep on a wake-up, as one
    queued for a slot does: only a backend that may move a booking earlier calls it (a
    backend that cannot would only cost an extra ``delay()`` call per wait)."""
    return getattr(limiter, "wakes_scheduled", False) is True


def _granted(limiter: Limiter, res: Reservation, slept: bool) -> Reservation:
    # Measured from when it was due, on the limiter's clock, not from when this caller last
    # meant to wake: the final delay() may have re-booked it, and anchor() counts the lag
    # from the booked time (``due_at``).
    late = max(0.0, limiter.now() - res.due_at)
    res.due_local = time.monotonic() - late
    if slept:
        log.debug("waited %.3f s for the budget", max(0.0, limiter.now() - res.created_at))
    return res


def acquire(
    limiter: Limiter,
    tokens: float,
    requests: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    *,
    priority: int = 0,
) -> Reservation:
    """Reserve and sleep until the reservation may go. Cancels it if the wait is interrupted.

    With the default ``sleep``, a caller queued for an in-flight slot sleeps until a release
    wakes it; a custom ``sleep`` (a fake clock) is used for every wait instead.
    """
    reserve: Any = limiter.reserve  # ``priority`` is an optional extension of the contract
    res: Reservation = reserve(tokens, requests, **_priority_kwargs(limiter, priority))
    wakes = _wakes_scheduled(limiter)
    wake: _ThreadWake | None = None
    slept = False
    try:
        while (wait := limiter.delay(res)) > 0:
            slept = True
            res.due_local = time.monotonic() + wait
            if sleep is not time.sleep or (res.state is not State.QUEUED and not wakes):
                sleep(wait)
            elif wake is None:
                # Made on the first answer, then asked again at once: a release (or a
                # re-booking) between that answer and this line is in the next answer
                # already, and any later one calls the wake-up.
                wake = _ThreadWake()
                res.wake = wake.set
            else:
                wake.wait(wait)
    except BaseException:
        limiter.cancel(res)
        raise
    finally:
        res.wake = None
    return _granted(limiter, res, slept)


async def aacquire(
    limiter: Limiter, tokens: float, requests: float = 1.0, *, priority: int = 0
) -> Reservation:
    """Async twin of :func:`acquire`, on anyio so it works under asyncio and trio."""
    areserve: Any = limiter.areserve
    res: Reservation = await areserve(tokens, requests, **_priority_kwargs(limiter, priority))
    wakes = _wakes_scheduled(limiter)
    wake: _TaskWake | None = None
    slept = False
    try:
        while (wait := await limiter.adelay(res)) > 0:
            slept = True
            res.due_local = time.monotonic() + wait
            if res.state is not State.QUEUED and not wakes:
                await anyio.sleep(wait)
            elif wake is None:  # as in acquire()
                wake = _TaskWake()
                res.wake = wake.set
            else:
                await wake.wait(wait)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await limiter.acancel(res)
        raise
    finally:
        res.wake = None
    return _granted(limiter, res, slept)
