"""The limiter contract shared by every backend.

Modelled on golang.org/x/time/rate: ``reserve`` books capacity at once, all or nothing, and
says when the caller may go; the caller waits *outside* the limiter and may ``cancel``.
``settle`` corrects the token charge once the server reports real usage; ``release`` frees
the in-flight slot. Each of ``cancel``, ``settle`` and ``release`` takes effect at most once.
"""

from __future__ import annotations

import collections
import enum
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..config import Limit, Unit, discovered_limits, one_per_window

_ids = itertools.count(1)


class State(enum.Enum):
    QUEUED = "queued"  # waiting for an in-flight slot; no time booked yet
    SCHEDULED = "scheduled"  # time booked, caller sleeping
    GRANTED = "granted"  # caller told to go
    CANCELLED = "cancelled"


@dataclass(eq=False)
class Reservation:
    """One request's claim on the budget. Backends keep their own bookkeeping in ``slots``."""

    tokens: float
    requests: float = 1.0
    id: int = field(default_factory=lambda: next(_ids))
    state: State = State.QUEUED
    created_at: float = 0.0
    at: float = 0.0  # when it may go, on the limiter's clock
    due_at: float = 0.0  # when it was booked to go (``at`` may move later, never earlier)
    slots: dict[int, int] = field(default_factory=dict)  # limit index -> slot key
    settled: bool = False
    released: bool = False
    holds_inflight: bool = False
    priority: int = 0  # higher goes before waiting reservations of lower priority
    #: ``time.monotonic()`` at which the caller was due to go (set by ``acquire``): a late
    #: wake-up (a blocked event loop) counts in the lag passed to ``anchor``.
    due_local: float = 0.0
    generation: int = 0  # backend bookkeeping: which state the booking was made against
    tag: str = ""  # backend-private handle (e.g. the Redis member id)
    #: Set by a caller waiting for an in-flight slot (limiter/waiting.py); a backend that
    #: knows when a slot frees calls it then, outside its lock. It must not block.
    wake: Callable[[], None] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ObservedLimit:
    """One limit as the server reported it in its headers."""

    unit: Unit
    per_seconds: float
    limit: float | None
    remaining: float | None


def learnt_limits(unit: Unit, observed: list[ObservedLimit], kept: set[float]) -> list[Limit]:
    """The windows of ``unit`` the server's reports ask for, one per window length (the
    tightest), leaving out the lengths in ``kept``: those the user set keep the user's limit."""
    wanted = [
        (lim, False)
        for o in observed
        if o.unit == unit and o.limit and o.limit > 0 and math.isfinite(o.limit)
        for lim in discovered_limits(unit, o.limit, o.per_seconds)
        if not any(math.isclose(lim.per_seconds, seconds) for seconds in kept)
    ]
    return [lim for lim, _ in one_per_window(wanted)]


@dataclass(frozen=True)
class LimiterStats:
    requests_admitted: int = 0
    requests_cancelled: int = 0
    wait_seconds_total: float = 0.0
    wait_seconds_max: float = 0.0
    tokens_reserved: float = 0.0
    tokens_refunded: float = 0.0
    tokens_charged: float = 0.0  # charged beyond the estimate (debt)
    in_flight: int = 0
    queued: int = 0
    paused_until: float = 0.0  # on the limiter's clock; 0 when never paused
    rate_limited_seen: int = 0
    estimate_samples: int = 0
    estimate_error_mean: float = 0.0  # mean of (estimated - actual) / actual prompt tokens
    estimate_error_abs_mean: float = 0.0
    limits: tuple[Limit, ...] = ()


class Counters(collections.defaultdict[str, float]):
    """The running figures behind :class:`LimiterStats`; the owner holds its lock."""

    def __init__(self) -> None:
        super().__init__(float)

    def record_estimate(self, estimated: float, actual: float) -> None:
        if not (actual > 0 and math.isfinite(estimated) and math.isfinite(actual)):
            return
        err = (estimated - actual) / actual
        self["estimate_samples"] += 1
        self["estimate_error_sum"] += err
        self["estimate_error_abs_sum"] += abs(err)

    def snapshot(
        self, *, in_flight: int, queued: int, paused_until: float, limits: tuple[Limit, ...]
    ) -> LimiterStats:
        n = self["estimate_samples"]
        return LimiterStats(
            requests_admitted=int(self["requests_admitted"]),
            requests_cancelled=int(self["requests_cancelled"]),
            wait_seconds_total=self["wait_seconds_total"],
            wait_seconds_max=self["wait_seconds_max"],
            tokens_reserved=self["tokens_reserved"],
            tokens_refunded=self["tokens_refunded"],
            tokens_charged=self["tokens_charged"],
            in_flight=in_flight,
            queued=queued,
            paused_until=max(0.0, paused_until),
            rate_limited_seen=int(self["rate_limited_seen"]),
            estimate_samples=int(n),
            estimate_error_mean=self["estimate_error_sum"] / n if n else 0.0,
            estimate_error_abs_mean=self["estimate_error_abs_sum"] / n if n else 0.0,
            limits=limits,
        )


@runtime_checkable
class Limiter(Protocol):
    """What transports need from a limiter. Async twins carry an ``a`` prefix."""

    def now(self) -> float: ...
    def reserve(self, tokens: float, requests: float = 1.0) -> Reservation: ...
    def delay(self, res: Reservation) -> float: ...
    def cancel(self, res: Reservation) -> None: ...
    def settle(self, res: Reservation, actual_tokens: float) -> None: ...
    def release(self, res: Reservation) -> None: ...
    def pause_for(self, seconds: float, *, rate_limited: bool = True) -> None: ...
    def adopt(self, observed: list[ObservedLimit]) -> None: ...
    def record_estimate(self, estimated: float, actual: float) -> None: ...
    def stats(self) -> LimiterStats: ...

    async def areserve(self, tokens: float, requests: float = 1.0) -> Reservation: ...
    async def adelay(self, res: Reservation) -> float: ...
    async def acancel(self, res: Reservation) -> None: ...
    async def asettle(self, res: Reservation, actual_tokens: float) -> None: ...
    async def arelease(self, res: Reservation) -> None: ...
    async def apause_for(self, seconds: float, *, rate_limited: bool = True) -> None: ...
    async def aadopt(self, observed: list[ObservedLimit]) -> None: ...


def is_nonblocking(limiter: object) -> bool:
    """Whether ``limiter``'s calls never wait on I/O (its ``nonblocking`` flag, as the
    in-memory limiter sets it), so that they may be made directly, outside an effect."""
    return getattr(limiter, "nonblocking", False) is True
