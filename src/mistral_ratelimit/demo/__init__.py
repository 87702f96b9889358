"""``mistral-ratelimit demo`` and the helpers the examples share (needs the ``[demo]`` extra).

``open_session()`` yields a rate-limited client against the real API when
``MISTRAL_API_KEY`` is set, else against the in-process emulator; ``Tracker`` records what
each call saw (wait, attempts, tokens).
"""

from __future__ import annotations

from .session import DEFAULT_MODEL, Session, api_key_present, open_session
from .tracking import CallRecord, Tracker, percentile, status_of

__all__ = [
    "DEFAULT_MODEL",
    "CallRecord",
    "Session",
    "Tracker",
    "api_key_present",
    "open_session",
    "percentile",
    "status_of",
]
