"""The real mistralai SDK (3.x in .venv, 2.x in .venv-sdk2) through MistralRatelimitClient
against the emulator on 127.0.0.1: every Conversations and Agents method, sync and async,
streaming and not; which transport and limiter each path used; one budget for threads and
tasks, measured at the server; a client reused across ``asyncio.run()`` calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from mistral_ratelimit import MistralRatelimitClient, RatelimitConfig, RateLimiter
from mistral_ratelimit.emulator import Emulator, EmulatorProcess, Fault
from mistral_ratelimit.loop_local import LoopLocalAsyncTransport
from mistral_ratelimit.sdk import detect_sdk_line

pytestmark = pytest.mark.sdk

LINE = detect_sdk_line()
http: Any = LINE.http
MODEL = "mistral-small-latest"
HIGH = {"requests_per_second": 1000, "tokens_per_minute": 10_000_000}


class SpySync:
    """An inner sync transport that records each request, then sends it for real."""

    def __init__(self) -> None:
        self.inner = http.HTTPTransport()
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def handle_request(self, request: Any) -> Any:
        with self._lock:
            self.seen.append((request.method, request.url.path))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class SpyAsync:
    def __init__(self) -> None:
        self.inner = LoopLocalAsyncTransport(http.AsyncHTTPTransport)
        self.seen: list[tuple[str, str]] = []

    async def handle_async_request(self, request: Any) -> Any:
        self.seen.append((request.method, request.url.path))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(**HIGH) as server:
        yield server


@pytest.fixture
def server(emu: Emulator) -> Emulator:
    emu.reset()
    return emu


def client_for(
    emu: Emulator | EmulatorProcess, **kw: Any
) -> tuple[MistralRatelimitClient, SpySync, SpyAsync]:
    spy, aspy = SpySync(), SpyAsync()
    fields: dict[str, Any] = {**HIGH, **kw}
    client = MistralRatelimitClient(
        server_url=emu.url, transport=spy, async_transport=aspy, **fields
    )
    return client, spy, aspy


# -- a caller that is sync or async, behind one awaitable interface ------------------------
Call = Callable[..., Awaitable[Any]]


def caller(client: MistralRatelimitClient, mode: str) -> tuple[Call, Call]:
    """``call("beta.conversations.start", **kw)`` and ``stream(...)`` -> event names."""

    def resolve(dotted: str) -> Any:
        target: Any = client
        for part in dotted.split("."):
            target = getattr(target, part)
        return target

    async def call(dotted: str, **kw: Any) -> Any:
        if mode == "async":
            return await resolve(dotted + "_async")(**kw)
        return resolve(dotted)(**kw)

    async def stream(dotted: str, **kw: Any) -> list[str]:
        if mode == "async":
            events = await resolve(dotted + "_async")(**kw)
            async with events:
                return [e.event async for e in events]
        with resolve(dotted)(**kw) as events:
            return [e.event for e in events]

    return call, stream


async def every_conversation_method(call: Call, stream: Call) -> dict[str, Any]:
    """Each of the issue's Conversations methods once; returns what each gave back."""
    out: dict[str, Any] = {}
    conv = "beta.conversations"
    r = await call(
        f"{conv}.start",
        inputs="What is the capital of France?",
        model=MODEL,
        instructions="Answer in one word.",
        completion_args={"max_tokens": 32, "temperature": 0.0},
    )
    out["start"] = r
    cid = r.conversation_id
    out["append"] = await call(f"{conv}.append", conversation_id=cid, inputs="And of Italy?")
    out["start_stream"] = await stream(f"{conv}.start_stream", inputs="Stream me", model=MODEL)
    out["append_stream"] = await stream(f"{conv}.append_stream", conversation_id=cid, inputs="More")
    out["get"] = await call(f"{conv}.get", conversation_id=cid)
    history = await call(f"{conv}.get_history", conversation_id=cid)
    out["get_history"] = history
    out["get_messages"] = await call(f"{conv}.get_messages", conversation_id=cid)
    out["list"] = await call(f"{conv}.list")
    first_entry = history.entries[0].id
    out["restart"] = await call(
        f"{conv}.restart", conversation_id=cid, from_entry_id=first_entry, inputs="Again"
    )
    out["restart_stream"] = await stream(
        f"{conv}.restart_stream", conversation_id=cid, from_entry_id=first_entry, inputs="Again"
    )
    await call(f"{conv}.delete", conversation_id=cid)
    out["cid"] = cid
    return out


