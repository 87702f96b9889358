"""The transports, httpx and httpx2, sync and async, each case played by a scripted server
over three wires: ``MockTransport``; a real socket (``scripted_server.py``, through the
library's own ``HTTPTransport``); and pytest-httpx intercepting ``httpx.HTTPTransport``.
Cases that need what only a mock can do (raise inside the transport, see what the server
produced before the caller read it) run on the mock wire alone."""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import httpx2
import pytest

from garbage import collect_garbage
from mistral_ratelimit import BudgetExhausted, Limit, RatelimitConfig, RateLimiter, RequestTooLarge
from mistral_ratelimit import httpx as mr_httpx
from mistral_ratelimit import httpx2 as mr_httpx2
from scripted_server import ScriptedServer

LIBS = {"httpx": (httpx, mr_httpx), "httpx2": (httpx2, mr_httpx2)}

START_BODY = {
    "inputs": [
        {
            "role": "user",
            "content": "What is the capital of France?",
            "object": "entry",
            "type": "message.input",
            "prefix": False,
        }
    ],
    "stream": False,
    "completion_args": {"max_tokens": 100},
    "model": "mistral-medium-latest",
}
USAGE = {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}
RESPONSE = {
    "object": "conversation.response",
    "conversation_id": "conv_1",
    "outputs": [],
    "usage": USAGE,
}
RATE_LIMITED = {
    "object": "error",
    "message": "Rate limit exceeded",
    "type": "rate_limited",
    "param": None,
    "code": "1300",
    "raw_status_code": 429,
}


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


STREAM = sse(
    (
        "conversation.response.started",
        {"type": "conversation.response.started", "conversation_id": "conv_s"},
    ),
    ("message.output.delta", {"type": "message.output.delta", "content": "Par"}),
    ("message.output.delta", {"type": "message.output.delta", "content": "is"}),
    ("conversation.response.done", {"type": "conversation.response.done", "usage": USAGE}),
)


def config(**kw: Any) -> RatelimitConfig:
    base: dict[str, Any] = dict(
        api_key="sk-test",
        requests_per_second=1000,
        tokens_per_minute=10_000_000,
        base_delay=0.01,
        max_delay=0.05,
    )
    base.update(kw)
    return RatelimitConfig(**base)


class Script:
    """A scripted server: a list of responses handed out in order, and the calls seen."""

    def __init__(self, lib: Any, *replies: Callable[[Any], Any]) -> None:
        self.lib = lib
        self.replies = list(replies)
        self.calls: list[Any] = []
        self.closed: list[Any] = []

    def __call__(self, request: Any) -> Any:
        self.calls.append(request)
        reply = self.replies[min(len(self.calls), len(self.replies)) - 1]
        return reply(request)


def ok_json(lib: Any) -> Callable[[Any], Any]:
    return lambda req: lib.Response(200, json=RESPONSE)


def too_many(lib: Any, headers: dict[str, str] | None = None) -> Callable[[Any], Any]:
    return lambda req: lib.Response(429, json=RATE_LIMITED, headers=headers or {})


@dataclass
class Rig:
    """A client library and a wire to the scripted server."""

    lib: Any  # httpx or httpx2
    mr: Any  # mistral_ratelimit.httpx or mistral_ratelimit.httpx2
    wire: str  # "mock", "socket" or "pytest-httpx"
    server: ScriptedServer | None = None
    httpx_mock: Any = None

    @property
    def base_url(self) -> str:
        return self.server.url if self.server is not None else "https://api.mistral.ai"

    def inner(self, script: Script) -> Any:
        """The inner transport that plays ``script`` (None: the library's own)."""
        if self.wire == "mock":
            return self.lib.MockTransport(script)
        if self.server is not None:
            self.server.script = script
        else:
            self.httpx_mock.add_callback(script, is_reusable=True, is_optional=True)
        return None

    def sync_client(self, script: Script, limiter: RateLimiter, cfg: RatelimitConfig) -> Any:
        transport = self.mr.RateLimitTransport(self.inner(script), limiter=limiter, config=cfg)
        return self.lib.Client(transport=transport, base_url=self.base_url)

    def async_client(self, script: Script, limiter: RateLimiter, cfg: RatelimitConfig) -> Any:
        transport = self.mr.AsyncRateLimitTransport(self.inner(script), limiter=limiter, config=cfg)
        return self.lib.AsyncClient(transport=transport, base_url=self.base_url)

    def connections(self, script: Script) -> set[int] | None:
        """The TCP connections the script's requests came on (None: no socket)."""
        if self.server is None:
            return None
        return {call.extensions["connection"] for call in script.calls}


WIRES = [
    ("httpx", "mock"),
    ("httpx2", "mock"),
    ("httpx", "socket"),
    ("httpx2", "socket"),
    ("httpx", "pytest-httpx"),
]


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


def _rig(request: pytest.FixtureRequest, server: ScriptedServer) -> Rig:
    lib_name, wire = request.param
    lib, mr = LIBS[lib_name]
    if wire == "socket":
        return Rig(lib, mr, wire, server=server)
    if wire == "pytest-httpx":
        return Rig(lib, mr, wire, httpx_mock=request.getfixturevalue("httpx_mock"))
    return Rig(lib, mr, wire)


@pytest.fixture(params=WIRES, ids=["-".join(w) for w in WIRES])
def rig(request: pytest.FixtureRequest, scripted_server: ScriptedServer) -> Rig:
    return _rig(request, scripted_server)


@pytest.fixture(params=WIRES[:2], ids=["-".join(w) for w in WIRES[:2]])
def mock_rig(request: pytest.FixtureRequest, scripted_server: ScriptedServer) -> Rig:
    return _rig(request, scripted_server)


