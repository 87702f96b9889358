"""The in-process limiter: one object shared by threads, asyncio and trio at once.

All state sits behind one ``threading.Lock`` held for microseconds; nobody sleeps under
it and nothing is bound to an event loop, so the same limiter works across
``asyncio.run()`` calls, threads and trio.

Order: every reservation is booked at a time no earlier than the previous booking
(``_tail``), so callers go in arrival order and a large request is never overtaken
by a stream of small ones.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable

from ..config import Limit, RatelimitConfig, one_per_window
from ..errors import BudgetExhausted, RequestTooLarge, format_amount, spent_message
from .base import Counters, LimiterStats, ObservedLimit, Reservation, State, learnt_limits
from .window import WindowState

#: Longest pause a single signal may impose; larger Retry-After values are clamped.
MAX_PAUSE_SECONDS = 3600.0
#: Windows at least this long are "monthly caps": waiting on them fails fast instead.
LONG_WINDOW_SECONDS = 86_400.0
LONG_WAIT_SECONDS = 60.0
#: Departures later than this count from when they left (see ``anchor``); below it, moving a
#: booking would cost more (everyone behind it re-checks) than the slot rounding it shifts.
ANCHOR_SLACK = 0.002
#: How many bookings asked about long after their turn are remembered (see ``_late``).
LATE_KEPT = 4096
#: Seconds (on the limiter's clock) between two re-bookings of the waiting requests on
#: discovery: learnt limits that flap between reports (per-model headers) must not re-book
#: thousands of waiters on every response. Those not re-booked check themselves when due.
DISCOVERY_REBOOK_INTERVAL = 1.0


class SyncBackedAsyncMixin:
    """Async twins for a backend whose sync calls never block for long."""

    #: Async callers may call the sync methods directly (see ``driving.drive_async``).
    nonblocking = True

    async def areserve(
        self, tokens: float, requests: float = 1.0, *, priority: int = 0
    ) -> Reservation:
        if priority:
            return self.reserve(tokens, requests, priority=priority)  # type: ignore[attr-defined, no-any-return]
        return self.reserve(tokens, requests)  # type: ignore[attr-defined, no-any-return]

    async def adelay(self, res: Reservation) -> float:
        return self.delay(res)  # type: ignore[attr-defined, no-any-return]

    async def acancel(self, res: Reservation) -> None:
        self.cancel(res)  # type: ignore[attr-defined]

    async def asettle(self, res: Reservation, actual_tokens: float) -> None:
        self.settle(res, actual_tokens)  # type: ignore[attr-defined]

    async def arelease(self, res: Reservation) -> None:
        self.release(res)  # type: ignore[attr-defined]

    async def apause_for(self, seconds: float, *, rate_limited: bool = True) -> None:
        self.pause_for(seconds, rate_limited=rate_limited)  # type: ignore[attr-defined]

    async def aadopt(self, observed: list[ObservedLimit]) -> None:
        self.adopt(observed)  # type: ignore[attr-defined]


def clean_amount(value: float, name: str) -> float:
    if type(value) is float and 0.0 <= value < math.inf:  # the usual case, on every request
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return max(0.0, float(value))


def _cancelled(res: Reservation) -> bool:
    return res.state is State.CANCELLED


def _carried_from(holding: list[WindowState], per_seconds: float) -> WindowState | None:
    """The window whose bookings a new window of ``per_seconds`` starts with.

    Every window of a unit holds the same bookings, so they come from one (from each, they
    would count twice): the shortest that still remembers a whole new window, for its finer
    slots (a booking is carried to its slot's end, late by up to a slot), else the longest.
    """
    covering = [w for w in holding if w.limit.per_seconds >= per_seconds]
    if covering:
        return min(covering, key=lambda w: w.limit.per_seconds)
    return max(holding, key=lambda w: w.limit.per_seconds, default=None)


class RateLimiter(SyncBackedAsyncMixin):
    """In-memory limiter enforcing every window of a :class:`RatelimitConfig` at once."""

    def __init__(
        self,
        config: RatelimitConfig | None = None,
        *,
        limits: Iterable[Limit] | None = None,
        max_concurrency: int | None = None,
        window_margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float = 5.0,
    ) -> None:
        cfg = config if config is not None else RatelimitConfig.from_env()
        pairs = one_per_window(
            [(lim, True) for lim in limits] if limits is not None else cfg.engine_limits()
        )
        margin = cfg.window_margin if window_margin is None else window_margin
        self._margin = margin
        self._windows = [WindowState(lim, margin) for lim, _ in pairs]
        self._explicit = [explicit for _, explicit in pairs]
        self._max_inflight = max_concurrency if max_concurrency is not None else cfg.max_concurrency
        self._clock = clock
        # What delay() answers a caller queued for an in-flight slot. acquire() sleeps until a
        # release wakes it (Reservation.wake), so this only bounds a wake-up that never came,
        # and paces callers that poll delay() themselves.
        self._poll = poll_interval
        self._woken: list[Reservation] = []  # promoted under the lock, woken after it
        self._orphans: collections.deque[tuple[Reservation, float]] = collections.deque()
        self._lock = threading.Lock()
        self._tail = -math.inf
        self._generation = 0  # bumped by every anchor that moved a request
        # Bookings not yet collected by their caller, in booking order (``at`` never decreases).
        # When the newest ones are cancelled the tail steps back to the newest live one:
        # a cancelled reservation gives back its place in time, not only its capacity.
        self._ahead: collections.deque[tuple[float, Reservation]] = collections.deque()
        # Bookings whose caller had not asked a whole window after their turn: moved out of
        # ``_ahead`` so that one abandoned booking cannot keep every later one alive there,
        # yet kept (up to a bound) so that a caller that does come back, late, still moves
        # with the group it was booked in when it no longer fits.
        self._late: collections.deque[tuple[float, Reservation]] = collections.deque(
            maxlen=LATE_KEPT
        )
        # Windows replaced by discovery: old ident -> [(new window, old slot width)].
        self._successors: dict[int, list[tuple[WindowState, float]]] = {}
        self._rebooked_at = -math.inf  # when discovery last re-booked the waiting requests
        self._horizon_for: list[WindowState] | None = None
        self._horizon = 0.0
        self._paused_until = -math.inf
        self._inflight = 0
        self._queue: collections.deque[Reservation] = collections.deque()
        self._s = Counters()

    # -- introspection ------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    @property
    def limits(self) -> tuple[Limit, ...]:
        return tuple(w.limit for w in self._windows)

    def token_room(self) -> float | None:
        """Free room of the tightest token window now; None when no window counts tokens.

        What ``grant_now`` measures a request against, so that the full path and the
        express lane choose alike (an exact count or the cheap bound)."""
        with self._lock:
            now = self._clock()
            rooms = []
            for w in self._windows:
                if w.limit.unit == "tokens":
                    w.prune(now)  # a window idle since its last charges holds none of them
                    rooms.append(w.limit.amount - w.total)
        return min(rooms) if rooms else None

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{format_amount(w.limit.amount)} {w.limit.unit}/{format_amount(w.limit.per_seconds)}s"
            for w in self._windows
        )
        return f"RateLimiter({inner}, max_concurrency={self._max_inflight})"

    # -- booking -------------------------------------------------------------------------
    def _cost(self, w: WindowState, res: Reservation) -> float:
        cost = res.requests if w.limit.unit == "requests" else res.tokens
        # Only a window the user did not set can be smaller than one request (see
        # _check_fits): the request then waits for that window to be empty, and goes.
        return cost if cost <= w.limit.amount else w.limit.amount

    def _check_fits(self, res: Reservation) -> None:
        """A request larger than a window the user set can never go. A window the limiter
        assumed (a tier default) or learnt from a header is not held against it: the user's
        real limit may be larger, and the next response says so."""
        for w, explicit in zip(self._windows, self._explicit, strict=True):
            cost = res.requests if w.limit.unit == "requests" else res.tokens
            if explicit and cost > w.limit.amount:
                raise RequestTooLarge(cost, w.limit.amount, w.limit.per_seconds, w.limit.unit)

    def _schedule(self, res: Reservation, now: float, not_before: float = -math.inf) -> None:
        t0 = max(now, self._tail, self._paused_until, not_before)
        at, binding = t0, None
        for w in self._windows:
            w.prune(now)
            t = w.earliest_fit(t0, self._cost(w, res))
            if t > at:
                at, binding = t, w
        if (
            binding is not None
            and binding.limit.per_seconds >= LONG_WINDOW_SECONDS
            and at - now > LONG_WAIT_SECONDS
        ):
            lim = binding.limit
            cost = res.tokens if lim.unit == "tokens" else res.requests
            raise BudgetExhausted(
                spent_message(cost, lim.amount, lim.unit, lim.per_seconds, at - now)
            )
        res.slots = {w.ident: w.add(at, self._cost(w, res)) for w in self._windows}
        res.at = res.due_at = at
        res.state = State.SCHEDULED
        res.generation = self._generation
        self._tail = at
        self._forget_gone(now)
        self._ahead.append((at, res))
        self._s["tokens_reserved"] += res.tokens

    def _slot(self, w: WindowState, res: Reservation) -> int | None:
        """The slot of ``w`` that holds ``res``'s charge, or None.

        A reservation booked before discovery replaced its windows names the old ones; its
        charge was carried into each new window at the end of its old slot (``_discover``),
        so that is where it is found, moved (anchor), corrected (settle) or given back.
        """
        key = res.slots.get(w.ident)
        if key is None and self._successors:
            # Follow each booked window through every discovery since (usually one).
            trail = list(res.slots.items())
            while trail:
                ident, old_key = trail.pop()
                for successor, width in self._successors.get(ident, ()):
                    carried = successor.slot_of((old_key + 1) * width)
                    if successor is w:
                        res.slots[w.ident] = carried
                        return carried
                    trail.append((successor.ident, carried))
        return key

    def _unbook(self, res: Reservation) -> None:
        for w in self._windows:
            key = self._slot(w, res)
            if key is not None and w.has_slot(key):
                w.add_to_slot(key, -self._cost(w, res))
        res.slots = {}

    @staticmethod
    def _waiting(at: float, res: Reservation) -> bool:
        """Whether a booking made at ``at`` still waits for its caller to go."""
        return (
            res.state is State.SCHEDULED and res.at == at and not res.settled and not res.released
        )

    @property
    def _short_horizon(self) -> float:
        windows = self._windows
        if windows is not self._horizon_for:  # discovery resets _horizon_for
            self._horizon_for = windows
            self._horizon = max(
                (w.horizon for w in windows if w.limit.per_seconds < LONG_WINDOW_SECONDS),
                default=0.0,
            )
        return self._horizon

    def _forget_gone(self, now: float) -> None:
        """Drop bookings that went, finished or were cancelled, oldest first. One still not
        collected once its short windows have passed (abandoned, or its caller very late)
        moves to ``_late``."""
        horizon = self._short_horizon
        while self._late and not self._waiting(*self._late[0]):
            self._late.popleft()
        while self._ahead:
            at, res = self._ahead[0]
            if self._waiting(at, res):
                if at + horizon >= now:
                    return
                self._late.append((at, res))
            self._ahead.popleft()

    def _retreat_tail(self) -> None:
        """Step the tail back past bookings that were cancelled or re-booked."""
        while self._ahead:
            at, res = self._ahead[-1]
            if res.state is not State.CANCELLED and res.at == at:
                self._tail = at
                return
            self._ahead.pop()
        self._tail = -math.inf

    #: ``reserve(..., priority=n)`` is honoured (the transports check this flag).
    supports_priority = True
    #: A caller waiting for its booked time may be woken sooner (``Reservation.wake``): a
    #: discovery of looser limits moves waiting bookings earlier (see ``adopt``).
    wakes_scheduled = True

    def reserve(self, tokens: float, requests: float = 1.0, *, priority: int = 0) -> Reservation:
        res = Reservation(clean_amount(tokens, "tokens"), clean_amount(requests, "requests"))
        res.priority = int(priority) if isinstance(priority, int) else 0
        with self._lock:
            if self._orphans:
                self._settle_orphans()
            # Under the lock: discovery may have just replaced the windows.
            self._check_fits(res)
            now = self._clock()
            res.created_at = now
            if self._max_inflight is None or (
                not self._queue and self._inflight < self._max_inflight
            ):
                self._schedule_first(res, now)
                # Counted with or without a cap, so stats() always shows what is in flight.
                self._inflight += 1
                res.holds_inflight = True
            else:
                # Among those waiting for an in-flight slot, a higher priority goes first.
                place = next(
                    (i for i, q in enumerate(self._queue) if q.priority < res.priority),
                    len(self._queue),
                )
                self._queue.insert(place, res)
        return res

    def grant_now(self, tokens: float, room_share: float = 1.0) -> Reservation | None:
        """``reserve`` and a first ``delay`` of 0 in one step, for a request nothing holds
        back: no pause, nobody booked ahead or queued, an in-flight slot free, and every
        window holding it now, its tokens taking at most ``room_share`` of each token
        window's free room. The reservation is granted, booked and counted exactly as that
        pair would book and count it. None: take ``reserve`` and wait as usual (nothing was
        booked).

        The transports' hot path (see ``Lifecycle.admit``): with ample budget one lock and
        no waiting machinery, a quarter of what the pair costs."""
        if type(tokens) is not float or not 0.0 <= tokens < math.inf:
            return None  # unusual amounts take reserve(), which cleans or refuses them
        with self._lock:
            if (
                self._orphans
                or self._queue
                or (self._max_inflight is not None and self._inflight >= self._max_inflight)
            ):
                return None
            now = self._clock()
            if now < self._tail or now < self._paused_until:
                return None
            for w in self._windows:
                w.prune(now)  # after it, the window's total is what counts at ``now``
                lim = w.limit
                if lim.unit == "requests":
                    if w.total + 1.0 > lim.amount + 1e-9:
                        return None
                elif tokens > room_share * (lim.amount - w.total) + 1e-9:
                    return None
            res = Reservation(tokens)
            res.slots = {
                w.ident: w.add(now, 1.0 if w.limit.unit == "requests" else tokens)
                for w in self._windows
            }
            res.created_at = res.at = res.due_at = now
            res.state = State.GRANTED
            res.generation = self._generation
            res.holds_inflight = True
            self._inflight += 1
            self._tail = now
            self._forget_gone(now)
            self._ahead.append((now, res))
            self._s["tokens_reserved"] += tokens
            self._s["requests_admitted"] += 1
        return res

    def _wake_promoted(self) -> None:
        """Wake the callers promoted while the lock was held; call it after releasing it."""
        with self._lock:
            woken, self._woken = self._woken, []
        for res in woken:
            if res.wake is not None:
                res.wake()

    def _promote(self, now: float) -> None:
        while (
            self._queue and self._max_inflight is not None and self._inflight < self._max_inflight
        ):
            res = self._queue.popleft()
            self._woken.append(res)
            try:
                self._check_fits(res)
                self._schedule_first(res, now)
            except (BudgetExhausted, RequestTooLarge):
                res.state = State.CANCELLED  # its delay() call reports it
                continue
            self._inflight += 1
            res.holds_inflight = True

    def delay(self, res: Reservation) -> float:
        """Seconds the caller must still wait; ``0`` means go now."""
        try:
            with self._lock:
                return self._delay_locked(res)
        finally:
            if self._woken:  # a re-booking that hit a monthly cap freed an in-flight slot
                self._wake_promoted()

    def _delay_locked(self, res: Reservation) -> float:
        if self._orphans:  # a queued caller polls: a dropped stream's slot frees for it
            self._settle_orphans()
        now = self._clock()
        if res.state is State.QUEUED:
            return self._poll
        if res.state is State.CANCELLED:
            raise BudgetExhausted("this reservation was cancelled; take a new one")
        if res.state is State.SCHEDULED and self._paused_until > res.at:
            # A 429 arrived after this booking: move it behind the pause, or it would
            # be counted at a time when the server's window was already full.
            self._unbook(res)
            self._retreat_tail()
            self._schedule(res, now)
            self._s["tokens_reserved"] -= res.tokens
        if (
            res.state is State.SCHEDULED
            and (now - res.at > self._margin or res.generation != self._generation)
            and not self._still_fits(res, now)
        ):
            # Requests granted before it left late (see anchor), or it asks late itself:
            # this booking and every one after it move back, in order.
            self._rebook_waiting(now, lambda _at, other: other is res, stale=res)
            if _cancelled(res):  # by a monthly cap it can no longer wait for
                raise BudgetExhausted("the budget is spent; this reservation was cancelled")
        res.generation = self._generation
        wait = res.at - now
        if wait > 0:
            return wait
        if res.state is State.SCHEDULED:
            if now - res.at > self._margin:
                # It goes now, not when it was due: count it from now, as anchor() does
                # once the request has left, so that callers that never anchor (plain
                # acquire()) are counted right too.
                self._move_later(res, now)
            res.state = State.GRANTED
            waited = now - res.created_at
            self._s["requests_admitted"] += 1
            self._s["wait_seconds_total"] += waited
            self._s["wait_seconds_max"] = max(self._s["wait_seconds_max"], waited)
        return 0.0

    def cancel(self, res: Reservation) -> None:
        """Give back everything the reservation took. Safe to call more than once."""
        with self._lock:
            self._cancel_locked(res)
        if self._woken:
            self._wake_promoted()

    def _cancel_locked(self, res: Reservation) -> None:
        if res.state is State.CANCELLED:
            return
        if res.state is State.QUEUED:
            with contextlib.suppress(ValueError):
                self._queue.remove(res)
        elif not res.settled:
            self._unbook(res)
            self._s["tokens_reserved"] -= res.tokens
        res.state = State.CANCELLED
        self._retreat_tail()
        res.settled = True
        self._s["requests_cancelled"] += 1
        self._release_locked(res)

    def settle(self, res: Reservation, actual_tokens: float) -> None:
        """Correct the token charge to what the server reported. Only the first call counts."""
        try:
            actual = clean_amount(actual_tokens, "actual_tokens")
        except ValueError:
            return  # a broken usage report keeps the estimate charged
        with self._lock:
            self._settle_locked(res, actual)

    def _settle_locked(self, res: Reservation, actual: float) -> None:
        if res.settled or res.state in (State.CANCELLED, State.QUEUED):
            return
        res.settled = True
        diff = actual - res.tokens
        if diff == 0:
            return
        now = self._clock()
        for w in self._windows:
            if w.limit.unit != "tokens":
                continue
            key = self._slot(w, res)
            if key is not None and w.has_slot(key):
                w.add_to_slot(key, diff)
            elif diff > 0:
                w.add(now, diff)  # its slot expired (or was replaced): count from now
        # Counted once per reservation, however many token windows it sits in.
        if diff > 0:
            self._s["tokens_charged"] += diff
        else:
            self._s["tokens_refunded"] -= diff
        res.tokens = actual

    def settle_later(self, res: Reservation, actual_tokens: float) -> None:
        """Settle and release ``res`` at the limiter's next call. For finalizers: one may run
        while this very thread holds the lock (the garbage collector runs anywhere), so
        this takes no lock; appending to a deque is atomic."""
        self._orphans.append((res, actual_tokens))

    def _settle_orphans(self) -> None:
        """Under the lock: what finalizers handed over (see ``settle_later``)."""
        while self._orphans:
            res, actual = self._orphans.popleft()
            with contextlib.suppress(ValueError):
                self._settle_locked(res, clean_amount(actual, "actual_tokens"))
            self._release_locked(res)

    def release(self, res: Reservation) -> None:
        """Free the in-flight slot (the response was closed)."""
        with self._lock:
            self._release_locked(res)
        if self._woken:
            self._wake_promoted()

    def _release_locked(self, res: Reservation) -> None:
        if res.released:
            return
        res.released = True
        if res.holds_inflight:
            self._inflight -= 1
            res.holds_inflight = False
            self._promote(self._clock())

    # -- signals from the server ---------------------------------------------------------
    def pause_for(self, seconds: float, *, rate_limited: bool = True) -> None:
        """Hold every caller back for ``seconds`` (clamped to [0, 1 h])."""
        s = seconds if isinstance(seconds, (int, float)) and math.isfinite(seconds) else 0.0
        s = min(max(0.0, float(s)), MAX_PAUSE_SECONDS)
        with self._lock:
            now = self._clock()
            self._paused_until = max(self._paused_until, now + s)
            if rate_limited:
                self._s["rate_limited_seen"] += 1
            self._rebook_waiting(now, lambda at, _res: at < self._paused_until)
        if self._woken:  # a re-booking that hit a monthly cap freed an in-flight slot
            self._wake_promoted()

    def anchor(self, res: Reservation, lag: float) -> None:
        """The request left ``lag`` seconds after it was due to go: count it from then.

        The server counts a request when it arrives. A cold connection or a busy event
        loop can delay that by more than the window margin, so a granted request is moved
        to when it really left. Bookings still waiting were made against the old position:
        each one checks that it still fits the next time its caller asks (``delay``), and
        if not, it and every booking after it are re-booked, in order. Checking lazily
        keeps an anchor cheap however many callers wait.
        """
        if not isinstance(lag, (int, float)) or not math.isfinite(lag) or lag <= ANCHOR_SLACK:
            return
        with self._lock:
            if res.state is not State.GRANTED or res.settled:
                return
            # From when it left, not from ``margin`` before: the margin is for what happens
            # after that, on the way and in the server's own queue, which no client sees.
            self._move_later(res, res.due_at + lag)

    def _move_later(self, res: Reservation, new_at: float) -> None:
        """Count ``res`` from ``new_at`` instead (never earlier than it counts now)."""
        if new_at <= res.at:
            return
        moved = False
        for w in self._windows:
            key = self._slot(w, res)
            new_key = w.slot_of(new_at)
            if key is None or new_key <= key:  # already counted at least that late
                continue
            cost = self._cost(w, res)
            # A slot already forgotten held a charge that had expired: it counts again from
            # ``new_at``, when the request really went.
            if w.has_slot(key):
                w.add_to_slot(key, -cost)
            w.add_to_slot(new_key, cost)
            res.slots[w.ident] = new_key
            moved = True
        res.at = new_at
        if moved:
            self._s["anchored"] += 1
            self._generation += 1

    def _still_fits(self, res: Reservation, now: float) -> bool:
        """Whether the window ending when ``res`` goes, ``t = max(res.at, now)``, holds it.

        Every request that can have gone by ``t`` sits in a slot no later than ``slot(t)``:
        bookings are made at their slot, and an anchor moves a grant to when it left, which
        is before ``t``. So the sum of the slots up to ``slot(t)`` still live at ``t``
        bounds what the server sees in the window ending at ``t`` (bookings after ``res``
        in those slots are counted too: they go no earlier than ``res``, so erring there
        only re-books ``res`` in place). Its own charge counts even when its slot expired
        before ``t`` (a caller late by more than a window), or lies after ``slot(t)`` (it
        was carried into a window discovered after it was booked). Anchors only move grants later,
        so the window ending at a grant is the only one they can break: any window over its
        amount is caught at the grant of its last request.
        """
        t = max(res.at, now)
        for w in self._windows:
            key = self._slot(w, res)
            if key is None:
                continue
            last = w.slot_of(t)
            used = sum(a for k, a in w.slots.items() if k <= last and w.expiry(k) > t)
            if key > last or w.expiry(key) <= t:  # its own charge, outside that sum
                used += self._cost(w, res)
            if used > w.limit.amount + 1e-9:
                return False
        return True

    def _rebook_waiting(
        self,
        now: float,
        starts_at: Callable[[float, Reservation], bool],
        first: Reservation | None = None,
        stale: Reservation | None = None,
        earlier: bool = False,
    ) -> None:
        """Re-book waiting reservations now, in their order, from the first one for which
        ``starts_at(at, res)`` holds; ``first`` (a new higher-priority reservation) is booked
        before those of lower priority among them. ``stale`` is a waiting reservation that
        may have been forgotten (see ``_late``): it moves with every waiting one that
        arrived after it. ``earlier``: they may move earlier too, and the callers of those
        that do are woken (``_woken``).

        Re-booking each one lazily when its caller wakes would put it behind everyone who
        arrived meanwhile: arrival order lost, and under repeated 429s a waiter could be
        pushed back again and again.
        """
        moving: list[Reservation] = []
        for at, res in itertools.chain(self._late, self._ahead):
            if self._waiting(at, res) and (moving or starts_at(at, res)):
                moving.append(res)
        if stale is not None and not moving:
            # Forgotten altogether (more than LATE_KEPT late callers): it moves with those
            # that arrived after it.
            later = (r for at, r in self._ahead if self._waiting(at, r) and r.id > stale.id)
            moving = [stale, *later]
        if moving:
            for res in moving:
                self._unbook(res)
                self._s["tokens_reserved"] -= res.tokens
            moved = {id(res) for res in moving}
            self._ahead = collections.deque(e for e in self._ahead if id(e[1]) not in moved)
            self._late = collections.deque(
                (e for e in self._late if id(e[1]) not in moved), maxlen=LATE_KEPT
            )
            self._retreat_tail()
        if first is not None:
            ahead = [r for r in moving if r.priority >= first.priority]
            moving = [r for r in moving if r.priority < first.priority]
            self._book_all(ahead, now)
            try:
                self._schedule(first, now)
            finally:  # even if ``first`` cannot be booked, the others must be again
                self._book_all(moving, now)
        else:
            self._book_all(moving, now, earlier)

    def _book_all(self, reservations: list[Reservation], now: float, earlier: bool = False) -> None:
        for res in reservations:
            was = res.at
            try:
                # Never earlier than it was, unless its caller is woken: it sleeps until
                # then before asking again, and would go late.
                self._schedule(res, now, not_before=-math.inf if earlier else was)
            except BudgetExhausted:
                self._s["tokens_reserved"] += res.tokens  # _cancel_locked takes it off again
                self._cancel_locked(res)
                continue
            if res.at < was:
                self._woken.append(res)

    def _schedule_first(self, res: Reservation, now: float) -> None:
        """Book ``res``, ahead of waiting reservations of lower priority if it has one."""
        if res.priority > 0:
            self._rebook_waiting(now, lambda _at, other: other.priority < res.priority, res)
        else:
            self._schedule(res, now)

    def pause_until(self, t: float) -> None:
        """Hold every caller back until ``t`` on this limiter's clock (see :meth:`now`)."""
        self.pause_for(t - self._clock(), rate_limited=False)

    def adopt(self, observed: list[ObservedLimit]) -> None:
        """Take the server's view: discover tier limits, and never believe in more room
        than the server says remains.

        What remains of a month is not adopted: charged here, it would hold for 30 days
        whatever the server's own calendar, and one wrong header would refuse every request
        for that long with no response left to correct it. A 429 that says the month cannot
        hold a request fails fast instead (lifecycle.py)."""
        with self._lock:
            now = self._clock()
            discovered = self._discover(observed)
            for obs in observed:
                if obs.remaining is None or not math.isfinite(obs.remaining) or obs.remaining < 0:
                    continue
                if obs.per_seconds >= LONG_WINDOW_SECONDS:
                    continue
                for w in self._windows:
                    if w.limit.unit == obs.unit and math.isclose(
                        w.limit.per_seconds, obs.per_seconds
                    ):
                        w.prune(now)
                        excess = w.available_at(now) - obs.remaining
                        if excess > 0:
                            key = w.add(now, excess)
                            w.adopted[key] = w.adopted.get(key, 0.0) + excess
            if discovered and now - self._rebooked_at >= DISCOVERY_REBOOK_INTERVAL:
                # Booked against the windows assumed until now (a 1 rps tier default), the
                # waiting requests would keep that pace: the server's limits apply to them
                # too, and a caller that may go sooner is woken.
                self._rebooked_at = now
                self._rebook_waiting(now, lambda at, _res: at > now, earlier=True)
        if self._woken:
            self._wake_promoted()

    def _discover(self, observed: list[ObservedLimit]) -> bool:
        """Replace the windows the user did not set by those the server reports.

        Every report may change them (a tier upgrade, or a wrong header corrected by the
        next response); a window length the user set keeps the user's limit. Requests
        already booked count in the new windows too (see ``_slot``). Returns whether any
        window changed.
        """
        changed = False
        for unit in ("requests", "tokens"):
            mine = [i for i, w in enumerate(self._windows) if w.limit.unit == unit]
            kept = {self._windows[i].limit.per_seconds for i in mine if self._explicit[i]}
            wanted = learnt_limits(unit, observed, kept)
            dropped = [self._windows[i] for i in mine if not self._explicit[i]]
            if not wanted or {w.limit for w in dropped} == set(wanted):
                continue
            # Every window of the unit, kept or replaced, holds the bookings made so far.
            holding = [self._windows[i] for i in mine]
            keep = [i for i in range(len(self._windows)) if self._windows[i] not in dropped]
            self._windows = [self._windows[i] for i in keep]
            self._explicit = [self._explicit[i] for i in keep]
            for lim in wanted:
                w = WindowState(lim, self._margin)
                source = _carried_from(holding, lim.per_seconds)
                if source is not None:
                    # Requests already booked (some still waiting to go) count in the new
                    # window too, at their slot's end: later than they went, so for at
                    # least as long. What ``adopt`` charged is the old window's view of
                    # the server, not a booking: one wrong header would otherwise hold
                    # the new windows for as long as the old one lasted.
                    for key, amount in source.slots.items():
                        booked = amount - source.adopted.get(key, 0.0)
                        if booked > 0:
                            w.add((key + 1) * source.width, booked)
                    self._successors.setdefault(source.ident, []).append((w, source.width))
                self._windows.append(w)
                self._explicit.append(False)
            self._horizon_for = None
            changed = True
        return changed

    def record_estimate(self, estimated: float, actual: float) -> None:
        with self._lock:
            self._s.record_estimate(estimated, actual)

    def stats(self) -> LimiterStats:
        with self._lock:
            if self._orphans:
                self._settle_orphans()
            return self._s.snapshot(
                in_flight=self._inflight,
                queued=len(self._queue),
                paused_until=self._paused_until,
                limits=self.limits,
            )