async def every_agent_method(call: Call, stream: Call) -> dict[str, Any]:
    out: dict[str, Any] = {}
    agents = "beta.agents"
    agent = await call(f"{agents}.create", model=MODEL, name="helper", instructions="Be brief.")
    out["create"] = agent
    out["list"] = await call(f"{agents}.list")
    out["get"] = await call(f"{agents}.get", agent_id=agent.id)
    out["update"] = await call(f"{agents}.update", agent_id=agent.id, name="renamed")
    out["start_with_agent"] = await call(
        "beta.conversations.start", inputs="Hello agent", agent_id=agent.id
    )
    await call(f"{agents}.delete", agent_id=agent.id)
    return out


def run_in(mode: str, client: MistralRatelimitClient, scenario: Any) -> dict[str, Any]:
    call, stream = caller(client, mode)
    result: dict[str, Any] = asyncio.run(scenario(call, stream))
    return result


# -- every method, sync and async, streaming and not ------------------------------------------
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_conversations_method(server: Emulator, mode: str) -> None:
    client, spy, aspy = client_for(server)
    with client:
        out = run_in(mode, client, every_conversation_method)
        stats = client.stats()
    assert out["start"].usage.total_tokens > 0
    assert out["append"].conversation_id == out["cid"]
    assert out["get"].id == out["cid"]
    assert len(out["get_history"].entries) >= 4
    assert len(out["get_messages"].messages) >= 4
    assert any(c.id == out["cid"] for c in out["list"])
    assert out["restart"].conversation_id != out["cid"]
    for name in ("start_stream", "append_stream", "restart_stream"):
        assert out[name][0] == "conversation.response.started", name
        assert out[name][-1] == "conversation.response.done", name
        assert "message.output.delta" in out[name], name
    # 11 calls, each went through the transport of its own kind and nothing else.
    used, unused = (spy, aspy) if mode == "sync" else (aspy, spy)
    assert len(used.seen) == 11
    assert unused.seen == []
    assert ("POST", "/v1/conversations") in used.seen
    assert ("DELETE", f"/v1/conversations/{out['cid']}") in used.seen
    # ...and through the one limiter, settled to what the server reported.
    assert stats.requests_admitted == 11
    assert stats.in_flight == 0
    assert server.log.count(429) == 0
    generated = [r for r in server.log if r.method == "POST"]
    assert len(generated) == 6
    assert all(r.admitted for r in generated)


@pytest.mark.filterwarnings("ignore:.*list_pages:DeprecationWarning")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_agents_method(server: Emulator, mode: str) -> None:
    client, spy, aspy = client_for(server)
    with client:
        out = run_in(mode, client, every_agent_method)
        stats = client.stats()
    agent = out["create"]
    assert agent.name == "helper"
    assert any(a.id == agent.id for a in out["list"])
    assert out["get"].id == agent.id
    assert out["update"].name == "renamed"
    assert out["start_with_agent"].usage.total_tokens > 0
    used, unused = (spy, aspy) if mode == "sync" else (aspy, spy)
    assert len(used.seen) == 6 and unused.seen == []
    assert stats.requests_admitted == 6


def test_sync_and_async_paths_draw_on_one_limiter(server: Emulator) -> None:
    client, spy, aspy = client_for(server)
    with client:
        client.beta.conversations.start(inputs="sync", model=MODEL)
        after_sync = client.stats().requests_admitted

        async def both() -> None:
            await client.beta.conversations.start_async(inputs="async", model=MODEL)
            s = await client.beta.conversations.start_stream_async(inputs="s", model=MODEL)
            async with s:
                [e async for e in s]

        asyncio.run(both())
        final = client.stats()
    assert after_sync == 1
    assert final.requests_admitted == 3
    assert spy.seen == [("POST", "/v1/conversations")]
    assert aspy.seen == [("POST", "/v1/conversations")] * 2
    # Settled: what is left reserved equals what the server charged, not the estimates.
    charged = final.tokens_reserved - final.tokens_refunded + final.tokens_charged
    assert charged == pytest.approx(sum(r.tokens for r in server.log), abs=1)