def test_json_usage_is_settled_sync(rig: Rig) -> None:
    lib = rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    script = Script(lib, ok_json(lib))
    with rig.sync_client(script, limiter, cfg) as client:
        r = client.post("/v1/conversations", json=START_BODY)
    assert r.json()["usage"] == USAGE
    s = limiter.stats()
    assert s.requests_admitted == 1
    assert s.in_flight == 0
    # Reserved the estimate (prompt + max_tokens 100), settled to the real 28.
    assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged == pytest.approx(28)


def test_json_usage_is_settled_async(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_concurrency=2)
    limiter = RateLimiter(cfg)
    script = Script(lib, ok_json(lib))

    async def main() -> None:
        async with rig.async_client(script, limiter, cfg) as client:
            for _ in range(3):
                r = await client.post("/v1/conversations", json=START_BODY)
                assert r.status_code == 200

    anyio.run(main)
    s = limiter.stats()
    assert (s.requests_admitted, s.in_flight) == (3, 0)
    assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged == pytest.approx(3 * 28)


@pytest.mark.parametrize(
    ("content_type", "sniffed"),
    [
        (None, True),  # a proxy dropped it
        ("text/plain", True),  # or rewrote it
        ("text/plain; charset=utf-8", True),
        ("Application/JSON; charset=UTF-8", True),
        ("application/octet-stream", False),  # a file: not read for usage
    ],
)
def test_json_usage_is_settled_whatever_the_content_type_says(
    rig: Rig, content_type: str | None, sniffed: bool
) -> None:
    """Found by a break-it helper: a JSON answer without a JSON content type was settled to
    the estimate, not to its usage."""
    lib = rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    headers = {} if content_type is None else {"content-type": content_type}
    body = json.dumps(RESPONSE).encode()
    script = Script(lib, lambda req: lib.Response(200, content=body, headers=headers))
    with rig.sync_client(script, limiter, cfg) as client:
        r = client.post("/v1/conversations", json=START_BODY)
    assert r.content == body
    assert r.headers.get("content-type") == content_type
    s = limiter.stats()
    spent = s.tokens_reserved - s.tokens_refunded + s.tokens_charged
    if sniffed:
        assert spent == pytest.approx(28)
    else:
        assert spent > 100  # the estimate stays: prompt and max_tokens 100
    assert s.in_flight == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sse_stream_settles_from_done_event(rig: Rig, backend: str) -> None:
    lib = rig.lib
    cfg = config(max_concurrency=1)
    limiter = RateLimiter(cfg)

    async def chunks() -> Any:
        for i in range(0, len(STREAM), 7):  # arbitrary chunk boundaries
            yield STREAM[i : i + 7]

    script = Script(
        lib,
        lambda req: lib.Response(
            200, headers={"content-type": "text/event-stream"}, content=chunks()
        ),
    )
    got = bytearray()

    async def main() -> None:
        async with rig.async_client(script, limiter, cfg) as client:
            body = dict(START_BODY, stream=True)
            async with client.stream("POST", "/v1/conversations", json=body) as r:
                assert limiter.stats().in_flight == 1  # the stream holds its slot
                async for chunk in r.aiter_raw():
                    got.extend(chunk)
            assert limiter.stats().in_flight == 0  # released when closed

    anyio.run(main, backend=backend)
    assert bytes(got) == STREAM  # passed through untouched
    s = limiter.stats()
    assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged == pytest.approx(28)


def test_stream_passes_chunks_through_as_they_come(mock_rig: Rig) -> None:
    """The caller sees the first chunk before the server has produced the second one."""
    lib = mock_rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    produced: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i, part in enumerate(STREAM.split(b"\n\n")):
            produced.append(i)
            yield part + b"\n\n"

    script = Script(
        lib,
        lambda req: lib.Response(
            200, headers={"content-type": "text/event-stream"}, content=chunks()
        ),
    )
    with (
        mock_rig.sync_client(script, limiter, cfg) as client,
        client.stream("POST", "/v1/conversations", json=dict(START_BODY, stream=True)) as r,
    ):
        it = r.iter_raw()
        first = next(it)
        assert first.startswith(b"event: conversation.response.started")
        assert produced == [0]
        rest = b"".join(it)
    assert first + rest == STREAM + b"\n\n"


def test_stream_closed_early_stays_charged(rig: Rig) -> None:
    lib = rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    cut = STREAM[: STREAM.index(b"event: conversation.response.done")]
    script = Script(
        lib,
        lambda req: lib.Response(
            200, headers={"content-type": "text/event-stream"}, content=iter([cut])
        ),
    )
    with (
        rig.sync_client(script, limiter, cfg) as client,
        client.stream("POST", "/v1/conversations", json=dict(START_BODY, stream=True)) as r,
    ):
        r.read()
    s = limiter.stats()
    charged = s.tokens_reserved - s.tokens_refunded + s.tokens_charged
    # No usage arrived: the prompt estimate and the streamed characters stay charged.
    assert charged >= len("Paris")
    assert charged > 0
    assert s.in_flight == 0


def test_three_429s_then_200_on_one_pooled_connection(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=3)
    limiter = RateLimiter(cfg)
    headers = {"retry-after-ms": "10"}
    script = Script(
        lib, too_many(lib, headers), too_many(lib, headers), too_many(lib, headers), ok_json(lib)
    )
    with rig.sync_client(script, limiter, cfg) as client:
        r = client.post("/v1/conversations", json=START_BODY)
    assert r.status_code == 200
    assert len(script.calls) == 4
    s = limiter.stats()
    assert s.rate_limited_seen == 3
    assert s.requests_admitted == 4  # every attempt takes a new reservation
    assert s.in_flight == 0
    # Each 429 was read and closed, so its connection went back to the pool and was reused.
    assert rig.connections(script) in (None, {min(rig.connections(script) or {0})})


