"""Waiting for a reservation, outside every lock. The only sync/async split in the engine."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from .base import Limiter, Reservation


def acquire(
    limiter: Limiter,
    tokens: float,
    requests: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Reservation:
    """Reserve and sleep until the reservation may go. Cancels it if the wait is interrupted."""
    res = limiter.reserve(tokens, requests)
    try:
        while (wait := limiter.delay(res)) > 0:
            sleep(wait)
    except BaseException:
        limiter.cancel(res)
        raise
    return res


async def aacquire(limiter: Limiter, tokens: float, requests: float = 1.0) -> Reservation:
    """Async twin of :func:`acquire`, on anyio so it works under asyncio and trio."""
    res = await limiter.areserve(tokens, requests)
    try:
        while (wait := await limiter.adelay(res)) > 0:
            await anyio.sleep(wait)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await limiter.acancel(res)
        raise
    return res
