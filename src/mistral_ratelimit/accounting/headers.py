"""Rate-limit and retry headers as plain values.

Two families of rate-limit headers are parsed (reference, §4 "Observed response headers"):

- current: ``x-ratelimit-{limit,remaining}-tokens-{minute,month}``,
  ``x-ratelimit-{limit,remaining}-req-{minute,month}``, ``x-ratelimit-tokens-query-cost``;
- legacy: ``ratelimitbysize-{limit,remaining,query-cost}`` and
  ``x-ratelimitbysize-{limit,remaining}-{minute,month}``. "bysize" counts tokens; the bare
  form has no window in its name and a reset in seconds, so it is read as tokens per minute.
  When both families describe the same window, the current family wins.

Nothing here trusts the server blindly. A value is used only when it is a plain non-negative
decimal number; repeated headers are reduced to their smallest value (the conservative
reading); a ``remaining`` above its ``limit`` is dropped (the limit is kept), because one of
the two is wrong and a limiter must not be told it has more room than the server grants.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Iterable, Mapping
from datetime import timezone
from typing import Any, NamedTuple

from ..config import SECONDS_PER_MONTH, Unit
from ..limiter.base import ObservedLimit
from .types import ServerView

#: Longest wait a ``Retry-After`` may impose; larger values are clamped to it.
MAX_RETRY_AFTER = 600.0

HeaderSource = Mapping[str, str] | Iterable[tuple[str, str]]

_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_DELTA = re.compile(r"\+?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WINDOWS = {"minute": 60.0, "month": SECONDS_PER_MONTH}


def _rate_header_table() -> dict[str, tuple[int, Unit, float, str]]:
    """header name -> (family rank, unit, window seconds, field); rank 1 beats rank 0."""
    table: dict[str, tuple[int, Unit, float, str]] = {}
    for window, seconds in _WINDOWS.items():
        for which in ("limit", "remaining"):
            table[f"x-ratelimit-{which}-tokens-{window}"] = (1, "tokens", seconds, which)
            table[f"x-ratelimit-{which}-req-{window}"] = (1, "requests", seconds, which)
            table[f"x-ratelimitbysize-{which}-{window}"] = (0, "tokens", seconds, which)
    for which in ("limit", "remaining"):
        table[f"ratelimitbysize-{which}"] = (0, "tokens", 60.0, which)
    return table


_RATE_HEADERS = _rate_header_table()
_QUERY_COST = {"x-ratelimit-tokens-query-cost": 1, "ratelimitbysize-query-cost": 0}
_WANTED = frozenset(_RATE_HEADERS) | frozenset(_QUERY_COST)
_RETRY_NAMES = frozenset({"retry-after", "retry-after-ms"})
_CONTENT = frozenset({"content-type", "content-encoding", "content-length"})
_HEAD = _WANTED | _CONTENT
#: name as bytes -> name, for the fast path over httpx's raw header list.
_BY_BYTES = {
    names: {n.encode(): n for n in names} for names in (_WANTED, _RETRY_NAMES, _HEAD, _CONTENT)
}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return str(value)


def _items(headers: HeaderSource, wanted: frozenset[str]) -> list[tuple[str, str]]:
    """(lower-case name, value) pairs for the wanted names, repeats kept apart when possible.

    Runs on every response, so values of other headers are not even converted.
    """
    out: list[tuple[str, str]] = []
    raw = getattr(headers, "raw", None)  # httpx / httpx2 Headers: [(name, value)] as bytes
    if type(raw) is list:
        try:
            by_bytes = _BY_BYTES[wanted].get
            for key, value in raw:
                name = by_bytes(key.lower())
                if name is not None:
                    out.append((name, value.decode("latin-1")))
            return out
        except (TypeError, ValueError, AttributeError, KeyError):
            out = []  # not the Headers we know: take the general path below
    multi = getattr(headers, "multi_items", None)
    pairs: Iterable[Any]
    if callable(multi):
        pairs = multi()
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    else:
        pairs = headers
    for pair in pairs:
        try:
            name, value = pair
        except (TypeError, ValueError):
            continue
        key = _text(name).strip().lower()
        if key in wanted:
            out.append((key, _text(value)))
    return out


def _number(value: str) -> float | None:
    """A non-negative finite decimal number, or None."""
    text = value.strip()
    # isdigit alone would accept non-ASCII digits ("٣", "²") that float() partly rejects.
    if not ((text.isascii() and text.isdigit()) or _NUMBER.fullmatch(text)):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def _numbers(value: str) -> float | None:
    """The smallest of a comma-joined list of numbers; None if any element is malformed."""
    if "," not in value:
        return _number(value)
    found = [_number(part) for part in value.split(",")]
    if any(n is None for n in found):
        return None
    return min(n for n in found if n is not None)


class ResponseHead(NamedTuple):
    """What the request lifecycle reads from a response's headers, read in one pass."""

    view: ServerView | None  # None: the rate-limit headers were not read
    content_type: str  # lower-case, "" when absent
    content_encoding: str | None
    content_length: str | None


NO_LIMITS = ServerView()


