"""Rate-limit headers of both families, and Retry-After / retry-after-ms."""

from __future__ import annotations

import email.utils
import math

import httpx
import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mistral_ratelimit.accounting.headers import (
    MAX_RETRY_AFTER,
    parse_ratelimit_headers,
    retry_after_seconds,
)
from mistral_ratelimit.accounting.types import ServerView
from mistral_ratelimit.config import SECONDS_PER_MONTH
from mistral_ratelimit.limiter.base import ObservedLimit

# Real curl dump, POST /v1/chat/completions (mistralai/client-ts#169), with neighbours that
# are not rate-limit headers.
CURL_DUMP = """\
HTTP/2 200
date: Tue, 10 Feb 2026 09:12:44 GMT
content-type: application/json
x-ratelimit-limit-tokens-minute: 5000000
x-ratelimit-remaining-tokens-minute: 4999911
x-ratelimit-tokens-query-cost: 52
x-ratelimit-limit-req-minute: 720
x-ratelimit-remaining-req-minute: 717
mistral-correlation-id: 019c4a7e-1111-7222-8333-444455556666
x-kong-upstream-latency: 310
cf-ray: 9cc0ffee12345678-CDG
"""


def _headers(dump: str) -> list[tuple[str, str]]:
    out = []
    for line in dump.splitlines()[1:]:
        name, _, value = line.partition(":")
        out.append((name.strip(), value.strip()))
    return out


def _limit(view: ServerView, unit: str, per: float) -> ObservedLimit | None:
    matches = [o for o in view.observed if o.unit == unit and o.per_seconds == per]
    assert len(matches) <= 1
    return matches[0] if matches else None


def test_real_curl_dump() -> None:
    view = parse_ratelimit_headers(_headers(CURL_DUMP))
    assert _limit(view, "tokens", 60.0) == ObservedLimit("tokens", 60.0, 5_000_000, 4_999_911)
    assert _limit(view, "requests", 60.0) == ObservedLimit("requests", 60.0, 720, 717)
    assert len(view.observed) == 2
    assert view.query_cost == 52
    assert not view.zero_limit
    assert not view.month_exhausted


@pytest.mark.parametrize("lib", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_httpx_headers_objects_and_case(lib: object) -> None:
    pairs = [(k.upper(), v) for k, v in _headers(CURL_DUMP)]
    headers = lib.Headers(pairs)  # type: ignore[attr-defined]
    assert parse_ratelimit_headers(headers) == parse_ratelimit_headers(_headers(CURL_DUMP))
    assert parse_ratelimit_headers(dict(pairs)) == parse_ratelimit_headers(headers)


def test_month_variants() -> None:
    view = parse_ratelimit_headers(
        {
            "x-ratelimit-limit-tokens-month": "1000000000",
            "x-ratelimit-remaining-tokens-month": "123",
            "x-ratelimit-limit-req-month": "5000",
            "x-ratelimit-remaining-req-month": "0",
        }
    )
    assert _limit(view, "tokens", SECONDS_PER_MONTH) == ObservedLimit(
        "tokens", SECONDS_PER_MONTH, 1e9, 123
    )
    assert _limit(view, "requests", SECONDS_PER_MONTH) == ObservedLimit(
        "requests", SECONDS_PER_MONTH, 5000, 0
    )
    assert not view.month_exhausted  # only the token budget counts as "month spent"


def test_month_exhausted() -> None:
    view = parse_ratelimit_headers(
        {
            "X-Ratelimit-Limit-Tokens-Month": "1000000",
            "X-Ratelimit-Remaining-Tokens-Month": "0",
        }
    )
    assert view.month_exhausted
    assert not view.zero_limit


def test_zero_limit() -> None:
    view = parse_ratelimit_headers(
        {"x-ratelimit-limit-req-minute": "0", "x-ratelimit-remaining-req-minute": "0"}
    )
    assert view.zero_limit
    # A window that is never allowed is not one to wait for: its remaining is not kept.
    assert _limit(view, "requests", 60.0) == ObservedLimit("requests", 60.0, 0, None)
    # Spent for this minute is not the same as never allowed.
    view = parse_ratelimit_headers(
        {"x-ratelimit-limit-req-minute": "720", "x-ratelimit-remaining-req-minute": "0"}
    )
    assert not view.zero_limit


def test_legacy_family() -> None:
    view = parse_ratelimit_headers(
        {
            "ratelimitbysize-limit": "2000000",
            "ratelimitbysize-remaining": "1999000",
            "ratelimitbysize-reset": "37",
            "ratelimitbysize-query-cost": "1000",
            "x-ratelimitbysize-limit-month": "200000000",
            "x-ratelimitbysize-remaining-month": "150000000",
        }
    )
    assert _limit(view, "tokens", 60.0) == ObservedLimit("tokens", 60.0, 2_000_000, 1_999_000)
    assert _limit(view, "tokens", SECONDS_PER_MONTH) == ObservedLimit(
        "tokens", SECONDS_PER_MONTH, 200_000_000, 150_000_000
    )
    assert view.query_cost == 1000


def test_legacy_prefixed_minute_variant() -> None:
    view = parse_ratelimit_headers(
        {"x-ratelimitbysize-limit-minute": "500000", "x-ratelimitbysize-remaining-minute": "499990"}
    )
    assert view.observed == [ObservedLimit("tokens", 60.0, 500_000, 499_990)]


def test_current_family_wins_over_legacy() -> None:
    view = parse_ratelimit_headers(
        [
            ("x-ratelimit-limit-tokens-minute", "5000000"),
            ("ratelimitbysize-limit", "1"),
            ("ratelimitbysize-remaining", "0"),
            ("x-ratelimit-remaining-tokens-minute", "4000000"),
            ("ratelimitbysize-query-cost", "9"),
            ("x-ratelimit-tokens-query-cost", "52"),
        ]
    )
    assert view.observed == [ObservedLimit("tokens", 60.0, 5_000_000, 4_000_000)]
    assert view.query_cost == 52


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " ",
        "abc",
        "-5",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e400",
        "1e3",
        "0x10",
        "1_000",
        "٣",
        "5 5",
        "9" * 400,
    ],
)
def test_malformed_values_are_ignored(bad: str) -> None:
    view = parse_ratelimit_headers(
        {
            "x-ratelimit-limit-tokens-minute": bad,
            "x-ratelimit-remaining-tokens-minute": bad,
            "x-ratelimit-tokens-query-cost": bad,
            "x-ratelimit-limit-req-minute": "720",
        }
    )
    assert view.observed == [ObservedLimit("requests", 60.0, 720, None)]
    assert view.query_cost is None
    assert not view.zero_limit


