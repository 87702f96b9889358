"""Shared fixtures: a fake clock, and ``make_limiter`` parametrised over limiter backends.

Contract tests take ``make_limiter`` and run once per backend in ``LIMITER_BACKENDS``.
A backend joins them by adding its name there and one builder in ``_BUILDERS``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import pytest
from hypothesis import settings

from mistral_ratelimit.config import Limit, RatelimitConfig
from mistral_ratelimit.limiter import Limiter, RateLimiter

#: Files that drive both httpx and httpx2 side by side; the mistralai 2.x venv
#: (``make test-sdk2``) has no httpx2, and only runs the SDK tests there anyway.
collect_ignore = (
    []
    if importlib.util.find_spec("httpx2")
    else [
        "test_express.py",
        "test_headers.py",
        "test_transport.py",
        "test_transport_composition.py",
    ]
)

# `make test` (and CI) replays the same examples every run, so a green clone stays green;
# `make fuzz` draws fresh ones (HYPOTHESIS_PROFILE=explore) to look for new failures.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

#: Backends every contract test runs against.
#: "redis" runs on a throw-away redis-server (tests/redis_server.py) and skips without one.
LIMITER_BACKENDS = ["memory", "redis"]

#: A start time far from zero, so slot keys and float sums look like a real monotonic clock.
CLOCK_START = 10_000.0


class FakeClock:
    """A clock that only moves when told to. Also usable as ``acquire(..., sleep=clock.sleep)``."""

    def __init__(self, start: float = CLOCK_START) -> None:
        self.t = float(start)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a fake clock never goes back"
        self.t += seconds

    def set(self, t: float) -> None:
        assert t >= self.t, "a fake clock never goes back"
        self.t = t

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


class MakeLimiter(Protocol):
    backend: str

    def __call__(
        self,
        config_or_limits: RatelimitConfig | Iterable[Limit],
        *,
        clock: Callable[[], float] | None = None,
        max_concurrency: int | None = None,
        window_margin: float = 0.0,
    ) -> Limiter: ...


def _config_and_limits(
    config_or_limits: RatelimitConfig | Iterable[Limit],
) -> tuple[RatelimitConfig, list[Limit] | None]:
    if isinstance(config_or_limits, RatelimitConfig):
        return config_or_limits, None
    return RatelimitConfig(api_key="sk-test"), list(config_or_limits)


def _build_memory(
    config: RatelimitConfig,
    limits: list[Limit] | None,
    clock: Callable[[], float] | None,
    max_concurrency: int | None,
    window_margin: float,
) -> Limiter:
    return RateLimiter(
        config,
        limits=limits,
        max_concurrency=max_concurrency,
        window_margin=window_margin,
        clock=clock if clock is not None else time.monotonic,
    )


def _build_redis(
    config: RatelimitConfig,
    limits: list[Limit] | None,
    clock: Callable[[], float] | None,
    max_concurrency: int | None,
    window_margin: float,
) -> Limiter:
    from mistral_ratelimit.redis import RedisRateLimiter
    from redis_server import fresh_key, shared_server

    # A fake clock drives the scripts' time (the test-only ``_clock``); leases then run on it
    # too, and a test that jumps ahead must not see its own waiters' leases lapse.
    on_fake_clock: dict[str, Any] = {"_clock": clock, "lease_seconds": 1e9} if clock else {}
    return RedisRateLimiter(
        shared_server().url,
        config=config,
        key=fresh_key(),
        limits=limits,
        max_concurrency=max_concurrency,
        window_margin=window_margin,
        on_backend_error="fail",
        **on_fake_clock,
    )


_BUILDERS: dict[str, Callable[..., Limiter]] = {
    "memory": _build_memory,
    "redis": _build_redis,
}


class _Maker:
    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __call__(
        self,
        config_or_limits: RatelimitConfig | Iterable[Limit],
        *,
        clock: Callable[[], float] | None = None,
        max_concurrency: int | None = None,
        window_margin: float = 0.0,
    ) -> Limiter:
        config, limits = _config_and_limits(config_or_limits)
        return _BUILDERS[self.backend](config, limits, clock, max_concurrency, window_margin)


@pytest.fixture(params=LIMITER_BACKENDS)
def make_limiter(request: pytest.FixtureRequest) -> MakeLimiter:
    """``make_limiter(config_or_limits, clock=..., max_concurrency=..., window_margin=0.0)``.

    Passing ``clock`` puts the backend on that fake clock (Redis through its test-only
    ``_clock``). Tests without ``clock`` run on the real clock of each backend.
    """
    return _Maker(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def admitted_per_window(grants: Sequence[tuple[float, float]], per_seconds: float) -> float:
    """The largest total of ``amount`` granted in any half-open window ``[s, s + per_seconds)``.

    ``grants`` holds ``(grant_time, amount)``. The window maximum is reached with ``s`` at a
    grant time, so checking those starts is enough. 1 ns of slack absorbs float rounding in
    the slot arithmetic.
    """
    ordered = sorted(grants)
    best, total, lo = 0.0, 0.0, 0
    for t, amount in ordered:
        total += amount
        while ordered[lo][0] <= t - per_seconds + 1e-9:
            total -= ordered[lo][1]
            lo += 1
        best = max(best, total)
    return best


def approx_le(a: float, b: float) -> bool:
    return a <= b + 1e-6 * max(1.0, abs(b))


def is_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


__all__: list[Any] = ["FakeClock", "MakeLimiter", "admitted_per_window", "approx_le", "is_close"]
