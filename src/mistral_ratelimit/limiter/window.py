"""The window arithmetic: one limit, numbers and time, no locks and no I/O.

Algorithm: a *conservative sliding window* kept as a short ring of sub-window counters.

* A window of ``W`` seconds is cut into ``SLOTS_PER_WINDOW`` slots of width ``d = W / SLOTS``.
* An amount charged at time ``t`` is stored in slot ``floor(t / d)`` and stops counting at
  ``slot_end + W + margin``, i.e. between ``W + margin`` and ``W + margin + d`` after ``t``.
* A new charge of ``c`` at time ``t`` fits when ``sum(live slots at t) + c <= amount``.

Why it holds: every charge counts for at least ``W`` after it was made, so any window of
``W`` seconds that contains ``t`` sees, at ``t``, at most ``amount`` including the new
charge, and charges are only ever scheduled at non-decreasing times (FIFO, see
``memory.py``), so nothing is inserted before ``t`` later. A token bucket that starts full
and refills continuously admits ``amount`` at once and then ``amount`` more within the same
window (the 2x overshoot aiolimiter users meet as start-up 429s); this scheme never does,
yet still allows a full burst of ``amount`` whenever the last window was idle.

The price is at most ``d + margin`` seconds of extra wait per window (1% + margin with 100
slots). State is constant in size: only slots that can still matter to a charge scheduled
at or after the newest one are kept, so at most ``SLOTS + margin/d + 2`` numbers.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field

from ..config import Limit

SLOTS_PER_WINDOW = 100

_window_ids = itertools.count(1)


@dataclass
class WindowState:
    limit: Limit
    margin: float = 0.0
    slots: dict[int, float] = field(default_factory=dict)
    keys: list[int] = field(default_factory=list)
    total: float = 0.0
    #: Stable identity: reservations name the windows they booked in by it, so a window
    #: replaced by discovery is never confused with the one that took its list position.
    ident: int = field(default_factory=lambda: next(_window_ids))
    #: What ``adopt`` charged per slot to match the server's "remaining" (not bookings):
    #: discovery carries only bookings into the windows that replace this one, whose own
    #: remaining the same report sets.
    adopted: dict[int, float] = field(default_factory=dict)
    #: Slot width, and how long a charge keeps counting after the end of its slot.
    #: Computed once: they sit on the hot path of every reservation.
    width: float = field(init=False)
    horizon: float = field(init=False)

    def __post_init__(self) -> None:
        self.width = self.limit.per_seconds / SLOTS_PER_WINDOW
        self.horizon = self.limit.per_seconds + self.margin

    def slot_of(self, t: float) -> int:
        return math.floor(t / self.width)

    def expiry(self, slot: int) -> float:
        return (slot + 1) * self.width + self.horizon

    def prune(self, now: float) -> None:
        """Forget slots that no longer count at ``now`` or later."""
        while self.keys and self.expiry(self.keys[0]) <= now:
            key = self.keys.pop(0)
            self.total -= self.slots.pop(key)
            if self.adopted:
                self.adopted.pop(key, None)
        if not self.keys:
            self.total = 0.0  # drop float drift once the ring is empty

    def used_at(self, t: float) -> float:
        return sum(a for k, a in self.slots.items() if self.expiry(k) > t)

    def earliest_fit(self, t0: float, cost: float) -> float:
        """Smallest ``t >= t0`` at which ``cost`` fits. Callers check ``cost <= amount``."""
        room = self.limit.amount - cost
        used = self.used_at(t0) if self.keys and self.expiry(self.keys[0]) <= t0 else self.total
        if used <= room + 1e-9:
            return t0
        for key in self.keys:
            exp = self.expiry(key)
            if exp <= t0:
                continue
            used -= self.slots[key]
            if used <= room + 1e-9:
                return exp
        return t0  # unreachable while cost <= amount; never hang

    def add(self, t: float, amount: float) -> int:
        """Charge ``amount`` (may be negative: a refund) at time ``t``; returns the slot."""
        key = self.slot_of(t)
        return self.add_to_slot(key, amount)

    def add_to_slot(self, key: int, amount: float) -> int:
        current = self.slots.get(key)
        if current is None:
            if amount <= 0:
                return key
            bisect.insort(self.keys, key)
            current = 0.0
        new = max(0.0, current + amount)  # a refund never lifts the window above capacity
        self.total += new - current
        self.slots[key] = new
        return key

    def has_slot(self, key: int) -> bool:
        return key in self.slots

    def available_at(self, t: float) -> float:
        return self.limit.amount - self.used_at(t)