def test_contradictory_remaining_above_limit_is_dropped() -> None:
    view = parse_ratelimit_headers(
        {"x-ratelimit-limit-tokens-minute": "1000", "x-ratelimit-remaining-tokens-minute": "5000"}
    )
    assert view.observed == [ObservedLimit("tokens", 60.0, 1000, None)]


def test_remaining_without_limit_is_kept() -> None:
    view = parse_ratelimit_headers({"x-ratelimit-remaining-tokens-minute": "42"})
    assert view.observed == [ObservedLimit("tokens", 60.0, None, 42)]


def test_repeated_headers_take_the_smallest_value() -> None:
    pairs = [("x-ratelimit-remaining-req-minute", "700"), ("x-ratelimit-remaining-req-minute", "5")]
    view = parse_ratelimit_headers(pairs)
    assert view.observed == [ObservedLimit("requests", 60.0, None, 5)]
    # A Mapping joins repeats with commas (httpx's items()): same reading.
    assert parse_ratelimit_headers({"x-ratelimit-remaining-req-minute": "700, 5"}) == view
    assert parse_ratelimit_headers(httpx.Headers(pairs)) == view


def test_fractional_and_non_integer_query_cost() -> None:
    view = parse_ratelimit_headers(
        {"x-ratelimit-limit-req-minute": "7.5", "x-ratelimit-tokens-query-cost": "3.5"}
    )
    assert view.observed == [ObservedLimit("requests", 60.0, 7.5, None)]
    assert view.query_cost is None


def test_no_headers() -> None:
    assert parse_ratelimit_headers({}) == ServerView()
    assert parse_ratelimit_headers([]) == ServerView()


def test_bytes_and_junk_pairs_do_not_raise() -> None:
    pairs: list[object] = [(b"x-ratelimit-limit-req-minute", b"60"), ("lonely",), None, 5]
    view = parse_ratelimit_headers(pairs)  # type: ignore[arg-type]
    assert view.observed == [ObservedLimit("requests", 60.0, 60, None)]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "x-ratelimit-limit-tokens-minute",
                "x-ratelimit-remaining-tokens-minute",
                "x-ratelimit-tokens-query-cost",
                "x-ratelimit-limit-req-month",
                "ratelimitbysize-remaining",
                "retry-after",
                "retry-after-ms",
            ]
        ),
        st.text(max_size=30) | st.integers(-10, 10**30).map(str) | st.floats().map(repr),
    )
)
def test_arbitrary_values_never_raise_and_stay_sane(headers: dict[str, str]) -> None:
    view = parse_ratelimit_headers(headers)
    for item in view.observed:
        for number in (item.limit, item.remaining):
            assert number is None or (math.isfinite(number) and number >= 0)
        if item.limit is not None and item.remaining is not None:
            assert item.remaining <= item.limit
    wait = retry_after_seconds(headers, now=1_700_000_000.0)
    assert wait is None or 0.0 <= wait <= MAX_RETRY_AFTER


