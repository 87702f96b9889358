"""The limiter contract, run against every backend through ``make_limiter`` (see conftest).

Two kinds of tests live here:

* real-clock tests use each backend's own clock; their windows are long (30 s) so the
  reservations they inspect never expire during the test, and they assert on the *sign*
  or rough size of ``delay()``, never on elapsed time;
* fake-clock tests pass ``clock=``; they check exact timings (Redis then reads the fake
  clock instead of its server TIME, through test-only scripts).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re

import anyio
import pytest

from conftest import FakeClock, MakeLimiter, admitted_per_window, is_close
from mistral_ratelimit.config import SECONDS_PER_MONTH, Limit, RatelimitConfig
from mistral_ratelimit.errors import BudgetExhausted, RequestTooLarge, format_amount
from mistral_ratelimit.limiter import (
    Limiter,
    ObservedLimit,
    RateLimiter,
    Reservation,
    aacquire,
    acquire,
)

LONG = 30.0  # seconds: longer than any real-clock test runs


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def requests_limit(amount: float, per: float = LONG) -> list[Limit]:
    return [Limit(amount, per, "requests")]


def tokens_limit(amount: float, per: float = LONG) -> list[Limit]:
    return [Limit(amount, per, "tokens")]


# -- shape ---------------------------------------------------------------------------------


def test_backend_satisfies_the_protocol(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(5))
    assert isinstance(limiter, Limiter)
    assert isinstance(limiter.now(), float)


# -- bursts, waits and size -----------------------------------------------------------------


def test_a_full_burst_goes_at_once_and_the_next_waits_a_window(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(5))
    burst = [limiter.reserve(0) for _ in range(5)]
    assert [limiter.delay(r) for r in burst] == [0.0] * 5
    late = limiter.reserve(0)
    assert limiter.delay(late) > LONG - 5  # a sliding window: no early refill


def test_tokens_and_requests_are_taken_together(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter([Limit(3, LONG, "requests"), Limit(100, LONG, "tokens")])
    first = limiter.reserve(90)
    assert limiter.delay(first) == 0.0
    # Two requests of room left but only 10 tokens: the token window binds.
    assert limiter.delay(limiter.reserve(20)) > LONG - 5


@pytest.mark.parametrize(("tokens", "requests"), [(101, 1), (5, 4)])
def test_request_too_large_raises_at_once_naming_the_numbers(
    make_limiter: MakeLimiter, tokens: float, requests: float
) -> None:
    limiter = make_limiter([Limit(3, LONG, "requests"), Limit(100, LONG, "tokens")])
    with pytest.raises(RequestTooLarge) as info:
        limiter.reserve(tokens, requests)
    err = info.value
    if tokens > 100:
        assert (err.estimate, err.limit_amount, err.unit) == (101, 100, "tokens")
        assert "101" in str(err) and "100" in str(err)
    else:
        assert (err.estimate, err.limit_amount, err.unit) == (4, 3, "requests")
        assert "4 requests" in str(err) and "3 requests" in str(err)
    assert isinstance(err, ValueError)
    # Nothing was taken: a full-size request still goes at once.
    assert limiter.delay(limiter.reserve(100)) == 0.0


def test_request_of_exactly_the_window_amount_fits(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    assert limiter.delay(limiter.reserve(100)) == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "10", True])
def test_bad_costs_raise_value_error(make_limiter: MakeLimiter, bad: object) -> None:
    limiter = make_limiter(tokens_limit(100))
    with pytest.raises(ValueError, match="tokens"):
        limiter.reserve(bad)  # type: ignore[arg-type]


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_gives_everything_back(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter([Limit(5, LONG, "requests"), Limit(500, LONG, "tokens")])
    held = [limiter.reserve(100) for _ in range(8)]  # 5 now, 3 a window later
    assert limiter.delay(held[-1]) > 0
    for res in held:
        limiter.cancel(res)
    again = [limiter.reserve(100) for _ in range(5)]
    assert [limiter.delay(r) for r in again] == [0.0] * 5
    assert limiter.stats().tokens_reserved == 500
    assert limiter.stats().requests_cancelled == 8


def test_cancel_of_a_waiting_reservation_lets_later_ones_keep_their_turn(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(requests_limit(1))
    first = limiter.reserve(0)
    second = limiter.reserve(0)
    third = limiter.reserve(0)
    d2, d3 = limiter.delay(second), limiter.delay(third)
    assert 0 < d2 < d3
    limiter.cancel(second)
    assert limiter.delay(third) <= d3  # cancelling never pushes the others back
    assert limiter.delay(first) == 0.0


def test_cancel_twice_counts_once(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    res = limiter.reserve(60)
    limiter.cancel(res)
    limiter.cancel(res)
    stats = limiter.stats()
    assert stats.requests_cancelled == 1
    assert stats.tokens_reserved == 0
    assert limiter.delay(limiter.reserve(100)) == 0.0


def test_delay_of_a_cancelled_reservation_raises(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    res = limiter.reserve(60)
    limiter.cancel(res)
    with pytest.raises(BudgetExhausted):
        limiter.delay(res)


# -- settle ---------------------------------------------------------------------------------


def test_refund_makes_room_at_once(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    res = limiter.reserve(80)
    assert limiter.delay(res) == 0.0
    limiter.settle(res, 20)
    assert limiter.delay(limiter.reserve(80)) == 0.0
    assert limiter.delay(limiter.reserve(1)) > LONG - 5
    stats = limiter.stats()
    assert stats.tokens_refunded == 60
    assert stats.tokens_charged == 0


def test_debt_is_waited_out(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    res = limiter.reserve(50)
    assert limiter.delay(res) == 0.0
    limiter.settle(res, 150)  # the server used more than the window holds
    assert limiter.stats().tokens_charged == 100
    assert limiter.delay(limiter.reserve(1)) > LONG - 5


def test_settle_twice_changes_nothing(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    res = limiter.reserve(80)
    limiter.settle(res, 30)
    before = limiter.stats()
    limiter.settle(res, 0)
    limiter.settle(res, 500)
    assert limiter.stats() == before
    assert limiter.delay(limiter.reserve(70)) == 0.0  # 30 used: the second settle did not refund
    assert limiter.delay(limiter.reserve(1)) > 0  # ... nor did the third charge debt


def test_settle_after_cancel_changes_nothing(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    res = limiter.reserve(80)
    limiter.cancel(res)
    before = limiter.stats()
    limiter.settle(res, 500)
    assert limiter.stats() == before
    assert limiter.delay(limiter.reserve(100)) == 0.0


def test_refund_never_lifts_above_capacity(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    small = limiter.reserve(10)
    limiter.cancel(limiter.reserve(0))
    limiter.settle(small, 0)
    # An empty window holds 100, never more: refunds past zero are not credit.
    assert limiter.delay(limiter.reserve(100)) == 0.0
    assert limiter.delay(limiter.reserve(1)) > LONG - 5


def test_broken_usage_keeps_the_estimate(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    res = limiter.reserve(80)
    limiter.settle(res, math.nan)
    limiter.settle(res, 0)  # the broken report did not count as the settlement
    assert limiter.stats().tokens_refunded == 80


def test_refund_is_counted_once_with_several_token_windows(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter([Limit(1000, LONG, "tokens"), Limit(5000, 2 * LONG, "tokens")])
    res = limiter.reserve(100)
    limiter.settle(res, 40)
    stats = limiter.stats()
    assert stats.tokens_refunded == 60
    assert stats.tokens_reserved - stats.tokens_refunded + stats.tokens_charged == 40
    other = limiter.reserve(100)
    limiter.settle(other, 130)
    stats = limiter.stats()
    assert stats.tokens_charged == 30
    assert stats.tokens_reserved - stats.tokens_refunded + stats.tokens_charged == 170


# -- stats ----------------------------------------------------------------------------------


def test_stats_snapshot(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(
        RatelimitConfig(api_key="sk-x", requests_per_second=None, tokens_per_minute=1000)
    )
    empty = limiter.stats()
    assert (empty.requests_admitted, empty.in_flight, empty.queued) == (0, 0, 0)
    assert empty.paused_until == 0.0
    a = limiter.reserve(100)
    b = limiter.reserve(200)
    assert limiter.delay(a) == 0.0 and limiter.delay(b) == 0.0
    limiter.settle(a, 50)
    limiter.pause_for(0.0)
    stats = limiter.stats()
    assert stats.requests_admitted == 2
    assert stats.tokens_reserved == 300
    assert stats.tokens_refunded == 50
    assert stats.rate_limited_seen == 1
    assert stats.in_flight == 2  # granted and not yet released
    assert stats.wait_seconds_total >= 0 and stats.wait_seconds_max >= 0
    assert stats.limits == (Limit(1000, 60.0, "tokens"),)
    limiter.release(a)
    limiter.release(b)
    limiter.release(b)
    assert limiter.stats().in_flight == 0


def test_record_estimate_feeds_the_error_stats(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    limiter.record_estimate(110, 100)
    limiter.record_estimate(90, 100)
    limiter.record_estimate(5, 0)  # no actual usage: nothing to compare
    stats = limiter.stats()
    assert stats.estimate_samples == 2
    assert is_close(stats.estimate_error_mean, 0.0)
    assert is_close(stats.estimate_error_abs_mean, 0.1)


# -- concurrency cap ------------------------------------------------------------------------


def test_max_concurrency_caps_in_flight_in_arrival_order(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(100), max_concurrency=2)
    a, b, c, d = (limiter.reserve(0) for _ in range(4))
    assert limiter.delay(a) == 0.0 and limiter.delay(b) == 0.0
    assert limiter.delay(c) > 0 and limiter.delay(d) > 0
    assert (limiter.stats().in_flight, limiter.stats().queued) == (2, 2)
    limiter.release(a)
    assert limiter.delay(c) == 0.0  # first queued goes first
    assert limiter.delay(d) > 0
    limiter.release(a)  # releasing twice frees one slot only
    assert limiter.delay(d) > 0
    limiter.settle(b, 0)  # settling is not releasing: a stream holds its slot until closed
    assert limiter.delay(d) > 0
    limiter.release(b)
    assert limiter.delay(d) == 0.0
    assert (limiter.stats().in_flight, limiter.stats().queued) == (2, 0)


def test_cancel_of_a_queued_reservation(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(100), max_concurrency=1)
    a, b, c = (limiter.reserve(0) for _ in range(3))
    assert limiter.delay(a) == 0.0
    limiter.cancel(b)
    assert limiter.stats().queued == 1
    limiter.release(a)
    assert limiter.delay(c) == 0.0
    assert limiter.stats().in_flight == 1


def test_cancel_of_a_running_reservation_frees_its_slot(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(100), max_concurrency=1)
    a, b = limiter.reserve(0), limiter.reserve(0)
    assert limiter.delay(a) == 0.0
    limiter.cancel(a)
    assert limiter.delay(b) == 0.0


# -- pause ----------------------------------------------------------------------------------


def test_pause_holds_back_new_and_scheduled_reservations(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(100))
    booked = limiter.reserve(0)  # scheduled for now, not yet told to go
    limiter.pause_for(LONG)
    assert limiter.delay(booked) > LONG - 5
    assert limiter.delay(limiter.reserve(0)) > LONG - 5
    stats = limiter.stats()
    assert stats.rate_limited_seen == 1
    assert stats.paused_until > limiter.now() + LONG - 5


def test_a_pause_keeps_waiters_in_arrival_order(make_limiter: MakeLimiter) -> None:
    """Waiters booked before a 429 stay ahead of callers who arrive during the pause."""
    limiter = make_limiter(requests_limit(1))
    assert limiter.delay(limiter.reserve(0)) == 0.0
    a, b = limiter.reserve(0), limiter.reserve(0)  # a window and two windows from now
    limiter.pause_for(LONG * 1.5)
    newcomer = limiter.reserve(0)
    da, db, dn = limiter.delay(a), limiter.delay(b), limiter.delay(newcomer)
    assert LONG * 1.5 - 5 < da < db < dn


def test_pause_until_is_on_the_limiters_clock(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(100))
    pause_until = getattr(limiter, "pause_until", None)
    assert pause_until is not None, "the issue asks for pause_until(t)"
    pause_until(limiter.now() + LONG)
    assert limiter.delay(limiter.reserve(0)) > LONG - 5
    assert limiter.stats().rate_limited_seen == 0  # an explicit pause is not a 429


@pytest.mark.parametrize("seconds", [math.nan, -5.0, math.inf])
def test_nonsense_pauses_do_not_block_forever(make_limiter: MakeLimiter, seconds: float) -> None:
    limiter = make_limiter(requests_limit(100))
    limiter.pause_for(seconds)
    assert limiter.delay(limiter.reserve(0)) <= 3600.0


def test_a_granted_reservation_is_not_taken_back_by_a_pause(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(100))
    res = limiter.reserve(0)
    assert limiter.delay(res) == 0.0
    limiter.pause_for(LONG)
    assert limiter.delay(res) == 0.0


# -- anchor: a request counts from when it really left ---------------------------------------


def anchor(limiter: Limiter, res: Reservation, lag: float) -> None:
    hook = getattr(limiter, "anchor", None)
    assert callable(hook), "the transports anchor each request at when it really left"
    hook(res, lag)


def test_anchor_moves_a_late_request_and_the_waiter_behind_it(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(1))
    sent = limiter.reserve(0)
    assert limiter.delay(sent) == 0.0
    waiter = limiter.reserve(0)
    before = limiter.delay(waiter)
    anchor(limiter, sent, 10.0)  # it sat 10 s on a cold connection before it left
    after = limiter.delay(waiter)
    assert after > before + 5
    # The charge stays where it moved: with the waiter cancelled, a newcomer waits for it,
    # and for it only (the waiter's booking was given back where it had moved to).
    limiter.cancel(waiter)
    assert LONG + 5 < limiter.delay(limiter.reserve(0)) < 2 * LONG
    assert limiter.stats().requests_admitted == 1


def test_the_margin_counts_from_the_departure(make_limiter: MakeLimiter) -> None:
    """The margin is for what no client sees (the way to the server, its own queue), so it
    counts from when the request really left: a late departure is never taken out of it."""
    limiter = make_limiter(requests_limit(1), window_margin=5.0)
    sent = limiter.reserve(0)
    assert limiter.delay(sent) == 0.0
    waiter = limiter.reserve(0)
    anchor(limiter, sent, 0.001)  # a millisecond: not worth moving anyone
    assert limiter.delay(waiter) < LONG + 5 + 0.5
    anchor(limiter, sent, 4.5)  # less than the margin, yet all of it counts
    assert LONG + 5 + 4.0 < limiter.delay(waiter) < LONG + 5 + 5.5


def test_anchor_ignores_bad_lags_and_requests_not_sent(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(1))
    sent = limiter.reserve(0)
    assert limiter.delay(sent) == 0.0
    waiter = limiter.reserve(0)
    before = limiter.delay(waiter)
    for lag in (math.nan, math.inf, -5.0):
        anchor(limiter, sent, lag)
    anchor(limiter, waiter, 10.0)  # not granted: it has not left
    limiter.settle(sent, 0)
    anchor(limiter, sent, 10.0)  # settled: it is over, its window stays as it was
    assert limiter.delay(waiter) <= before
    limiter.cancel(waiter)
    anchor(limiter, waiter, 10.0)
    assert limiter.stats().requests_cancelled == 1


def test_an_anchor_counts_from_the_booked_time_and_never_compounds(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(requests_limit(1, 10.0))
    sent = limiter.reserve(0)
    assert limiter.delay(sent) == 0.0
    anchor(limiter, sent, 3.0)
    anchor(limiter, sent, 3.0)  # the same late departure, told twice
    anchor(limiter, sent, 1.0)  # an earlier one never moves it back
    assert 12.0 < limiter.delay(limiter.reserve(0)) < 14.5


def test_an_anchor_keeps_waiters_in_arrival_order(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(1))
    sent = limiter.reserve(0)
    assert limiter.delay(sent) == 0.0
    a, b = limiter.reserve(0), limiter.reserve(0)  # a window and two windows from now
    anchor(limiter, sent, 10.0)
    newcomer = limiter.reserve(0)
    da, db, dn = limiter.delay(a), limiter.delay(b), limiter.delay(newcomer)
    assert LONG + 5 < da < db < dn


def test_a_rebooked_waiter_never_moves_earlier(make_limiter: MakeLimiter) -> None:
    """Its caller sleeps until the time it was given and only then asks again; booked
    earlier meanwhile, it would count from before it really leaves, and the server, which
    counts it from its arrival, would still hold it when the limiter thinks it gone."""
    limiter = make_limiter([Limit(3, LONG, "requests"), Limit(100, LONG, "tokens")])
    big, small = limiter.reserve(100), limiter.reserve(0)
    assert limiter.delay(big) == 0.0 and limiter.delay(small) == 0.0
    waiter = limiter.reserve(50)
    told = limiter.delay(waiter)
    assert told > LONG - 5  # the tokens window is full
    limiter.settle(big, 0)  # the room comes back, but the waiter is asleep until `told`
    anchor(limiter, small, 10.0)  # re-books every waiter
    assert limiter.delay(waiter) > told - 5


# -- the server's view ---------------------------------------------------------------------


def test_adopt_lower_remaining_makes_later_reservations_wait(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(1000, 60.0))
    assert limiter.delay(limiter.reserve(100)) == 0.0
    limiter.adopt([ObservedLimit("tokens", 60.0, 1000, 150)])
    assert limiter.delay(limiter.reserve(150)) == 0.0
    assert limiter.delay(limiter.reserve(10)) > 30


def test_adopt_higher_remaining_gives_no_credit(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(1000, 60.0))
    assert limiter.delay(limiter.reserve(900)) == 0.0
    limiter.adopt([ObservedLimit("tokens", 60.0, 1000, 1000)])
    assert limiter.delay(limiter.reserve(200)) > 30


def test_adopt_replaces_tier_defaults_with_the_servers_limits(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(RatelimitConfig(api_key="sk-x"))  # 1 rps, 500k tpm: tier defaults
    limiter.adopt(
        [
            ObservedLimit("requests", 60.0, 720, 719),
            ObservedLimit("tokens", 60.0, 5_000_000, 4_999_000),
        ]
    )
    limits = set(limiter.stats().limits)
    # The per-minute rung, with its per-second pace (720/min is 12/s), replaces the defaults.
    assert limits == {
        Limit(720, 60.0, "requests"),
        Limit(12, 1.0, "requests"),
        Limit(5_000_000, 60.0, "tokens"),
    }
    # The tier default of 1 rps is gone: a burst goes at once.
    burst = [limiter.reserve(1000) for _ in range(10)]
    assert [limiter.delay(r) for r in burst] == [0.0] * 10


def test_adopt_never_replaces_explicit_limits(make_limiter: MakeLimiter) -> None:
    cfg = RatelimitConfig(api_key="sk-x", requests_per_second=2.0, tokens_per_minute=1000)
    limiter = make_limiter(cfg)
    before = set(limiter.stats().limits)
    limiter.adopt(
        [
            ObservedLimit("requests", 60.0, 720, 720),
            ObservedLimit("tokens", 60.0, 5_000_000, 5_000_000),
        ]
    )
    # The user's windows stay as they are; a window length they did not set is learnt
    # (720 a minute), one they did set is not (5M tokens a minute: they said 1000).
    assert set(limiter.stats().limits) == before | {Limit(720, 60.0, "requests")}


def test_two_limits_on_one_window_are_the_tighter_one(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """Same unit, same length: the smaller binds, and is what the limiter reports. (Redis
    keeps one ring per unit and length; two limits on one ring once let a request that
    left late go with 3000 tokens in a 2000-token window.)"""
    limiter = make_limiter(
        [
            Limit(2, 0.5, "requests"),
            Limit(12_345.5, 0.5, "tokens"),
            Limit(2000, 0.5, "tokens"),
        ],
        clock=clock,
        window_margin=0.0,
    )
    assert set(limiter.stats().limits) == {Limit(2, 0.5, "requests"), Limit(2000, 0.5, "tokens")}
    first, second = limiter.reserve(1000), limiter.reserve(2000)
    clock.advance(1.0)  # both callers wake late; the first goes now, a second after its time
    assert limiter.delay(first) == 0.0
    assert limiter.delay(second) > 0.4  # 2000 more would make 3000 in the window
    clock.advance(limiter.delay(second))
    assert limiter.delay(second) == 0.0
    assert second.at - first.at >= 0.5


def test_a_value_the_user_set_beats_a_default_on_the_same_window(
    make_limiter: MakeLimiter,
) -> None:
    cfg = RatelimitConfig(api_key="sk-x", limits=(Limit(900_000, 60.0, "tokens"),))
    limiter = make_limiter(cfg)
    token_limits = [lim for lim in limiter.stats().limits if lim.unit == "tokens"]
    assert Limit(900_000, 60.0, "tokens") in token_limits
    assert [lim.per_seconds for lim in token_limits].count(60.0) == 1
    assert limiter.delay(limiter.reserve(800_000)) == 0.0  # the 500k default is not enforced


def test_two_reports_on_one_window_learn_the_tighter(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(RatelimitConfig(api_key="sk-x"))
    limiter.adopt(
        [
            ObservedLimit("tokens", 60.0, 5_000_000, None),
            ObservedLimit("tokens", 60.0, 2_000_000, None),
        ]
    )
    token_limits = [lim for lim in limiter.stats().limits if lim.unit == "tokens"]
    assert [lim for lim in token_limits if lim.per_seconds == 60.0] == [
        Limit(2_000_000, 60.0, "tokens")
    ]


def test_a_booking_counts_once_in_the_windows_that_replace_two(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """What was booked counts in every window that discovery brings: in a new 10 s window
    learnt beside a minute that replaced the default's (on Redis it kept the minute's ring
    and the new window started empty), and once, not once from each, in a window that
    replaces two."""
    cfg = RatelimitConfig(api_key="sk-x", requests_per_second=None)
    limiter = make_limiter(cfg, clock=clock, window_margin=0.0)
    first = limiter.reserve(100_000)
    assert limiter.delay(first) == 0.0
    limiter.adopt(
        [
            ObservedLimit("tokens", 60.0, 1_000_000, None),
            ObservedLimit("tokens", 10.0, 400_000, None),
        ]
    )
    over = limiter.reserve(350_000)  # with `first`, more than 400k in 10 s
    assert limiter.delay(over) > 5
    limiter.cancel(over)
    clock.advance(0.5)
    limiter.adopt([ObservedLimit("tokens", 30.0, 300_000, None)])
    assert Limit(300_000, 30.0, "tokens") in limiter.stats().limits
    beside = limiter.reserve(200_000)  # 100k + 200k: the whole new window, not 400k of it
    assert limiter.delay(beside) == 0.0
    assert limiter.delay(limiter.reserve(1)) > 25


def test_a_window_learnt_beside_the_users_counts_what_was_booked(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """Only windows the user set, then the server reports a month: the new window holds the
    requests booked before it, as the user's windows do."""
    cfg = RatelimitConfig(api_key="sk-x", requests_per_second=None, tokens_per_minute=1e6)
    limiter = make_limiter(cfg, clock=clock)
    assert limiter.delay(limiter.reserve(100_000)) == 0.0
    limiter.adopt([ObservedLimit("tokens", SECONDS_PER_MONTH, 150_000, None)])
    with pytest.raises(BudgetExhausted):  # 100k + 100k: over the month's 150k
        limiter.delay(limiter.reserve(100_000))


