"""Property tests of the engine on a fake clock (hypothesis): the in-memory backend, and the
main properties again on Redis (through its test-only ``_clock``).

Random arrival patterns, costs, cancels, settles, pauses and clock jumps. After every step
the engine's decisions are checked against a model kept by the test itself:

* soundness of each booking: when a reservation is booked at ``at``, the amounts the engine
  knew of (estimates, or actual usage once settled) of every other live reservation in the
  window ending at ``at``, plus its own cost, fit in every limit;
* the window invariant: in no window of ``per_seconds`` do the admitted amounts exceed the
  limit, counting each reservation at min(estimate, actual) (debt may overshoot, and is
  checked separately: it is waited out by the bookings made after it);
* conservation: reserved - refunded + charged equals the settled actuals plus the
  unsettled estimates; cancelling everything gives the whole window back at once;
* order: live reservations go in arrival order, and none waits more than one window
  past the previous booking (a large request is never starved);
* idempotence: settling twice, settling after a cancel, cancelling or releasing twice
  leave the engine indistinguishable from one that never saw the extra calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from conftest import CLOCK_START, FakeClock, admitted_per_window, approx_le, is_close
from mistral_ratelimit.config import Limit, RatelimitConfig
from mistral_ratelimit.errors import RequestTooLarge, format_amount
from mistral_ratelimit.limiter import Limiter, RateLimiter, Reservation, State
from mistral_ratelimit.limiter.window import SLOTS_PER_WINDOW

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- scenario ------------------------------------------------------------------------------


@dataclass
class Scenario:
    limits: list[Limit]
    margin: float
    start: float

    @property
    def max_tokens(self) -> float:
        return min(lim.amount for lim in self.limits if lim.unit == "tokens")

    @property
    def max_requests(self) -> float:
        return min(lim.amount for lim in self.limits if lim.unit == "requests")

    @property
    def longest(self) -> float:
        return max(lim.per_seconds for lim in self.limits)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    periods = st.sampled_from([0.5, 1.0, 2.5, 10.0, 60.0])
    limits = [
        Limit(draw(st.sampled_from([1, 2, 3, 5, 10])), draw(periods), "requests"),
        Limit(draw(st.sampled_from([100, 1000, 12_345.5])), draw(periods), "tokens"),
    ]
    if draw(st.booleans()):
        limits.append(Limit(draw(st.sampled_from([2_000, 50_000])), draw(periods), "tokens"))
    margin = draw(st.sampled_from([0.0, 0.025]))
    start = CLOCK_START + draw(st.floats(0, 1e6, allow_nan=False, allow_infinity=False))
    return Scenario(limits, margin, start)


@dataclass
class Advance:
    seconds: float
    wake: bool = False  # waiters wake at their time and call delay(), as sleepers do


@dataclass
class Reserve:
    fraction: float  # of the tightest token window
    requests: int


@dataclass
class Cancel:
    pick: int


@dataclass
class Settle:
    pick: int
    ratio: float  # actual = ratio * estimate


@dataclass
class Grant:
    """Every waiter whose time has come calls delay() and goes."""


@dataclass
class Pause:
    seconds: float


Op = Advance | Reserve | Cancel | Settle | Grant | Pause


def ops(*, debt: bool, pauses: bool, always_wake: bool = False) -> st.SearchStrategy[list[Op]]:
    ratio = st.floats(0, 3 if debt else 1, allow_nan=False)
    choices: list[st.SearchStrategy[Op]] = [
        st.builds(
            Advance, st.one_of(st.just(0.0), st.floats(0, 5), st.floats(0, 90)), st.booleans()
        ),
        st.builds(Reserve, st.floats(0, 1), st.integers(0, 2)),
        st.builds(Reserve, st.sampled_from([0.0, 0.5, 1.0]), st.just(1)),
        st.builds(Cancel, st.integers(0, 10_000)),
        st.builds(Settle, st.integers(0, 10_000), ratio),
        st.just(Grant()),
    ]
    if pauses:
        choices.append(st.builds(Pause, st.floats(0, 30)))
    if always_wake:
        choices[0] = st.builds(Advance, st.floats(0, 30), st.just(True))
    return st.lists(st.one_of(*choices), max_size=60)


# -- model ---------------------------------------------------------------------------------


@dataclass
class Entry:
    res: Reservation
    estimate: float
    requests: float
    actual: float | None = None  # set once settled
    settled_at: float | None = None
    cancelled: bool = False  # cancelled before it was settled: gave everything back
    cancel_called: bool = False
    booked_at: float = 0.0  # clock when (re)booked

    @property
    def known_tokens(self) -> float:
        return self.estimate if self.actual is None else self.actual

    def cost(self, lim: Limit, tokens: float | None = None) -> float:
        if lim.unit == "requests":
            return self.requests
        return self.known_tokens if tokens is None else tokens


@dataclass
class Run:
    sc: Scenario
    clock: FakeClock
    limiter: Limiter
    entries: list[Entry] = field(default_factory=list)
    tail: float = -math.inf
    #: Redis: a waiter learns that a pause or an anchor re-booked it only when it next asks,
    #: so the times the model can check are those of requests told to go. The order and
    #: wait-bound checks, which read every waiter's time, run on the in-memory backend.
    lazy: bool = False

    @classmethod
    def start(cls, sc: Scenario, backend: str = "memory") -> Run:
        clock = FakeClock(sc.start)
        cfg = RatelimitConfig(api_key="sk-test")
        limiter: Limiter
        if backend == "memory":
            limiter = RateLimiter(cfg, limits=sc.limits, window_margin=sc.margin, clock=clock)
        else:
            from mistral_ratelimit.redis import RedisRateLimiter
            from redis_server import fresh_key, shared_server

            limiter = RedisRateLimiter(
                shared_server().url,
                config=cfg,
                key=fresh_key(),
                limits=sc.limits,
                window_margin=sc.margin,
                on_backend_error="fail",
                lease_seconds=1e9,  # leases on the fake clock: its jumps must not reap
                _clock=clock,
            )
        return cls(sc, clock, limiter, lazy=backend != "memory")

    def known(self) -> list[Entry]:
        """Live entries whose ``res.at`` is the engine's (see ``lazy``)."""
        return [e for e in self.live() if not self.lazy or e.res.state is State.GRANTED]

    def live(self) -> list[Entry]:
        return [e for e in self.entries if not e.cancelled]

    def pick(self, n: int) -> Entry | None:
        return self.entries[n % len(self.entries)] if self.entries else None

    def reserve(self, fraction: float, requests: int) -> Entry:
        tokens = fraction * self.sc.max_tokens
        requests = min(requests, int(self.sc.max_requests))
        prev_tail = max((e.res.at for e in self.live()), default=-math.inf)
        res = self.limiter.reserve(tokens, requests)
        entry = Entry(res, tokens, float(requests), booked_at=self.clock())
        self.entries.append(entry)
        self.check_booking(entry)
        self.check_wait_bounded(entry, prev_tail)
        return entry

    def check_booking(self, entry: Entry) -> None:
        """The booking fits every limit given what the engine knew when it made it."""
        at = entry.res.at
        assert at >= self.clock()
        for lim in self.sc.limits:
            span = lim.per_seconds + self.sc.margin
            others = sum(
                e.cost(lim)
                for e in self.known()
                if e is not entry and at - span + 1e-9 < e.res.at <= at
            )
            used = others + entry.cost(lim, entry.estimate)
            note(f"booking at {at - self.sc.start:.4f}: {used} of {lim}")
            assert approx_le(used, lim.amount), (lim, used, at)

    def check_wait_bounded(self, entry: Entry, prev_tail: float) -> None:
        """Nobody waits more than one window (plus a slot and the margin) past its turn."""
        if self.lazy:
            return
        paused = self.limiter.stats().paused_until
        turn = max(self.clock(), prev_tail, paused)
        bound = turn + self.sc.longest * (1 + 1 / SLOTS_PER_WINDOW) + self.sc.margin
        # Debt charged at settle time may hold the window until a window after the settle.
        last_settle = max((e.settled_at for e in self.entries if e.settled_at), default=None)
        if last_settle is not None:
            bound = max(bound, last_settle + self.sc.longest * 1.01 + self.sc.margin)
        assert entry.res.at <= bound + 1e-6

    def apply(self, op: Op) -> None:
        if isinstance(op, Advance) and op.wake:
            self.advance_waking(op.seconds)
        elif isinstance(op, Advance):
            self.clock.advance(op.seconds)
        elif isinstance(op, Reserve):
            self.reserve(op.fraction, op.requests)
        elif isinstance(op, Cancel):
            entry = self.pick(op.pick)
            if entry is not None:
                self.limiter.cancel(entry.res)
                entry.cancel_called = True
                if entry.actual is None:
                    entry.cancelled = True
        elif isinstance(op, Settle):
            entry = self.pick(op.pick)
            # Usage arrives for requests that went: granted, not cancelled, not yet settled.
            if entry is not None and entry.res.state is State.GRANTED and entry.actual is None:
                actual = op.ratio * entry.estimate
                self.limiter.settle(entry.res, actual)
                entry.actual, entry.settled_at = actual, self.clock()
        elif isinstance(op, Grant):
            for e in self.live():
                if e.res.state is State.SCHEDULED and self.limiter.delay(e.res) == 0.0:
                    assert e.res.at <= self.clock()
        elif isinstance(op, Pause):
            self.limiter.pause_for(op.seconds)

    def advance_waking(self, seconds: float) -> None:
        target = self.clock() + seconds
        for _ in range(10_000):
            due = [
                e.res.at
                for e in self.live()
                if e.res.state is State.SCHEDULED and e.res.at <= target
            ]
            if not due:
                break
            self.clock.set(max(self.clock(), min(due)))
            self.apply(Grant())
        else:
            pytest.fail("waiters never finished waking")
        self.clock.set(target)

    def check_conservation(self) -> None:
        s = self.limiter.stats()
        expected = sum(e.known_tokens for e in self.live())
        assert is_close(s.tokens_reserved - s.tokens_refunded + s.tokens_charged, expected)
        assert s.requests_cancelled == sum(e.cancel_called for e in self.entries)


