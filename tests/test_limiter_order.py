"""Order of service: a request counts from when it left, and higher priorities go first."""

from __future__ import annotations

from conftest import FakeClock, admitted_per_window
from mistral_ratelimit import Limit, RatelimitConfig, RateLimiter
from mistral_ratelimit.limiter import ObservedLimit


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(clock: Clock, margin: float = 0.025) -> RateLimiter:
    cfg = RatelimitConfig(api_key="k", requests_per_second=None, tokens_per_minute=None)
    return RateLimiter(cfg, limits=[Limit(8, 1.0, "requests")], clock=clock, window_margin=margin)


def test_late_departure_pushes_the_next_burst_back() -> None:
    clock = Clock()
    lim = make(clock)
    first = [lim.reserve(0) for _ in range(8)]
    second = [lim.reserve(0) for _ in range(8)]
    assert all(lim.delay(r) == 0 for r in first)
    before = [r.at for r in second]
    assert min(before) < 1.1
    # One request of the first burst sat 300 ms on a cold connection before it left.
    clock.t = 0.3
    lim.anchor(first[3], 0.3)
    # Each waiter checks its booking when its turn comes.
    granted = []
    for r in second:
        while (wait := lim.delay(r)) > 0:
            clock.t += wait
        granted.append(clock.t)
    # Seven may go when the seven on time expire; the eighth waits for the late one.
    assert granted[:7] == before[:7]
    assert granted[7] >= 0.3 + 1.0 > before[7]
    assert granted == sorted(granted)  # still in arrival order
    # Server-side check: arrivals (grant + lag) never put 9 in one second.
    arrivals = sorted([0.0] * 7 + [0.3] + granted)
    assert all(sum(1 for a in arrivals if s <= a < s + 1.0) <= 8 for s in arrivals)


def test_many_anchors_stay_cheap_with_many_waiters() -> None:
    """Anchoring does not re-book the queue each time (it used to: O(n) per anchor)."""
    clock = Clock()
    lim = make(clock)
    burst = [lim.reserve(0) for _ in range(8)]
    waiting = [lim.reserve(0) for _ in range(20_000)]
    assert all(lim.delay(r) == 0 for r in burst)
    at = [r.at for r in waiting[:50]]
    for r in burst:
        lim.anchor(r, 0.5)
    assert [r.at for r in waiting[:50]] == at  # untouched until their turn


def test_small_lags_inside_the_margin_change_nothing() -> None:
    clock = Clock()
    lim = make(clock, margin=0.05)
    first = [lim.reserve(0) for _ in range(8)]
    nxt = lim.reserve(0)
    assert all(lim.delay(r) == 0 for r in first)
    at = nxt.at
    lim.anchor(first[0], 0.04)
    assert nxt.at == at
    assert lim.stats().requests_admitted == 8


def test_anchor_ignores_bad_lags_and_unsent_reservations() -> None:
    clock = Clock()
    lim = make(clock)
    r = lim.reserve(0)
    lim.anchor(r, float("nan"))
    lim.anchor(r, float("inf"))
    lim.anchor(r, -5)
    lim.anchor(r, 0.5)  # not granted yet: nothing to move
    assert r.at == 0.0
    lim.cancel(r)
    lim.anchor(r, 0.5)
    assert lim.stats().requests_cancelled == 1


def test_priority_goes_before_waiting_lower_priority_in_order() -> None:
    clock = Clock()
    lim = make(clock)
    burst = [lim.reserve(0) for _ in range(8)]
    low = [lim.reserve(0) for _ in range(3)]
    assert all(lim.delay(r) == 0 for r in burst)
    low_before = [r.at for r in low]
    urgent = lim.reserve(0, priority=5)
    # It takes the first free place; the waiters keep their order behind it.
    assert urgent.at == low_before[0]
    assert [r.at for r in low] == sorted(r.at for r in low)
    assert low[0].at >= urgent.at
    # A second urgent one queues behind the first, not in front of it.
    urgent2 = lim.reserve(0, priority=5)
    assert urgent.at <= urgent2.at <= low[0].at


def test_waiting_bookings_follow_learnt_limits_both_ways() -> None:
    """Discovery books the waiting requests again against the learnt windows: sooner when
    they are looser than the assumed ones, later when tighter (the new window must hold
    what is already booked), in order; and at most once a second, so limits that flap
    between reports do not re-book every waiter on every response."""
    clock = FakeClock()
    limiter = RateLimiter(RatelimitConfig(api_key="k"), window_margin=0.0, clock=clock)
    booked = [limiter.reserve(100_000) for _ in range(5)]  # 1 rps default: 0, 1, 2, 3, 4 s
    assert [round(r.at - booked[0].at) for r in booked] == [0, 1, 2, 3, 4]
    limiter.adopt([ObservedLimit("tokens", 60.0, 250_000, None)])  # tighter than 500k
    assert [r.at for r in booked] == sorted(r.at for r in booked)
    tokens = [(r.at, r.tokens) for r in booked]
    assert admitted_per_window(tokens, 60.0) <= 250_000
    assert booked[2].at - booked[0].at >= 60  # the third waits for the first to expire
    # Looser again at once: not re-booked (within a second of the last re-booking)...
    clock.advance(0.5)
    before = [r.at for r in booked]
    limiter.adopt([ObservedLimit("tokens", 60.0, 5_000_000, None)])
    assert [r.at for r in booked] == before
    # ...but at the next report a second later, they move back to the request pace.
    clock.advance(0.6)
    limiter.adopt([ObservedLimit("tokens", 60.0, 4_000_000, None)])
    assert booked[4].at - clock() < 4


def test_discovery_carries_bookings_once_and_not_what_adopt_charged() -> None:
    """One overstated header (6000 a minute, 5821 of them "used" to match its remaining)
    followed by the real limit (180 a minute): the replacing windows hold the bookings,
    each once, not the 5821 the old window charged to match the server's view, which held
    every caller for a minute."""
    clock = FakeClock()
    limiter = RateLimiter(RatelimitConfig(api_key="k"), window_margin=0.0, clock=clock)
    first = limiter.reserve(10)
    assert limiter.delay(first) == 0.0
    limiter.adopt([ObservedLimit("requests", 60.0, 6000, 179)])  # a wrong header
    learnt = [lim for lim in limiter.limits if lim.unit == "requests"]
    assert Limit(6000, 60.0, "requests") in learnt and Limit(100, 1.0, "requests") in learnt
    clock.advance(0.5)
    limiter.adopt([ObservedLimit("requests", 60.0, 180, 179)])  # the next, right one
    assert Limit(3, 1.0, "requests") in limiter.limits
    nxt = limiter.reserve(10)
    assert limiter.delay(nxt) < 1.0  # at the 3-a-second pace, not a minute
    # The first request counts once in the new per-second window (carried from one of
    # the two windows it was booked in, not from both): a third fits beside it and `nxt`.
    assert limiter.reserve(10).at < first.at + 1.0
    assert limiter.reserve(10).at >= first.at + 1.0