def test_a_request_larger_than_a_learnt_month_says_so(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """Larger than the whole monthly budget the server reported, after a little of it was
    used: it would wait a month for that budget to be empty, and fails fast saying why,
    not that the budget is spent."""
    cfg = RatelimitConfig(api_key="sk-x", requests_per_second=None)
    limiter = make_limiter(cfg, clock=clock)
    limiter.adopt([ObservedLimit("tokens", SECONDS_PER_MONTH, 1_000_000_000, None)])
    assert limiter.delay(limiter.reserve(14)) == 0.0
    with pytest.raises(BudgetExhausted) as info:
        limiter.delay(limiter.reserve(2_000_000_000))
    message = str(info.value)
    assert "may need 2,000,000,000 tokens, more than the whole 1,000,000,000 tokens" in message
    assert "is spent" not in message


def test_learnt_limits_follow_the_server(make_limiter: MakeLimiter) -> None:
    """A tier upgrade, or a wrong header corrected by the next response, is learnt: limits
    taken from the server are never frozen, and a tiny wrong one refuses nothing."""
    limiter = make_limiter(RatelimitConfig(api_key="sk-x"))
    limiter.adopt([ObservedLimit("tokens", 60.0, 10, None)])  # a proxy's bogus header
    assert Limit(10, 60.0, "tokens") in limiter.stats().limits
    first = limiter.reserve(1000)  # larger than the bogus window, yet not refused
    assert limiter.delay(first) == 0.0
    limiter.adopt(
        [
            ObservedLimit("tokens", 60.0, 5_000_000, 4_999_000),
            ObservedLimit("requests", 60.0, 720, 719),
        ]
    )
    token_limits = [lim for lim in limiter.stats().limits if lim.unit == "tokens"]
    assert token_limits == [Limit(5_000_000, 60.0, "tokens")]
    assert limiter.delay(limiter.reserve(1_000_000)) == 0.0


def test_cancel_and_settle_still_work_after_discovery(make_limiter: MakeLimiter) -> None:
    """Reservations made before discovery give back to the windows they booked in."""
    limiter = make_limiter(RatelimitConfig(api_key="sk-x", tokens_per_minute=1000.0))
    settled = limiter.reserve(400)
    cancelled = limiter.reserve(400)  # booked a second later, behind the 1 rps default
    limiter.adopt([ObservedLimit("requests", 60.0, 720, 720)])  # replaces the 1 rps default
    limiter.cancel(cancelled)
    limiter.settle(settled, 100)
    # 100 of the explicit 1000 tokens are used: 900 more go at once.
    assert limiter.delay(limiter.reserve(900)) == 0.0
    assert limiter.delay(limiter.reserve(1)) > 30


def test_discovery_keeps_counting_requests_booked_before_it(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(RatelimitConfig(api_key="sk-x"), clock=clock)  # tier default: 1 rps
    early = [limiter.reserve(0) for _ in range(10)]  # booked over the next ~9 s
    limiter.adopt([ObservedLimit("requests", 60.0, 12, 11)])  # the server counted one so far
    late = [limiter.reserve(0) for _ in range(4)]
    ats = [r.at for r in early + late]
    assert ats == sorted(ats)
    # The ten booked at 1 rps still go; the new 12-per-minute window counts them.
    for res in late:
        in_window = [t for t in ats if res.at - 60.0 < t <= res.at]
        assert len(in_window) <= 12


def test_a_request_larger_than_a_learnt_limit_waits_for_an_empty_window(
    make_limiter: MakeLimiter,
) -> None:
    """Only a limit the user set refuses a request outright; against one the server
    reported, a larger request goes once that window is empty (the server decides)."""
    limiter = make_limiter(RatelimitConfig(api_key="sk-x"), max_concurrency=1)
    running = limiter.reserve(0)
    big = limiter.reserve(100_000)  # fits the 500k tier default; queued behind `running`
    limiter.adopt(
        [
            ObservedLimit("requests", 60.0, 720, 719),
            ObservedLimit("tokens", 60.0, 50_000, 50_000),
        ]
    )
    limiter.release(running)
    while limiter.delay(big) > 0:
        pass
    limiter.release(big)
    second = limiter.reserve(100_000)
    assert limiter.delay(second) > 30  # the window is full: it waits for it to empty
    limiter.cancel(second)
    explicit = make_limiter(RatelimitConfig(api_key="sk-x", tokens_per_minute=50_000))
    with pytest.raises(RequestTooLarge):
        explicit.reserve(100_000)


def test_adopt_ignores_garbage(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(1000, 60.0))
    limiter.adopt(
        [
            ObservedLimit("tokens", 60.0, None, None),
            ObservedLimit("tokens", 60.0, math.nan, math.nan),
            ObservedLimit("tokens", 60.0, -1, -1),
        ]
    )
    assert limiter.delay(limiter.reserve(1000)) == 0.0
    assert limiter.stats().limits == (Limit(1000, 60.0, "tokens"),)


# -- waiting helpers -------------------------------------------------------------------------


def test_acquire_returns_immediately_when_there_is_room(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    res = acquire(limiter, 40, sleep=lambda s: pytest.fail(f"slept {s}"))
    assert res.tokens == 40
    assert limiter.stats().requests_admitted == 1


def test_acquire_cancels_when_the_wait_is_interrupted(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100))
    acquire(limiter, 100)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        acquire(limiter, 50, sleep=interrupted)
    stats = limiter.stats()
    assert stats.requests_cancelled == 1
    assert stats.tokens_reserved == 100


@pytest.mark.anyio
async def test_aacquire_cancelled_while_waiting_gives_back(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(requests_limit(1))
    await aacquire(limiter, 0)
    with anyio.move_on_after(0.05):
        await aacquire(limiter, 0)
        pytest.fail("the second request had to wait a window")
    stats = limiter.stats()
    assert (stats.requests_admitted, stats.requests_cancelled) == (1, 1)


@pytest.mark.anyio
async def test_async_twins_match_the_sync_calls(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(tokens_limit(100), max_concurrency=1)
    res = await limiter.areserve(60)
    assert await limiter.adelay(res) == 0.0
    waiting = await limiter.areserve(10)
    assert await limiter.adelay(waiting) > 0
    await limiter.asettle(res, 30)
    await limiter.arelease(res)
    assert await limiter.adelay(waiting) == 0.0
    await limiter.acancel(waiting)
    await limiter.apause_for(0.0, rate_limited=False)
    await limiter.aadopt([])
    stats = limiter.stats()
    assert (stats.tokens_reserved, stats.tokens_refunded, stats.requests_cancelled) == (60, 30, 1)


# -- fake clock -----------------------------------------------------------------------------


def test_waits_are_exact_on_a_fake_clock(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    limiter = make_limiter(requests_limit(2, 10.0), clock=clock)
    ats = [limiter.reserve(0).at - clock() for _ in range(6)]
    assert ats[:2] == [0.0, 0.0]
    # Each later pair waits one window, plus at most one slot (1%) of rounding.
    for later, expected in ((ats[2:4], 10.0), (ats[4:6], 20.0)):
        for at in later:
            assert expected - 1e-9 <= at <= expected * 1.01 + 1e-9
    assert ats == sorted(ats)


def test_window_margin_is_added_to_every_window(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(requests_limit(1, 10.0), clock=clock, window_margin=0.5)
    limiter.reserve(0)
    wait = limiter.reserve(0).at - clock()
    assert 10.5 - 1e-9 <= wait <= 10.6 + 1e-9


def test_a_full_window_is_free_again_after_it_passes(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(tokens_limit(100, 10.0), clock=clock)
    acquire(limiter, 100, sleep=clock.sleep)
    clock.advance(10.1 + 1e-6)
    res = limiter.reserve(100)
    assert limiter.delay(res) == 0.0


def test_no_overshoot_at_start_up(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    """The token-bucket bug: a full bucket plus its refill admits ~2x in the first window."""
    limiter = make_limiter(requests_limit(10, 1.0), clock=clock)
    grants = []
    for _ in range(100):
        acquire(limiter, 0, sleep=clock.sleep)
        grants.append((clock(), 1.0))
        clock.advance(0.013)
    assert admitted_per_window(grants, 1.0) <= 10


def test_pause_moves_scheduled_reservations_behind_it(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(requests_limit(1, 1.0), clock=clock)
    first, second, third = (limiter.reserve(0) for _ in range(3))
    assert limiter.delay(first) == 0.0
    clock.advance(0.5)
    limiter.pause_for(5.0)
    pause_end = clock() + 5.0
    assert is_close(limiter.stats().paused_until, pause_end)
    new = limiter.reserve(0)
    # delay() re-books each waiter behind the pause; none goes before it ends.
    for res in (second, third, new):
        assert limiter.delay(res) >= pause_end - clock() - 1e-9
    for res in (second, third, new):  # each caller wakes when its turn comes
        clock.set(res.at)
        assert limiter.delay(res) == 0.0
    grants = [(r.at, 1.0) for r in (first, second, third, new)]
    assert admitted_per_window(grants, 1.0) <= 1
    assert limiter.stats().tokens_reserved == 0


def test_pause_clamped_to_an_hour(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    limiter = make_limiter(requests_limit(100), clock=clock)
    limiter.pause_for(10 * 86_400)
    assert is_close(limiter.reserve(0).at - clock(), 3600.0)


def test_fifo_a_large_request_is_not_starved(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    limiter = make_limiter(tokens_limit(100, 1.0), clock=clock)
    for _ in range(10):
        limiter.reserve(10)
    big = limiter.reserve(100)  # needs the whole window
    small = [limiter.reserve(1) for _ in range(50)]
    assert all(s.at >= big.at for s in small)
    # It goes once the window of the first ten has passed, not after the stream of small ones.
    assert big.at - clock() <= 1.0 * 1.01 + 1e-9


def test_debt_is_waited_out_exactly(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    limiter = make_limiter(tokens_limit(100, 10.0), clock=clock)
    res = acquire(limiter, 10, sleep=clock.sleep)
    clock.advance(2.0)
    limiter.settle(res, 250)  # 150 over the window: it counts where the request went
    nxt = limiter.reserve(1)
    assert 10.0 - 1e-9 <= nxt.at - (clock() - 2.0) <= 10.1 + 1e-9


def test_debt_on_an_expired_slot_counts_from_now(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(tokens_limit(100, 10.0), clock=clock)
    res = acquire(limiter, 10, sleep=clock.sleep)
    clock.advance(30.0)  # a long stream: its window has passed before the usage arrives
    limiter.reserve(0)  # lets the limiter forget the old slot
    limiter.settle(res, 250)
    nxt = limiter.reserve(1)
    assert nxt.at - clock() >= 10.0 - 1e-9


def test_monthly_budget_fails_fast(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    cfg = RatelimitConfig(
        api_key="sk-x", requests_per_second=None, tokens_per_minute=None, tokens_per_month=1000
    )
    limiter = make_limiter(cfg, clock=clock)
    acquire(limiter, 1000, sleep=clock.sleep)
    with pytest.raises(BudgetExhausted, match="1,000 tokens"):
        limiter.reserve(1)


@pytest.mark.parametrize(("per_seconds", "fails_fast"), [(86_400, True), (86_399, False)])
def test_a_long_wait_on_a_window_of_a_day_or_more_fails_fast(
    make_limiter: MakeLimiter, per_seconds: float, fails_fast: bool
) -> None:
    # The rule the README states: more than 60 s of waiting on a window of at least a day
    # raises BudgetExhausted at once; on any shorter window, it is waited for.
    limiter = make_limiter([Limit(2, per_seconds, "requests")])
    assert [limiter.delay(limiter.reserve(0)) for _ in range(2)] == [0.0, 0.0]
    if fails_fast:
        with pytest.raises(BudgetExhausted, match="2 requests per 86,400 s budget is spent"):
            limiter.reserve(0)
    else:
        assert limiter.delay(limiter.reserve(0)) > per_seconds - 5


def test_messages_write_counts_with_thousands_separators_not_e_notation() -> None:
    # "request needs 4.80001e+06 tokens" made users count digits; a count is written out.
    err = RequestTooLarge(4_800_010, 1_000_000, 60, "tokens")
    assert str(err).startswith(
        "request needs 4,800,010 tokens but the limit allows only 1,000,000 tokens per 60 s;"
    )
    assert "1,000,000,000 tokens" in str(RequestTooLarge(1e9, 100_000, 60, "tokens"))
    assert "needs 12,345.5 tokens" in str(RequestTooLarge(12_345.5, 10_000, 60, "tokens"))
    assert [format_amount(x) for x in (0.8333333, 2_592_000.0, 0.0, 999.25)] == [
        "0.833",
        "2,592,000",
        "0",
        "999.25",
    ]
    month = RateLimiter(RatelimitConfig(requests_per_second=None, tokens_per_month=1e9))
    assert "1,000,000,000 tokens/2,592,000s" in repr(month)


def test_queued_waiters_get_slots_in_arrival_order(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(requests_limit(1000), clock=clock, max_concurrency=3)
    running = [limiter.reserve(0) for _ in range(3)]
    queued = [limiter.reserve(0) for _ in range(20)]
    for i, res in enumerate(queued):
        assert all(limiter.delay(r) > 0 for r in queued[i:])
        limiter.release(running.pop(0))
        assert limiter.delay(res) == 0.0
        running.append(res)


def test_limiter_survives_two_asyncio_runs_with_queued_waiters(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(requests_limit(2, 60.0))

    async def first_run() -> None:
        await aacquire(limiter, 0)
        for _ in range(5):  # these queue a window later; the run ends under them
            asyncio.get_running_loop().create_task(aacquire(limiter, 0))
        await asyncio.sleep(0.05)

    asyncio.run(first_run())
    stats = limiter.stats()
    assert (stats.requests_admitted, stats.requests_cancelled) == (2, 4)

    async def second_run() -> float:
        res = await limiter.areserve(0)
        return await limiter.adelay(res)

    # Two went at once; the four cancelled by the end of the first run gave their bookings
    # back, so the next one waits for the window of those two only (60 s), not behind the
    # bookings of the cancelled four (120 s).
    wait = asyncio.run(second_run())
    assert 0 < wait <= 60.0 * 1.01 + 0.5


@pytest.mark.parametrize("first_to_wake", ["earlier", "later"])
def test_waiters_woken_late_never_send_two_in_one_window(
    make_limiter: MakeLimiter, clock: FakeClock, first_to_wake: str
) -> None:
    """1 per 10 s: r2 is due at ~10.1 s and r3 at ~20.2 s; both callers wake 0.3 s after r3
    was due. Whichever asks first goes, and is anchored at when it left; the other must
    wait a window from then, not go in the same instant."""
    limiter = make_limiter(requests_limit(1, 10.0), clock=clock, window_margin=0.025)
    assert limiter.delay(limiter.reserve(0)) == 0.0
    r2, r3 = limiter.reserve(0), limiter.reserve(0)
    assert 10.0 < r2.at - clock() < 10.3 and 20.0 < r3.at - clock() < 20.5
    clock.set(r3.at + 0.3)
    first, second = (r2, r3) if first_to_wake == "earlier" else (r3, r2)
    went_at = clock()
    assert limiter.delay(first) == 0.0
    anchor(limiter, first, went_at - first.due_at)  # it left now, late
    wait = limiter.delay(second)
    assert 10.0 - 0.025 - 1e-9 <= wait <= 10.0 + 0.025 + 0.1 + 1e-9
    clock.advance(wait)
    assert limiter.delay(second) == 0.0
    assert clock() - went_at >= 10.0 - 1e-9


def test_a_waiter_woken_late_counts_from_when_it_went(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """Without any anchor from the caller: a grant given late counts from the grant, so the
    next booking waits a window from then (the caller cannot have gone earlier)."""
    limiter = make_limiter(requests_limit(1, 10.0), clock=clock, window_margin=0.025)
    assert limiter.delay(limiter.reserve(0)) == 0.0
    late = limiter.reserve(0)
    clock.set(late.at + 5.0)
    went_at = clock()
    assert limiter.delay(late) == 0.0
    nxt = limiter.reserve(0)
    assert nxt.at - went_at >= 10.0 - 1e-9


def test_acquire_logs_the_wait_at_debug_and_nothing_when_it_went_at_once(
    make_limiter: MakeLimiter, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = make_limiter(requests_limit(1, 10.0), clock=clock)
    with caplog.at_level(logging.DEBUG, logger="mistral_ratelimit"):
        acquire(limiter, 123, sleep=clock.sleep)
        assert not caplog.records
        acquire(limiter, 4567, sleep=clock.sleep)
    (record,) = caplog.records
    assert record.name == "mistral_ratelimit" and record.levelno == logging.DEBUG
    waited = float(re.search(r"waited ([0-9.]+) s", record.getMessage()).group(1))  # type: ignore[union-attr]
    assert 10.0 <= waited <= 10.2
    assert "4567" not in record.getMessage()


@pytest.mark.anyio
async def test_aacquire_logs_the_wait_at_debug(
    make_limiter: MakeLimiter, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = make_limiter(requests_limit(1, 0.2))
    with caplog.at_level(logging.DEBUG, logger="mistral_ratelimit"):
        await aacquire(limiter, 0)
        await aacquire(limiter, 0)
    messages = [r.getMessage() for r in caplog.records if r.name == "mistral_ratelimit"]
    assert len([m for m in messages if m.startswith("waited ")]) == 1


def test_bookings_made_before_discovery_move_with_a_late_departure(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """Waiters booked against the tier defaults, then the first response tells the real
    limits: one of them leaving late must still push those behind it back, or the server
    sees two requests in one of its seconds (the soak's one 429 at the server)."""
    limiter = make_limiter(RatelimitConfig(api_key="sk-x"), clock=clock, window_margin=0.025)
    first = limiter.reserve(1)
    assert limiter.delay(first) == 0
    second, third = limiter.reserve(1), limiter.reserve(1)
    limiter.adopt([ObservedLimit("requests", 60.0, 60, 59)])  # 60 a minute, so 1 a second
    clock.advance(limiter.delay(second))
    assert limiter.delay(second) == 0
    left = clock() + 0.3  # its request left 300 ms after it was told to go
    limiter.anchor(second, 0.3)
    clock.advance(limiter.delay(third))
    while (wait := limiter.delay(third)) > 0:
        clock.advance(wait)
    assert clock() >= left + 1.0  # a whole second after the second really went
    # Nothing was lost or counted twice: three requests, in the windows that replaced them.
    limiter.cancel(third)
    assert limiter.stats().requests_admitted == 3


def test_a_booking_made_before_discovery_gives_everything_back(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(RatelimitConfig(api_key="sk-x"), clock=clock, window_margin=0.0)
    first = limiter.reserve(10)
    assert limiter.delay(first) == 0
    waiting = limiter.reserve(10)
    due = limiter.delay(waiting)
    assert due > 0
    limiter.adopt([ObservedLimit("requests", 60.0, 60, 59)])
    limiter.cancel(waiting)
    # Its place and its charge in the discovered windows are free again.
    again = limiter.reserve(10)
    assert limiter.delay(again) == pytest.approx(due, abs=0.02)


def test_a_months_remainder_is_not_adopted(make_limiter: MakeLimiter) -> None:
    """One response saying nothing is left this month must not refuse every request for 30
    days: nothing would be sent again to learn otherwise (a 429 saying so fails fast)."""
    limiter = make_limiter(RatelimitConfig(api_key="sk-x", tokens_per_month=1_000_000))
    limiter.adopt([ObservedLimit("tokens", SECONDS_PER_MONTH, 1_000_000, 0)])
    assert limiter.delay(limiter.reserve(1000)) == 0.0