# -- properties ----------------------------------------------------------------------------


def effective_grants(run: Run, lim: Limit) -> list[tuple[float, float]]:
    out = []
    for e in run.known():
        amount = e.requests if lim.unit == "requests" else min(e.estimate, e.known_tokens)
        out.append((e.res.at, amount))
    return out


@PROPERTY_SETTINGS
@given(sc=scenarios(), steps=ops(debt=True, pauses=False))
def test_window_invariant_conservation_and_order(sc: Scenario, steps: list[Op]) -> None:
    check_window_invariant_conservation_and_order(Run.start(sc), steps)


@PROPERTY_SETTINGS
@given(sc=scenarios(), steps=ops(debt=True, pauses=False))
def test_window_invariant_conservation_and_order_on_redis(sc: Scenario, steps: list[Op]) -> None:
    check_window_invariant_conservation_and_order(Run.start(sc, "redis"), steps)


def check_window_invariant_conservation_and_order(run: Run, steps: list[Op]) -> None:
    sc = run.sc
    for op in steps:
        note(repr(op))
        run.apply(op)
        run.check_conservation()
    for lim in sc.limits:
        worst = admitted_per_window(effective_grants(run, lim), lim.per_seconds + sc.margin)
        assert approx_le(worst, lim.amount), (lim, worst)
    # Arrival order: live reservations go in the order they were made.
    ats = [e.res.at for e in run.live()]
    assert run.lazy or ats == sorted(ats)