# -- one budget for threads and tasks, measured at the server --------------------------------
# The server runs in its own process, as a real one does: in this one, the client's threads
# and event loop would hold the GIL while arrivals wait to be stamped (emulator/process.py).
def test_threads_and_tasks_together_stay_within_one_limit() -> None:
    rps, threads, tasks, each = 5, 3, 3, 4
    total = (threads + tasks) * each
    with EmulatorProcess(requests_per_second=rps, tokens_per_minute=10_000_000) as emu:
        client, spy, aspy = client_for(emu, requests_per_second=rps)
        errors: list[BaseException] = []

        def sync_worker() -> None:
            try:
                for i in range(each):
                    client.beta.conversations.start(inputs=f"sync {i}", model=MODEL)
            except BaseException as exc:  # reported below
                errors.append(exc)

        async def async_side() -> None:
            async def one(i: int) -> None:
                await client.beta.conversations.start_async(inputs=f"async {i}", model=MODEL)

            await asyncio.gather(*(one(i) for i in range(tasks * each)))

        with client:
            workers = [threading.Thread(target=sync_worker) for _ in range(threads)]
            for w in workers:
                w.start()
            asyncio.run(async_side())
            for w in workers:
                w.join()
        log = emu.log()
    # Everything that reached the server, refused requests included: no 1 s window held
    # more than the limit, so the server refused nothing and each request went once.
    assert errors == []
    assert log.max_in_window(1.0, arrivals=True) <= rps
    assert log.count(429) == 0
    assert len(log) == len(log.admitted()) == total
    # Each side used its own transport.
    assert len(spy.seen) == threads * each and len(aspy.seen) == tasks * each


def test_a_burst_draws_no_429_at_the_server() -> None:
    rps = 10
    with EmulatorProcess(requests_per_second=rps, tokens_per_minute=10_000_000) as emu:
        client, _, _ = client_for(emu, requests_per_second=rps)

        async def burst() -> None:
            await asyncio.gather(
                *(
                    client.beta.conversations.start_async(inputs=f"b {i}", model=MODEL)
                    for i in range(2 * rps + 1)
                )
            )

        with client:
            asyncio.run(burst())
        log = emu.log()
    assert log.max_in_window(1.0, arrivals=True) <= rps
    assert log.count(429) == 0
    assert len(log) == 2 * rps + 1


def test_a_client_survives_two_asyncio_runs(server: Emulator) -> None:
    client, _spy, aspy = client_for(server)

    async def twice() -> list[int]:
        a = await client.beta.conversations.start_async(inputs="one", model=MODEL)
        b = await client.beta.conversations.start_async(inputs="two", model=MODEL)
        return [a.usage.total_tokens, b.usage.total_tokens]

    with client:
        first = asyncio.run(twice())
        second = asyncio.run(twice())  # pooled connections of the first loop are not reused
    assert min(first + second) > 0
    assert len(aspy.seen) == 4
    assert client.stats().requests_admitted == 4


def test_sdk_429_after_our_retries_carries_the_note() -> None:
    # The server allows 1 request a second; the client believes in 1000 (it learns the 60
    # a minute the server reports, which holds nothing back within one second).
    with Emulator(requests_per_second=1) as emu:
        client, spy, _ = client_for(emu, max_retries=2, base_delay=0.01, max_delay=0.02)
        with client:
            client.beta.conversations.start(inputs="first", model=MODEL)
            with pytest.raises(LINE.sdk_error_class) as info:
                client.beta.conversations.start(inputs="second", model=MODEL)
    err = info.value
    assert err.status_code == 429
    text = " ".join(getattr(err, "__notes__", [])) + str(err)
    assert "3 attempts" in text and "waited" in text
    assert emu.log.count(429) == 3  # the SDK did not add attempts of its own
    assert len(spy.seen) == 4