def read_head(headers: HeaderSource, *, limits: bool = True) -> ResponseHead:
    """The content headers of a response and, with ``limits``, what its rate-limit
    headers say; never raises."""
    found: dict[str, str] = {}
    rate: list[tuple[str, str]] = []
    for name, value in _items(headers, _HEAD if limits else _CONTENT):
        if name in _CONTENT:
            found.setdefault(name, value)
        else:
            rate.append((name, value))
    view = (_server_view(rate) if rate else NO_LIMITS) if limits else None
    return ResponseHead(
        view,
        found.get("content-type", "").lower(),
        found.get("content-encoding"),
        found.get("content-length"),
    )


def parse_ratelimit_headers(headers: HeaderSource) -> ServerView:
    """What the server says about its limits; never raises on bad header values."""
    return _server_view(_items(headers, _WANTED))


def _server_view(pairs: list[tuple[str, str]]) -> ServerView:
    # (unit, window) -> field -> (rank, value)
    seen: dict[tuple[Unit, float], dict[str, tuple[int, float]]] = {}
    cost: tuple[int, float] | None = None
    for name, value in pairs:
        if name in _QUERY_COST:
            number = _numbers(value)
            rank = _QUERY_COST[name]
            if number is not None and (
                cost is None or rank > cost[0] or (rank == cost[0] and number < cost[1])
            ):
                cost = (rank, number)
            continue
        spec = _RATE_HEADERS.get(name)
        if spec is None:
            continue
        number = _numbers(value)
        if number is None:
            continue
        rank, unit, window, which = spec
        fields = seen.setdefault((unit, window), {})
        previous = fields.get(which)
        if previous is None or rank > previous[0] or (rank == previous[0] and number < previous[1]):
            fields[which] = (rank, number)

    observed: list[ObservedLimit] = []
    zero_limit = False
    month_exhausted = False
    month_remaining = None
    for (unit, window), fields in seen.items():
        limit = fields["limit"][1] if "limit" in fields else None
        remaining = fields["remaining"][1] if "remaining" in fields else None
        if limit is not None and remaining is not None and remaining > limit:
            remaining = None
        if limit == 0:
            # Nothing to wait for: such a 429 fails fast. Its "0 remaining" adopted would
            # hold every caller for the whole window, and again after every such reply.
            zero_limit = True
            remaining = None
        if unit == "tokens" and window == SECONDS_PER_MONTH:
            month_remaining = remaining
            month_exhausted = remaining == 0
        observed.append(ObservedLimit(unit, window, limit, remaining))
    observed.sort(key=lambda o: (o.unit, o.per_seconds))
    query_cost = int(cost[1]) if cost is not None and cost[1].is_integer() else None
    return ServerView(observed, query_cost, zero_limit, month_exhausted, month_remaining)


def _delta_seconds(value: str) -> float | None:
    """Delta-seconds; inf for a plain run of digits too long for a float (clamped later)."""
    text = value.strip()
    if not _DELTA.fullmatch(text):
        return None
    seconds = float(text)
    if math.isfinite(seconds):
        return seconds
    # "1e400" is an overflow trick, not a number a server means; a huge integer is valid
    # delta-seconds syntax (RFC 9110 §10.2.3) that simply asks for a very long wait.
    return math.inf if _NUMBER.fullmatch(text.lstrip("+")) else None


def _http_date_seconds(value: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except Exception:  # ValueError, TypeError, IndexError, OverflowError across versions
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" or no zone: RFC 7231 dates are always GMT
        when = when.replace(tzinfo=timezone.utc)
    try:
        seconds = when.timestamp() - now
    except (OverflowError, ValueError, OSError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_after_seconds(headers: HeaderSource, *, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, or None to fall back to backoff.

    ``retry-after-ms`` (milliseconds, as the mistralai SDK 2.10+ reads it) wins over
    ``Retry-After`` (delta-seconds or an HTTP-date, RFC 9110 §10.2.3). An invalid
    ``retry-after-ms`` falls through to ``Retry-After``. Negative or non-finite values give
    None; values above ``MAX_RETRY_AFTER`` are clamped to it; a past date gives 0.0.
    """
    ms_values: list[str] = []
    values: list[str] = []
    for name, value in _items(headers, _RETRY_NAMES):
        if name == "retry-after-ms":
            ms_values.append(value)
        elif name == "retry-after":
            values.append(value)
    for value in ms_values:
        for part in value.split(","):
            ms = _delta_seconds(part)
            if ms is not None:
                return min(ms / 1000.0, MAX_RETRY_AFTER)
    wall = time.time() if now is None else now
    for value in values:
        seconds = _delta_seconds(value)
        if seconds is None:
            seconds = _http_date_seconds(value, wall)
        if seconds is None and "," in value:
            # Repeated headers joined by a Mapping: "5, 5". (An HTTP-date has a comma too,
            # which is why the whole value was tried first.)
            for part in value.split(","):
                seconds = _delta_seconds(part)
                if seconds is not None:
                    break
        if seconds is not None:
            return min(seconds, MAX_RETRY_AFTER)
    return None