@PROPERTY_SETTINGS
@given(sc=scenarios(), steps=ops(debt=False, pauses=False))
def test_refund_only_runs_never_exceed_any_window(sc: Scenario, steps: list[Op]) -> None:
    run = Run.start(sc)
    for op in steps:
        run.apply(op)
    for lim in sc.limits:
        grants = [(e.res.at, e.cost(lim)) for e in run.live()]
        assert approx_le(admitted_per_window(grants, lim.per_seconds + sc.margin), lim.amount)


@PROPERTY_SETTINGS
@given(sc=scenarios(), steps=ops(debt=True, pauses=True))
def test_pauses_hold_everyone_and_keep_the_invariant(sc: Scenario, steps: list[Op]) -> None:
    check_pauses_hold_everyone(Run.start(sc), steps)


@PROPERTY_SETTINGS
@given(sc=scenarios(), steps=ops(debt=True, pauses=True))
def test_pauses_hold_everyone_and_keep_the_invariant_on_redis(
    sc: Scenario, steps: list[Op]
) -> None:
    check_pauses_hold_everyone(Run.start(sc, "redis"), steps)


def check_pauses_hold_everyone(run: Run, steps: list[Op]) -> None:
    sc = run.sc
    for op in steps:
        run.apply(op)
        if isinstance(op, Pause):
            run.apply(Grant())  # waiters call delay() and are re-booked behind the pause
            until = run.limiter.stats().paused_until
            for e in run.live():
                if e.res.state is State.SCHEDULED:
                    assert e.res.at >= until - 1e-9
    for lim in sc.limits:
        worst = admitted_per_window(effective_grants(run, lim), lim.per_seconds + sc.margin)
        assert approx_le(worst, lim.amount)
    run.check_conservation()


