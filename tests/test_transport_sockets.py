"""The transports over real sockets, against the emulator on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

pytest.importorskip("uvicorn")
httpx2 = pytest.importorskip("httpx2")

from mistral_ratelimit import RatelimitConfig, RateLimiter  # noqa: E402
from mistral_ratelimit.emulator import Emulator  # noqa: E402
from mistral_ratelimit.httpx2 import AsyncRateLimitTransport, RateLimitTransport  # noqa: E402

BODY = {
    "inputs": "Tell me a story about the sea.",
    "model": "mistral-small-latest",
    "stream": True,
    "completion_args": {"max_tokens": 40},
}


def config() -> RatelimitConfig:
    return RatelimitConfig(api_key="k", requests_per_second=50, tokens_per_minute=1_000_000)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(
        requests_per_second=50, tokens_per_minute=1_000_000, stream_tokens_per_second=60
    ) as e:
        yield e


def test_stream_is_not_buffered_sync(emu: Emulator) -> None:
    limiter = RateLimiter(config())
    with (
        httpx2.Client(transport=RateLimitTransport(config=config(), limiter=limiter)) as c,
        c.stream("POST", emu.url + "/v1/conversations", json=BODY) as r,
    ):
        chunks = r.iter_raw()
        first = next(chunks)
        # The server is still generating: the first event reached us before the last one.
        assert emu.log.snapshot()[-1].finished is None
        rest = b"".join(chunks)
    assert first.startswith(b"event: conversation.response.started")
    assert b"conversation.response.done" in rest
    s = limiter.stats()
    assert s.in_flight == 0
    record = emu.log.snapshot()[-1]
    charged = s.tokens_reserved - s.tokens_refunded + s.tokens_charged
    assert charged == record.prompt_tokens + record.completion_tokens  # settled from usage


def test_stream_is_not_buffered_async_trio(emu: Emulator) -> None:
    limiter = RateLimiter(config())

    async def main() -> bytes:
        transport = AsyncRateLimitTransport(config=config(), limiter=limiter)
        async with (
            httpx2.AsyncClient(transport=transport) as c,
            c.stream("POST", emu.url + "/v1/conversations", json=BODY) as r,
        ):
            it = r.aiter_raw()
            first = await it.__anext__()
            assert emu.log.snapshot()[-1].finished is None
            async for _ in it:
                pass
            return first

    first = anyio.run(main, backend="trio")
    assert first.startswith(b"event: conversation.response.started")
    assert limiter.stats().in_flight == 0


def test_cancelled_stream_releases_and_stays_charged(emu: Emulator) -> None:
    limiter = RateLimiter(config())

    async def main() -> None:
        transport = AsyncRateLimitTransport(config=config(), limiter=limiter)
        async with httpx2.AsyncClient(transport=transport) as c:
            with anyio.move_on_after(0.15):
                async with c.stream("POST", emu.url + "/v1/conversations", json=BODY) as r:
                    async for _ in r.aiter_raw():
                        pass

    anyio.run(main)
    s = limiter.stats()
    assert s.in_flight == 0
    charged = s.tokens_reserved - s.tokens_refunded + s.tokens_charged
    assert charged > 0  # never refunded to zero
