"""The express lane: a request the budget holds with room to spare is granted in one step
(``RateLimiter.grant_now``, ``Lifecycle.admit``), and anything unusual about its answer is
taken up by the full lifecycle. Both must book, count and settle exactly as the full path
would."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, ClassVar

import anyio
import httpx
import httpx2
import pytest

from conftest import FakeClock
from mistral_ratelimit import Limit, RatelimitConfig, RateLimiter, lifecycle
from mistral_ratelimit import httpx as mr_httpx
from mistral_ratelimit import httpx2 as mr_httpx2
from mistral_ratelimit.accounting.request import Estimator
from mistral_ratelimit.accounting.tokenizer import count_tokens
from mistral_ratelimit.lifecycle import EXACT_SAMPLE_EVERY, Lifecycle, RequestView
from mistral_ratelimit.limiter.base import Reservation, State
from test_transport import config

LIBS = {"httpx": (httpx, mr_httpx), "httpx2": (httpx2, mr_httpx2)}
BODY = {
    "inputs": [{"role": "user", "content": "What is the capital of France?"}],
    "completion_args": {"max_tokens": 100},
    "model": "mistral-medium-latest",
}
USAGE = {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}
OK = {"object": "conversation.response", "conversation_id": "conv_1", "usage": USAGE}
RATE_LIMITED = {"object": "error", "message": "Rate limit exceeded", "code": "1300"}


def limits() -> list[Limit]:
    return [Limit(5, 1.0, "requests"), Limit(1000, 60.0, "tokens"), Limit(8, 60.0, "requests")]


def limiter(clock: FakeClock, **kw: Any) -> RateLimiter:
    cfg = RatelimitConfig(api_key="k", requests_per_second=None, tokens_per_minute=None)
    return RateLimiter(cfg, limits=limits(), clock=clock, window_margin=0.05, **kw)


def booking(lim: RateLimiter, res: Reservation) -> tuple[Any, ...]:
    """What a booking is, window by window, independent of the windows' identities."""
    slots = [res.slots.get(w.ident) for w in lim._windows]
    return (res.tokens, res.state, res.at, res.due_at, res.created_at, slots, res.holds_inflight)


def windows(lim: RateLimiter) -> list[tuple[float, dict[int, float]]]:
    return [(w.total, dict(w.slots)) for w in lim._windows]


def test_grant_now_books_and_counts_as_reserve_and_delay_would() -> None:
    clock_a, clock_b = FakeClock(), FakeClock()
    a, b = limiter(clock_a), limiter(clock_b)
    clock_a_start = clock_a.t
    steps = [(0.0, 100.0, 40.0), (0.1, 50.0, 80.0), (0.35, 0.0, 0.0), (0.9, 120.0, 120.0)]
    steps += [(1.2, 30.0, 10.0), (61.5, 200.0, 210.0), (61.5, 1.0, 0.0)]
    for t, tokens, actual in steps:
        clock_a.set(clock_a_start + t)
        clock_b.set(clock_a_start + t)
        ra = a.reserve(tokens)
        assert a.delay(ra) == 0
        rb = b.grant_now(tokens)
        assert rb is not None
        assert booking(b, rb) == booking(a, ra)
        assert windows(b) == windows(a)
        for lim, res in ((a, ra), (b, rb)):
            lim.settle(res, actual)
            lim.release(res)
        assert windows(b) == windows(a)
        assert b.stats() == a.stats()


def _paused(lim: RateLimiter, clock: FakeClock) -> None:
    lim.pause_for(0.5)


def _queued_behind_the_cap(lim: RateLimiter, clock: FakeClock) -> None:
    lim.grant_now(1.0)  # the only in-flight slot


def _booked_ahead(lim: RateLimiter, clock: FakeClock) -> None:
    for _ in range(6):  # the sixth must wait for the 5 rps window: it is booked ahead
        lim.reserve(1.0)


def _requests_window_full(lim: RateLimiter, clock: FakeClock) -> None:
    for _ in range(5):
        res = lim.grant_now(1.0)
        assert res is not None
        lim.release(res)


