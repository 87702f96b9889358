"""One request's steps, written once and free of I/O.

``Lifecycle.run`` is a generator: it *yields* effects (acquire a reservation, send, read
a body, sleep, call the limiter) and receives their results; the thin adapters in
``driving.py`` perform them with ``time.sleep`` or ``anyio.sleep``, httpx or httpx2.
A failure of an effect is thrown back into the generator, so clean-up is ordinary
``try``/``except`` code that every adapter shares.

Every reservation ends exactly once: cancelled (nothing reached the server), settled to
real usage (``BodyObserver.finish``), or settled to zero tokens (an error response).
"""

from __future__ import annotations

import logging
import math
import random
import reprlib
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NamedTuple

from .accounting.decoding import IncrementalDecoder, decode_body
from .accounting.headers import (
    NO_LIMITS,
    ResponseHead,
    parse_ratelimit_headers,
    read_head,
    retry_after_seconds,
)
from .accounting.request import Estimator
from .accounting.responses import classify_response
from .accounting.tokenizer import is_loaded as tokenizer_loaded
from .accounting.types import ErrorClass, Estimate, Usage
from .accounting.usage import StreamSniffer, parse_json_response
from .config import RatelimitConfig
from .errors import BudgetExhausted, format_amount
from .limiter.base import Limiter, Reservation, is_nonblocking

log = logging.getLogger("mistral_ratelimit")

#: Key of ``request.extensions`` holding per-request options.
EXTENSION_KEY = "mistral_ratelimit"
#: Exact tokenization is used once a cheap upper bound would take more than this share
#: of the tightest token window's free room; below it, the bound is reserved and
#: settled from usage, keeping the tokenizer off the hot path.
EXACT_COUNT_THRESHOLD = 0.25
#: Longest shared pause one 429 may impose (one tokens-per-minute window).
MAX_PAUSE_SECONDS = 60.0
#: One request in this many is counted exactly even with ample room, so the per-model
#: correction and the estimate-error figures keep learning from real usage...
EXACT_SAMPLE_EVERY = 64
#: ...but not more often than once in this many seconds: at thousands of requests a
#: second, one in 64 would still spend most of the transport's time in the tokenizer.
EXACT_SAMPLE_INTERVAL = 0.25
#: Seconds between two readings of the rate-limit headers of successful responses.
LIMITS_READ_INTERVAL = 0.05
#: Largest error body read to classify a 429 or 503.
MAX_ERROR_BODY_BYTES = 64 * 1024
#: JSON bodies larger than this are passed through without being parsed for usage.
MAX_JSON_SNIFF_BYTES = 8 * 1024 * 1024
#: Exception class names that mean the request never left this machine (httpx and
#: httpx2 share the names but not the classes, so the check is by name, as the SDK's).
NOT_SENT_ERRORS = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout"})


# -- effects ------------------------------------------------------------------------------
# Named tuples: one or more is made for every request, and they are the cheapest immutable
# records Python builds (a frozen dataclass costs twice as much).
class Acquire(NamedTuple):
    tokens: float
    priority: int = 0


class Send(NamedTuple):
    """Send the request; the result is the response.

    ``departed``, when set, is called by the adapter as soon as the request body has been
    written (if the transport can tell: httpcore's trace hook), with that
    ``time.monotonic()``; the limiter call it returns is made then, before any response,
    so a request that left late is counted from then even if its reply is slow to come or
    never comes (a timeout, a cancel)."""

    departed: Callable[[float], Call | None] | None = None


SEND = Send()


class ReadBody(NamedTuple):
    """Read at most about ``limit`` raw bytes of the body and leave the body whole for the
    caller; the result is ``(raw bytes read, whether that was all of it)``."""

    response: Any
    limit: int


class Close(NamedTuple):
    response: Any


class Sleep(NamedTuple):
    seconds: float


class Call(NamedTuple):
    """A limiter method; async adapters call its ``a``-prefixed twin."""

    name: str
    args: tuple[Any, ...] = ()


