"""What the demo's callers saw: one record per SDK call, filled in from three places.

* the workload opens a record when it calls the SDK and closes it with the outcome;
* a thin inner transport marks when the request left the limiter for the network;
* an HTTP response hook copies the transport's ``{"attempts", "waited"}`` note.

The record travels in a context variable: the SDK call, the limiter's wait and the inner
transport all run in the caller's own task (async) or thread (sync), so each sees its own
call without any request-to-call bookkeeping.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..lifecycle import EXTENSION_KEY

Outcome = Literal["ok", "rate_limited", "error"]


@dataclass
class CallRecord:
    """One SDK call as its caller experienced it. Times are ``time.monotonic()``."""

    kind: str  # "start", "append_stream", ...
    mode: Literal["sync", "async"]
    started: float
    sent: float | None = None  # the first time it left the limiter
    finished: float | None = None
    waited: float | None = None  # the transport's own figure: budget waits and back-offs
    attempts: int = 0
    prompt_tokens: int = 0
    tokens: int = 0  # prompt + completion, as the server reported
    outcome: Outcome | None = None
    error: str | None = None

    @property
    def wait(self) -> float | None:
        """Seconds spent before the request could go (``None`` while still waiting)."""
        if self.waited is not None:
            return self.waited
        return None if self.sent is None else self.sent - self.started


@dataclass(frozen=True)
class Progress:
    """A moment's view for the live display."""

    elapsed: float
    done: int
    ok: int
    rate_limited: int  # 429s that reached the caller
    errors: int
    queued: int  # called, not yet let through by the limiter
    at_server: int  # let through, reply not finished
    current_wait: float  # how long the oldest queued call has been waiting
    tokens: int  # reported by the server so far


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an SDK error carries, on every SDK line."""
    for holder in (exc, getattr(exc, "raw_response", None)):
        status = getattr(holder, "status_code", None)
        if isinstance(status, int):
            return status
    return None


class Tracker:
    """Thread-safe list of :class:`CallRecord`, plus the hooks that fill them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self._records: list[CallRecord] = []
        self._current: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
            "mistral_ratelimit_demo_call", default=None
        )

    # -- the workload's side ----------------------------------------------------------------
    @contextlib.contextmanager
    def call(self, kind: str, mode: Literal["sync", "async"]) -> Iterator[CallRecord]:
        """Record one SDK call; an exception is classified, recorded and swallowed.

        The demo keeps going after a failed call, so that the summary can count them.
        """
        record = CallRecord(kind=kind, mode=mode, started=self.clock())
        with self._lock:
            self._records.append(record)
        token = self._current.set(record)
        try:
            yield record
            record.outcome = "ok"
        except Exception as exc:
            record.outcome = "rate_limited" if status_of(exc) == 429 else "error"
            record.error = f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            record.finished = self.clock()
            self._current.reset(token)

    # -- the transport's side --------------------------------------------------------------
    def mark_sent(self) -> None:
        record = self._current.get()
        if record is not None:
            record.attempts += 1
            if record.sent is None:
                record.sent = self.clock()

    def note_response(self, response: Any) -> None:
        record = self._current.get()
        note = getattr(response, "extensions", {}).get(EXTENSION_KEY)
        if record is not None and isinstance(note, dict):
            waited = note.get("waited")
            if isinstance(waited, (int, float)):
                record.waited = float(waited)

    async def anote_response(self, response: Any) -> None:
        self.note_response(response)

    # -- reading -----------------------------------------------------------------------------
    def records(self) -> list[CallRecord]:
        with self._lock:
            return [replace(r) for r in self._records]

    def progress(self) -> Progress:
        now = self.clock()
        records = self.records()
        done = [r for r in records if r.outcome is not None]
        queued = [r for r in records if r.outcome is None and r.sent is None]
        return Progress(
            elapsed=now - self.started,
            done=len(done),
            ok=sum(r.outcome == "ok" for r in done),
            rate_limited=sum(r.outcome == "rate_limited" for r in done),
            errors=sum(r.outcome == "error" for r in done),
            queued=len(queued),
            at_server=sum(r.outcome is None and r.sent is not None for r in records),
            current_wait=max((now - r.started for r in queued), default=0.0),
            tokens=sum(r.tokens for r in records),
        )


class MarkSentTransport:
    """Inner sync transport: notes the moment a request leaves the limiter, then sends it."""

    def __init__(self, inner: Any, tracker: Tracker) -> None:
        self.inner = inner
        self.tracker = tracker

    def handle_request(self, request: Any) -> Any:
        self.tracker.mark_sent()
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncMarkSentTransport:
    """Async twin of :class:`MarkSentTransport`."""

    def __init__(self, inner: Any, tracker: Tracker) -> None:
        self.inner = inner
        self.tracker = tracker

    async def handle_async_request(self, request: Any) -> Any:
        self.tracker.mark_sent()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 1]); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


__all__ = [
    "AsyncMarkSentTransport",
    "CallRecord",
    "MarkSentTransport",
    "Outcome",
    "Progress",
    "Tracker",
    "percentile",
    "status_of",
]