def chunked(lib: Any, status: int, body: dict[str, Any]) -> Callable[[Any], Any]:
    """An error reply of unknown length, as a proxy or HTTP/2 may send it."""
    return lambda req: lib.Response(
        status,
        headers={"content-type": "application/json"},
        stream=lib.ByteStream(json.dumps(body).encode()),
    )


CAPACITY = {
    "object": "error",
    "message": "Service tier capacity exceeded for this model.",
    "type": "service_tier_capacity_exceeded",
    "param": None,
    "code": "3505",
}


@pytest.mark.parametrize("status", [429, 503])
def test_capacity_error_of_unknown_length_is_recognised(rig: Rig, status: int) -> None:
    lib = rig.lib
    cfg = config(max_retries=1, capacity_backoff_factor=1.0)
    limiter = RateLimiter(cfg)
    script = Script(lib, chunked(lib, status, CAPACITY), ok_json(lib))
    with rig.sync_client(script, limiter, cfg) as client:
        assert client.post("/v1/conversations", json=START_BODY).status_code == 200
    assert len(script.calls) == 2
    assert limiter.stats().rate_limited_seen == 0  # provider capacity, not our quota
    assert limiter.stats().paused_until == 0  # nobody else was held back
    assert rig.connections(script) in (None, {min(rig.connections(script) or {0})})


def test_rate_limit_error_of_unknown_length_is_read_and_handed_back(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=1)
    limiter = RateLimiter(cfg)
    script = Script(lib, chunked(lib, 429, RATE_LIMITED))
    with rig.sync_client(script, limiter, cfg) as client:
        r = client.post("/v1/conversations", json=START_BODY)
    assert (r.status_code, r.json()) == (429, RATE_LIMITED)  # the body is whole for the SDK
    assert len(script.calls) == 2
    assert limiter.stats().rate_limited_seen == 2


def test_error_bodies_of_unknown_length_async(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=1, capacity_backoff_factor=1.0)
    limiter = RateLimiter(cfg)
    huge = {"object": "error", "message": "x" * 200_000}
    script = Script(lib, chunked(lib, 429, CAPACITY), chunked(lib, 503, huge))

    async def main() -> Any:
        async with rig.async_client(script, limiter, cfg) as client:
            return await client.post("/v1/conversations", json=START_BODY)

    r = anyio.run(main)
    # The 429 said capacity (3505): retried without pausing anyone; the huge 503 could not
    # be classified, so it came back whole.
    assert (r.status_code, r.json()) == (503, huge)
    assert len(script.calls) == 2
    assert limiter.stats().rate_limited_seen == 0


def test_huge_error_body_of_unknown_length_reaches_the_caller_whole(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=2)
    limiter = RateLimiter(cfg)
    huge = {"object": "error", "message": "x" * 200_000, "code": "3505"}
    script = Script(lib, chunked(lib, 503, huge))
    with rig.sync_client(script, limiter, cfg) as client:
        r = client.post("/v1/conversations", json=START_BODY)
    # Too big to classify: handed over as it came, every byte of it, and not retried.
    assert r.status_code == 503
    assert r.json() == huge
    assert len(script.calls) == 1


def test_retries_exhausted_returns_last_429_as_is(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=2)
    limiter = RateLimiter(cfg)
    script = Script(lib, too_many(lib, {"retry-after-ms": "1"}))
    with rig.sync_client(script, limiter, cfg) as client:
        r = client.post("/v1/conversations", json=START_BODY)
    assert r.status_code == 429
    assert r.json() == RATE_LIMITED
    assert len(script.calls) == 3


@pytest.mark.parametrize("value", ["inf", "-1", "1e400", "nan", "soon", ""])
def test_unusable_retry_after_falls_back_to_backoff(rig: Rig, value: str) -> None:
    lib = rig.lib
    cfg = config(max_retries=1)
    limiter = RateLimiter(cfg)
    script = Script(lib, too_many(lib, {"retry-after": value}), ok_json(lib))
    with rig.sync_client(script, limiter, cfg) as client:
        r = client.post("/v1/conversations", json=START_BODY)
    assert r.status_code == 200
    assert len(script.calls) == 2
    # The pause came from the configured backoff (max_delay 0.05 s), not from the header.
    assert limiter.stats().paused_until - limiter.now() <= cfg.max_delay


def test_absurd_retry_after_is_clamped(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=0)
    limiter = RateLimiter(cfg)
    script = Script(lib, too_many(lib, {"retry-after": "99999999999999999999"}))
    with rig.sync_client(script, limiter, cfg) as client:
        assert client.post("/v1/conversations", json=START_BODY).status_code == 429
    pause = limiter.stats().paused_until - limiter.now()
    assert 50 < pause <= 60.0


def test_retry_after_http_date_pauses_every_caller(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=0)
    limiter = RateLimiter(cfg)
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    script = Script(lib, too_many(lib, {"retry-after": when}))
    with rig.sync_client(script, limiter, cfg) as client:
        assert client.post("/v1/conversations", json=START_BODY).status_code == 429
    pause = limiter.stats().paused_until - limiter.now()
    assert 25 < pause <= 31
    # A new caller is held back by the same pause.
    res = limiter.reserve(1)
    assert limiter.delay(res) > 25
    limiter.cancel(res)


