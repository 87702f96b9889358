"""Error classification from status and body, with bodies seen in the wild."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mistral_ratelimit.accounting.responses import MAX_BODY_BYTES, classify_response
from mistral_ratelimit.accounting.types import ErrorClass

# Current quota 429 (raycast/extensions#31107, cline/cline#9085, earendil-works/pi#9815).
RATE_LIMITED_CURRENT = (
    b'{"object":"error","message":"Rate limit exceeded","type":"rate_limited",'
    b'"param":null,"code":"1300","raw_status_code":429}'
)
# Older shapes: no raw_status_code / param; bare message (pydantic/pydantic-ai#1885).
RATE_LIMITED_NO_RAW = (
    b'{"object":"error","message":"Rate limit exceeded","type":"rate_limited","code":"1300"}'
)
RATE_LIMITED_OLDEST = b'{"message":"Requests rate limit exceeded"}'
# Capacity, current and older variant (continuedev/continue#6185).
CAPACITY_CURRENT = (
    b'{"object":"error","message":"Service tier capacity exceeded for this model.",'
    b'"type":"service_tier_capacity_exceeded","param":null,"code":"3505"}'
)
CAPACITY_OLDER = (
    b'{"object":"error","message":"Service tier capacity exceeded for this model.",'
    b'"type":"invalid_request_error","param":null,"code":null}'
)
# Cloudflare origin error page (mistralai/mistral-vibe#681), abridged.
CLOUDFLARE_520 = b"""<!DOCTYPE html>
<html lang="en-US"><head><title>api.mistral.ai | 520: Web server is returning an unknown error</title>
</head><body><div id="cf-error-details"><h1>Web server is returning an unknown error</h1>
<span>Error code 520</span><p>Ray ID: 9cc0ffee12345678</p></div></body></html>"""


@pytest.mark.parametrize("status", [200, 201, 204, 206, 301, 304, 399])
def test_success_and_redirects_are_ok(status: int) -> None:
    assert classify_response(status, b"") is ErrorClass.OK
    assert classify_response(status, CAPACITY_CURRENT) is ErrorClass.OK


@pytest.mark.parametrize(
    "body",
    [
        RATE_LIMITED_CURRENT,
        RATE_LIMITED_NO_RAW,
        RATE_LIMITED_OLDEST,
        b"",
        None,
        b"Too Many Requests",
        b"<html>429</html>",
        b"\xff\xfe",
        b"[]",
        b"null",
    ],
)
def test_quota_429(body: bytes | None) -> None:
    assert classify_response(429, body) is ErrorClass.RATE_LIMITED


@pytest.mark.parametrize("body", [CAPACITY_CURRENT, CAPACITY_OLDER])
@pytest.mark.parametrize("status", [429, 503])
def test_capacity_429_and_503(status: int, body: bytes) -> None:
    assert classify_response(status, body) is ErrorClass.CAPACITY


@pytest.mark.parametrize(
    "doc",
    [
        {"code": "3505"},
        {"code": 3505},
        {"code": " 3505 "},
        {"type": "service_tier_capacity_exceeded"},
        {"message": "CAPACITY EXCEEDED, try later"},
        {"error": {"code": "3505"}},
        {"detail": {"message": "Service tier capacity exceeded"}},
    ],
)
def test_capacity_markers_each_suffice(doc: dict[str, object]) -> None:
    assert classify_response(429, json.dumps(doc).encode()) is ErrorClass.CAPACITY


@pytest.mark.parametrize(
    "doc",
    [
        {"code": "1300"},
        {"code": 1300},
        {"code": True},
        {"code": "35050"},
        {"type": ["service_tier_capacity_exceeded"]},
        {"message": 3505},
        {"error": {"error": {"code": "3505"}}},
    ],
)
def test_near_misses_are_plain_rate_limits(doc: dict[str, object]) -> None:
    assert classify_response(429, json.dumps(doc).encode()) is ErrorClass.RATE_LIMITED


def test_plain_text_capacity_body() -> None:
    body = b"Service tier capacity exceeded for this model."
    assert classify_response(429, body) is ErrorClass.CAPACITY


@pytest.mark.parametrize("status", [500, 502, 503, 504, 520, 521, 522, 523, 524, 525, 526, 527])
def test_server_errors(status: int) -> None:
    assert classify_response(status, CLOUDFLARE_520) is ErrorClass.SERVER
    assert classify_response(status, None) is ErrorClass.SERVER
    assert (
        classify_response(status, b'{"object":"error","type":"server_error"}') is ErrorClass.SERVER
    )


@pytest.mark.parametrize(
    "status", [400, 401, 403, 404, 408, 413, 422, 501, 505, 519, 528, 530, 99, 0]
)
def test_everything_else_is_other(status: int) -> None:
    assert (
        classify_response(status, b'{"message":"Invalid model","code":"3003"}') is ErrorClass.OTHER
    )
    assert classify_response(status, CAPACITY_CURRENT) is ErrorClass.OTHER


def test_only_the_head_of_a_huge_body_is_read() -> None:
    body = CAPACITY_CURRENT + b" " * (MAX_BODY_BYTES * 4)
    assert classify_response(429, body) is ErrorClass.CAPACITY  # trailing blanks are valid JSON
    late = b" " * MAX_BODY_BYTES + CAPACITY_CURRENT
    assert classify_response(429, late) is ErrorClass.RATE_LIMITED


def test_deeply_nested_json_does_not_raise() -> None:
    assert classify_response(429, b"[" * 200_000) is ErrorClass.RATE_LIMITED
    assert classify_response(503, b'{"error":' * 50_000) is ErrorClass.SERVER


@settings(max_examples=300, deadline=None)
@given(st.integers(-1000, 1000), st.none() | st.binary(max_size=300))
def test_never_raises(status: int, body: bytes | None) -> None:
    assert isinstance(classify_response(status, body), ErrorClass)
