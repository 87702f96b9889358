"""httpx-level cases through pytest-httpx: the transport wraps the real httpx.HTTPTransport,
which pytest-httpx intercepts, so the default inner transport is exercised as users get it."""

from __future__ import annotations

import json

import httpx
import pytest
from pytest_httpx import HTTPXMock

from mistral_ratelimit import RatelimitConfig, RateLimiter
from mistral_ratelimit.httpx import AsyncRateLimitTransport, RateLimitTransport

URL = "https://api.mistral.ai/v1/conversations"
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
BODY = {"inputs": "hi", "model": "mistral-small-latest", "completion_args": {"max_tokens": 50}}
TOO_MANY = {
    "object": "error",
    "message": "Rate limit exceeded",
    "type": "rate_limited",
    "param": None,
    "code": "1300",
}


def config(**kw: object) -> RatelimitConfig:
    fields: dict[str, object] = dict(
        api_key="sk-test",
        requests_per_second=1000,
        tokens_per_minute=1_000_000,
        base_delay=0.01,
        max_delay=0.02,
    )
    fields.update(kw)
    return RatelimitConfig(**fields)  # type: ignore[arg-type]


def test_default_inner_transport_429_then_200(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(
        url=URL, status_code=429, json=TOO_MANY, headers={"retry-after-ms": "5"}
    )
    httpx_mock.add_response(
        url=URL,
        json={"conversation_id": "c", "usage": USAGE},
        headers={
            "x-ratelimit-limit-tokens-minute": "5000000",
            "x-ratelimit-remaining-tokens-minute": "4999000",
        },
    )
    cfg = config()
    limiter = RateLimiter(cfg)
    with httpx.Client(transport=RateLimitTransport(config=cfg, limiter=limiter)) as client:
        r = client.post(URL, json=BODY)
    assert r.status_code == 200
    assert len(httpx_mock.get_requests()) == 2
    s = limiter.stats()
    assert s.rate_limited_seen == 1
    assert s.in_flight == 0
    # The 429 was settled to zero tokens, the 200 to its real 15.
    assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged == pytest.approx(15)


@pytest.mark.anyio
async def test_async_sse_stream_through_default_transport(httpx_mock: HTTPXMock) -> None:
    events = [
        ("conversation.response.started", {"conversation_id": "c1"}),
        ("message.output.delta", {"content": "hello"}),
        ("conversation.response.done", {"usage": USAGE}),
    ]
    body = "".join(f"event: {n}\r\ndata: {json.dumps(d)}\r\n\r\n" for n, d in events).encode()
    httpx_mock.add_response(url=URL, content=body, headers={"content-type": "text/event-stream"})
    cfg = config(max_concurrency=1)
    limiter = RateLimiter(cfg)
    async with (
        httpx.AsyncClient(transport=AsyncRateLimitTransport(config=cfg, limiter=limiter)) as client,
        client.stream("POST", URL, json=dict(BODY, stream=True)) as r,
    ):
        got = b"".join([chunk async for chunk in r.aiter_raw()])
    assert got == body
    s = limiter.stats()
    assert s.in_flight == 0
    assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged == pytest.approx(15)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
