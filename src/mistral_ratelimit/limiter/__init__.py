"""Limiter backends behind one contract (see :mod:`.base`)."""

from .base import Limiter, LimiterStats, ObservedLimit, Reservation, State
from .memory import RateLimiter
from .waiting import aacquire, acquire

__all__ = [
    "Limiter",
    "LimiterStats",
    "ObservedLimit",
    "RateLimiter",
    "Reservation",
    "State",
    "aacquire",
    "acquire",
]
