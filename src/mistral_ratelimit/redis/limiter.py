"""The Redis-backed limiter: one budget shared by every process and host that names it.

Same contract and same window arithmetic as the in-memory :class:`RateLimiter` (the Lua
scripts port ``limiter/window.py``), so both backends admit the same traffic.

Round trips: ``reserve`` is one script call, and its reply already says how long to wait,
so the ``delay()`` that follows at once answers from that reply (an uncontended acquire is
one round trip). A ``delay()`` after sleeping asks Redis again, to see a pause set by
another worker and to read Redis's clock. ``settle`` is one round trip (none when the
estimate was exact); ``release`` is one only when a concurrency cap is set.

Each operation is written once, as a generator of steps (run a script, sleep); a sync and
an async driver run the steps, so the failure policy cannot drift between the twins.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import random
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
import redis
import redis.exceptions

from ..config import Limit, RatelimitConfig, one_per_window
from ..errors import (
    BackendUnavailable,
    BudgetExhausted,
    RequestTooLarge,
    format_amount,
    spent_message,
)
from ..limiter.base import (
    Counters,
    LimiterStats,
    ObservedLimit,
    Reservation,
    State,
    learnt_limits,
)
from ..limiter.memory import (
    ANCHOR_SLACK,
    LONG_WINDOW_SECONDS,
    MAX_PAUSE_SECONDS,
    RateLimiter,
    clean_amount,
)
from .connections import AnyClient, Connections
from .ledger import GrantLedger
from .scripts import Keys, WindowSpec, namespace_for, window_spec

log = logging.getLogger(__name__)

T = TypeVar("T")
BackendErrorMode = Literal["wait", "local", "fail"]

#: A ``reserve`` reply answers the ``delay()`` that follows within this many seconds; later,
#: ``delay()`` asks Redis again (a pause may have arrived since).
HINT_SECONDS = 0.05
#: Bounds of the default lease (see _default_lease).
LEASE_FLOOR_SECONDS = 2.0
LEASE_CEILING_SECONDS = 30.0
#: Longest sleep of a caller far back in the concurrency queue (see _queued_wait).
QUEUE_POLL_MAX = 2.0
#: A cancel Redis did not answer is kept this long, to be sent again once it answers (see
#: ``_after``): well within the 120 s for which a script remembers that it ran for a member
#: (common.lua's DONE_TTL), so a cancel whose first attempt did run is never applied twice.
LATER_SECONDS = 60.0
#: At most this many of them (the oldest go first); their leases and windows still lapse.
LATER_MAX = 10_000
#: While some are kept, the heartbeat tries at least this often.
LATER_POLL = 1.0
#: Redis errors that mean "not reachable now" rather than "a bug in a script".
_TRANSIENT_REPLIES = ("LOADING", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "BUSY")


def _is_backend_error(exc: BaseException) -> bool:
    if isinstance(exc, redis.exceptions.MaxConnectionsError):
        return False  # a full pool of the caller's own client: not an outage
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)):
        return True
    if isinstance(exc, redis.exceptions.OutOfMemoryError):  # maxmemory with noeviction
        return True
    if isinstance(exc, redis.exceptions.NoScriptError):
        return False
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(
        _TRANSIENT_REPLIES
    )


def _default_lease(limits: Iterable[Limit]) -> float:
    """The shortest (non-monthly) window, within [2 s, 30 s].

    A dead process's waiting places come back when their lease lapses, so a lease as long as
    the shortest window gives them back within about one window of its death. The floor
    keeps a live process from looking dead: the heartbeat renews every third of a lease, so
    a process stalled (GC, a starved thread) for two thirds of it loses its places (they book
    again, behind) and its in-flight slots (others may take them). The ceiling bounds how
    long a dead process's in-flight slots stay taken.
    """
    short = [lim.per_seconds for lim in limits if lim.per_seconds < LONG_WINDOW_SECONDS]
    shortest = min(short, default=LEASE_CEILING_SECONDS)
    return min(LEASE_CEILING_SECONDS, max(LEASE_FLOOR_SECONDS, shortest))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- steps: what an operation asks its driver to do ---------------------------------------
@dataclass(frozen=True)
class _Eval:
    script: str
    args: tuple[str, ...]
    member: str = ""  # the booking whose marker the script takes as KEYS[9] (see common.lua)


@dataclass(frozen=True)
class _Command:
    name: Literal["zrem", "hget"]
    key: str
    arg: str


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Step = _Eval | _Command | _Sleep
_Op = Generator[_Step, Any, T]


@dataclass(eq=False)
class _Booking:
    """What this process remembers about one reservation (kept beside it, weakly)."""

    member: str
    specs: tuple[WindowSpec, ...]
    spec: str  # the same windows, as the scripts read them
    created_mono: float
    epoch: str = ""
    leased: bool = False  # holds a lease in the shared in-flight set
    ahead: bool = False  # booked ahead of now: held by a lease until it goes (see reap())
    counted: bool = False  # the script already counted it as admitted
    queued: bool = False  # counted in this process's queued figure
    #: A reserve call was sent and its reply has not arrived: Redis may hold a booking (or a
    #: place in the queue) that only a cancel by member can give back.
    unsure: bool = False
    queue_seen: tuple[int, float] | None = None  # (place in the queue, when), last answer
    queue_wait: float = 0.0  # how long it slept after that answer
    hint: float | None = None  # seconds to wait, per the last reply
    hint_mono: float = 0.0
    hint_gen: int = 0
    failing_since: float | None = None
    local: Reservation | None = None  # served by the in-memory fallback


@dataclass
class _Outage:
    """What this process spent on its local fallback while Redis was away."""

    since: float
    tokens: float = 0.0
    requests: float = 0.0
    cause: str = ""


_live: weakref.WeakSet[RedisRateLimiter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for limiter in list(_live):
        limiter._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RedisRateLimiter:
    """A limiter whose budget lives in Redis, shared by every worker using the same key.

    ``url_or_client`` is a ``redis://`` / ``rediss://`` / ``unix://`` URL, a ``redis.Redis``
    (or ``RedisCluster``) client, or a ``redis.asyncio.Redis`` client. Given a URL or a sync
    client, an async client is derived per event loop from the same connection settings;
    pass ``async_client=`` to use your own (it is then used as is, on whatever loop runs).

    ``key`` names the shared budget; by default it is derived from a SHA-256 of the API key,
    so every worker with the same key shares one budget. The API key is never stored.

    ``on_backend_error`` says what happens while Redis cannot be reached:

    * ``"wait"``: keep the request waiting and retry with backoff (up to
      ``backend_timeout`` seconds, if set, then raise :class:`BackendUnavailable`);
    * ``"local"``: fall back to an in-memory limiter holding ``local_share`` of every limit
      (required: 1 / the number of workers), and go back to Redis when it answers again;
    * ``"fail"``: raise :class:`BackendUnavailable` at once.

    A request is never admitted without a reservation in Redis, unless ``"local"`` is set.

    ``_clock`` is for tests only: the budget's time comes from it instead of Redis ``TIME``
    (through scripts of their own, which production limiters never load), so fake-clock
    tests run here as on the in-memory limiter. Never share a key between limiters with
    and without it.
    """

    def __init__(
        self,
        url_or_client: str | AnyClient = "redis://127.0.0.1:6379/0",
        *,
        config: RatelimitConfig | None = None,
        key: str | None = None,
        prefix: str = "mrl",
        limits: Iterable[Limit] | None = None,
        max_concurrency: int | None = None,
        window_margin: float | None = None,
        on_backend_error: BackendErrorMode = "wait",
        local_share: float | None = None,
        backend_timeout: float | None = None,
        lease_seconds: float | None = None,
        queue_poll: float = 0.02,
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        probe_interval: float = 1.0,
        max_connections: int = 32,
        async_client: AnyClient | None = None,
        _clock: Callable[[], float] | None = None,
    ) -> None:
        if on_backend_error not in ("wait", "local", "fail"):
            raise ValueError(
                f"on_backend_error must be 'wait', 'local' or 'fail', got {on_backend_error!r}"
            )
        if on_backend_error == "local" and local_share is None:
            # Every worker would fall back to the whole budget: N workers, N times the quota.
            raise ValueError(
                "on_backend_error='local' needs local_share=: this process's fraction of "
                "every limit while Redis is away (1 / the number of workers sharing the key)"
            )
        if local_share is not None and not (
            isinstance(local_share, (int, float)) and 0 < local_share <= 1
        ):
            raise ValueError(f"local_share must be in (0, 1], got {local_share!r}")
        positive = [
            ("queue_poll", queue_poll),
            ("socket_timeout", socket_timeout),
            ("connect_timeout", connect_timeout),
            ("probe_interval", probe_interval),
        ]
        if lease_seconds is not None:  # None: derived from the limits (_default_lease)
            positive.append(("lease_seconds", lease_seconds))
        if backend_timeout is not None:  # None: wait for Redis as long as it takes
            positive.append(("backend_timeout", backend_timeout))
        for name, value in positive:
            if not (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value > 0
            ):
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        cfg = config if config is not None else RatelimitConfig.from_env()
        self._config = cfg
        pairs = one_per_window(
            [(lim, True) for lim in limits] if limits is not None else cfg.engine_limits()
        )
        self._limits = [lim for lim, _ in pairs]
        self._explicit = [explicit for _, explicit in pairs]
        self._margin = cfg.window_margin if window_margin is None else window_margin
        self._set_specs()
        self._max_inflight = max_concurrency if max_concurrency is not None else cfg.max_concurrency
        self._mode: BackendErrorMode = on_backend_error
        self._share = float(local_share or 1.0)
        if on_backend_error == "local":
            self._warn_unsplittable()
        self._backend_timeout = backend_timeout
        self._lease = float(lease_seconds or _default_lease(self._limits))
        self._queue_lease = max(5.0, 20 * queue_poll)
        self._poll = float(queue_poll)
        # A queued waiter must ask again well within its queue lease, or it drops out.
        self._poll_max = min(QUEUE_POLL_MAX, self._queue_lease / 2.5)
        self._lease_arg, self._queue_lease_arg = repr(self._lease), repr(self._queue_lease)
        self._probe = float(probe_interval)
        self.namespace = namespace_for(cfg.api_key, key)
        self._keys = Keys.for_namespace(prefix, self.namespace)
        self._all_keys = self._keys.all()
        # This process's clock, against which Redis's is learnt; a test clock stands in for it.
        self._mono: Callable[[], float] = _clock or time.monotonic
        self._clock_arg: tuple[Callable[[], float], ...] = (_clock,) if _clock else ()
        self._conns = Connections(
            url_or_client,
            async_client,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            test_clock=_clock is not None,
        )
        self._after_seconds = 2.0
        self._init_process_state()
        _live.add(self)

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._proc = f"{secrets.token_hex(4)}-{os.getpid()}"
        self._bookings: weakref.WeakKeyDictionary[Reservation, _Booking] = (
            weakref.WeakKeyDictionary()
        )
        self._held: set[str] = set()
        self._inflight_local = 0
        self._queued_local = 0
        self._s = Counters()
        # Redis's clock minus ours, learnt from every reply; until the first reply both are
        # Unix time, which is what Redis TIME returns.
        self._offset = 0.0 if self._clock_arg else time.time() - time.monotonic()
        self._rebook_gen = 0
        self._dv = "0"
        self._epoch = ""  # of the Redis state this process last saw ('' before any reply)
        self._ledger = GrantLedger(self._margin)
        self._down_until = 0.0
        self._outage: _Outage | None = None
        self._fallback: RateLimiter | None = None
        self._heartbeat: threading.Thread | None = None
        #: (reservation, tokens) handed over by finalizers: see ``settle_later``.
        self._orphans: collections.deque[tuple[Reservation, float]] = collections.deque()
        #: (when, step): cancels Redis did not answer, for the heartbeat (see ``_after``).
        self._later: collections.deque[tuple[float, _Eval | _Command]] = collections.deque(
            maxlen=LATER_MAX
        )
        self._sending = threading.Lock()  # one thread sends them at a time
        self._closed = threading.Event()

    def _set_specs(self) -> None:
        self._specs = tuple(WindowSpec.of(lim) for lim in self._limits)
        self._spec = window_spec(self._margin, self._specs)

    def _slots(self, res: Reservation, b: _Booking) -> str:
        return " ".join(str(res.slots.get(i, 0)) for i in range(len(b.specs)))

    def _reset_after_fork(self) -> None:
        # A child shares the budget, never the parent's sockets, locks, leases or threads.
        self._conns.check_fork()
        self._init_process_state()

    # -- introspection ----------------------------------------------------------------------
    def now(self) -> float:
        """Redis's clock (as learnt from the last reply), in seconds."""
        return self._mono() + self._offset

    @property
    def limits(self) -> tuple[Limit, ...]:
        return tuple(self._limits)

    @property
    def backend_error_mode(self) -> BackendErrorMode:
        return self._mode

    @property
    def lease_seconds(self) -> float:
        """How long a dead process's in-flight slots and waiting places outlive it."""
        return self._lease

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{format_amount(lim.amount)} {lim.unit}/{format_amount(lim.per_seconds)}s"
            for lim in self._limits
        )
        return (
            f"RedisRateLimiter({inner}, key={self.namespace!r}, "
            f"max_concurrency={self._max_inflight}, on_backend_error={self._mode!r})"
        )

    def _learn_clock(self, redis_now: float) -> None:
        self._offset = redis_now - self._mono()

    def _check_fits(self, res: Reservation) -> None:
        """Only a window the user set refuses a request outright (as memory.py): against
        one assumed or learnt, a larger request waits for it to be empty (common.lua's
        ``cost_of`` caps the charge), and the server decides."""
        for lim, explicit in zip(self._limits, self._explicit, strict=True):
            cost = res.requests if lim.unit == "requests" else res.tokens
            if explicit and cost > lim.amount:
                raise RequestTooLarge(cost, lim.amount, lim.per_seconds, lim.unit)

    # -- failure policy ---------------------------------------------------------------------
    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(
            f"the Redis backend at {self._conns.describe()} cannot be reached "
            f"({type(exc).__name__}: {exc}); on_backend_error={self._mode!r}"
        )

    def _on_backend_error(self, exc: BaseException, since: float, attempt: int) -> float | None:
        """Seconds to back off before trying again, or None to use the local fallback."""
        if not _is_backend_error(exc):
            raise exc
        if self._mode == "fail":
            raise self._unavailable(exc) from exc
        if self._mode == "local":
            self._go_down(exc)
            return None
        left = math.inf
        if self._backend_timeout is not None:
            left = since + self._backend_timeout - time.monotonic()
            if left <= 0:
                raise self._unavailable(exc) from exc
        if attempt == 0:
            log.warning(
                "Redis backend unreachable (%s); holding requests until it is back",
                type(exc).__name__,
            )
        backoff = min(2.0, 0.05 * 2.0 ** min(attempt, 8)) * random.uniform(0.5, 1.0)
        # Never past the deadline: the last try is at it, so the caller hears at about
        # backend_timeout (plus that try), not up to a whole back-off later. Never 0 either:
        # from delay(), 0 would mean "go".
        return max(0.001, min(left, backoff))

    def _go_down(self, exc: BaseException) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self._probe
            if self._outage is None:
                self._outage = _Outage(time.monotonic(), cause=type(exc).__name__)
                log.warning(
                    "Redis backend unreachable (%s); using this process's local share "
                    "(%g) until it is back",
                    type(exc).__name__,
                    self._share,
                )

    def _is_down(self) -> bool:
        return self._outage is not None and time.monotonic() < self._down_until

    def _recovery_steps(self) -> _Op[None]:
        """Back from a local fallback: charge what this process spent meanwhile, then go on."""
        outage = self._outage
        if outage is None:
            return
        amounts = []
        for lim in self._limits:
            spent = outage.tokens if lim.unit == "tokens" else outage.requests
            # The fallback never let more than its share through within one window.
            amounts.append(f"-1 {min(spent, lim.amount * self._share)!r}")  # -1: now
        yield _Eval("charge", (self._spec, "", *amounts))
        with self._lock:
            if self._outage is outage:
                self._outage = None
        log.warning(
            "Redis backend is back after %.1f s; this process rejoins the shared budget",
            time.monotonic() - outage.since,
        )

    def _warn_unsplittable(self) -> None:
        """Says so when a request limit has fewer requests per window than there are
        workers: each worker's share is then one request per a longer window, which holds
        the average, but workers that are not in step can together send up to one each
        within a single window (2 per second across 3 workers: 3 in one second)."""
        for lim in self._limits:
            if lim.unit == "requests" and lim.amount * self._share < 1:
                log.warning(
                    "local_share=%g of %g requests per %g s is less than one request per "
                    "window: while Redis is away, workers can together exceed this limit "
                    "within one window (on average they keep to it); the server's 429s are "
                    "retried. Use on_backend_error='wait' where that must not happen.",
                    self._share,
                    lim.amount,
                    lim.per_seconds,
                )

    def _fallback_limiter(self) -> RateLimiter:
        with self._lock:
            if self._fallback is None:
                share = self._share
                scaled = []
                for lim in self._limits:
                    amount = lim.amount * share
                    if lim.unit == "requests" and amount < 1:
                        # Keep whole requests: one every per / amount seconds.
                        scaled.append(Limit(1, lim.per_seconds / amount, "requests"))
                    else:
                        scaled.append(Limit(amount, lim.per_seconds, lim.unit))
                cap = self._max_inflight
                self._fallback = RateLimiter(
                    self._config,
                    limits=scaled,
                    window_margin=self._margin,
                    max_concurrency=None if cap is None else max(1, math.floor(cap * share)),
                )
            return self._fallback

    def _serve_locally(self, res: Reservation, b: _Booking) -> Reservation:
        fb = self._fallback_limiter()
        inner = fb.reserve(res.tokens, res.requests)
        # The caller waits on ``res``: a slot freed in the fallback wakes it (waiting.py).
        inner.wake = lambda: res.wake() if res.wake is not None else None
        with self._lock:
            b.local = inner
            b.hint = None
            if self._outage is not None:
                self._outage.tokens += res.tokens
                self._outage.requests += res.requests
            # Its Redis lease and ahead-of-now record lapse on their own.
            b.leased = b.ahead = False
            self._track(b)
        res.tag = "local"
        self._mirror_local(res, inner, fb)
        return res

    def _mirror_local(self, res: Reservation, inner: Reservation, fb: RateLimiter) -> None:
        res.state = inner.state
        if inner.state is not State.QUEUED:
            shift = self.now() - fb.now()  # onto this limiter's clock
            res.at, res.due_at = inner.at + shift, inner.due_at + shift

    # -- drivers ----------------------------------------------------------------------------
    def _run(self, op: _Op[T]) -> T:
        if self._conns.pid != os.getpid():
            self._reset_after_fork()
        try:
            step = next(op)
            while True:
                if isinstance(step, _Sleep):
                    time.sleep(step.seconds)
                    step = op.send(None)
                    continue
                try:
                    reply = self._call_sync(step)
                except Exception as exc:
                    step = op.throw(exc)
                else:
                    step = op.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            op.close()

    def _script_args(self, args: tuple[str, ...]) -> tuple[str, ...]:
        """A test clock's reading travels as the last argument (see load_state)."""
        return (*args, *(repr(clock()) for clock in self._clock_arg))

    def _script_keys(self, step: _Eval) -> list[bytes]:
        if not step.member:
            return self._all_keys
        return [*self._all_keys, self._keys.marker(step.member)]

    def _call_sync(self, step: _Eval | _Command) -> Any:
        if isinstance(step, _Eval):
            args = self._script_args(step.args)
            return self._conns.scripts[step.script](keys=self._script_keys(step), args=args)
        if step.name == "zrem":
            return self._conns.sync.zrem(step.key, step.arg)
        return self._conns.sync.hget(step.key, step.arg)

    async def _arun(self, op: _Op[T]) -> T:
        if self._conns.pid != os.getpid():
            self._reset_after_fork()
        try:
            step = next(op)
            while True:
                if isinstance(step, _Sleep):
                    await anyio.sleep(step.seconds)
                    step = op.send(None)
                    continue
                try:
                    reply = await self._call_async(step)
                except Exception as exc:
                    step = op.throw(exc)
                else:
                    step = op.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            op.close()

    async def _call_async(self, step: _Eval | _Command) -> Any:
        found = await self._conns.async_for_running_loop()
        if found is None:  # trio, or a client we cannot derive an async twin from
            return await anyio.to_thread.run_sync(self._call_sync, step)
        client, scripts = found
        if isinstance(step, _Eval):
            args = self._script_args(step.args)
            return await scripts[step.script](keys=self._script_keys(step), args=args)
        if step.name == "zrem":
            return await client.zrem(step.key, step.arg)
        return await client.hget(step.key, step.arg)

    def _after(self, step: _Eval | _Command, *, later: bool = False) -> _Op[Any]:
        """Bookkeeping after the fact (cancel, settle, release, pause, adopt): retried for a
        short while, then logged and dropped. Never raises a backend error: these calls sit
        in ``finally`` blocks, where raising would hide the real exception.

        ``later`` (a cancel): tried once, and if Redis does not answer, kept for the
        heartbeat to send once it does (``_send_later``) rather than retried here. A cancel
        is how a caller gives up (its deadline passed, its task was cancelled, the backend
        timed out): it must not hold that caller. Until it reaches Redis, what it gives back
        stays charged, which only makes the budget more careful, and lapses anyway: a
        waiting place or an in-flight slot with its lease (no longer renewed), a charge
        with its window."""
        if self._mode == "local" and self._is_down():
            if later:
                self._keep_for_later(step)
            return None
        deadline = time.monotonic() + self._after_seconds
        attempt = 0
        while True:
            try:
                return (yield step)
            except Exception as exc:
                if not _is_backend_error(exc):
                    raise
                if self._mode == "local":
                    self._go_down(exc)
                if later:
                    log.warning(
                        "Redis backend unreachable (%s): %s kept, to be sent when it is back",
                        type(exc).__name__,
                        getattr(step, "script", "release"),
                    )
                    self._keep_for_later(step)
                    return None
                if self._mode != "wait" or time.monotonic() > deadline:
                    log.warning(
                        "Redis backend unreachable (%s): %s not recorded",
                        type(exc).__name__,
                        getattr(step, "script", "release"),
                    )
                    return None
                yield _Sleep(min(0.5, 0.05 * 2.0 ** min(attempt, 8)) * random.uniform(0.5, 1.0))
                attempt += 1

    def _keep_for_later(self, step: _Eval | _Command) -> None:
        self._later.append((time.monotonic(), step))  # atomic: no lock (see settle_later)
        self._ensure_heartbeat()

    @staticmethod
    def _send_op(step: _Eval | _Command) -> _Op[Any]:
        return (yield step)

    def _send_later(self) -> None:
        """Send what ``_after`` kept while Redis did not answer, oldest first (the heartbeat
        does, so no caller waits on it). Stops at the first backend error: Redis is still
        away, and the next beat tries again. A cancel runs at most once per member (see
        cancel.lua), so one whose earlier attempt reached Redis after all changes nothing.
        At most a sixth of a lease per beat, so that a long backlog never delays renewals
        until leases lapse: the rest goes at the next beat, at most ``LATER_POLL`` later.
        """
        if not self._sending.acquire(blocking=False):
            return  # another thread is at it
        try:
            self._send_kept()
        finally:
            self._sending.release()

    def _send_kept(self) -> None:
        stop_at = time.monotonic() + self._lease / 6
        while self._later and time.monotonic() < stop_at:
            # Taken off only once done with (only the sender takes any off; callers only
            # append): while Redis is away, the kept ones stay in the deque throughout.
            entry = self._later[0]
            since, step = entry
            if time.monotonic() - since > LATER_SECONDS:
                log.warning(
                    "Redis backend away for over %g s: a %s was dropped; what it held lapses "
                    "with its lease or window",
                    LATER_SECONDS,
                    getattr(step, "script", "release"),
                )
            else:
                try:
                    self._run(self._send_op(step))
                except Exception as exc:
                    if _is_backend_error(exc):
                        return
                    log.warning("sending a kept %r failed", step, exc_info=True)
                else:
                    log.info(
                        "Redis backend is back: a kept %s was recorded",
                        getattr(step, "script", "release"),
                    )
            if self._later and self._later[0] is entry:  # else LATER_MAX pushed it out
                self._later.popleft()

    # -- reserve ----------------------------------------------------------------------------
    def _reserve_args(self, res: Reservation, b: _Booking) -> tuple[str, ...]:
        return (
            b.member,
            repr(res.tokens),
            repr(res.requests),
            str(self._max_inflight or 0),
            self._lease_arg,
            self._queue_lease_arg,
            b.spec,
            self._epoch,
            "1" if b.unsure else "0",  # still unsure from a failed attempt: a retry
        )

    def _new_booking(self, tokens: float, requests: float) -> tuple[Reservation, _Booking]:
        res = Reservation(clean_amount(tokens, "tokens"), clean_amount(requests, "requests"))
        self._check_fits(res)
        res.created_at = self.now()
        b = _Booking(f"{self._proc}:{res.id}", self._specs, self._spec, self._mono())
        res.tag = b.member
        with self._lock:
            self._bookings[res] = b
            self._s["tokens_reserved"] += res.tokens
        return res, b

    def _reserve_op(self, res: Reservation, b: _Booking) -> _Op[Reservation]:
        since, attempt = time.monotonic(), 0
        while True:
            if self._mode == "local" and self._is_down():
                return self._serve_locally(res, b)
            try:
                if self._outage is not None:
                    yield from self._recovery_steps()
                # Retried with the same member after an ambiguous failure: the script
                # answers with the booking the first attempt made, if it ran.
                args = self._reserve_args(res, b)
                b.unsure = True
                reply = _text((yield _Eval("reserve", args, b.member))).split()
                b.unsure = False
                if reply[0] == "epoch":
                    yield from self._recharge_op(reply[3])
                    continue
            except Exception as exc:
                wait = self._on_backend_error(exc, since, attempt)
                if wait is None:
                    return self._serve_locally(res, b)
                yield _Sleep(wait)
                attempt += 1
                continue
            yield from self._apply_booking(res, b, reply, new=True)
            return res

    def _recharge_op(self, epoch: str) -> _Op[None]:
        """Redis lost its state (a new epoch): charge again what this process granted that
        still counts, before it books anything in the new state (see ledger.py). Charged at
        most once per process and epoch, however often the call is retried."""
        with self._lock:
            lists = self._ledger.live(self._specs, self.now())
        reply = yield _Eval("charge", (self._spec, f"e|{self._proc}|{epoch}", *lists))
        self._learn_clock(float(reply[0]))
        self._epoch = _text(reply[1])
        log.warning(
            "Redis lost the shared budget's state; this process charged again what it sent "
            "in the last window"
        )

    def _apply_booking(
        self, res: Reservation, b: _Booking, reply: list[str], *, new: bool
    ) -> _Op[None]:
        status = reply[0]
        at, now = float(reply[1]), float(reply[2])
        self._learn_clock(now)
        b.epoch = self._epoch = reply[3]
        dv = reply[4]
        if status in ("exhausted", "cancelled"):
            with self._lock:
                if b.queued:
                    b.queued = False
                    self._queued_local -= 1
                res.state = State.CANCELLED
                res.settled = True
                self._s["tokens_reserved"] -= res.tokens
            if status == "cancelled":  # only ever answers a call its caller abandoned
                raise BudgetExhausted("this reservation was cancelled; take a new one")
            spec = b.specs[int(float(reply[5])) - 1]
            unit = "tokens" if spec.tokens else "requests"
            cost = res.tokens if spec.tokens else res.requests
            raise BudgetExhausted(
                spent_message(cost, spec.amount, unit, spec.per_seconds, at - now)
            )
        with self._lock:
            if status == "queued":
                if not b.queued:
                    b.queued = True
                    self._queued_local += 1
                res.state = State.QUEUED
                b.hint = None
            else:
                if b.queued:
                    b.queued = False
                    self._queued_local -= 1
                res.at = res.due_at = at
                res.slots = {i: int(float(k)) for i, k in enumerate(reply[5 : 5 + len(b.specs)])}
                res.state = State.SCHEDULED
                if not res.holds_inflight and not res.released:
                    res.holds_inflight = True
                    self._inflight_local += 1
                if status == "ok" and self._max_inflight and not b.leased:
                    b.leased = True
                b.ahead = at > now
                self._track(b)
                b.counted = at <= now
                b.hint, b.hint_mono, b.hint_gen = at - now, self._mono(), self._rebook_gen
        if b.leased or b.ahead:
            self._ensure_heartbeat()
        if dv != self._dv:
            raw = yield _Command("hget", self._keys.state, "disc")
            self._apply_shared_discovery(raw, dv)

    def _track(self, b: _Booking) -> None:
        """Keep the heartbeat renewing what ``b`` holds in Redis (under ``self._lock``)."""
        if b.leased or b.ahead:
            self._held.add(b.member)
        else:
            self._held.discard(b.member)

    # -- streams dropped unclosed --------------------------------------------------------
    def settle_later(self, res: Reservation, actual_tokens: float) -> None:
        """Settle and release ``res`` soon: for finalizers (a stream dropped without being
        closed), which may run inside any lock of this thread, so this takes none (appending
        to a deque is atomic). The heartbeat thread, or this process's next reserve, delay
        or stats call, does the work; until then the heartbeat must not renew its lease."""
        self._orphans.append((res, actual_tokens))

    def _take_orphans(self) -> list[_Op[None]]:
        ops = []
        while self._orphans:
            res, actual = self._orphans.popleft()
            if self._bookings.get(res) is None and res.tag not in ("", "local"):
                ops.append(self._forget_op(res))
            else:
                ops.append(self._settle_op(res, actual))
                ops.append(self._release_op(res))
        return ops

    def _forget_op(self, res: Reservation) -> _Op[None]:
        """Release a reservation whose booking went with the garbage collector: a stream
        dropped inside a reference cycle has its weak references cleared before its
        finalizer runs. Its lease stops being renewed and its in-flight slot comes back;
        its tokens stay charged as estimated (the booking's slots went with it)."""
        with self._lock:
            if res.released:
                return
            res.released = True
            if res.holds_inflight:
                res.holds_inflight = False
                self._inflight_local -= 1
            self._held.discard(res.tag)
        yield from self._after(_Command("zrem", self._keys.inflight, res.tag))

    def _settle_orphans(self) -> None:
        for op in self._take_orphans():
            try:
                self._run(op)
            except Exception:  # the backend's own failure policy already applied
                log.debug("settling a dropped stream failed", exc_info=True)

    async def _asettle_orphans(self) -> None:
        for op in self._take_orphans():
            try:
                with anyio.CancelScope(shield=True):
                    await self._arun(op)
            except Exception:
                log.debug("settling a dropped stream failed", exc_info=True)

    def reserve(self, tokens: float, requests: float = 1.0) -> Reservation:
        """Book capacity at once, all or nothing across every limit (one round trip)."""
        if self._orphans:
            self._settle_orphans()
        res, b = self._new_booking(tokens, requests)
        try:
            return self._run(self._reserve_op(res, b))
        except BaseException:
            if b.unsure:  # interrupted while Redis may have booked it: give it back
                self._run(self._cancel_op(res))
            raise

    async def areserve(self, tokens: float, requests: float = 1.0) -> Reservation:
        if self._orphans:
            await self._asettle_orphans()
        res, b = self._new_booking(tokens, requests)
        try:
            return await self._arun(self._reserve_op(res, b))
        except BaseException:
            if b.unsure:  # cancelled while Redis may have booked it: give it back
                with anyio.CancelScope(shield=True):
                    await self._arun(self._cancel_op(res))
            raise

    # -- delay ------------------------------------------------------------------------------
    def _grant(self, res: Reservation, b: _Booking) -> float:
        with self._lock:
            if b.ahead:
                b.ahead = False  # the check that granted it dropped its ahead-of-now record
                self._track(b)
            if res.state is State.SCHEDULED:
                res.state = State.GRANTED
                waited = self._mono() - b.created_mono
                self._s["requests_admitted"] += 1
                self._s["wait_seconds_total"] += waited
                self._s["wait_seconds_max"] = max(self._s["wait_seconds_max"], waited)
                if b.local is None:
                    self._ledger.add(b.specs, res.slots, res.tokens, res.requests, now=res.at)
        return 0.0

    def _local_delay(self, res: Reservation, b: _Booking) -> float:
        assert b.local is not None
        fb = self._fallback_limiter()
        wait = fb.delay(b.local)
        self._mirror_local(res, b.local, fb)
        if wait > 0:
            return wait
        res.state = State.SCHEDULED
        return self._grant(res, b)

    def _check_args(self, res: Reservation, b: _Booking) -> tuple[str, ...]:
        queued = res.state is State.QUEUED
        maxif = self._max_inflight or 0
        return (
            b.member,
            "q" if queued else "s",
            repr(res.tokens),
            repr(res.requests),
            str(maxif if queued or b.leased else 0),
            self._lease_arg,
            self._queue_lease_arg,
            repr(res.at),
            b.epoch,
            "1" if b.counted else "0",
            b.spec,
            self._slots(res, b),
            "1" if b.ahead else "0",
            self._epoch,
        )

    def _queued_wait(self, b: _Booking, place: int) -> float:
        """How long a caller queued for an in-flight slot sleeps before asking again.

        Only the promotion of a waiter near the front (within two turnovers of the cap) can
        be due at any moment: those ask every ``queue_poll``. One further back sleeps half
        the time the queue would take to bring it there at the pace it moved since its last
        answer, doubling while the queue does not move, up to ``QUEUE_POLL_MAX``: 2,000
        queued callers cost about a thousand script calls a second, not a hundred thousand.
        """
        now = time.monotonic()
        front = 2 * (self._max_inflight or 1)
        seen, b.queue_seen = b.queue_seen, (place, now)
        if place < front:
            wait = self._poll
        elif seen is not None and place < seen[0]:
            pace = (seen[0] - place) / max(now - seen[1], 1e-3)  # places per second
            wait = (place - front + 1) / pace / 2
        else:
            wait = 2 * max(b.queue_wait, self._poll)
        b.queue_wait = min(max(wait, self._poll), self._poll_max)
        return b.queue_wait

    def _delay_op(self, res: Reservation) -> _Op[float]:
        if res.state is State.CANCELLED:
            raise BudgetExhausted("this reservation was cancelled; take a new one")
        b = self._bookings.get(res)
        if b is None:
            raise ValueError("this reservation was not made by this limiter")
        if b.local is not None:
            return self._local_delay(res, b)
        if res.state is State.GRANTED:
            return 0.0
        if res.state is State.QUEUED:
            # Not booked yet: it books in the windows in force now (discovery may have
            # replaced them), and must still fit them.
            b.specs, b.spec = self._specs, self._spec
            try:
                self._check_fits(res)
            except RequestTooLarge:
                yield from self._cancel_op(res)
                raise
        if res.state is State.SCHEDULED and b.hint is not None:
            hint, b.hint = b.hint, None
            elapsed = self._mono() - b.hint_mono
            if elapsed < HINT_SECONDS and b.hint_gen == self._rebook_gen:
                if hint - elapsed > 0:
                    return hint - elapsed
                if b.counted:
                    return self._grant(res, b)
        try:
            if self._outage is not None and not self._is_down():
                yield from self._recovery_steps()
            while True:
                reply = _text((yield _Eval("check", self._check_args(res, b), b.member))).split()
                if reply[0] != "epoch":
                    break
                yield from self._recharge_op(reply[3])
        except Exception as exc:
            if b.failing_since is None:
                b.failing_since = time.monotonic()
            attempt = int(time.monotonic() - b.failing_since) + 1
            wait = self._on_backend_error(exc, b.failing_since, attempt)
            if wait is None:
                self._serve_locally(res, b)
                return self._local_delay(res, b)
            return wait  # the caller sleeps it and asks again, still holding the request
        b.failing_since = None
        status = reply[0]
        if status == "queued":
            self._learn_clock(float(reply[2]))
            return self._queued_wait(b, int(float(reply[1])))
        if status in ("ok", "granted") and res.state is State.SCHEDULED:
            at, now = float(reply[1]), float(reply[2])
            self._learn_clock(now)
            if status == "granted":
                # It goes now, late: counted from ``at``, in these slots (due_at stays: the
                # booked time, from which anchor() measures the lag).
                slots = {i: int(float(k)) for i, k in enumerate(reply[5 : 5 + len(b.specs)])}
                with self._lock:
                    if slots != res.slots:  # moved, as by an anchor: no hint holds any more
                        self._rebook_gen += 1
                    res.at, res.slots = at, slots
            elif at > now:
                return at - now
            b.counted = True
            return self._grant(res, b)
        yield from self._apply_booking(res, b, reply, new=False)  # promoted, moved, exhausted
        b.hint = None
        wait = res.at - float(reply[2])
        if wait > 0:
            return wait
        return self._grant(res, b)

    def delay(self, res: Reservation) -> float:
        """Seconds the caller must still wait, on Redis's clock; ``0`` means go now."""
        if self._orphans:  # a caller queued for a slot asks again: a dropped stream's frees
            self._settle_orphans()
        return self._run(self._delay_op(res))

    async def adelay(self, res: Reservation) -> float:
        if self._orphans:
            await self._asettle_orphans()
        return await self._arun(self._delay_op(res))

    # -- cancel / settle / release ----------------------------------------------------------
    def _cancel_op(self, res: Reservation) -> _Op[None]:
        b = self._bookings.get(res)
        with self._lock:
            if res.state is State.CANCELLED:
                return
            prior, was_settled = res.state, res.settled
            res.state = State.CANCELLED
            res.settled = True
            self._s["requests_cancelled"] += 1
            if not was_settled:
                self._s["tokens_reserved"] -= res.tokens
            self._release_locked(res, b)
            held_ahead = b is not None and b.ahead
            if b is not None:
                if b.queued:
                    b.queued = False
                    self._queued_local -= 1
                b.ahead = False  # the cancel script drops its ahead-of-now record
                self._track(b)
                if prior is State.GRANTED and not was_settled and b.local is None:
                    self._ledger.add(b.specs, res.slots, -res.tokens, -res.requests, now=res.at)
        if b is None:
            return
        if b.local is not None:
            self._fallback_limiter().cancel(b.local)
            return
        # Where Redis holds it, the script finds it by member (see cancel.lua); "u": a reserve
        # whose reply never came, "q": queued as far as this process knows.
        mode = "u" if b.unsure else "q" if prior is State.QUEUED else "s"
        yield from self._after(
            _Eval(
                "cancel",
                (
                    b.member,
                    mode,
                    repr(res.tokens),
                    repr(res.requests),
                    b.epoch,
                    "0" if was_settled else "1",
                    repr(res.at),
                    b.spec,
                    self._slots(res, b),
                    "1" if held_ahead else "0",
                ),
                b.member,
            ),
            later=True,
        )

    def cancel(self, res: Reservation) -> None:
        """Give back everything the reservation took. Safe to call more than once."""
        self._run(self._cancel_op(res))

    async def acancel(self, res: Reservation) -> None:
        await self._arun(self._cancel_op(res))

    def _settle_op(self, res: Reservation, actual_tokens: float) -> _Op[None]:
        try:
            actual = clean_amount(actual_tokens, "actual_tokens")
        except ValueError:
            return  # a broken usage report keeps the estimate charged
        b = self._bookings.get(res)
        with self._lock:
            if res.settled or res.state in (State.CANCELLED, State.QUEUED) or b is None:
                return
            res.settled = True
            diff = actual - res.tokens
            if diff == 0:
                return
            res.tokens = actual
            if diff > 0:
                self._s["tokens_charged"] += diff
            else:
                self._s["tokens_refunded"] -= diff
            if res.state is State.GRANTED and b.local is None:
                self._ledger.add(b.specs, res.slots, diff, 0.0, now=self.now())
        if b.local is not None:
            self._fallback_limiter().settle(b.local, actual)
            if diff > 0 and self._outage is not None:
                self._outage.tokens += diff
            return
        reply = yield from self._after(
            _Eval("settle", (b.member, repr(diff), b.epoch, b.spec, self._slots(res, b)), b.member)
        )
        if reply is None and diff > 0:
            with self._lock:  # debt Redis did not hear about: charge it when Redis is back
                if self._outage is not None:
                    self._outage.tokens += diff

    def settle(self, res: Reservation, actual_tokens: float) -> None:
        """Correct the token charge to what the server reported. Only the first call counts."""
        self._run(self._settle_op(res, actual_tokens))

    async def asettle(self, res: Reservation, actual_tokens: float) -> None:
        await self._arun(self._settle_op(res, actual_tokens))

    def _release_locked(self, res: Reservation, b: _Booking | None) -> bool:
        """Mark released; True when a shared lease must be given back."""
        if res.released:
            return False
        res.released = True
        if res.holds_inflight:
            res.holds_inflight = False
            self._inflight_local -= 1
        if b is not None and b.leased:
            b.leased = False
            self._track(b)
            return True
        return False

    def _release_op(self, res: Reservation) -> _Op[None]:
        b = self._bookings.get(res)
        with self._lock:
            leased = self._release_locked(res, b)
        if b is not None and b.local is not None:
            self._fallback_limiter().release(b.local)
        elif leased and b is not None:
            yield from self._after(_Command("zrem", self._keys.inflight, b.member))

    def release(self, res: Reservation) -> None:
        """Free the in-flight slot (the response was closed)."""
        self._run(self._release_op(res))

    async def arelease(self, res: Reservation) -> None:
        await self._arun(self._release_op(res))

    # -- signals from the server ------------------------------------------------------------
    def _pause_op(self, seconds: float, rate_limited: bool) -> _Op[None]:
        s = seconds if isinstance(seconds, (int, float)) and math.isfinite(seconds) else 0.0
        s = min(max(0.0, float(s)), MAX_PAUSE_SECONDS)
        with self._lock:
            self._rebook_gen += 1  # bookings answered before this pause must ask again
            if rate_limited:
                self._s["rate_limited_seen"] += 1
            self._s["paused_until"] = max(self._s["paused_until"], self.now() + s)
        if self._fallback is not None or self._outage is not None:
            self._fallback_limiter().pause_for(s, rate_limited=rate_limited)
        reply = yield from self._after(
            _Eval("pause", (repr(s), "1" if rate_limited else "0", self._spec))
        )
        if reply is not None:
            self._learn_clock(float(reply[1]))

    def pause_for(self, seconds: float, *, rate_limited: bool = True) -> None:
        """Hold every worker sharing this budget back for ``seconds`` (clamped to [0, 1 h])."""
        self._run(self._pause_op(seconds, rate_limited))

    async def apause_for(self, seconds: float, *, rate_limited: bool = True) -> None:
        await self._arun(self._pause_op(seconds, rate_limited))

    def _anchor_op(self, res: Reservation, lag: float) -> _Op[None]:
        if not isinstance(lag, (int, float)) or not math.isfinite(lag) or lag < 0:
            return
        b = self._bookings.get(res)
        with self._lock:
            if b is None or res.state is not State.GRANTED or res.settled:
                return
            if lag <= ANCHOR_SLACK:
                return
            at, slots = res.at, self._slots(res, b)
        if b.local is not None:
            fb = self._fallback_limiter()
            fb.anchor(b.local, lag)
            self._mirror_local(res, b.local, fb)
            return
        reply = yield from self._after(
            _Eval(
                "anchor",
                (
                    b.member,
                    repr(res.tokens),
                    repr(res.requests),
                    b.epoch,
                    repr(res.due_at),
                    repr(at),
                    repr(float(lag)),
                    b.spec,
                    slots,
                ),
                b.member,
            )
        )
        if reply is None:
            return
        words = _text(reply).split()
        self._learn_clock(float(words[2]))
        if words[0] != "moved":
            return
        new_slots = {i: int(float(k)) for i, k in enumerate(words[5 : 5 + len(b.specs)])}
        with self._lock:
            if new_slots != res.slots:
                self._s["anchored"] += 1
                self._rebook_gen += 1  # this process's waiters re-check rather than trust a hint
            # Only if nothing (a settle, a cancel) touched it meanwhile.
            if res.at == at and res.state is State.GRANTED and not res.settled:
                self._ledger.add(b.specs, res.slots, -res.tokens, -res.requests, now=res.at)
                res.at = float(words[1])
                res.slots = new_slots
                self._ledger.add(b.specs, res.slots, res.tokens, res.requests, now=res.at)

    def anchor(self, res: Reservation, lag: float) -> None:
        """The request left ``lag`` seconds after it was due to go: count it from then, for
        every worker (never earlier than it counts now).

        ``lag`` is a duration measured here; it applies to the booked time (``due_at``) on
        Redis's clock; the window margin then counts from the departure, as in memory.py.
        O(windows): each waiting booking, whichever worker owns it, checks that it
        still fits when its owner next asks, and if not, it and every booking after it are
        re-booked in order (see docs/redis.md)."""
        self._run(self._anchor_op(res, lag))

    async def aanchor(self, res: Reservation, lag: float) -> None:
        await self._arun(self._anchor_op(res, lag))

    def pause_until(self, t: float) -> None:
        """Hold every worker back until ``t`` on this limiter's clock (see :meth:`now`)."""
        self.pause_for(t - self.now(), rate_limited=False)

    async def apause_until(self, t: float) -> None:
        await self.apause_for(t - self.now(), rate_limited=False)

    def _discover(self, observed: list[ObservedLimit]) -> tuple[list[WindowSpec], str]:
        """Replace the windows the user did not set by those the server reports, as
        memory.py does (every report may change them; a window length the user set keeps
        the user's limit). Returns the windows dropped and the reported limits to share
        with other workers."""
        dropped: list[WindowSpec] = []
        shared: list[list[Any]] = []
        changed = False
        with self._lock:
            for unit in ("requests", "tokens"):
                reported = [
                    o
                    for o in observed
                    if o.unit == unit and o.limit and o.limit > 0 and math.isfinite(o.limit)
                ]
                if not reported:
                    continue
                shared.extend([unit, o.limit, o.per_seconds] for o in reported)
                mine = [i for i, lim in enumerate(self._limits) if lim.unit == unit]
                kept = {self._limits[i].per_seconds for i in mine if self._explicit[i]}
                wanted = learnt_limits(unit, reported, kept)
                learnt = [i for i in mine if not self._explicit[i]]
                if not wanted or {self._limits[i] for i in learnt} == set(wanted):
                    continue
                dropped.extend(self._specs[i] for i in learnt)
                keep = [i for i in range(len(self._limits)) if i not in learnt]
                self._limits = [self._limits[i] for i in keep]
                self._explicit = [self._explicit[i] for i in keep]
                for lim in wanted:
                    self._limits.append(lim)
                    self._explicit.append(False)
                changed = True
            if changed:  # windows added beside the user's replace none, and count too
                self._set_specs()
                self._fallback = None
            new_ids = {s.id for s in self._specs}
            dropped = [s for s in dropped if s.id not in new_ids]
        return dropped, json.dumps(sorted(shared)) if shared else ""

    def _apply_shared_discovery(self, raw: Any, dv: str) -> None:
        """Limits another worker learnt from the server's headers."""
        self._dv = dv
        if not raw:
            return
        try:
            observed = [
                ObservedLimit("tokens" if u == "tokens" else "requests", float(p), float(a), None)
                for u, a, p in json.loads(_text(raw))
                if u in ("tokens", "requests")
            ]
        except (ValueError, TypeError):
            return
        self._discover(observed)

    def _adopt_op(self, observed: list[ObservedLimit]) -> _Op[None]:
        dropped, shared = self._discover(observed)
        obs_args: list[str] = []
        count = 0
        for o in observed:
            if o.remaining is None or not math.isfinite(o.remaining) or o.remaining < 0:
                continue
            if o.per_seconds >= LONG_WINDOW_SECONDS:  # not a month's remainder (memory.py)
                continue
            obs_args.extend(
                (
                    "1" if o.unit == "tokens" else "0",
                    repr(float(o.per_seconds)),
                    repr(float(o.remaining)),
                )
            )
            count += 1
        if not count and not dropped and not shared:
            return
        reply = yield from self._after(
            _Eval(
                "adopt",
                (
                    self._spec,
                    window_spec(self._margin, tuple(dropped)),
                    str(count),
                    *obs_args,
                    shared,
                ),
            )
        )
        if reply is not None:
            self._dv = _text(reply[0])
            self._learn_clock(float(reply[1]))

    def adopt(self, observed: list[ObservedLimit]) -> None:
        """Take the server's view, for every worker: discover tier limits, and never believe
        in more room than the server says remains."""
        self._run(self._adopt_op(observed))

    async def aadopt(self, observed: list[ObservedLimit]) -> None:
        await self._arun(self._adopt_op(observed))

    def record_estimate(self, estimated: float, actual: float) -> None:
        with self._lock:
            self._s.record_estimate(estimated, actual)

    # -- stats ------------------------------------------------------------------------------
    def local_stats(self) -> LimiterStats:
        """What this process alone did (``in_flight`` and ``queued`` are this process's)."""
        with self._lock:
            return self._s.snapshot(
                in_flight=self._inflight_local,
                queued=self._queued_local,
                paused_until=self._s["paused_until"],
                limits=self.limits,
            )

    def _merge_stats(self, reply: list[Any]) -> LimiterStats:
        local = self.local_stats()
        self._learn_clock(float(reply[0]))
        flat = [_text(x) for x in reply[4:]]
        g = {flat[i]: float(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
        capped = self._max_inflight is not None
        return LimiterStats(
            requests_admitted=round(g.get("requests_admitted", 0.0)),
            requests_cancelled=round(g.get("requests_cancelled", 0.0)),
            wait_seconds_total=local.wait_seconds_total,
            wait_seconds_max=local.wait_seconds_max,
            tokens_reserved=g.get("tokens_reserved", 0.0),
            tokens_refunded=g.get("tokens_refunded", 0.0),
            tokens_charged=g.get("tokens_charged", 0.0),
            # Without a cap nothing in Redis tracks in-flight requests (that would cost a
            # round trip per release): this process's count is reported.
            in_flight=int(_text(reply[2])) if capped else local.in_flight,
            queued=int(_text(reply[3])) if capped else local.queued,
            paused_until=float(reply[1]),
            rate_limited_seen=round(g.get("rate_limited_seen", 0.0)),
            estimate_samples=local.estimate_samples,
            estimate_error_mean=local.estimate_error_mean,
            estimate_error_abs_mean=local.estimate_error_abs_mean,
            limits=local.limits,
        )

    def _stats_op(self) -> _Op[LimiterStats]:
        try:
            reply = yield _Eval("stats", ())
        except Exception as exc:
            if not _is_backend_error(exc):
                raise
            log.debug(
                "stats: Redis unreachable (%s); this process's numbers only", type(exc).__name__
            )
            return self.local_stats()
        return self._merge_stats(reply)

    def stats(self) -> LimiterStats:
        """The shared budget's counters from Redis, with this process's wait and estimate
        figures (see :meth:`local_stats` for this process alone)."""
        if self._orphans:
            self._settle_orphans()
        return self._run(self._stats_op())

    async def astats(self) -> LimiterStats:
        if self._orphans:
            await self._asettle_orphans()
        return await self._arun(self._stats_op())

    # -- leases -----------------------------------------------------------------------------
    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        with self._lock:
            if self._heartbeat is not None and self._heartbeat.is_alive():
                return
            ref = weakref.ref(self)
            closed = self._closed
            period = self._lease / 3
            thread = threading.Thread(
                target=_heartbeat,
                args=(ref, closed, period),
                name="mistral-ratelimit-leases",
                daemon=True,
            )
            self._heartbeat = thread
            thread.start()

    def _renew_leases(self) -> None:
        with self._lock:
            members = list(self._held)
        if not members or self._conns.pid != os.getpid():
            return
        try:
            for i in range(0, len(members), 500):
                args = self._script_args((repr(self._lease), *members[i : i + 500]))
                self._conns.scripts["renew"](keys=self._all_keys, args=args)
        except Exception as exc:  # the next beat tries again; leases outlive a few misses
            log.debug("lease renewal failed: %s", type(exc).__name__)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the lease heartbeat and close the clients this limiter made."""
        self._closed.set()
        self._conns.close()

    async def aclose(self) -> None:
        self._closed.set()
        await self._conns.aclose()
        self._conns.close()

    def __enter__(self) -> RedisRateLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _heartbeat(ref: weakref.ref[RedisRateLimiter], closed: threading.Event, period: float) -> None:
    """Renew this process's in-flight leases until the limiter is closed or collected.
    A process that dies stops renewing, so its slots come back within one lease. Each beat
    first sends the cancels Redis did not answer (at least every ``LATER_POLL`` while any
    are kept)."""
    wait = period
    while not closed.wait(wait):
        limiter = ref()
        if limiter is None:
            return
        limiter._send_later()  # cancels Redis did not answer: their places come back
        limiter._settle_orphans()  # before renewing: a dropped stream's lease must lapse
        limiter._renew_leases()
        wait = min(period, LATER_POLL) if limiter._later else period
        del limiter


__all__ = ["BackendErrorMode", "RedisRateLimiter"]