Effect = Acquire | Send | ReadBody | Close | Sleep | Call
Steps = Generator[Effect, Any, Any]


@dataclass(frozen=True)
class RequestOptions:
    """Per-request overrides from ``request.extensions["mistral_ratelimit"]``."""

    skip: bool = False  # send without limiting or accounting
    cost: int | None = None  # force the token cost instead of estimating it
    max_retries: int | None = None  # override the configured retry count
    priority: int = 0  # goes before waiting requests of lower priority (memory limiter)

    @classmethod
    def from_extensions(cls, extensions: Mapping[str, Any] | None) -> RequestOptions:
        """The options of one request; ``ValueError`` for a bad one, before anything is
        reserved or sent. A bad option is a bug in the caller's code, which silently
        ignoring it (a ``cost`` of ``"abc"`` estimated instead) would hide."""
        raw = extensions.get(EXTENSION_KEY) if extensions else None
        if raw is None:  # the common case: one lookup, the shared default
            return DEFAULT_OPTIONS
        return cls._parse(raw)

    @classmethod
    def _parse(cls, raw: object) -> RequestOptions:
        if not isinstance(raw, Mapping):
            raise ValueError(
                f'extensions["{EXTENSION_KEY}"] must be a dict of options, got {_shown(raw)}'
            )
        unknown = [key for key in raw if key not in _OPTION_NAMES and key not in _RECORD_NAMES]
        if unknown:
            raise ValueError(
                f'extensions["{EXTENSION_KEY}"]: unknown option(s) '
                f"{', '.join(reprlib.repr(k) for k in unknown)}; "
                f"known: {', '.join(_OPTION_NAMES)}"
            )
        # None is an option left out.
        skip = raw.get("skip")
        if skip is not None and not isinstance(skip, bool):
            raise _bad_option("skip", "True or False", skip)
        cost = raw.get("cost")
        if cost is not None:
            if (
                isinstance(cost, bool)
                or not isinstance(cost, (int, float))
                or not math.isfinite(cost)
                or cost < 0
            ):
                raise _bad_option("cost", "a finite number of tokens >= 0", cost)
            cost = math.ceil(cost)  # a fraction of a token is reserved whole
        retries = raw.get("max_retries")
        if retries is not None and (
            isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
        ):
            raise _bad_option("max_retries", "an integer >= 0", retries)
        priority = raw.get("priority")
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise _bad_option("priority", "an integer", priority)
        return cls(
            skip=bool(skip),
            cost=cost,
            max_retries=retries,
            priority=0 if priority is None else priority,
        )


_OPTION_NAMES = ("skip", "cost", "max_retries", "priority")
#: What ``record_attempts`` writes under the same key of a response's extensions: a
#: transport that hands a request's extensions dict on to its response must not make the
#: next attempt of that request fail.
_RECORD_NAMES = ("attempts", "waited")


def _shown(value: object) -> str:
    """A value's type and a short repr, for an error message (options are the caller's
    numbers and flags; never a body or a header)."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _bad_option(name: str, expected: str, value: object) -> ValueError:
    return ValueError(
        f'extensions["{EXTENSION_KEY}"]["{name}"] must be {expected}, got {_shown(value)}'
    )


DEFAULT_OPTIONS = RequestOptions()


class RequestView(NamedTuple):
    """What the lifecycle needs to know of a request, library-independent (a named tuple:
    one is made for every request)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None
    replayable: bool  # the body can be sent again on a retry
    options: RequestOptions = DEFAULT_OPTIONS  # the express lane knows it by identity


class Deliver(NamedTuple):
    """The end of ``run``: hand ``response`` to the caller, observed by ``observer``."""

    response: Any
    observer: BodyObserver | None