def _token_room_too_small(lim: RateLimiter, clock: FakeClock) -> None:
    res = lim.grant_now(700.0)  # 300 tokens left: 100 more is a third of them, over a quarter
    assert res is not None
    lim.release(res)


def _a_dropped_stream_to_settle(lim: RateLimiter, clock: FakeClock) -> None:
    res = lim.grant_now(10.0)
    assert res is not None
    lim.settle_later(res, 5.0)


@pytest.mark.parametrize(
    "hold_back",
    [
        _paused,
        _queued_behind_the_cap,
        _booked_ahead,
        _requests_window_full,
        _token_room_too_small,
        _a_dropped_stream_to_settle,
    ],
)
def test_grant_now_declines_and_books_nothing_when_something_holds_it_back(
    hold_back: Callable[[RateLimiter, FakeClock], None],
) -> None:
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=1 if hold_back is _queued_behind_the_cap else None)
    hold_back(lim, clock)
    before = (lim.stats(), windows(lim)) if hold_back is not _a_dropped_stream_to_settle else None
    assert lim.grant_now(100.0, 0.25) is None
    if before is not None:
        assert (lim.stats(), windows(lim)) == before
    # What grant_now declined, reserve() books, to go when its time comes.
    res = lim.reserve(100.0)
    assert res.state in (State.SCHEDULED, State.QUEUED)


@pytest.mark.parametrize("tokens", [math.nan, math.inf, -1.0, 5])
def test_grant_now_leaves_unusual_amounts_to_reserve(tokens: Any) -> None:
    lim = limiter(FakeClock())
    assert lim.grant_now(tokens) is None
    assert lim.stats().requests_admitted == 0


