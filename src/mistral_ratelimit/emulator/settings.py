"""The emulator's knobs, validated once, and the limit rungs they turn into."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

from ..config import SECONDS_PER_MONTH, Limit
from .faults import FaultPlan, FaultRule
from .limits import ALGORITHMS, Algorithm, FixedWindow, LimitSet, Rung, SlidingLog, make_window
from .replies import ReplyShape

RetryAfter = Literal["seconds", "http-date"]

# Mistral's free tier (help.mistral.ai/en/articles/225174): "1 request per second, 500,000
# tokens per minute, 1 billion tokens per month".
FREE_TIER_REQUESTS_PER_SECOND = 1.0
FREE_TIER_TOKENS_PER_MINUTE = 500_000
FREE_TIER_TOKENS_PER_MONTH = 1_000_000_000


def _positive(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(repr=False)
class EmulatorConfig:
    """Defaults are Mistral's free tier: 1 request per second, 500 000 tokens per minute and
    1 billion tokens per month, so every response carries the month pair of headers, as
    Mistral's do."""

    requests_per_second: float | None = FREE_TIER_REQUESTS_PER_SECOND
    #: The per-minute request rung (what x-ratelimit-limit-req-minute reports).
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = FREE_TIER_TOKENS_PER_MINUTE
    tokens_per_month: float | None = FREE_TIER_TOKENS_PER_MONTH
    max_concurrency: int | None = None
    #: Extra windows: ``Limit`` objects or ``(amount, per_seconds, unit)`` tuples.
    limits: Sequence[Limit | tuple[float, float, str]] = ()
    algorithm: Algorithm = "sliding"
    api_key: str | None = None
    #: Streaming pace; None streams as fast as the socket takes it (still one event per chunk).
    stream_tokens_per_second: float | None = None
    time_to_first_token: float = 0.0
    #: Whether JSON (non-stream) replies also take ``time_to_first_token`` + generation time.
    pace_json: bool = True
    retry_after: RetryAfter | None = None
    faults: FaultPlan | Sequence[FaultRule] | None = None
    #: A limit of 0 for every request: 429 code 1300 and x-ratelimit-limit-req-minute: 0.
    zero_limit: bool = False
    seed: int = 0
    reply: ReplyShape = field(default_factory=ReplyShape)
    default_model: str = "mistral-medium-latest"
    #: Bound on ``Emulator.log`` (oldest dropped first); None keeps every record.
    max_log_records: int | None = None
    #: Count a request from when the kernel received it (Linux; see ``arrival.py``). False:
    #: from when the app got to it, which a busy machine delays (for comparison).
    kernel_arrival: bool = True

    def __post_init__(self) -> None:
        for name in (
            "requests_per_second",
            "requests_per_minute",
            "tokens_per_minute",
            "tokens_per_month",
        ):
            _positive(name, getattr(self, name), allow_zero=True)
        _positive("stream_tokens_per_second", self.stream_tokens_per_second)
        _positive("time_to_first_token", self.time_to_first_token, allow_zero=True)
        if self.requests_per_second == 0 or self.requests_per_minute == 0:
            self.zero_limit = True  # Mistral reports a 0 rung for models a key may not use
        if self.max_concurrency is not None and (
            isinstance(self.max_concurrency, bool)
            or not isinstance(self.max_concurrency, int)
            or self.max_concurrency < 1
        ):
            raise ValueError(
                f"max_concurrency must be an integer >= 1, got {self.max_concurrency!r}"
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.retry_after not in (None, "seconds", "http-date"):
            raise ValueError(
                f"retry_after must be None, 'seconds' or 'http-date', got {self.retry_after!r}"
            )
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise ValueError("api_key must be a string")
        self.limits = tuple(
            item if isinstance(item, Limit) else Limit(*item)  # type: ignore[arg-type]
            for item in self.limits
        )
        if not isinstance(self.faults, FaultPlan):
            self.faults = FaultPlan(self.faults or (), seed=self.seed)

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                value = "***" if value else None
            parts.append(f"{f.name}={value!r}")
        return f"EmulatorConfig({', '.join(parts)})"

    @property
    def fault_plan(self) -> FaultPlan:
        assert isinstance(self.faults, FaultPlan)
        return self.faults

    def build_limits(self, now: float) -> LimitSet:
        """The rungs, each on the selected algorithm (the month counter is always fixed).

        ``requests_per_second=r`` becomes ``max(1, floor(r))`` requests per
        ``max(1, floor(r)) / r`` seconds, the same reading as the client's config, so
        1 rps admits one request per second and 20 rps admits bursts of 20 per second.
        """
        algo = self.algorithm
        rungs: list[Rung] = []
        report_rpm: Rung | None = None
        rps = self.requests_per_second
        if rps:
            burst = max(1, math.floor(rps))
            rungs.append(
                Rung("requests_per_second", "requests", make_window(algo, burst, burst / rps, now))
            )
        if self.requests_per_minute:
            rungs.append(
                Rung(
                    "requests_per_minute",
                    "requests",
                    make_window(algo, self.requests_per_minute, 60.0, now),
                    "minute",
                )
            )
        elif rps:
            # Mistral reports requests per minute even where the console says per second.
            report_rpm = Rung(
                "requests_reported_per_minute",
                "requests",
                SlidingLog(round(rps * 60), 60.0),
                "minute",
            )
        if self.tokens_per_minute:
            rungs.append(
                Rung(
                    "tokens_per_minute",
                    "tokens",
                    make_window(algo, self.tokens_per_minute, 60.0, now),
                    "minute",
                )
            )
        if self.tokens_per_month:
            rungs.append(
                Rung(
                    "tokens_per_month",
                    "tokens",
                    FixedWindow(self.tokens_per_month, SECONDS_PER_MONTH, now),
                    "month",
                )
            )
        for item in self.limits:
            assert isinstance(item, Limit)
            name = f"{item.amount:g}/{item.per_seconds:g}s:{item.unit}"
            rungs.append(
                Rung(name, item.unit, make_window(algo, item.amount, item.per_seconds, now))
            )
        return LimitSet(rungs, report_requests_per_minute=report_rpm)


__all__ = [
    "FREE_TIER_REQUESTS_PER_SECOND",
    "FREE_TIER_TOKENS_PER_MINUTE",
    "FREE_TIER_TOKENS_PER_MONTH",
    "EmulatorConfig",
    "RetryAfter",
]