@dataclass(slots=True)
class Admitted:
    """A request the express lane let through (``Lifecycle.admit``), and what sending it
    gave: the response, or the error it raised. ``Lifecycle.run`` takes it up from there
    when the answer needs more than a settlement."""

    reservation: Reservation
    estimate: Estimate
    response: Any = None
    error: BaseException | None = None

    def result(self) -> Any:
        error, self.error = self.error, None  # raised once; no cycle through its traceback
        if error is not None:
            raise error
        return self.response


def _body_decides_class(status: int, length: str | None) -> bool:
    """Only a 429 or 503 body can change what an error means (Mistral's capacity code
    3505), so only those are read, and only the first ``MAX_ERROR_BODY_BYTES`` of them: a
    body declared larger is not read at all, and one of unknown length (chunked, as a
    proxy or HTTP/2 may send it) goes to the caller whole if it turns out larger."""
    if status not in (429, 503):
        return False
    return length is None or not length.isdigit() or int(length) <= MAX_ERROR_BODY_BYTES


def backoff(config: RatelimitConfig, attempt: int, factor: float = 1.0) -> float:
    """Exponential backoff with jitter in [d/2, d], capped at ``max_delay``."""
    d = min(config.max_delay, config.base_delay * factor * (2 ** min(attempt, 30)))
    return random.uniform(d / 2, d)


def record_attempts(response: Any, attempts: int, waited: float) -> None:
    """Tell the caller how hard we tried: ``response.extensions["mistral_ratelimit"]``
    holds ``{"attempts": n, "waited": seconds}`` (the facade quotes it in SDK errors)."""
    extensions = getattr(response, "extensions", None)
    if isinstance(extensions, dict):
        extensions[EXTENSION_KEY] = {"attempts": attempts, "waited": round(waited, 3)}


