"""Fault injection: the failures a client must survive, on demand and reproducibly.

A :class:`Fault` says what goes wrong; a :class:`FaultRule` says when (a probability from a
seeded generator, or every Nth eligible request); :meth:`FaultPlan.push` queues one-shot
faults that hit the next eligible requests in order. Faults are picked after the request
was admitted (it counts against the request rungs) and before any output; tokens charged
for a request that then fails with an error status are given back, since no usage exists.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal[
    "capacity",  # 429 code 3505: provider overload, not the caller's quota
    "server_error",  # a JSON 5xx (status 500/502/503/504)
    "html_520",  # Cloudflare's 520 with an HTML body
    "stream_cut",  # the stream stops before conversation.response.done (no usage)
    "stream_error",  # a conversation.response.error event inside HTTP 200
    "slow_first_byte",  # the response starts only after ``delay`` seconds
    "zero_limit",  # x-ratelimit-limit-req-minute: 0 and 429 code 1300, before admission
]
FAULT_KINDS: tuple[str, ...] = (
    "capacity",
    "server_error",
    "html_520",
    "stream_cut",
    "stream_error",
    "slow_first_byte",
    "zero_limit",
)
_STREAM_ONLY = ("stream_cut", "stream_error")


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int = 503  # for server_error
    delay: float = 1.0  # for slow_first_byte, seconds
    after_chunks: int = 1  # for stream_cut / stream_error: deltas sent first
    abrupt: bool = False  # stream_cut: drop the connection mid-body instead of ending it

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Fault.kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.kind == "server_error" and not 500 <= self.status <= 599:
            raise ValueError(f"Fault.status must be a 5xx status, got {self.status!r}")
        if self.delay < 0 or self.after_chunks < 0:
            raise ValueError("Fault.delay and Fault.after_chunks must be >= 0")

    @property
    def stream_only(self) -> bool:
        return self.kind in _STREAM_ONLY


@dataclass(frozen=True)
class FaultRule:
    """Apply ``fault`` with ``probability``, or to every ``every``-th eligible request."""

    fault: Fault
    probability: float = 0.0
    every: int | None = None
    #: True: only generation requests (POST start/append/restart). False: every /v1 request.
    generation_only: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"FaultRule.probability must be in [0, 1], got {self.probability!r}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"FaultRule.every must be >= 1, got {self.every!r}")


class FaultPlan:
    """Rules plus a one-shot queue. Thread-safe: tests push faults from their own thread."""

    def __init__(self, rules: Iterable[FaultRule] = (), *, seed: int = 0) -> None:
        self.rules = list(rules)
        self._seed = seed
        self._rng = random.Random(seed)
        self._queue: deque[Fault] = deque()
        self._counts = [0] * len(self.rules)
        self._lock = threading.Lock()

    def push(self, fault: Fault | FaultKind, count: int = 1) -> None:
        """Queue ``fault`` for the next ``count`` requests it can apply to."""
        f = fault if isinstance(fault, Fault) else Fault(fault)
        with self._lock:
            self._queue.extend([f] * count)

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._rng = random.Random(self._seed)
            self._counts = [0] * len(self.rules)

    def zero_limit(self, generation: bool) -> bool:
        """Consulted before admission: a limit of 0 refuses before anything is counted."""
        return self.pick(generation=generation, stream=False, kinds=("zero_limit",)) is not None

    def pick(
        self, *, generation: bool, stream: bool, kinds: tuple[str, ...] | None = None
    ) -> Fault | None:
        """The fault for this request, if any. Queued faults win over rules."""

        def eligible(f: Fault) -> bool:
            if kinds is not None:
                return f.kind in kinds
            return f.kind != "zero_limit" and (stream or not f.stream_only)

        with self._lock:
            for i, f in enumerate(self._queue):
                # Queued faults wait for a generation request, so a read in between does
                # not swallow them; a queued zero limit hits whatever comes next.
                if eligible(f) and (generation or f.kind == "zero_limit"):
                    del self._queue[i]
                    return f
            for i, rule in enumerate(self.rules):
                if not eligible(rule.fault) or (rule.generation_only and not generation):
                    continue
                self._counts[i] += 1
                if rule.every is not None and self._counts[i] % rule.every == 0:
                    return rule.fault
                if rule.probability and self._rng.random() < rule.probability:
                    return rule.fault
        return None


__all__ = ["FAULT_KINDS", "Fault", "FaultKind", "FaultPlan", "FaultRule"]