@PROPERTY_SETTINGS
@given(sc=scenarios(), steps=ops(debt=True, pauses=False))
def test_cancel_gives_everything_back(sc: Scenario, steps: list[Op]) -> None:
    run = Run.start(sc)
    for op in steps:
        run.apply(op)
    settled = [e for e in run.entries if e.actual is not None]
    for e in run.entries:
        run.limiter.cancel(e.res)
    full = [lim for lim in sc.limits if lim.unit == "tokens"]
    burst_tokens = min(lim.amount for lim in full)
    if not settled:
        # Nothing was spent for good: the whole budget is back at once, at the same instant.
        res = run.limiter.reserve(burst_tokens, sc.max_requests)
        assert res.at == run.clock()
        return
    # Settled usage was spent; once its windows (and any debt) pass, everything is back.
    last = max(
        max(e.res.at for e in settled), max(e.settled_at or 0.0 for e in settled), run.clock()
    )
    run.clock.set(last + sc.longest * 1.01 + sc.margin + 1e-6)
    res = run.limiter.reserve(burst_tokens, sc.max_requests)
    assert res.at == run.clock()


@PROPERTY_SETTINGS
@given(sc=scenarios(), steps=ops(debt=True, pauses=True), extra=st.data())
def test_repeated_settle_cancel_release_change_nothing(
    sc: Scenario, steps: list[Op], extra: st.DataObject
) -> None:
    plain, noisy = Run.start(sc), Run.start(sc)
    for op in steps:
        plain.apply(op)
        noisy.apply(op)
        if noisy.entries and extra.draw(st.booleans()):
            e = noisy.pick(extra.draw(st.integers(0, 10_000)))
            assert e is not None
            if e.actual is not None or e.cancelled:
                # Already settled or cancelled: a second settle must be ignored.
                noisy.limiter.settle(e.res, extra.draw(st.floats(0, 1e6)))
            if e.cancelled:
                noisy.limiter.cancel(e.res)
                noisy.limiter.release(e.res)
        if isinstance(op, Reserve) and extra.draw(st.booleans()):
            with pytest.raises(RequestTooLarge):
                noisy.limiter.reserve(noisy.sc.max_tokens * 1.5 + 1)
    assert [e.res.at for e in plain.entries] == [e.res.at for e in noisy.entries]
    assert [e.res.state for e in plain.entries] == [e.res.state for e in noisy.entries]
    assert plain.limiter.stats() == noisy.limiter.stats()
    probe_plain = plain.limiter.reserve(plain.sc.max_tokens)
    probe_noisy = noisy.limiter.reserve(noisy.sc.max_tokens)
    assert probe_plain.at == probe_noisy.at


@PROPERTY_SETTINGS
@given(
    sc=scenarios(),
    over=st.floats(1e-6, 1e9, allow_nan=False),
    unit=st.sampled_from(["tokens", "requests"]),
)
def test_request_too_large_is_raised_at_once(sc: Scenario, over: float, unit: str) -> None:
    run = Run.start(sc)
    tokens = sc.max_tokens + over if unit == "tokens" else 0.0
    requests = sc.max_requests + math.ceil(over) if unit == "requests" else 1.0
    with pytest.raises(RequestTooLarge) as info:
        run.limiter.reserve(tokens, requests)
    err = info.value
    assert err.unit == unit
    assert err.estimate == (tokens if unit == "tokens" else requests)
    assert err.estimate > err.limit_amount
    assert format_amount(err.estimate) in str(err) and format_amount(err.limit_amount) in str(err)
    assert "e+" not in str(err)
    assert run.limiter.stats().tokens_reserved == 0


@PROPERTY_SETTINGS
@given(
    sc=scenarios(),
    smalls_before=st.integers(1, 30),
    smalls_after=st.integers(1, 30),
    gap=st.floats(0, 0.5),
)
def test_a_large_request_is_not_starved(
    sc: Scenario, smalls_before: int, smalls_after: int, gap: float
) -> None:
    run = Run.start(sc)
    for _ in range(smalls_before):
        run.reserve(0.05, 1)
        run.clock.advance(gap)
    big = run.reserve(1.0, 1)  # the whole tightest token window
    after = [run.reserve(0.01, 1) for _ in range(smalls_after)]
    assert all(e.res.at >= big.res.at for e in after)