class Lifecycle:
    """The request lifecycle shared by every transport built on one limiter."""

    def __init__(self, limiter: Limiter, estimator: Estimator, config: RatelimitConfig) -> None:
        self.limiter = limiter
        self.estimator = estimator
        self.config = config
        self._can_anchor = callable(getattr(limiter, "anchor", None))
        grant = getattr(limiter, "grant_now", None)
        # Only a limiter whose calls never wait on I/O may be called outside an effect.
        self._grant_now = grant if callable(grant) and is_nonblocking(limiter) else None
        self._next_limits_at = 0.0  # time.monotonic() when rate-limit headers are read again
        room_of = getattr(limiter, "token_room", None)
        self._token_room = room_of if callable(room_of) else None
        self._estimates = 0
        self._next_sample_at = 0.0  # time.monotonic() from when a request may be sampled

    def estimate(self, req: RequestView) -> Estimate:
        if req.options.cost is not None:
            base = self.estimator.estimate(req.method, req.path, None, req.headers, exact=False)
            # The caller's number, not a count: it must not feed the estimate-error figures.
            return replace(base, prompt_tokens=req.options.cost, completion_tokens=0, exact=False)
        cheap = self.estimator.estimate(req.method, req.path, req.body, req.headers, exact=False)
        room = None  # unknown: a limiter that cannot tell gets exact counts
        if self._token_room is not None:
            room = self._token_room()
            if room is None:
                room = math.inf  # no window counts tokens: there is nothing to count for
        self._estimates += 1
        if room is not None and cheap.total <= room and not tokenizer_loaded():
            # The vocabulary is still loading (the first requests of a process): an exact
            # count would wait for it, blocking an event loop for a few hundred ms. The
            # bound fits, so it goes now and is settled from usage.
            return cheap
        sample = self._sampled(self._estimates)  # keeps the correction learning
        if sample:
            self._next_sample_at = time.monotonic() + EXACT_SAMPLE_INTERVAL
        if room is not None and cheap.total <= EXACT_COUNT_THRESHOLD * room and not sample:
            return cheap
        self.estimator.forget(cheap)  # replaced by the exact count: no response will claim it
        return self.estimator.estimate(req.method, req.path, req.body, req.headers, exact=True)

    def _sampled(self, nth: int) -> bool:
        """Whether the ``nth`` estimate is counted exactly though its bound fits."""
        return nth % EXACT_SAMPLE_EVERY == 1 and time.monotonic() >= self._next_sample_at

    def admit(self, req: RequestView) -> Admitted | None:
        """The express lane: a request whose cheap bound the budget holds with room to
        spare is granted at once (``RateLimiter.grant_now``), with no effect to drive and no
        waiting machinery. The caller sends it (``sending``), then asks ``express`` for the
        outcome. None: take ``run`` from the start.

        It makes the choices ``estimate`` and an ``Acquire`` that need not wait would make
        (tests/test_express.py checks both), so only what they cost changes: requests with
        options, sampled for an exact count, or that would wait take the full path."""
        grant = self._grant_now
        if grant is None or req.options is not DEFAULT_OPTIONS or req.body is None:
            return None
        if self._sampled(self._estimates + 1):
            return None  # ``estimate`` counts this one exactly
        est = self.estimator.estimate(req.method, req.path, req.body, req.headers, exact=False)
        # While the vocabulary loads, an exact count would wait for it: any fit will do.
        share = EXACT_COUNT_THRESHOLD if tokenizer_loaded() else 1.0
        res = grant(float(est.total), share)
        if res is None:
            self.estimator.forget(est)  # the full path estimates it again, and counts it
            return None
        self._estimates += 1
        res.due_local = time.monotonic()
        return Admitted(res, est)

    def sending(self, res: Reservation) -> Send:
        """The ``Send`` of an attempt holding ``res``."""
        return Send(partial(self._departed, res)) if self._can_anchor else SEND

    def express(self, admitted: Admitted) -> Deliver | None:
        """The outcome of an admitted request that was sent: what ``_classify`` delivers
        for a success whose rate-limit headers are not due, without an effect; None for
        anything else (an error, a failure to send), which ``run(req, admitted)`` takes up."""
        response = admitted.response
        try:
            if admitted.error is not None or int(response.status_code) >= 400 or self._limits_due():
                return None
            headers = response.headers
            head = read_head(headers, limits=False)
        except Exception:  # a response we cannot read: the full path gives everything back
            return None
        observer = BodyObserver(self, admitted.reservation, admitted.estimate, head, headers)
        record_attempts(response, 1, 0.0)
        return Deliver(response, observer)

    def run(self, req: RequestView, admitted: Admitted | None = None) -> Steps:
        """The whole lifecycle of ``req``; from the express lane's attempt on, if given."""
        if req.options.skip:
            response = yield SEND
            return Deliver(response, None)
        est = self.estimate(req) if admitted is None else admitted.estimate
        outcome: Deliver | None = None
        try:
            outcome = yield from self._attempts(req, est, admitted)
            return outcome
        finally:
            if outcome is None or outcome.observer is None:
                # No usage will come to learn from (an error answer, a failure, a cancel):
                # what the estimate left to learn would only push out that of others.
                self.estimator.forget(est)

    def _attempts(
        self, req: RequestView, est: Estimate, admitted: Admitted | None
    ) -> Generator[Effect, Any, Deliver]:
        """Send ``req`` until an answer is delivered, retrying as the configuration says."""
        retries = req.options.max_retries
        max_retries = self.config.max_retries if retries is None else retries
        attempt = 0
        waited = 0.0  # seconds spent waiting for the budget or backing off, for error notes
        while True:
            taken, admitted = admitted, None
            if taken is not None:
                res = taken.reservation  # granted at once: nothing waited (``at`` may
                # have moved since, to when it left: that is not time spent waiting)
            else:
                res = yield Acquire(est.total, req.options.priority)
                waited += max(0.0, res.at - res.created_at)
            try:
                response = taken.result() if taken is not None else (yield self.sending(res))
            except BaseException as exc:
                not_sent = any(k.__name__ in NOT_SENT_ERRORS for k in type(exc).__mro__)
                if not_sent:
                    yield Call("cancel", (res,))  # nothing reached the server
                else:
                    yield Call("release", (res,))  # it may have been counted: stay charged
                if (
                    not_sent
                    and req.replayable
                    and isinstance(exc, Exception)
                    and attempt < max_retries
                ):
                    attempt += 1
                    log.info(
                        "connection failed before sending (%s); retry %d/%d",
                        type(exc).__name__,
                        attempt,
                        max_retries,
                    )
                    pause = backoff(self.config, attempt - 1)
                    waited += pause
                    yield Sleep(pause)
                    continue
                raise
            outcome = yield from self._classify(res, est, req, response, attempt, max_retries)
            if isinstance(outcome, Deliver):
                record_attempts(outcome.response, attempt + 1, waited)
                return outcome
            waited += outcome
            attempt += 1

    @staticmethod
    def _departed(res: Reservation, sent_at: float) -> Call:
        # The server counts the request when it arrives, which is when it left here (a cold
        # connection, a blocked event loop): count it from then too.
        return Call("anchor", (res, max(0.0, sent_at - res.due_local)))

    def _limits_due(self) -> bool:
        """Whether a successful response's rate-limit headers should be read. Reading and
        adopting them costs about as much as the rest of the request's bookkeeping, and
        the server's view cannot change much within ``LIMITS_READ_INTERVAL``; every error
        response is read in full."""
        return time.monotonic() >= self._next_limits_at

    def _clamp_pause(self, wait: float) -> float:
        """A server asking for more than one token window is not answered with a longer
        freeze: the caller gets the error back sooner once retries run out."""
        return min(wait, max(self.config.max_delay, MAX_PAUSE_SECONDS))

    def _classify(
        self,
        res: Reservation,
        est: Estimate,
        req: RequestView,
        response: Any,
        attempt: int,
        max_retries: int,
    ) -> Generator[Effect, Any, Deliver | float]:
        """Deliver the response, or arrange a retry and return the seconds slept."""
        try:
            headers = response.headers
            status = int(response.status_code)
            head = read_head(headers, limits=status >= 400 or self._limits_due())
            if head.view is not None:
                # Read, whatever they said: a server that sends none (a proxy that strips
                # them, a mock) must not have every success read in full.
                self._next_limits_at = time.monotonic() + LIMITS_READ_INTERVAL
            view = head.view or NO_LIMITS
            if view.observed:
                yield Call("adopt", (view.observed,))
            if status < 400:
                return Deliver(response, BodyObserver(self, res, est, head, headers))
            body = None
            if _body_decides_class(status, head.content_length):
                raw, whole = yield ReadBody(response, MAX_ERROR_BODY_BYTES)
                if whole:
                    body = decode_body(raw, head.content_encoding)
        except BaseException:
            yield Call("release", (res,))
            yield Close(response)
            raise
        kind = classify_response(status, body)
        # An error response carries no usage: the tokens were not spent, the request was.
        yield Call("settle", (res, 0))
        yield Call("release", (res,))
        can_retry = attempt < max_retries and req.replayable
        if kind is ErrorClass.RATE_LIMITED:
            month_left = view.month_remaining
            if view.zero_limit or (month_left is not None and month_left < est.total):
                yield Close(response)
                what = (
                    "a limit of 0"
                    if view.zero_limit or month_left is None
                    else f"{format_amount(month_left)} tokens left this month, and this "
                    f"request may need {format_amount(est.total)}"
                )
                raise BudgetExhausted(f"{status} from the server with {what}; not retrying")
            wait = retry_after_seconds(headers)
            if wait is None:
                wait = backoff(self.config, attempt)
            wait = self._clamp_pause(wait)
            yield Call("pause_for", (wait,))  # the whole shared budget is spent, not just ours
            log.warning(
                "429 rate limited (attempt %d/%d); all callers pause %.2f s",
                attempt + 1,
                max_retries + 1,
                wait,
            )
        elif kind is ErrorClass.CAPACITY:
            wait = retry_after_seconds(headers)
            if wait is None:
                wait = backoff(self.config, attempt, self.config.capacity_backoff_factor)
            wait = self._clamp_pause(wait)
            log.warning(
                "%d service tier capacity exceeded (attempt %d/%d); backing off %.2f s",
                status,
                attempt + 1,
                max_retries + 1,
                wait,
            )
        elif kind is ErrorClass.SERVER and self.config.retry_server_errors:
            wait = backoff(self.config, attempt)
            log.warning(
                "%d server error (attempt %d/%d); backing off %.2f s",
                status,
                attempt + 1,
                max_retries + 1,
                wait,
            )
        else:
            return Deliver(response, None)
        if not can_retry:
            log.warning(
                "giving up after %d attempts; returning the %d response", attempt + 1, status
            )
            return Deliver(response, None)
        yield Close(response)  # free the pooled connection before the next attempt
        if kind is not ErrorClass.RATE_LIMITED:
            yield Sleep(wait)
            return wait
        return 0.0  # the 429 pause is waited for in the next Acquire