def test_zero_limit_fails_fast(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=5, requests_per_second=100, limits=(Limit(100, 60, "requests"),))
    limiter = RateLimiter(cfg)
    script = Script(
        lib,
        too_many(
            lib, {"x-ratelimit-limit-req-minute": "0", "x-ratelimit-remaining-req-minute": "0"}
        ),
    )
    with rig.sync_client(script, limiter, cfg) as client:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(BudgetExhausted):
                client.post("/v1/conversations", json=START_BODY)
            # The next caller is not held for the minute the reply called spent: it goes,
            # and is told at once too.
            assert time.monotonic() - started < 5
    assert len(script.calls) == 2
    assert limiter.stats().in_flight == 0


def test_capacity_error_is_retried(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=2, capacity_backoff_factor=1.0)
    limiter = RateLimiter(cfg)
    script = Script(lib, lambda req: lib.Response(503, json=CAPACITY), ok_json(lib))
    with rig.sync_client(script, limiter, cfg) as client:
        assert client.post("/v1/conversations", json=START_BODY).status_code == 200
    assert len(script.calls) == 2
    assert limiter.stats().rate_limited_seen == 0  # not our quota


@pytest.mark.parametrize("opt_in", [False, True])
def test_server_errors_retried_only_on_opt_in(rig: Rig, opt_in: bool) -> None:
    lib = rig.lib
    cfg = config(max_retries=2, retry_server_errors=opt_in)
    limiter = RateLimiter(cfg)
    script = Script(
        lib, lambda req: lib.Response(502, text="<html>bad gateway</html>"), ok_json(lib)
    )
    with rig.sync_client(script, limiter, cfg) as client:
        status = client.post("/v1/conversations", json=START_BODY).status_code
    assert status == (200 if opt_in else 502)
    assert len(script.calls) == (2 if opt_in else 1)


def test_connection_error_before_send_is_retried_and_given_back(mock_rig: Rig) -> None:
    lib = mock_rig.lib
    cfg = config(max_retries=2)
    limiter = RateLimiter(cfg)

    def refuse(req: Any) -> Any:
        raise lib.ConnectError("refused", request=req)

    script = Script(lib, refuse, ok_json(lib))
    with mock_rig.sync_client(script, limiter, cfg) as client:
        assert client.post("/v1/conversations", json=START_BODY).status_code == 200
    s = limiter.stats()
    assert s.requests_cancelled == 1  # the failed attempt gave its reservation back
    assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged == pytest.approx(28)


def test_read_error_after_send_is_not_retried(mock_rig: Rig) -> None:
    lib = mock_rig.lib
    cfg = config(max_retries=3)
    limiter = RateLimiter(cfg)

    def broken(req: Any) -> Any:
        raise lib.ReadTimeout("slow", request=req)

    script = Script(lib, broken)
    with mock_rig.sync_client(script, limiter, cfg) as client, pytest.raises(lib.ReadTimeout):
        client.post("/v1/conversations", json=START_BODY)
    assert len(script.calls) == 1
    s = limiter.stats()
    assert s.in_flight == 0
    assert s.tokens_reserved > 0  # it may have reached the model: stays charged


def test_streaming_request_body_is_buffered_once_and_replayed(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=1)
    limiter = RateLimiter(cfg)
    payload = json.dumps(START_BODY).encode()
    script = Script(lib, too_many(lib, {"retry-after-ms": "1"}), ok_json(lib))

    def body() -> Iterator[bytes]:
        yield payload[:10]
        yield payload[10:]

    with rig.sync_client(script, limiter, cfg) as client:
        r = client.post(
            "/v1/conversations", content=body(), headers={"content-type": "application/json"}
        )
    assert r.status_code == 200
    assert [c.content for c in script.calls] == [payload, payload]  # never re-sent empty


