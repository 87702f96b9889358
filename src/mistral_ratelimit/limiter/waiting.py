"""Waiting for a reservation, outside every lock. The only sync/async split in the engine."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from .base import Limiter, Reservation

log = logging.getLogger("mistral_ratelimit")


def _priority_kwargs(limiter: Limiter, priority: int) -> dict[str, int]:
    if not priority:
        return {}
    if getattr(limiter, "supports_priority", False):
        return {"priority": priority}
    log.debug("%s has no priorities; priority=%d is ignored", type(limiter).__name__, priority)
    return {}


def acquire(
    limiter: Limiter,
    tokens: float,
    requests: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    *,
    priority: int = 0,
) -> Reservation:
    """Reserve and sleep until the reservation may go. Cancels it if the wait is interrupted."""
    reserve: Any = limiter.reserve  # ``priority`` is an optional extension of the contract
    res: Reservation = reserve(tokens, requests, **_priority_kwargs(limiter, priority))
    res.due_local = time.monotonic()
    try:
        while (wait := limiter.delay(res)) > 0:
            res.due_local = time.monotonic() + wait
            sleep(wait)
    except BaseException:
        limiter.cancel(res)
        raise
    return res


async def aacquire(
    limiter: Limiter, tokens: float, requests: float = 1.0, *, priority: int = 0
) -> Reservation:
    """Async twin of :func:`acquire`, on anyio so it works under asyncio and trio."""
    areserve: Any = limiter.areserve
    res: Reservation = await areserve(tokens, requests, **_priority_kwargs(limiter, priority))
    res.due_local = time.monotonic()
    try:
        while (wait := await limiter.adelay(res)) > 0:
            res.due_local = time.monotonic() + wait
            await anyio.sleep(wait)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await limiter.acancel(res)
        raise
    return res