class _JsonSniffer:
    """Collects a JSON body on the side (bounded), decoding it as the client will."""

    def __init__(self, content_encoding: str | None) -> None:
        self._decoder = IncrementalDecoder(content_encoding)
        self._buf = bytearray()
        self.failed = False

    def feed(self, raw: bytes) -> None:
        if self.failed:
            return
        self._buf += self._decoder.feed(raw)
        if len(self._buf) > MAX_JSON_SNIFF_BYTES or self._decoder.failed:
            self.failed = True
            self._buf.clear()

    def body(self) -> bytes | None:
        return None if self.failed else bytes(self._buf + self._decoder.flush())


def _body_kind(ctype: str) -> str:
    """How a body of this (lower-case) content type is sniffed for usage. A JSON answer
    whose type a proxy dropped or rewrote to text still carries its usage: the sniffer
    keeps at most ``MAX_JSON_SNIFF_BYTES`` and finds nothing in what is not JSON."""
    if "text/event-stream" in ctype:
        return "sse"
    if "json" in ctype or not ctype.strip() or ctype.startswith("text/plain"):
        return "json"
    return ""


class BodyObserver:
    """Watches a delivered body pass by, then settles the reservation exactly once."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        res: Reservation,
        est: Estimate,
        head: ResponseHead,
        headers: Any,
    ) -> None:
        self._lc = lifecycle
        self.reservation = res
        self.estimate = est
        self._view = head.view  # None when the rate-limit headers were not read
        self._headers = headers
        self._sse: StreamSniffer | None = None
        self._json: _JsonSniffer | None = None
        #: A whole JSON body, already decoded by the client library (``feed_decoded``).
        self._whole: bytes | None = None
        self._kind = _body_kind(head.content_type)
        self._encoding = head.content_encoding
        self.finished = False
        self.bytes_seen = 0

    def feed_decoded(self, body: bytes) -> None:
        """Observe a body the inner transport already read (and so already decoded)."""
        if self._kind == "json" and self._json is None:
            self.bytes_seen += len(body)
            if len(body) <= MAX_JSON_SNIFF_BYTES:
                self._whole = body
            return
        self._encoding = None
        self.feed(body)

    def feed(self, chunk: bytes) -> None:
        """Never raises: our parsing must not break the caller's stream."""
        self.bytes_seen += len(chunk)
        try:
            # The sniffers are made on the first chunk: most bodies arrive read and whole.
            if self._kind == "sse":
                if self._sse is None:
                    self._sse = StreamSniffer(self._encoding)
                self._sse.feed(chunk)
            elif self._kind == "json":
                if self._json is None:
                    self._json = _JsonSniffer(self._encoding)
                self._json.feed(chunk)
        except Exception:  # pragma: no cover - the sniffers promise not to raise
            log.debug("usage sniffer failed; keeping the estimate", exc_info=True)
            self._kind = ""
            self._sse = self._json = None

    def actual_tokens(self) -> tuple[float, Usage | None, str | None]:
        """Tokens to settle to, the usage seen, and the conversation id."""
        est = self.estimate
        usage: Usage | None = None
        conversation_id: str | None = None
        streamed_chars = 0
        if self._kind == "sse" and self._sse is None:  # closed before its first byte
            self._sse = StreamSniffer(self._encoding)
        try:
            if self._sse is not None:
                self._sse.close()
                usage = self._sse.facts.usage
                conversation_id = self._sse.facts.conversation_id
                streamed_chars = self._sse.output_chars
            else:
                whole = self._json.body() if self._json is not None else self._whole
                if whole is not None:
                    facts = parse_json_response(whole)
                    usage, conversation_id = facts.usage, facts.conversation_id
        except Exception:  # pragma: no cover - defensive, see feed()
            log.debug("usage parsing failed", exc_info=True)
        if usage is not None and usage.total > 0:
            return float(min(usage.total, self._credible_max())), usage, conversation_id
        view = self._view if self._view is not None else parse_ratelimit_headers(self._headers)
        cost = None if view.query_cost is None else min(view.query_cost, self._credible_max())
        if self._sse is not None:
            if self._sse.failed:  # an encoding we cannot decode, or corrupt: keep all of it
                return float(est.total), None, conversation_id
            # Cut or closed before usage: the prompt and what streamed so far (a character is
            # never less than a token), never less. A query cost, sent with the headers before
            # any output, cannot know what came after.
            streamed = est.prompt_tokens + min(est.completion_tokens, streamed_chars)
            return float(max(streamed, cost or 0)), None, conversation_id
        if cost is not None:
            return float(cost), usage, conversation_id
        return float(est.total), None, conversation_id

    def abandon(self) -> float:
        """Finish without settling: the tokens to settle to, computed without taking any
        lock or learning anything (for a stream dropped unclosed, see ``driving``)."""
        self.finished = True
        try:
            return self.actual_tokens()[0]
        except Exception:  # pragma: no cover - actual_tokens promises not to raise
            return float(self.estimate.total)

    def _credible_max(self) -> int:
        """A bound on believable usage: a bogus ``total_tokens`` of 10**20 must not lock a
        monthly budget for good. A hundred times the estimate leaves room for any real
        under-estimate."""
        return 100 * self.estimate.total + 100_000

    def finish(self) -> Steps:
        """Settle and free the in-flight slot; later calls do nothing."""
        if self.finished:
            return
        self.finished = True
        try:
            yield from self._settlement()
        finally:
            yield Call("release", (self.reservation,))

    def finish_now(self, limiter: Limiter) -> None:
        """``finish`` on a limiter whose calls never wait on I/O (``nonblocking``), by
        calling it directly: no generator to drive, on every request's path."""
        if self.finished:
            return
        self.finished = True
        try:
            for call in self._settlement():
                getattr(limiter, call.name)(*call.args)
        finally:
            limiter.release(self.reservation)

    def _settlement(self) -> list[Call]:
        """Learns what the server taught; returns the limiter calls that settle the
        reservation (its release comes after them, whatever they raise)."""
        try:
            actual, usage, conversation_id = self.actual_tokens()
            self._lc.estimator.observe(self.estimate, usage, conversation_id)
        except Exception:  # pragma: no cover - the accountant promises not to raise
            log.debug("settlement bookkeeping failed", exc_info=True)
            actual, usage = float(self.estimate.total), None
        calls = [Call("settle", (self.reservation, actual))]
        if usage is not None and usage.prompt_tokens > 0 and self.estimate.exact:
            # Cheap upper bounds are over on purpose; only exact counts measure error.
            calls.append(
                Call("record_estimate", (self.estimate.prompt_tokens, usage.prompt_tokens))
            )
        log.debug("settled request: estimated %d tokens, actual %d", self.estimate.total, actual)
        return calls