def _given_up(client: MistralRatelimitClient, mode: str) -> Any:
    """The SDK error of a ``start_stream`` call our retries gave up on (a real socket, so
    the error body is still unread when the SDK's hooks see the response)."""
    conversations = client.beta.conversations

    async def stream_async() -> None:
        async with await conversations.start_stream_async(inputs="hi", model=MODEL) as events:
            async for _ in events:
                pass

    with pytest.raises(LINE.sdk_error_class) as info:
        if mode == "async":
            asyncio.run(stream_async())
        else:
            with conversations.start_stream(inputs="hi", model=MODEL) as events:
                for _ in events:
                    pass
    return info.value


def _note(err: Any) -> str:
    notes = getattr(err, "__notes__", None)
    if notes is None:  # Python 3.10: the note is appended to the SDK's message
        return str(err)[str(err).index("mistral-ratelimit:") :]
    (note,) = notes
    return str(note)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stream_still_429_after_our_retries_carries_the_note(mode: str) -> None:
    # 1 a second at the server; the client believes in 1000 (and learns 60 a minute).
    with Emulator(requests_per_second=1) as emu:
        client, _, _ = client_for(emu, max_retries=2, base_delay=0.01, max_delay=0.02)
        with client:
            client.beta.conversations.start(inputs="first", model=MODEL)
            err = _given_up(client, mode)
    assert err.status_code == 429
    assert "Rate limit" in str(err)  # the SDK's message, with the body, is kept
    note = _note(err)
    assert note.startswith("mistral-ratelimit: gave up after 3 attempts, having waited ")
    assert note.endswith(
        "s in total for the rate limit (raise max_retries or lower your request rate)"
    )
    assert emu.log.count(429) == 3


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("fault", "status", "says"),
    [
        ("capacity", 429, "Mistral had no capacity for this model (code 3505), not your quota"),
        (
            Fault("server_error", status=502),
            502,
            "the server answered 502, a server error, not your quota",
        ),
        ("html_520", 520, "the server answered 520, a server error, not your quota"),
    ],
    ids=["capacity", "502", "520"],
)
def test_the_note_says_why_the_retries_gave_up(
    server: Emulator, mode: str, fault: Any, status: int, says: str
) -> None:
    server.inject(fault, count=2)
    client, _, _ = client_for(
        server, max_retries=1, base_delay=0.01, max_delay=0.02, retry_server_errors=True
    )
    with client:
        err = _given_up(client, mode)
    assert err.status_code == status
    note = _note(err)
    assert note.startswith("mistral-ratelimit: gave up after 2 attempts, having waited ")
    assert says in note
    assert "rate limit" not in note and "request rate" not in note
    assert server.log.count(status) == 2


def test_a_limiter_shared_by_two_clients_and_a_plain_sdk(server: Emulator) -> None:
    limiter = RateLimiter(RatelimitConfig(**HIGH, api_key="k"))
    a, _, _ = client_for(server, limiter=limiter)
    b, _, _ = client_for(server, limiter=limiter)
    with a, b:
        a.beta.conversations.start(inputs="a", model=MODEL)
        asyncio.run(b.beta.conversations.start_async(inputs="b", model=MODEL))
    assert limiter.stats().requests_admitted == 2
    assert len(server.log.admitted()) == 2


def test_history_learnt_by_sync_calls_is_known_to_async_calls(server: Emulator) -> None:
    client, _, _ = client_for(server)
    with client:
        reply = client.beta.conversations.start(inputs="Remember this.", model=MODEL)
        known = client.estimator.history.get(reply.conversation_id)
        assert known is not None  # learnt from the sync response...

        async def append() -> Any:
            return await client.beta.conversations.append_async(
                conversation_id=reply.conversation_id, inputs="What did I say?"
            )

        again = asyncio.run(append())
        grown = client.estimator.history.get(reply.conversation_id)
    # ...and grown by the async one: the same estimator saw both.
    assert grown is not None
    assert again.usage.prompt_tokens > reply.usage.prompt_tokens
    assert grown.tokens > known.tokens


def test_threads_each_running_their_own_event_loop(server: Emulator) -> None:
    client, _, aspy = client_for(server)
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        async def two() -> None:
            for i in range(2):
                await client.beta.conversations.start_async(inputs=f"{n}.{i}", model=MODEL)

        try:
            asyncio.run(two())
        except BaseException as exc:  # reported below
            failures.append(exc)

    with client:
        workers = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert failures == []
    assert len(aspy.seen) == 6
    assert len(server.log.admitted()) == 6