def test_request_too_large_fails_at_once(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(tokens_per_minute=50)
    limiter = RateLimiter(cfg)
    script = Script(lib, ok_json(lib))
    with rig.sync_client(script, limiter, cfg) as client, pytest.raises(RequestTooLarge):
        client.post("/v1/conversations", json=START_BODY)  # 100 max_tokens > 50 per minute
    assert script.calls == []


def test_extensions_skip_and_force_cost(rig: Rig) -> None:
    lib = rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    script = Script(lib, lambda req: lib.Response(200, json={"ok": True}))
    with rig.sync_client(script, limiter, cfg) as client:
        client.post("/v1/x", json={}, extensions={"mistral_ratelimit": {"skip": True}})
        assert limiter.stats().requests_admitted == 0
        client.post("/v1/x", json={}, extensions={"mistral_ratelimit": {"cost": 777}})
    assert limiter.stats().tokens_reserved == 777


def test_gzip_json_usage_is_read(rig: Rig) -> None:
    import gzip

    lib = rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    raw = gzip.compress(json.dumps(RESPONSE).encode())
    # As a server sends it: raw gzip bytes, not yet decoded. (A response built with
    # content= decodes itself at once, and pytest-httpx cannot replay it: it would hand
    # the client a decoder that has already finished.)
    script = Script(
        lib,
        lambda req: lib.Response(
            200,
            headers={
                "content-type": "application/json",
                "content-encoding": "gzip",
                "content-length": str(len(raw)),
            },
            stream=lib.ByteStream(raw),
        ),
    )
    with rig.sync_client(script, limiter, cfg) as client:
        assert client.post("/v1/conversations", json=START_BODY).json() == RESPONSE
    s = limiter.stats()
    assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged == pytest.approx(28)


def test_429_storm_many_concurrent_callers(rig: Rig) -> None:
    """Forty callers meet a burst of 429s: one shared pause, everyone finishes, nothing leaks."""
    lib = rig.lib
    cfg = config(max_retries=5, max_concurrency=8)
    limiter = RateLimiter(cfg)
    state = {"n": 0}

    def handler(req: Any) -> Any:
        state["n"] += 1
        if state["n"] <= 20:
            return lib.Response(429, json=RATE_LIMITED, headers={"retry-after-ms": "20"})
        return lib.Response(200, json=RESPONSE)

    async def main() -> list[int]:
        async with rig.async_client(Script(lib, handler), limiter, cfg) as client:
            rs = await asyncio.gather(
                *(client.post("/v1/conversations", json=START_BODY) for _ in range(40))
            )
        return [r.status_code for r in rs]

    assert asyncio.run(main()) == [200] * 40
    s = limiter.stats()
    assert s.in_flight == 0
    assert s.queued == 0
    assert s.rate_limited_seen == 20


def test_async_cancellation_gives_everything_back(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(requests_per_second=1, max_concurrency=1)
    limiter = RateLimiter(cfg)
    script = Script(lib, ok_json(lib))

    async def main() -> None:
        async with rig.async_client(script, limiter, cfg) as client:
            await client.post("/v1/conversations", json=START_BODY)  # uses the 1 rps
            with anyio.move_on_after(0.1):  # the next one waits ~1 s: cancel it
                await client.post("/v1/conversations", json=START_BODY)

    anyio.run(main)
    s = limiter.stats()
    assert len(script.calls) == 1
    assert s.requests_cancelled == 1
    assert s.in_flight == 0
    assert s.queued == 0


def test_transport_defaults_and_close(mock_rig: Rig) -> None:
    lib, mr = mock_rig.lib, mock_rig.mr
    closed: list[bool] = []

    class Inner(lib.MockTransport):  # type: ignore[misc, name-defined]
        def close(self) -> None:
            closed.append(True)

    t = mr.RateLimitTransport(Inner(lambda r: lib.Response(200)), config=config())
    assert isinstance(t, lib.BaseTransport)
    assert "sk-test" not in repr(t)
    t.close()
    assert closed == [True]


def test_priority_extension_jumps_the_queue(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(requests_per_second=None, limits=[Limit(1, 0.2, "requests")])
    limiter = RateLimiter(cfg)
    seen: list[str] = []

    def handler(req: Any) -> Any:
        seen.append(json.loads(req.content)["inputs"])
        return lib.Response(200, json=RESPONSE)

    async def main() -> None:
        async with rig.async_client(Script(lib, handler), limiter, cfg) as client:

            async def post(name: str, priority: int = 0) -> None:
                ext = {"mistral_ratelimit": {"priority": priority}}
                await client.post("/v1/conversations", json={"inputs": name}, extensions=ext)

            async with anyio.create_task_group() as tg:
                for name in ("low1", "low2", "low3"):
                    tg.start_soon(post, name)
                    await anyio.sleep(0.01)
                tg.start_soon(post, "urgent", 9)

    anyio.run(main)
    assert seen == ["low1", "urgent", "low2", "low3"]


# -- found by a fresh user trying to break it ------------------------------------------------


def test_endless_error_body_is_handed_over_unread(mock_rig: Rig) -> None:
    lib = mock_rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    produced: list[int] = []

    def endless() -> Iterator[bytes]:
        while True:
            produced.append(1)
            yield b"x" * 65536

    script = Script(lib, lambda req: lib.Response(400, content=endless()))
    with (
        mock_rig.sync_client(script, limiter, cfg) as client,
        client.stream("POST", "/v1/conversations", json=START_BODY) as r,
    ):
        assert r.status_code == 400
        assert produced == []  # nothing was read on the caller's behalf
    assert limiter.stats().in_flight == 0


def test_capacity_retry_after_is_clamped_like_a_429(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mistral_ratelimit.driving as driving

    slept: list[float] = []
    monkeypatch.setattr(driving.time, "sleep", slept.append)
    lib = rig.lib
    cfg = config(max_retries=1)
    limiter = RateLimiter(cfg)
    script = Script(
        lib,
        lambda req: lib.Response(429, json=CAPACITY, headers={"retry-after": "86400"}),
        ok_json(lib),
    )
    with rig.sync_client(script, limiter, cfg) as client:
        assert client.post("/v1/conversations", json=START_BODY).status_code == 200
    assert slept and max(slept) <= 60.0


def test_undecodable_stream_keeps_the_whole_reservation(rig: Rig) -> None:
    lib = rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    script = Script(
        lib,
        lambda req: lib.Response(
            200,
            headers={"content-type": "text/event-stream", "content-encoding": "zstd"},
            content=iter([b"\x28\xb5\x2f\xfd garbage the sniffer cannot decode"]),
        ),
    )
    with (
        rig.sync_client(script, limiter, cfg) as client,
        client.stream("POST", "/v1/conversations", json=dict(START_BODY, stream=True)) as r,
    ):
        for _ in r.iter_raw():
            pass
    s = limiter.stats()
    assert s.tokens_refunded == 0  # no usage could be read: the estimate stays charged
    assert s.tokens_reserved > 100


def test_multipart_upload_is_retried_after_a_429(rig: Rig) -> None:
    import io

    lib = rig.lib
    cfg = config(max_retries=1)
    limiter = RateLimiter(cfg)
    script = Script(lib, too_many(lib, {"retry-after-ms": "1"}), ok_json(lib))
    with rig.sync_client(script, limiter, cfg) as client:
        r = client.post(
            "/v1/files",
            files={"file": ("a.jsonl", io.BytesIO(b'{"x": 1}\n'))},
            data={"purpose": "batch"},
        )
    assert r.status_code == 200
    assert len(script.calls) == 2
    bodies = [c.read() for c in script.calls]
    assert bodies[0] == bodies[1] and b'{"x": 1}' in bodies[1]  # never re-sent empty


class OneWayReader:
    """A file that can be read once and cannot seek: a pipe, a socket, a generator."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, size: int = -1) -> bytes:
        data, self._data = self._data, b""
        return data


def test_upload_that_cannot_rewind_is_never_re_sent_empty(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=2)
    limiter = RateLimiter(cfg)
    script = Script(lib, too_many(lib, {"retry-after-ms": "1"}), ok_json(lib))
    with rig.sync_client(script, limiter, cfg) as client:
        r = client.post(
            "/v1/files",
            files={"file": ("a.jsonl", OneWayReader(b'{"x": 1}\n'))},  # type: ignore[dict-item]
            data={"purpose": "batch"},
        )
    bodies = [c.read() for c in script.calls]
    assert all(b'{"x": 1}' in body for body in bodies)  # whatever was sent was whole
    assert r.status_code in (200, 429)
    assert (r.status_code == 200) == (len(bodies) == 2)


def test_connection_error_after_the_body_was_read_is_not_retried(mock_rig: Rig) -> None:
    lib = mock_rig.lib
    cfg = config(max_retries=2)
    limiter = RateLimiter(cfg)
    sent: list[bytes] = []

    def consume_then_fail(req: Any) -> Any:
        sent.append(b"".join(req.stream))  # a transport that streamed the body, then failed
        raise lib.ConnectError("reset", request=req)

    def body() -> Iterator[bytes]:
        yield b"not json, cannot be buffered for a retry"

    script = Script(lib, consume_then_fail)
    transport = mock_rig.mr.RateLimitTransport(
        lib.MockTransport(script), limiter=limiter, config=cfg
    )
    with (
        lib.Client(transport=transport, base_url=mock_rig.base_url) as client,
        pytest.raises(lib.ConnectError),
    ):
        client.post("/v1/files", content=body(), headers={"content-type": "text/plain"})
    assert sent == [b"not json, cannot be buffered for a retry"]  # never sent again, empty
    assert limiter.stats().in_flight == 0


def test_absurd_usage_is_capped(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(tokens_per_month=1e9)
    limiter = RateLimiter(cfg)
    bogus = dict(
        RESPONSE, usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 10**20}
    )
    script = Script(lib, lambda req: lib.Response(200, json=bogus))
    with rig.sync_client(script, limiter, cfg) as client:
        client.post("/v1/conversations", json=START_BODY)
    s = limiter.stats()
    assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged < 1e8


def test_skip_needs_a_real_bool(rig: Rig) -> None:
    # A truthy string must never switch limiting off. It used to be read as False and the
    # request limited; it now raises, as every bad option does (a bug in the caller's code
    # that silently ignoring would hide), and nothing is reserved or sent.
    lib = rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    script = Script(lib, ok_json(lib))
    with rig.sync_client(script, limiter, cfg) as client, pytest.raises(ValueError, match="skip"):
        client.post(
            "/v1/conversations",
            json=START_BODY,
            extensions={"mistral_ratelimit": {"skip": "false"}},
        )
    assert script.calls == []
    assert limiter.stats() == RateLimiter(cfg).stats()


BAD_OPTIONS: list[tuple[Any, str]] = [
    ({"cost": -5}, r'\["cost"\] must be a finite number of tokens >= 0, got int -5'),
    ({"cost": "abc"}, r"\[\"cost\"\] .* got str 'abc'"),
    ({"cost": math.nan}, r'\["cost"\] .* got float nan'),
    ({"cost": True}, r'\["cost"\] .* got bool True'),
    ({"priority": "high"}, r"\[\"priority\"\] must be an integer, got str 'high'"),
    ({"max_retries": -1}, r'\["max_retries"\] must be an integer >= 0, got int -1'),
    ({"max_retries": "3"}, r"\[\"max_retries\"\] .* got str '3'"),
    ({"skip": 0}, r'\["skip"\] must be True or False, got int 0'),
    ({"costs": 5}, r"unknown option\(s\) 'costs'; known: skip, cost, max_retries, priority"),
    ("cost=5", r"must be a dict of options, got str 'cost=5'"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS, ids=repr)
def test_a_bad_option_raises_before_anything_is_reserved_or_sent(
    rig: Rig, options: Any, message: str
) -> None:
    lib = rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    script = Script(lib, ok_json(lib))
    untouched = RateLimiter(cfg).stats()
    with rig.sync_client(script, limiter, cfg) as client:
        with pytest.raises(ValueError, match=message) as info:
            client.post(
                "/v1/conversations", json=START_BODY, extensions={"mistral_ratelimit": options}
            )
        assert "France" not in str(info.value)  # never the body
        assert limiter.stats() == untouched
        # The client is not left broken: the next request goes as usual.
        assert client.post("/v1/conversations", json=START_BODY).status_code == 200
    assert len(script.calls) == 1


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS[:3], ids=repr)
def test_a_bad_option_raises_from_the_async_transport(rig: Rig, options: Any, message: str) -> None:
    lib = rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    script = Script(lib, ok_json(lib))

    async def main() -> None:
        async with rig.async_client(script, limiter, cfg) as client:
            with pytest.raises(ValueError, match=message):
                await client.post(
                    "/v1/conversations", json=START_BODY, extensions={"mistral_ratelimit": options}
                )

    anyio.run(main)
    assert script.calls == []
    assert limiter.stats() == RateLimiter(cfg).stats()


def test_options_left_out_or_none_are_the_defaults() -> None:
    from mistral_ratelimit.lifecycle import DEFAULT_OPTIONS, RequestOptions

    assert RequestOptions.from_extensions(None) is DEFAULT_OPTIONS
    assert RequestOptions.from_extensions({"timeout": {}}) is DEFAULT_OPTIONS
    assert RequestOptions.from_extensions({"mistral_ratelimit": None}) is DEFAULT_OPTIONS
    none = {"skip": None, "cost": None, "max_retries": None, "priority": None}
    assert RequestOptions.from_extensions({"mistral_ratelimit": none}) == DEFAULT_OPTIONS
    fine = {"skip": False, "cost": 5.5, "max_retries": 0, "priority": -2}
    assert RequestOptions.from_extensions({"mistral_ratelimit": fine}) == RequestOptions(
        skip=False, cost=6, max_retries=0, priority=-2
    )
    # What the transport records on a response, handed back on a request (a transport that
    # shares one extensions dict between the two), is not an unknown option.
    record = {"attempts": 2, "waited": 0.5}
    assert RequestOptions.from_extensions({"mistral_ratelimit": record}) == DEFAULT_OPTIONS


def test_transports_on_one_limiter_share_what_they_learnt(rig: Rig) -> None:
    # The README's bring-your-own-client pattern: a sync and an async transport built
    # separately on one limiter. The async append must know the history the sync start
    # learnt (28 tokens), not assume the unknown-history default.
    lib, mr = rig.lib, rig.mr
    cfg = config(unknown_history_tokens=50_000)
    limiter = RateLimiter(cfg)
    script = Script(lib, ok_json(lib))
    sync = mr.RateLimitTransport(rig.inner(script), limiter=limiter, config=cfg)
    other = mr.AsyncRateLimitTransport(
        rig.inner(script), limiter=limiter, config=cfg.replace(default_max_tokens=10)
    )
    with lib.Client(transport=sync, base_url=rig.base_url) as client:
        client.post("/v1/conversations", json=START_BODY)
    before = limiter.stats().tokens_reserved

    async def append() -> None:
        async with lib.AsyncClient(transport=other, base_url=rig.base_url) as c:
            await c.post("/v1/conversations/conv_1", json={"inputs": "and Italy?"})

    anyio.run(append)
    reserved = limiter.stats().tokens_reserved - before
    # history 28 + a few tokens of input + the other config's 10 output tokens
    assert 28 + 10 < reserved < 100
    assert other.estimator.history is sync.estimator.history


def test_package_top_level_exports_the_httpx_transports() -> None:
    import mistral_ratelimit as mr

    assert mr.RateLimitTransport is mr_httpx.RateLimitTransport
    assert mr.AsyncRateLimitTransport is mr_httpx.AsyncRateLimitTransport
    assert {"RateLimitTransport", "AsyncRateLimitTransport"} <= set(mr.__all__)


class CountingLimiter(RateLimiter):
    def __init__(self, cfg: RatelimitConfig) -> None:
        super().__init__(cfg)
        self.adopted = 0

    def adopt(self, observed: Any) -> None:
        self.adopted += 1
        super().adopt(observed)


@pytest.mark.parametrize("interval", [0.0, 3600.0])
def test_rate_limit_headers_of_successes_are_sampled(
    rig: Rig, interval: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mistral_ratelimit.lifecycle as lifecycle

    monkeypatch.setattr(lifecycle, "LIMITS_READ_INTERVAL", interval)
    lib = rig.lib
    cfg = config(max_retries=1)
    limiter = CountingLimiter(cfg)
    rate = {"x-ratelimit-limit-req-minute": "720", "x-ratelimit-remaining-req-minute": "700"}
    no_usage = {"object": "conversation.response", "conversation_id": "c", "outputs": []}
    script = Script(
        lib,
        lambda req: lib.Response(200, json=RESPONSE, headers=rate),
        lambda req: lib.Response(200, json=RESPONSE, headers=rate),
        lambda req: lib.Response(429, json=RATE_LIMITED, headers={**rate, "retry-after-ms": "1"}),
        lambda req: lib.Response(
            200, json=no_usage, headers={**rate, "x-ratelimit-tokens-query-cost": "33"}
        ),
    )
    with rig.sync_client(script, limiter, cfg) as client:
        for _ in range(3):  # the third is a 429, then a 200 without usage
            client.post("/v1/conversations", json=START_BODY)
    # The first success is always read (discovery), a 429 always; within the interval the
    # others are not. Without usage the query cost still settles the last one.
    assert limiter.adopted == (4 if interval == 0 else 2)
    s = limiter.stats()
    assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged == pytest.approx(28 + 28 + 33)


@pytest.mark.parametrize("started", [False, True])
def test_a_stream_dropped_unclosed_gives_its_slot_back(rig: Rig, started: bool) -> None:
    """An SDK event stream the caller abandons (never read to the end, never closed) must
    not hold its in-flight slot for ever: with max_concurrency=1 the next call would hang."""
    lib = rig.lib
    cfg = config(max_concurrency=1)
    limiter = RateLimiter(cfg)
    script = Script(
        lib,
        lambda req: lib.Response(
            200, headers={"content-type": "text/event-stream"}, content=iter([STREAM])
        ),
    )
    with rig.sync_client(script, limiter, cfg) as client:
        request = client.build_request(
            "POST", "/v1/conversations", json=dict(START_BODY, stream=True)
        )
        response = client.send(request, stream=True)
        if started:
            chunks = response.iter_raw()
            next(chunks)
            del chunks
        del response
        collect_garbage()
        assert limiter.stats().in_flight == 0
        done: list[int] = []
        worker = threading.Thread(
            target=lambda: done.append(
                client.post("/v1/conversations", json=START_BODY).status_code
            )
        )
        worker.start()
        worker.join(timeout=10)
    assert done == [200]
    s = limiter.stats()
    # The abandoned stream stays charged for its prompt at least; nothing is left in flight.
    assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged > 28
    assert s.in_flight == 0


def test_an_async_stream_dropped_unclosed_gives_its_slot_back(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_concurrency=1)
    limiter = RateLimiter(cfg)
    script = Script(
        lib,
        lambda req: lib.Response(
            200, headers={"content-type": "text/event-stream"}, content=STREAM
        ),
        ok_json(lib),
    )

    async def main() -> int:
        async with rig.async_client(script, limiter, cfg) as client:
            request = client.build_request(
                "POST", "/v1/conversations", json=dict(START_BODY, stream=True)
            )
            response = await client.send(request, stream=True)
            del response
            collect_garbage()
            with anyio.fail_after(10):
                return (await client.post("/v1/conversations", json=START_BODY)).status_code

    assert anyio.run(main) == 200
    assert limiter.stats().in_flight == 0


def test_a_cut_stream_is_charged_what_streamed_whatever_the_query_cost(rig: Rig) -> None:
    lib = rig.lib
    cfg = config()
    limiter = RateLimiter(cfg)
    text = "x" * 500
    cut = sse(
        ("conversation.response.started", {"type": "conversation.response.started"}),
        ("message.output.delta", {"type": "message.output.delta", "content": text}),
    )
    script = Script(
        lib,
        lambda req: lib.Response(
            200,
            # Sent with the headers, before any output: it cannot count what came after.
            headers={"content-type": "text/event-stream", "x-ratelimit-tokens-query-cost": "4"},
            content=iter([cut]),
        ),
    )
    body = dict(START_BODY, stream=True, completion_args={"max_tokens": 1000})
    with (
        rig.sync_client(script, limiter, cfg) as client,
        client.stream("POST", "/v1/conversations", json=body) as r,
    ):
        r.read()
    s = limiter.stats()
    assert s.tokens_reserved - s.tokens_refunded + s.tokens_charged >= 500  # not 4


def test_a_429_with_the_month_nearly_spent_fails_fast(rig: Rig) -> None:
    lib = rig.lib
    cfg = config(max_retries=5)
    limiter = RateLimiter(cfg)
    month = {
        "x-ratelimit-limit-tokens-month": "2000",
        "x-ratelimit-remaining-tokens-month": "194",
        "retry-after-ms": "1",
    }
    script = Script(lib, too_many(lib, month))
    with rig.sync_client(script, limiter, cfg) as client, pytest.raises(BudgetExhausted) as info:
        body = dict(START_BODY, completion_args={"max_tokens": 1000})
        client.post("/v1/conversations", json=body)  # may need 1000 tokens of output alone
    assert len(script.calls) == 1  # not retried: the month cannot hold it
    assert "194 tokens left this month" in str(info.value)


# -- counted from when it left, even without a reply -----------------------------------------

LEFT_LATE = 0.3  # seconds between a request's turn and its body reaching the wire


class LateSync:
    """The library's own transport behind a slow start (a cold connection, a busy host)."""

    def __init__(self, lib: Any) -> None:
        self.inner = lib.HTTPTransport()

    def handle_request(self, request: Any) -> Any:
        time.sleep(LEFT_LATE)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class LateAsync:
    def __init__(self, lib: Any) -> None:
        self.inner = lib.AsyncHTTPTransport()

    async def handle_async_request(self, request: Any) -> Any:
        await anyio.sleep(LEFT_LATE)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def slow_reply(lib: Any) -> Callable[[Any], Any]:
    def reply(request: Any) -> Any:
        time.sleep(1.5)  # longer than the window: the next window's requests go first
        return lib.Response(200, json=RESPONSE)

    return reply


def assert_counted_from_departure(limiter: RateLimiter, due: float) -> None:
    # 1 request per second: the next one goes a window after the first *left*, not after
    # it was due (that was only learnt from the response, which never came).
    following = limiter.reserve(0)
    assert following.at - due >= 1.0 + LEFT_LATE - 0.05
    limiter.cancel(following)


@pytest.mark.parametrize("lib_name", ["httpx", "httpx2"])
def test_a_request_that_left_late_and_timed_out_counts_from_when_it_left(
    lib_name: str, scripted_server: ScriptedServer
) -> None:
    lib, mr = LIBS[lib_name]
    cfg = config(requests_per_second=1, max_retries=0)
    limiter = RateLimiter(cfg)
    scripted_server.script = slow_reply(lib)
    transport = mr.RateLimitTransport(LateSync(lib), limiter=limiter, config=cfg)
    due = limiter.now()
    with (
        lib.Client(transport=transport, base_url=scripted_server.url, timeout=0.6) as client,
        pytest.raises(lib.ReadTimeout),
    ):
        client.post("/v1/conversations", json=START_BODY)
    assert limiter.stats().in_flight == 0
    assert_counted_from_departure(limiter, due)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("lib_name", ["httpx", "httpx2"])
def test_a_request_that_left_late_and_was_cancelled_counts_from_when_it_left(
    lib_name: str, backend: str, scripted_server: ScriptedServer
) -> None:
    lib, mr = LIBS[lib_name]
    cfg = config(requests_per_second=1, max_retries=0)
    limiter = RateLimiter(cfg)
    scripted_server.script = slow_reply(lib)
    due = limiter.now()

    async def main() -> None:
        transport = mr.AsyncRateLimitTransport(LateAsync(lib), limiter=limiter, config=cfg)
        async with lib.AsyncClient(transport=transport, base_url=scripted_server.url) as client:
            with anyio.move_on_after(0.7) as scope:
                await client.post("/v1/conversations", json=START_BODY)
        assert scope.cancelled_caught

    anyio.run(main, backend=backend)
    assert limiter.stats().in_flight == 0
    assert_counted_from_departure(limiter, due)