@PROPERTY_SETTINGS
@given(sc=scenarios(), steps=ops(debt=False, pauses=True, always_wake=True))
def test_arrival_order_survives_pauses(sc: Scenario, steps: list[Op]) -> None:
    run = Run.start(sc)
    for op in steps:
        run.apply(op)
    run.apply(Grant())
    ats = [e.res.at for e in run.live()]
    assert run.lazy or ats == sorted(ats)


def test_finished_reservations_are_not_kept() -> None:
    """Bookings settled, released or cancelled without ever calling delay() are forgotten,
    even under a monthly window (white-box: the engine's bookkeeping stays small)."""
    clock = FakeClock()
    cfg = RatelimitConfig(api_key="sk-test", tokens_per_month=10**12)
    limiter = RateLimiter(cfg, clock=clock)
    for i in range(2_000):
        res = limiter.reserve(1)
        if i % 3 == 0:
            limiter.settle(res, 1)
        elif i % 3 == 1:
            limiter.release(res)
        else:
            limiter.cancel(res)
        clock.advance(1.0)
    assert len(limiter._ahead) <= 2


# -- late wake-ups and anchors, judged at the times requests really go ----------------------


@dataclass
class WakeLate:
    """Every caller whose turn has passed asks now, in an arbitrary order (a busy event loop
    wakes sleepers late and in any order); each one told to go leaves now and is anchored."""

    order: list[int]


def late_ops() -> st.SearchStrategy[list[Op | WakeLate]]:
    choices: list[st.SearchStrategy[Op | WakeLate]] = [
        st.builds(Advance, st.one_of(st.floats(0, 0.5), st.floats(0, 5), st.floats(0, 90))),
        st.builds(Reserve, st.floats(0, 1), st.integers(0, 2)),
        st.builds(Reserve, st.sampled_from([0.0, 0.5, 1.0]), st.just(1)),
        st.builds(Cancel, st.integers(0, 10_000)),
        st.builds(Settle, st.integers(0, 10_000), st.floats(0, 1, allow_nan=False)),
        st.builds(WakeLate, st.lists(st.integers(0, 10_000), max_size=20)),
    ]
    return st.lists(st.one_of(*choices), max_size=60)


def wake_late(run: Run, op: WakeLate, went: dict[int, float]) -> None:
    due = [e for e in run.live() if e.res.state is State.SCHEDULED and e.res.at <= run.clock()]
    for i, pick in enumerate(op.order):  # a permutation drawn from the op's numbers
        j = i + pick % (len(due) - i) if i < len(due) else i
        if j < len(due):
            due[i], due[j] = due[j], due[i]
    for e in due:
        if run.limiter.delay(e.res) == 0.0:
            now = run.clock()
            went[e.res.id] = now
            run.limiter.anchor(e.res, now - e.res.due_at)  # it left now: count it from now


@PROPERTY_SETTINGS
@given(sc=scenarios(), steps=late_ops())
def test_late_wake_ups_never_send_more_than_a_window_holds(
    sc: Scenario, steps: list[Op | WakeLate]
) -> None:
    """At the times requests really left, no window of ``per_seconds`` holds more than its
    amount, however late and in whatever order their callers woke."""
    check_late_wake_ups(Run.start(sc), steps)


@PROPERTY_SETTINGS
@given(sc=scenarios(), steps=late_ops())
def test_late_wake_ups_never_send_more_than_a_window_holds_on_redis(
    sc: Scenario, steps: list[Op | WakeLate]
) -> None:
    check_late_wake_ups(Run.start(sc, "redis"), steps)


def check_late_wake_ups(run: Run, steps: list[Op | WakeLate]) -> None:
    sc = run.sc
    went: dict[int, float] = {}
    for op in steps:
        note(repr(op))
        if isinstance(op, WakeLate):
            wake_late(run, op, went)
        elif isinstance(op, Cancel):
            entry = run.pick(op.pick)
            if entry is not None and entry.res.id not in went:  # cancelled before it left
                run.apply(op)
        else:
            run.apply(op)
    for lim in sc.limits:
        grants = [
            (went[e.res.id], e.requests if lim.unit == "requests" else e.known_tokens)
            for e in run.live()
            if e.res.id in went
        ]
        assert approx_le(admitted_per_window(grants, lim.per_seconds), lim.amount), lim
