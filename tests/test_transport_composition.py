"""The transports in front of other transports, and behind client options: ASGI and WSGI
apps, a retry layer, a cache, event hooks. Both libraries, both directions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import httpx2
import pytest

from mistral_ratelimit import RatelimitConfig, RateLimiter
from mistral_ratelimit import httpx as mr_httpx
from mistral_ratelimit import httpx2 as mr_httpx2

pytest.importorskip("starlette")
from mistral_ratelimit.emulator.app import EmulatorApp
from mistral_ratelimit.emulator.settings import EmulatorConfig

LIBS = {"httpx": (httpx, mr_httpx), "httpx2": (httpx2, mr_httpx2)}
BODY = {"inputs": "Reply with exactly: pong", "model": "mistral-small-latest"}
USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


def config(**kw: Any) -> RatelimitConfig:
    fields: dict[str, Any] = dict(
        api_key="k", requests_per_second=1000, tokens_per_minute=10_000_000, base_delay=0.01
    )
    fields.update(kw)
    return RatelimitConfig(**fields)


def charged(limiter: RateLimiter) -> float:
    s = limiter.stats()
    return s.tokens_reserved - s.tokens_refunded + s.tokens_charged


@pytest.fixture(params=sorted(LIBS))
def libs(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    return LIBS[request.param]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_in_front_of_an_asgi_app(libs: tuple[Any, Any], backend: str) -> None:
    """The emulator's own ASGI app, in process: JSON and a stream, settled from usage."""
    lib, mr = libs
    limiter = RateLimiter(config())
    app = EmulatorApp(EmulatorConfig(requests_per_second=None, tokens_per_minute=None))
    transport = mr.AsyncRateLimitTransport(
        lib.ASGITransport(app=app), limiter=limiter, config=config()
    )

    async def main() -> tuple[dict[str, Any], bytes]:
        async with lib.AsyncClient(transport=transport, base_url="http://emu") as client:
            reply = (await client.post("/v1/conversations", json=BODY)).json()
            async with client.stream(
                "POST", "/v1/conversations", json=dict(BODY, stream=True)
            ) as r:
                streamed = b"".join([chunk async for chunk in r.aiter_raw()])
        return reply, streamed

    reply, streamed = anyio.run(main, backend=backend)
    assert reply["outputs"][-1]["content"] == "pong"
    assert b"conversation.response.done" in streamed
    records = app.state.log.snapshot()
    assert charged(limiter) == sum(r.prompt_tokens + r.completion_tokens for r in records)
    assert limiter.stats().in_flight == 0


def test_in_front_of_a_wsgi_app(libs: tuple[Any, Any]) -> None:
    lib, mr = libs
    seen: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        seen.append(environ["wsgi.input"].read())
        start_response("200 OK", [("content-type", "application/json")])
        yield json.dumps({"conversation_id": "c", "outputs": [], "usage": USAGE}).encode()

    limiter = RateLimiter(config())
    transport = mr.RateLimitTransport(lib.WSGITransport(app=app), limiter=limiter, config=config())
    with lib.Client(transport=transport, base_url="http://wsgi") as client:
        assert client.post("/v1/conversations", json=BODY).json()["usage"] == USAGE
    assert json.loads(seen[0]) == BODY
    assert charged(limiter) == 11


class RetryOn502:
    """A retry layer (as httpx-retries or a proxy client would add) for gateway errors."""

    def __init__(self, inner: Any, attempts: int = 3) -> None:
        self.inner = inner
        self.attempts = attempts

    def handle_request(self, request: Any) -> Any:
        for _ in range(self.attempts - 1):
            response = self.inner.handle_request(request)
            if response.status_code != 502:
                return response
            response.close()
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> RetryOn502:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_a_retry_layer_outside_reserves_every_attempt(libs: tuple[Any, Any]) -> None:
    """Retries made outside the limiter each take a reservation: the server saw three
    requests, so the budget counts three (inside, they would hide from it)."""
    lib, mr = libs
    replies = iter([502, 502, 200])

    def server(request: Any) -> Any:
        status = next(replies)
        if status == 502:
            return lib.Response(502, text="bad gateway")
        return lib.Response(200, json={"usage": USAGE})

    limiter = RateLimiter(config())
    inner = mr.RateLimitTransport(lib.MockTransport(server), limiter=limiter, config=config())
    with lib.Client(transport=RetryOn502(inner), base_url="https://api.mistral.ai") as client:
        assert client.post("/v1/conversations", json=BODY).status_code == 200
    s = limiter.stats()
    assert s.requests_admitted == 3
    assert charged(limiter) == 11  # the two 502s carried no usage: zero tokens each


class TinyCache:
    """A cache (as hishel adds one): GET responses kept by URL and served again."""

    def __init__(self, lib: Any, inner: Any) -> None:
        self.lib = lib
        self.inner = inner
        self.store: dict[str, tuple[int, bytes]] = {}

    def handle_request(self, request: Any) -> Any:
        key = str(request.url)
        if request.method == "GET" and key in self.store:
            status, content = self.store[key]
            return self.lib.Response(status, content=content, request=request)
        response = self.inner.handle_request(request)
        if request.method == "GET":
            self.store[key] = (response.status_code, response.read())
        return response

    def close(self) -> None:
        self.inner.close()


def test_in_front_of_a_cache(libs: tuple[Any, Any]) -> None:
    lib, mr = libs
    served: list[str] = []

    def server(request: Any) -> Any:
        served.append(request.url.path)
        return lib.Response(200, json={"object": "list", "data": [{"id": "m"}]})

    limiter = RateLimiter(config())
    transport = mr.RateLimitTransport(
        TinyCache(lib, lib.MockTransport(server)), limiter=limiter, config=config()
    )
    with lib.Client(transport=transport, base_url="https://api.mistral.ai") as client:
        bodies = [client.get("/v1/models").json() for _ in range(3)]
    assert bodies == [{"object": "list", "data": [{"id": "m"}]}] * 3
    assert served == ["/v1/models"]  # two of three from the cache
    s = limiter.stats()
    # Each call is counted as a request (the limiter cannot see the cache behind it: put a
    # cache in front of the limiter to spend nothing on hits), and a GET costs no tokens.
    assert (s.requests_admitted, charged(limiter), s.in_flight) == (3, 0, 0)


def test_event_hooks_and_client_options_see_the_final_response(libs: tuple[Any, Any]) -> None:
    lib, mr = libs
    calls = {"n": 0}

    def server(request: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            return lib.Response(429, json={"code": "1300"}, headers={"retry-after-ms": "1"})
        return lib.Response(200, json={"usage": USAGE})

    hooks: list[int] = []
    limiter = RateLimiter(config())
    transport = mr.RateLimitTransport(lib.MockTransport(server), limiter=limiter, config=config())
    with lib.Client(
        transport=transport,
        base_url="https://api.mistral.ai",
        event_hooks={"response": [lambda r: hooks.append(r.status_code)]},
        headers={"x-team": "search"},
        timeout=5.0,
    ) as client:
        r = client.post("/v1/conversations", json=BODY)
    assert r.status_code == 200
    assert hooks == [200]  # the 429 was retried inside the transport, unseen by hooks
    assert r.extensions["mistral_ratelimit"]["attempts"] == 2