def spy_on_exact_counts(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The exact counts made from now on (one True per estimate made with exact=True)."""
    exact: list[bool] = []
    estimate = Estimator.estimate

    def spying(self: Estimator, *args: Any, **kw: Any) -> Any:
        if kw.get("exact", True):
            exact.append(True)
        return estimate(self, *args, **kw)

    monkeypatch.setattr(Estimator, "estimate", spying)
    return exact


class Tally:
    """Counts how each request went: through the express lane, or the full lifecycle."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.admitted = self.full = self.taken_up = 0
        admit, run = Lifecycle.admit, Lifecycle.run

        def counting_admit(lc: Lifecycle, req: Any) -> Any:
            got = admit(lc, req)
            self.admitted += got is not None
            return got

        def counting_run(lc: Lifecycle, req: Any, admitted: Any = None) -> Any:
            if admitted is None:
                self.full += 1
            else:
                self.taken_up += 1
            return run(lc, req, admitted)

        monkeypatch.setattr(Lifecycle, "admit", counting_admit)
        monkeypatch.setattr(Lifecycle, "run", counting_run)


@pytest.fixture
def tally(monkeypatch: pytest.MonkeyPatch) -> Tally:
    return Tally(monkeypatch)


Reply = Callable[[Any, Any], Any]


def ok(lib: Any, req: Any) -> Any:
    return lib.Response(200, json=OK)


def too_many(lib: Any, req: Any) -> Any:
    return lib.Response(429, json=RATE_LIMITED)


def refused(lib: Any, req: Any) -> Any:
    raise lib.ConnectError("refused", request=req)


def timed_out(lib: Any, req: Any) -> Any:
    raise lib.ReadTimeout("slow", request=req)


@pytest.fixture(params=sorted(LIBS))
def lib_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def scripted(lib: Any, replies: list[Reply]) -> tuple[Any, list[Any]]:
    calls: list[Any] = []

    def handler(req: Any) -> Any:
        calls.append(req)
        return replies[min(len(calls), len(replies)) - 1](lib, req)

    return lib.MockTransport(handler), calls


def sync_run(lib_name: str, replies: list[Reply], n: int = 1, **cfg_kw: Any) -> Iterator[Any]:
    """Sends one warm-up request (the first of a lifecycle is counted exactly, so it takes
    the full path), then ``n`` more; yields each outcome: a response or the error."""
    lib, mr = LIBS[lib_name]
    cfg = config(**cfg_kw)
    inner, _ = scripted(lib, [ok, *replies])
    with lib.Client(
        transport=mr.RateLimitTransport(inner, config=cfg, limiter=RateLimiter(cfg)),
        base_url="https://api.mistral.ai",
    ) as client:
        client.post("/v1/conversations", json=BODY)
        for _ in range(n):
            try:
                yield client.post("/v1/conversations", json=BODY)
            except Exception as exc:
                yield exc
        yield client._transport.limiter.stats()


@pytest.mark.parametrize("interval", [0.0, 3600.0])
def test_plain_requests_go_by_the_express_lane_and_a_sample_by_the_full_path(
    lib_name: str, tally: Tally, monkeypatch: pytest.MonkeyPatch, interval: float
) -> None:
    monkeypatch.setattr(lifecycle, "EXACT_SAMPLE_INTERVAL", interval)
    count_tokens("loaded")  # until the vocabulary is loaded, no count is exact
    exact = spy_on_exact_counts(monkeypatch)
    n = 2 * EXACT_SAMPLE_EVERY
    *responses, stats = sync_run(lib_name, [ok], n=n - 1)
    assert all(r.status_code == 200 for r in responses)
    # The 1st and the 65th are counted exactly; the 65th only if a sample is due by then.
    sampled = 2 if interval == 0 else 1
    assert tally.full == len(exact) == sampled
    assert tally.admitted == n - sampled
    assert stats.requests_admitted == n
    assert stats.in_flight == 0
    assert stats.tokens_reserved - stats.tokens_refunded + stats.tokens_charged == 28 * n


def test_an_admitted_request_refused_before_sending_is_given_back_and_retried(
    lib_name: str, tally: Tally
) -> None:
    response, stats = sync_run(lib_name, [refused, ok], max_retries=2)
    assert response.status_code == 200
    assert tally.admitted == 1 and tally.taken_up == 1
    assert stats.requests_cancelled == 1
    assert stats.requests_admitted == 3
    assert stats.tokens_reserved - stats.tokens_refunded + stats.tokens_charged == 2 * 28


def test_an_admitted_request_that_times_out_stays_charged_and_raises(
    lib_name: str, tally: Tally
) -> None:
    error, stats = sync_run(lib_name, [timed_out], max_retries=3)
    assert isinstance(error, LIBS[lib_name][0].ReadTimeout)
    assert tally.taken_up == 1
    assert stats.in_flight == 0
    assert stats.requests_cancelled == 0
    assert stats.tokens_reserved - stats.tokens_refunded + stats.tokens_charged > 28


def test_an_admitted_request_answered_429_is_retried_by_the_full_path(
    lib_name: str, tally: Tally
) -> None:
    response, stats = sync_run(lib_name, [too_many, ok], max_retries=2)
    assert response.status_code == 200
    assert response.extensions["mistral_ratelimit"]["attempts"] == 2
    assert tally.admitted == 1 and tally.taken_up == 1
    assert stats.rate_limited_seen == 1
    assert stats.requests_admitted == 3
    assert stats.in_flight == 0
    # The 429 spent a request and no tokens.
    assert stats.tokens_reserved - stats.tokens_refunded + stats.tokens_charged == 2 * 28


def test_an_admitted_async_request_cancelled_while_sending_gives_its_slot_back(
    lib_name: str, tally: Tally
) -> None:
    lib, mr = LIBS[lib_name]
    cfg = config(max_concurrency=1)
    lim = RateLimiter(cfg)
    sending = anyio.Event()

    class Slow(lib.AsyncBaseTransport):  # type: ignore[misc, name-defined]
        calls = 0

        async def handle_async_request(self, request: Any) -> Any:
            Slow.calls += 1
            if Slow.calls == 2:
                sending.set()
                await anyio.sleep(30)
            return lib.Response(200, json=OK)

    async def main() -> None:
        transport = mr.AsyncRateLimitTransport(Slow(), config=cfg, limiter=lim)
        with anyio.fail_after(10):
            async with lib.AsyncClient(transport=transport, base_url="https://x") as client:
                await client.post("/v1/conversations", json=BODY)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(partial(client.post, "/v1/conversations", json=BODY))
                    await sending.wait()
                    assert lim.stats().in_flight == 1
                    tg.cancel_scope.cancel()
                r = await client.post("/v1/conversations", json=BODY)  # the slot came back
                assert r.status_code == 200

    anyio.run(main)
    stats = lim.stats()
    assert tally.admitted == 2
    assert stats.in_flight == 0
    assert stats.requests_admitted == 3


def test_an_admitted_request_whose_response_cannot_be_read_gives_everything_back(
    lib_name: str, tally: Tally
) -> None:
    lib, mr = LIBS[lib_name]

    class Broken:
        headers: ClassVar[dict[str, str]] = {}
        closed = False

        @property
        def status_code(self) -> int:
            raise RuntimeError("a broken inner transport")

        def close(self) -> None:
            Broken.closed = True

    replies: list[Any] = [lib.Response(200, json=OK), Broken()]

    class Inner(lib.BaseTransport):  # type: ignore[misc, name-defined]
        def handle_request(self, request: Any) -> Any:
            return replies.pop(0)

    cfg = config()
    lim = RateLimiter(cfg)
    transport = mr.RateLimitTransport(Inner(), config=cfg, limiter=lim)
    request = lib.Request("POST", "https://x/v1/conversations", json=BODY)
    transport.handle_request(request)
    with pytest.raises(RuntimeError, match="broken inner transport"):
        transport.handle_request(lib.Request("POST", "https://x/v1/conversations", json=BODY))
    assert tally.admitted == 1 and tally.taken_up == 1
    assert Broken.closed
    assert lim.stats().in_flight == 0


def _spent_then_idle(lim: RateLimiter, clock: FakeClock) -> None:
    res = lim.grant_now(100.0)
    assert res is not None
    lim.settle(res, 1900.0)
    lim.release(res)
    clock.advance(120)  # the window is empty again, though nothing has pruned it yet


def _nearly_full(lim: RateLimiter, clock: FakeClock) -> None:
    res = lim.grant_now(1500.0)
    assert res is not None
    lim.release(res)


@pytest.mark.parametrize(
    ("windows", "prepare"),
    [
        ([Limit(2000, 60.0, "tokens")], lambda lim, clock: None),
        ([Limit(2000, 60.0, "tokens")], _spent_then_idle),
        ([Limit(2000, 60.0, "tokens")], _nearly_full),
        ([Limit(10, 1.0, "requests")], lambda lim, clock: None),  # no window counts tokens
    ],
    ids=["ample", "spent-then-idle", "nearly-full", "no-token-window"],
)
def test_both_lanes_choose_alike_between_the_cheap_bound_and_an_exact_count(
    windows: list[Limit], prepare: Callable[[RateLimiter, FakeClock], None]
) -> None:
    count_tokens("loaded")
    body = json.dumps(
        {"inputs": "word " * 20, "model": "m", "completion_args": {"max_tokens": 64}}
    ).encode()
    view = RequestView("POST", "/v1/conversations", {}, body, True)
    chosen = []
    for lane in ("full", "express"):
        clock = FakeClock()
        cfg = RatelimitConfig(api_key="k", requests_per_second=None, tokens_per_minute=None)
        lim = RateLimiter(cfg, limits=windows, clock=clock)
        prepare(lim, clock)
        lc = Lifecycle(lim, Estimator.from_config(cfg), cfg)
        lc._estimates = 5  # not one sampled for an exact count
        if lane == "full":
            est = lc.estimate(view)
        else:
            admitted = lc.admit(view)
            # Declined: the full path estimates it, and counts it exactly.
            est = admitted.estimate if admitted is not None else lc.estimate(view)
        chosen.append((est.total, est.exact))
    assert chosen[0] == chosen[1]


class LeavesLateThen500:
    """Answers the warm-up, then sends late (a cold connection), says so through the trace
    hook, and answers 500: the full lifecycle takes the express lane's attempt up."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.calls = 0

    def handle_request(self, request: Any) -> Any:
        self.calls += 1
        if self.calls > 1:
            time.sleep(0.05)
            trace = request.extensions.get("trace")
            if trace is not None:
                trace("http11.send_request_body.complete", {})
            return self.lib.Response(500, json={"object": "error", "message": "boom"})
        return self.lib.Response(200, json=OK)


def test_a_late_departure_is_not_reported_as_time_spent_waiting(
    lib_name: str, tally: Tally
) -> None:
    lib, mr = LIBS[lib_name]
    cfg = config()
    lim = RateLimiter(cfg)
    inner = type("Inner", (LeavesLateThen500, lib.BaseTransport), {})(lib)
    with lib.Client(
        transport=mr.RateLimitTransport(inner, config=cfg, limiter=lim), base_url="https://x"
    ) as client:
        client.post("/v1/conversations", json=BODY)
        response = client.post("/v1/conversations", json=BODY)
    assert response.status_code == 500
    assert tally.taken_up == 1
    assert lim._s["anchored"] == 1  # counted from when it left...
    assert response.extensions["mistral_ratelimit"] == {"attempts": 1, "waited": 0.0}


@pytest.mark.parametrize("path", ["/v1/conversations", "/v1/embeddings"])
@pytest.mark.parametrize("why", ["declined by the express lane", "counted exactly"])
def test_estimates_that_are_never_sent_leave_nothing_to_learn_behind(
    lib_name: str, path: str, why: str
) -> None:
    lib, mr = LIBS[lib_name]
    count_tokens("loaded")
    cfg = config(tokens_per_minute=None if why == "declined by the express lane" else 3000)
    lim = RateLimiter(cfg)
    transport = mr.RateLimitTransport(
        lib.MockTransport(lambda req: lib.Response(200, json={"usage": USAGE})),
        config=cfg,
        limiter=lim,
    )
    body = {"input": ["hello"], "model": "mistral-embed"} if "embeddings" in path else BODY
    with lib.Client(transport=transport, base_url="https://x") as client:
        for _ in range(50):
            if why == "declined by the express lane":
                lim._paused_until = lim.now() + 1e-6  # too short to wait for, enough to decline
            client.post(path, json=body)
    assert lim.stats().requests_admitted == 50
    assert len(transport.estimator._pending) == 0


def test_requests_that_end_without_usage_leave_nothing_to_learn_behind(lib_name: str) -> None:
    """Counted exactly (a tight token window), then answered 429 and handed back, or
    cancelled while waiting for the budget: no response will ever claim their estimates."""
    lib, mr = LIBS[lib_name]
    count_tokens("loaded")
    cfg = config(tokens_per_minute=3000, max_retries=0)
    lim = RateLimiter(cfg)
    refused = mr.RateLimitTransport(
        lib.MockTransport(lambda req: lib.Response(429, json=RATE_LIMITED)),
        config=cfg,
        limiter=lim,
    )
    with lib.Client(transport=refused, base_url="https://x") as client:
        for _ in range(20):
            lim._paused_until = lim.now()  # no pause to wait for: only the answer counts
            assert client.post("/v1/conversations", json=BODY).status_code == 429
    assert len(refused.estimator._pending) == 0

    slow_cfg = config(requests_per_second=1, tokens_per_minute=3000)
    slow = mr.AsyncRateLimitTransport(
        lib.MockTransport(lambda req: lib.Response(200, json=OK)),
        config=slow_cfg,
        limiter=RateLimiter(slow_cfg),
    )

    async def cancelled_while_waiting() -> None:
        async with lib.AsyncClient(transport=slow, base_url="https://x") as client:
            await client.post("/v1/conversations", json=BODY)  # spends this second
            for _ in range(20):
                with anyio.move_on_after(0.005):
                    await client.post("/v1/conversations", json=BODY)

    anyio.run(cancelled_while_waiting)
    assert len(slow.estimator._pending) == 0


def test_successes_without_rate_limit_headers_stay_in_the_lane(
    lib_name: str, tally: Tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server (or a proxy) that sends no rate-limit headers: once its first success has
    been read, the next ones are not read again until the interval is over."""
    monkeypatch.setattr(lifecycle, "LIMITS_READ_INTERVAL", 3600.0)
    *responses, stats = sync_run(lib_name, [ok], n=40)  # ok() sends no such headers
    assert all(r.status_code == 200 for r in responses)
    assert tally.full == 1  # the first, read for discovery (and sampled)
    assert tally.taken_up == 0
    assert tally.admitted == 40
    assert stats.in_flight == 0
