"""Server-side quota windows: what the emulator admits, on an injected clock, no I/O.

Three algorithms, selectable so the client can be tested against each:

* ``sliding``: a strict sliding log. Every charge is kept with its time; a new charge fits
  when the sum over the last ``per_seconds`` plus the charge stays within the amount. Any
  window of ``per_seconds`` therefore holds at most ``amount`` admitted units. It is the
  default because third-party measurements found Mistral's token counter to be a sliding
  60 s window (see /work/shared/reference/mistral-wire.md section 4).
* ``fixed``: counters that reset at multiples of ``per_seconds`` from the emulator's start.
  Up to twice the amount can pass across a boundary, as with many real gateways.
* ``bucket``: a token bucket that starts full and refills ``amount / per_seconds`` per
  second. A full burst passes at once, then the steady rate.

Output tokens are charged after the fact (``charge``) and may push a token window over its
amount: the service bills what was generated, so the next request waits longer.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

Algorithm = Literal["sliding", "fixed", "bucket"]
ALGORITHMS: tuple[Algorithm, ...] = ("sliding", "fixed", "bucket")
WindowUnit = Literal["requests", "tokens"]


class Charge:
    """A handle on one admitted charge, so it can be given back (``Window.refund``)."""

    __slots__ = ("amount", "at")

    def __init__(self, at: float, amount: float) -> None:
        self.at = at
        self.amount = amount


class Window(Protocol):
    amount: float
    per_seconds: float

    def used(self, now: float) -> float: ...
    def fits(self, now: float, amount: float) -> bool: ...
    def charge(self, now: float, amount: float) -> Charge: ...
    def refund(self, now: float, charge: Charge) -> None: ...
    def wait_for(self, now: float, amount: float) -> float: ...
    def clear(self) -> None: ...


class SlidingLog:
    """Exact sliding window: at most ``amount`` in any ``per_seconds`` interval."""

    def __init__(self, amount: float, per_seconds: float) -> None:
        self.amount = amount
        self.per_seconds = per_seconds
        self._log: deque[Charge] = deque()
        self._sum = 0.0

    def _prune(self, now: float) -> None:
        cutoff = now - self.per_seconds
        log = self._log
        while log and log[0].at <= cutoff:
            self._sum -= log.popleft().amount
        if not log:
            self._sum = 0.0  # drop float drift

    def used(self, now: float) -> float:
        self._prune(now)
        return self._sum

    def fits(self, now: float, amount: float) -> bool:
        return self.used(now) + amount <= self.amount + 1e-9

    def charge(self, now: float, amount: float) -> Charge:
        self._prune(now)
        c = Charge(now, amount)
        self._log.append(c)
        self._sum += amount
        return c

    def refund(self, now: float, charge: Charge) -> None:
        # The charge may already have expired; only a live one still counts.
        if charge.at > now - self.per_seconds:
            self._sum -= charge.amount
        charge.amount = 0.0

    def wait_for(self, now: float, amount: float) -> float:
        self._prune(now)
        excess = self._sum + amount - self.amount
        if excess <= 1e-9:
            return 0.0
        for c in self._log:
            excess -= c.amount
            if excess <= 1e-9:
                return max(0.0, c.at + self.per_seconds - now)
        return self.per_seconds  # larger than the window: never fits

    def clear(self) -> None:
        self._log.clear()
        self._sum = 0.0


class FixedWindow:
    """Counter reset at ``origin + k * per_seconds``."""

    def __init__(self, amount: float, per_seconds: float, origin: float = 0.0) -> None:
        self.amount = amount
        self.per_seconds = per_seconds
        self.origin = origin
        self._index = -1
        self._count = 0.0

    def _roll(self, now: float) -> int:
        index = math.floor((now - self.origin) / self.per_seconds)
        if index != self._index:
            self._index = index
            self._count = 0.0
        return index

    def used(self, now: float) -> float:
        self._roll(now)
        return self._count

    def fits(self, now: float, amount: float) -> bool:
        return self.used(now) + amount <= self.amount + 1e-9

    def charge(self, now: float, amount: float) -> Charge:
        self._roll(now)
        self._count += amount
        return Charge(now, amount)

    def refund(self, now: float, charge: Charge) -> None:
        if self._roll(now) == math.floor((charge.at - self.origin) / self.per_seconds):
            self._count = max(0.0, self._count - charge.amount)
        charge.amount = 0.0

    def wait_for(self, now: float, amount: float) -> float:
        if self.fits(now, amount):
            return 0.0
        return self.origin + (self._index + 1) * self.per_seconds - now

    def clear(self) -> None:
        self._index = -1
        self._count = 0.0


class TokenBucket:
    """Starts full with ``amount``; refills ``amount / per_seconds`` per second."""

    def __init__(self, amount: float, per_seconds: float, now: float = 0.0) -> None:
        self.amount = amount
        self.per_seconds = per_seconds
        self._level = amount
        self._at = now

    @property
    def rate(self) -> float:
        return self.amount / self.per_seconds

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._level = min(self.amount, self._level + (now - self._at) * self.rate)
            self._at = now

    def used(self, now: float) -> float:
        self._refill(now)
        return self.amount - self._level

    def fits(self, now: float, amount: float) -> bool:
        self._refill(now)
        return self._level + 1e-9 >= amount

    def charge(self, now: float, amount: float) -> Charge:
        self._refill(now)
        self._level -= amount  # may go negative: output billed after the fact is debt
        return Charge(now, amount)

    def refund(self, now: float, charge: Charge) -> None:
        self._refill(now)
        self._level = min(self.amount, self._level + charge.amount)
        charge.amount = 0.0

    def wait_for(self, now: float, amount: float) -> float:
        self._refill(now)
        if self._level + 1e-9 >= amount:
            return 0.0
        if amount > self.amount:
            return self.per_seconds
        return (amount - self._level) / self.rate

    def clear(self) -> None:
        self._level = self.amount


def make_window(algorithm: Algorithm, amount: float, per_seconds: float, now: float) -> Window:
    if algorithm == "sliding":
        return SlidingLog(amount, per_seconds)
    if algorithm == "fixed":
        return FixedWindow(amount, per_seconds, origin=now)
    if algorithm == "bucket":
        return TokenBucket(amount, per_seconds, now=now)
    raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


@dataclass
class Rung:
    """One enforced limit, named the way the emulator reports it in its log."""

    name: str
    unit: WindowUnit
    window: Window
    #: Shown in the x-ratelimit-*-minute / -month headers (None: not reported there).
    header: Literal["minute", "month"] | None = None

    @property
    def amount(self) -> float:
        return self.window.amount

    def remaining(self, now: float) -> float:
        return max(0.0, self.window.amount - self.window.used(now))


@dataclass
class Refusal:
    rung: str
    retry_after: float


class LimitSet:
    """Every rung, all-or-nothing admission, and the numbers the headers report.

    Not thread-safe by itself: the emulator calls it under its own lock.
    """

    def __init__(self, rungs: list[Rung], *, report_requests_per_minute: Rung | None = None):
        self.rungs = rungs
        # When requests are limited per second only, the req-minute headers still need a
        # number: this rung tracks admitted requests over 60 s without ever refusing.
        self.report_rpm = report_requests_per_minute

    def of(self, unit: WindowUnit) -> list[Rung]:
        return [r for r in self.rungs if r.unit == unit]

    def admit(
        self, now: float, unit: WindowUnit, amount: float
    ) -> tuple[list[tuple[Rung, Charge]], Refusal | None]:
        """Charge ``amount`` on every rung of ``unit`` if it fits on all of them."""
        rungs = self.of(unit)
        refusals = [r for r in rungs if not r.window.fits(now, amount)]
        if refusals:
            worst = max(refusals, key=lambda r: r.window.wait_for(now, amount))
            return [], Refusal(worst.name, worst.window.wait_for(now, amount))
        charges = [(r, r.window.charge(now, amount)) for r in rungs]
        if unit == "requests" and self.report_rpm is not None:
            charges.append((self.report_rpm, self.report_rpm.window.charge(now, amount)))
        return charges, None

    def charge(self, now: float, unit: WindowUnit, amount: float) -> list[tuple[Rung, Charge]]:
        """Charge unconditionally (output tokens already generated)."""
        if amount <= 0:
            return []
        return [(r, r.window.charge(now, amount)) for r in self.of(unit)]

    @staticmethod
    def refund(now: float, charges: list[tuple[Rung, Charge]]) -> None:
        for rung, c in charges:
            rung.window.refund(now, c)

    def clear(self) -> None:
        for r in self.rungs:
            r.window.clear()
        if self.report_rpm is not None:
            self.report_rpm.window.clear()

    def header_values(self, now: float) -> dict[str, int]:
        """``x-ratelimit-*`` numbers for the rungs that have a header."""
        out: dict[str, int] = {}
        req_minute = next((r for r in self.rungs if r.unit == "requests" and r.header), None)
        req_minute = req_minute or self.report_rpm
        if req_minute is not None:
            out["x-ratelimit-limit-req-minute"] = int(req_minute.amount)
            out["x-ratelimit-remaining-req-minute"] = int(req_minute.remaining(now))
        for rung in self.of("tokens"):
            if rung.header is None or f"x-ratelimit-limit-tokens-{rung.header}" in out:
                continue
            out[f"x-ratelimit-limit-tokens-{rung.header}"] = int(rung.amount)
            out[f"x-ratelimit-remaining-tokens-{rung.header}"] = int(rung.remaining(now))
        return out


__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Charge",
    "FixedWindow",
    "LimitSet",
    "Refusal",
    "Rung",
    "SlidingLog",
    "TokenBucket",
    "Window",
    "WindowUnit",
    "make_window",
]
