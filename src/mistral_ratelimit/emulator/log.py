"""The emulator's request log: one record per request, for tests, benchmarks and the demo."""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace


@dataclass
class RequestRecord:
    """One request as the emulator saw it. Times are taken when the request arrives."""

    arrival: float  # time.monotonic()
    wall: float  # time.time()
    method: str
    path: str
    status: int = 0  # 0 until the response starts
    admitted: bool = False  # counted against the limits (False: 401, 429 or zero limit)
    #: Which limit or fault refused or failed it: "requests_per_second", "tokens_per_minute",
    #: "concurrency", "zero_limit", "capacity", "server_error", "auth", ... or None.
    reason: str | None = None
    prompt_tokens: int = 0  # charged at admission
    completion_tokens: int = 0  # charged as generated
    stream: bool = False
    fault: str | None = None
    conversation_id: str | None = None
    finished: float | None = None  # time.monotonic() when the response ended

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RequestLog:
    """Append-only and thread-safe. Reading returns copies, never live records.

    ``max_records`` bounds memory for a long-running server: the oldest records (and token
    charges) are dropped first. Unbounded by default, for tests and benchmarks.
    """

    def __init__(self, max_records: int | None = None) -> None:
        self._lock = threading.Lock()
        self._records: deque[RequestRecord] = deque(maxlen=max_records)
        #: (time.monotonic(), tokens) for every token charge, at the moment it was made.
        self._charges: deque[tuple[float, int]] = deque(
            maxlen=None if max_records is None else 4 * max_records
        )

    def __getstate__(self) -> dict[str, object]:
        # Pickled to send the log out of a server process (EmulatorProcess.log()).
        with self._lock:
            return {"records": self._records.copy(), "charges": self._charges.copy()}

    def __setstate__(self, state: dict[str, object]) -> None:
        self._lock = threading.Lock()
        self._records = state["records"]  # type: ignore[assignment]
        self._charges = state["charges"]  # type: ignore[assignment]

    def open(self, record: RequestRecord) -> RequestRecord:
        with self._lock:
            self._records.append(record)
        return record

    def charge(
        self, record: RequestRecord, at: float, prompt: int = 0, completion: int = 0
    ) -> None:
        with self._lock:
            record.prompt_tokens += prompt
            record.completion_tokens += completion
            if prompt + completion:
                self._charges.append((at, prompt + completion))

    def refund(self, record: RequestRecord, at: float) -> None:
        """Give back a failed request's tokens (the limits refund them too)."""
        with self._lock:
            if record.tokens:
                self._charges.append((at, -record.tokens))
            record.prompt_tokens = record.completion_tokens = 0

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._charges.clear()

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return [replace(r) for r in self._records]

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self.snapshot())

    def __getitem__(self, index: int) -> RequestRecord:
        with self._lock:
            return replace(self._records[index])

    def admitted(self) -> list[RequestRecord]:
        return [r for r in self.snapshot() if r.admitted]

    def rejected(self) -> list[RequestRecord]:
        return [r for r in self.snapshot() if not r.admitted]

    def count(self, status: int) -> int:
        return sum(1 for r in self.snapshot() if r.status == status)

    def max_in_window(
        self, seconds: float, *, unit: str = "requests", arrivals: bool = False
    ) -> float:
        """Most admitted requests (or charged tokens) in any window of ``seconds``;
        ``arrivals=True`` counts every request that arrived, refused ones too: what a
        client sent, rather than what the server let through.

        Windows are ``(t - seconds, t]`` anchored at each event: a request's arrival, or a
        token charge at the moment it was made (prompt at admission, output as generated).
        """
        if unit == "requests":
            requests = self.snapshot() if arrivals else self.admitted()
            events = sorted((r.arrival, 1.0) for r in requests)
        else:
            with self._lock:
                events = sorted((t, float(n)) for t, n in self._charges)
        times = [t for t, _ in events]
        weights = [w for _, w in events]
        best = 0.0
        total = 0.0
        lo = 0
        for hi, t in enumerate(times):
            total += weights[hi]
            while times[lo] <= t - seconds:
                total -= weights[lo]
                lo += 1
            best = max(best, total)
        return best

    def admitted_between(self, start: float, end: float) -> int:
        """Admitted requests that arrived in ``[start, end)``."""
        times = sorted(r.arrival for r in self.admitted())
        return bisect.bisect_left(times, end) - bisect.bisect_left(times, start)

    def tokens_between(self, start: float, end: float) -> int:
        """Tokens charged in ``[start, end)`` (refunds subtract)."""
        with self._lock:
            return sum(n for t, n in self._charges if start <= t < end)


__all__ = ["RequestLog", "RequestRecord"]