# --- Retry-After ---------------------------------------------------------------------------

NOW = 1_750_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 7 ", 7.0),
        ("+3", 3.0),
        ("600", 600.0),
        ("601", MAX_RETRY_AFTER),
        ("86400", MAX_RETRY_AFTER),
        ("9" * 400, MAX_RETRY_AFTER),
        ("1e3", MAX_RETRY_AFTER),
        ("inf", None),
        ("Infinity", None),
        ("-1", None),
        ("-0.5", None),
        ("1e400", None),
        ("nan", None),
        ("", None),
        ("abc", None),
        ("0x10", None),
        ("1_0", None),
        ("5 s", None),
    ],
)
def test_retry_after_values(value: str, expected: float | None) -> None:
    assert retry_after_seconds({"Retry-After": value}, now=NOW) == expected


def test_retry_after_http_date() -> None:
    future = email.utils.formatdate(NOW + 30, usegmt=True)  # "Wed, 15 Jun 2025 ... GMT"
    assert retry_after_seconds({"retry-after": future}, now=NOW) == pytest.approx(30.0)
    past = email.utils.formatdate(NOW - 3600, usegmt=True)
    assert retry_after_seconds({"retry-after": past}, now=NOW) == 0.0
    far = email.utils.formatdate(NOW + 10 * 86400, usegmt=True)
    assert retry_after_seconds({"retry-after": far}, now=NOW) == MAX_RETRY_AFTER


def test_retry_after_obsolete_date_formats_and_zones() -> None:
    when = email.utils.formatdate(NOW + 12, usegmt=True)
    plus_one = email.utils.formatdate(NOW + 12, localtime=False).replace("-0000", "+0000")
    assert retry_after_seconds({"retry-after": plus_one}, now=NOW) == pytest.approx(12.0)
    assert retry_after_seconds({"retry-after": when.replace("GMT", "-0000")}, now=NOW) == (
        pytest.approx(12.0)
    )
    assert retry_after_seconds({"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"}, now=NOW) == 0.0
    # The two obsolete formats RFC 9110 §5.6.7 still asks recipients to accept.
    assert retry_after_seconds({"retry-after": "Sunday, 06-Nov-94 08:49:37 GMT"}, now=NOW) == 0.0
    assert retry_after_seconds({"retry-after": "Sun Nov  6 08:49:37 1994"}, now=NOW) == 0.0


def test_retry_after_wall_clock_default() -> None:
    import time

    future = email.utils.formatdate(time.time() + 100, usegmt=True)
    wait = retry_after_seconds({"retry-after": future})
    assert wait is not None and 90.0 <= wait <= 101.0


def test_retry_after_garbage_dates() -> None:
    for value in ("Wed, 99 Foo 2015 07:28:00 GMT", "Mon, 01 Jan 99999 00:00:00 GMT", ",", "GMT"):
        assert retry_after_seconds({"retry-after": value}, now=NOW) is None
    far = "Mon, 01 Jan 9999 00:00:00 GMT"
    assert retry_after_seconds({"retry-after": far}, now=NOW) == MAX_RETRY_AFTER


def test_retry_after_ms_wins() -> None:
    headers = {"retry-after-ms": "250", "retry-after": "30"}
    assert retry_after_seconds(headers, now=NOW) == pytest.approx(0.25)
    assert retry_after_seconds({"retry-after-ms": "1500.5"}, now=NOW) == pytest.approx(1.5005)
    assert retry_after_seconds({"retry-after-ms": "99999999"}, now=NOW) == MAX_RETRY_AFTER
    assert retry_after_seconds({"retry-after-ms": "9" * 400}, now=NOW) == MAX_RETRY_AFTER


@pytest.mark.parametrize("bad", ["inf", "nan", "-1", "1e400", "", "soon"])
def test_invalid_retry_after_ms_falls_back_to_retry_after(bad: str) -> None:
    assert retry_after_seconds({"retry-after-ms": bad, "retry-after": "4"}, now=NOW) == 4.0
    assert retry_after_seconds({"retry-after-ms": bad}, now=NOW) is None


def test_retry_after_absent() -> None:
    assert retry_after_seconds({}, now=NOW) is None
    assert retry_after_seconds(_headers(CURL_DUMP), now=NOW) is None


def test_repeated_retry_after() -> None:
    assert retry_after_seconds([("retry-after", "abc"), ("retry-after", "3")], now=NOW) == 3.0
    assert retry_after_seconds({"retry-after": "3, 3"}, now=NOW) == 3.0
    assert (
        retry_after_seconds(httpx.Headers([("Retry-After", "2"), ("Retry-After", "2")]), now=NOW)
        == 2.0
    )
