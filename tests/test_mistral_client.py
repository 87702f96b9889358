"""MistralRatelimitClient over mock inner transports: construction, delegation, closing,
errors. Runs on whichever mistralai line is installed (3.x in .venv, 2.x in .venv-sdk2)."""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from mistral_ratelimit import (
    BudgetExhausted,
    MissingApiKey,
    MistralRatelimitClient,
    RatelimitConfig,
    RateLimiter,
    RequestTooLarge,
)
from mistral_ratelimit.loop_local import LoopLocalAsyncTransport
from mistral_ratelimit.sdk import detect_sdk_line, is_loopback_url

pytestmark = pytest.mark.sdk

LINE = detect_sdk_line()
http: Any = LINE.http
SDKError = LINE.sdk_error_class
LOCAL = "http://127.0.0.1:9"  # never connected to: every test here has a mock inner transport
SECRET = "sk-very-secret-value-123"
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
RATE_LIMITED = {
    "object": "error",
    "message": "Rate limit exceeded",
    "type": "rate_limited",
    "param": None,
    "code": "1300",
    "raw_status_code": 429,
}
FAST = dict(requests_per_second=1000, tokens_per_minute=10_000_000, base_delay=0.01, max_delay=0.02)


def conversation_response(cid: str = "conv_1") -> dict[str, Any]:
    return {
        "object": "conversation.response",
        "conversation_id": cid,
        "outputs": [
            {
                "object": "entry",
                "type": "message.output",
                "role": "assistant",
                "content": "Paris",
                "id": "msg_1",
                "created_at": "2025-01-01T00:00:00Z",
                "completed_at": "2025-01-01T00:00:01Z",
            }
        ],
        "usage": USAGE,
    }


class Recorder:
    """A mock inner transport (sync and async) that records what reached it."""

    def __init__(self, reply: Callable[[Any], Any] | None = None) -> None:
        self.requests: list[Any] = []
        self._reply = reply or (lambda _req: http.Response(200, json=conversation_response()))
        self.sync = http.MockTransport(self._handle)
        self.async_ = http.MockTransport(self._ahandle)

    def _handle(self, request: Any) -> Any:
        self.requests.append(request)
        return self._reply(request)

    async def _ahandle(self, request: Any) -> Any:
        return self._handle(request)


def make_client(rec: Recorder, **kw: Any) -> MistralRatelimitClient:
    fields: dict[str, Any] = {"server_url": LOCAL, **FAST}
    fields.update(kw)
    return MistralRatelimitClient(transport=rec.sync, async_transport=rec.async_, **fields)


# -- construction ------------------------------------------------------------------------
def test_fields_as_keywords_or_a_config_object() -> None:
    rec = Recorder()
    a = make_client(rec, requests_per_second=7, max_retries=5)
    assert a.config.requests_per_second == 7
    assert a.config.max_retries == 5
    cfg = RatelimitConfig(requests_per_second=3, tokens_per_minute=1234, api_key="k")
    b = MistralRatelimitClient(cfg, server_url=LOCAL, transport=rec.sync)
    assert b.config is cfg
    c = MistralRatelimitClient(cfg, server_url=LOCAL, max_retries=0, transport=rec.sync)
    assert (c.config.max_retries, c.config.tokens_per_minute) == (0, 1234)  # keywords win
    with pytest.raises(TypeError):
        MistralRatelimitClient(server_url=LOCAL, no_such_field=1)
    for client in (a, b, c):
        client.close()


def test_detected_line_matches_the_installed_sdk() -> None:
    import importlib.metadata

    version = importlib.metadata.version("mistralai")
    assert LINE.version == version
    assert LINE.major == int(version.split(".")[0])
    expected_http = "httpx2" if LINE.major >= 3 else "httpx"
    assert LINE.http_name == expected_http
    with make_client(Recorder()) as client:
        assert isinstance(client.sdk, LINE.mistral_class)
        assert type(client.http_client).__module__.startswith(expected_http)
        assert type(client.async_http_client).__module__.startswith(expected_http)


def test_sdk_retries_are_switched_off_explicitly() -> None:
    with make_client(Recorder()) as client:
        retry = client.sdk.sdk_configuration.retry_config
        assert isinstance(retry, LINE.retry_config_class)
        assert retry.strategy == "none"


def test_server_url_server_and_timeout_ms_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    with make_client(rec, timeout_ms=4321) as client:
        client.beta.conversations.start(inputs="hi", model="m")
    req = rec.requests[-1]
    assert str(req.url).startswith(LOCAL + "/v1/conversations")
    assert req.extensions["timeout"]["read"] == pytest.approx(4.321)

    monkeypatch.setenv("MISTRAL_API_KEY", SECRET)
    with MistralRatelimitClient(server="eu", transport=rec.sync, **FAST) as eu:
        eu.beta.conversations.start(inputs="hi", model="m")
    servers = importlib.import_module(f"{LINE.package}.sdkconfiguration").SERVERS
    assert str(rec.requests[-1].url).startswith(servers["eu"])  # 1.x: api.mistral.ai
    if LINE.major >= 2:
        assert rec.requests[-1].url.host == "api.eu.mistral.ai"
    assert rec.requests[-1].headers["authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize("timeout", [7.5, 60.0], ids=["other", "equal-to-the-default"])
def test_an_explicit_timeout_becomes_the_per_request_timeout(timeout: float) -> None:
    rec = Recorder()
    with make_client(rec, timeout=timeout) as client:
        client.beta.conversations.start(inputs="hi", model="m")
    assert rec.requests[-1].extensions["timeout"]["read"] == pytest.approx(timeout)


def test_a_timeout_from_the_environment_is_explicit_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_RATELIMIT_TIMEOUT", "60")
    rec = Recorder()
    with make_client(rec) as client:
        client.beta.conversations.start(inputs="hi", model="m")
    assert rec.requests[-1].extensions["timeout"]["read"] == pytest.approx(60.0)


@pytest.mark.skipif(LINE.major < 2, reason="1.x sends no per-request timeout by default")
def test_without_a_timeout_the_sdks_own_default_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISTRAL_RATELIMIT_TIMEOUT", raising=False)
    rec = Recorder()
    with make_client(rec) as client:
        client.beta.conversations.start(inputs="hi", model="m")
    assert rec.requests[-1].extensions["timeout"]["read"] == pytest.approx(300.0)  # 2.5+, 3.x


# -- the SDK, as it is -------------------------------------------------------------------
def test_every_sdk_attribute_is_reached_through_delegation() -> None:
    with make_client(Recorder()) as client:
        assert client.beta is client.sdk.beta
        assert client.beta.conversations is client.sdk.beta.conversations
        assert client.chat is client.sdk.chat
        for name in ("beta", "chat", "agents", "models", "files"):
            assert name in dir(client)
        # Whatever the SDK has, the client has: a name this package never heard of too.
        client.sdk.added_in_a_future_release = object()
        assert client.added_in_a_future_release is client.sdk.added_in_a_future_release
        with pytest.raises(AttributeError):
            _ = client.no_such_namespace


def test_repr_hides_the_key() -> None:
    with make_client(Recorder(), api_key=SECRET) as client:
        text = repr(client)
        assert SECRET not in text
        assert "***" in text
        assert LINE.version in text


def test_loopback_detection() -> None:
    for url in (
        "http://127.0.0.1:8787",
        "http://localhost:1",
        "http://[::1]:80",
        "http://127.1.2.3",
    ):
        assert is_loopback_url(url), url
    for url in (None, "", "https://api.mistral.ai", "http://10.0.0.1", "http://localhost.evil.com"):
        assert not is_loopback_url(url), url


# -- errors users can act on -------------------------------------------------------------
def test_missing_key_names_the_variable_for_the_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    for kwargs in ({}, {"server": "eu"}, {"server_url": "https://api.mistral.ai"}):
        with pytest.raises(MissingApiKey, match="MISTRAL_API_KEY"):
            MistralRatelimitClient(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_key_is_a_missing_key(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    with pytest.raises(MissingApiKey, match="MISTRAL_API_KEY"):
        MistralRatelimitClient(api_key=blank)
    monkeypatch.setenv("MISTRAL_API_KEY", blank)
    with pytest.raises(MissingApiKey, match="MISTRAL_API_KEY"):
        MistralRatelimitClient()


def test_no_key_is_needed_for_a_local_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    rec = Recorder()
    with make_client(rec) as client:
        client.beta.conversations.start(inputs="hi", model="m")
    assert rec.requests[0].headers["authorization"].startswith("Bearer ")


def test_exhausted_retries_raise_the_sdk_error_with_a_note() -> None:
    rec = Recorder(lambda _req: http.Response(429, json=RATE_LIMITED))
    with make_client(rec, max_retries=2) as client, pytest.raises(SDKError) as info:
        client.beta.conversations.start(inputs="hi", model="m")
    err = info.value
    assert err.status_code == 429
    assert "Rate limit exceeded" in str(err)
    notes = " ".join(getattr(err, "__notes__", [])) or str(err)
    assert "3 attempts" in notes
    assert "waited" in notes
    # Our retries only: the SDK's own loop would multiply the attempts.
    assert len(rec.requests) == 3
    assert err.raw_response.extensions["mistral_ratelimit"]["attempts"] == 3


def test_exhausted_retries_note_on_async_and_stream_calls() -> None:
    rec = Recorder(lambda _req: http.Response(429, json=RATE_LIMITED))

    async def main(client: MistralRatelimitClient) -> list[BaseException]:
        errors: list[BaseException] = []
        for call in (
            lambda: client.beta.conversations.start_async(inputs="hi", model="m"),
            lambda: client.beta.conversations.start_stream_async(inputs="hi", model="m"),
        ):
            try:
                await call()
            except SDKError as exc:
                errors.append(exc)
        return errors

    with make_client(rec, max_retries=1) as client:
        errors = asyncio.run(main(client))
        with pytest.raises(SDKError) as info:
            client.beta.conversations.start_stream(inputs="hi", model="m")
        errors.append(info.value)
    assert len(errors) == 3
    for err in errors:
        assert "2 attempts" in " ".join(getattr(err, "__notes__", [])) or "2 attempts" in str(err)
    assert len(rec.requests) == 6


def test_other_client_errors_are_left_as_the_sdk_raises_them() -> None:
    rec = Recorder(lambda _req: http.Response(401, json={"message": "Unauthorized"}))
    with make_client(rec) as client, pytest.raises(SDKError) as info:
        client.beta.conversations.start(inputs="hi", model="m")
    assert info.value.status_code == 401
    assert not getattr(info.value, "__notes__", None)
    assert len(rec.requests) == 1


def test_a_request_larger_than_the_budget_names_the_numbers() -> None:
    rec = Recorder()
    with make_client(rec, tokens_per_minute=500) as client, pytest.raises(RequestTooLarge) as info:
        client.beta.conversations.start(
            inputs="hi", model="m", completion_args={"max_tokens": 2000}
        )
    assert info.value.limit_amount == 500
    assert info.value.estimate > 2000
    assert "500" in str(info.value) and "tokens" in str(info.value)
    assert rec.requests == []  # refused before anything was sent


def test_a_bad_per_request_option_reaches_the_sdk_caller_as_it_is() -> None:
    # Options set on the SDK's requests (here by an httpx request hook, as a user might)
    # are checked by the transport; the SDK's after_error hooks hand the ValueError on.
    rec = Recorder()

    def options(request: Any) -> None:
        request.extensions["mistral_ratelimit"] = {"cost": -5}

    async def aoptions(request: Any) -> None:
        options(request)

    with make_client(rec) as client:
        client.http_client.event_hooks["request"].append(options)
        client.async_http_client.event_hooks["request"].append(aoptions)
        with pytest.raises(ValueError, match=r'\["cost"\] .* got int -5'):
            client.beta.conversations.start(inputs="hi", model="m")
        with pytest.raises(ValueError, match=r'\["cost"\] .* got int -5'):
            asyncio.run(client.beta.conversations.start_async(inputs="hi", model="m"))
        stats = client.stats()
    assert rec.requests == []
    assert (stats.requests_admitted, stats.tokens_reserved, stats.in_flight) == (0, 0, 0)


def test_a_spent_monthly_budget_fails_fast() -> None:
    big = {**USAGE, "prompt_tokens": 2900, "total_tokens": 2905}
    rec = Recorder(lambda _req: http.Response(200, json={**conversation_response(), "usage": big}))
    with make_client(rec, tokens_per_month=3000, default_max_tokens=100) as client:
        client.beta.conversations.start(inputs="hi", model="m")  # settles to 2905 tokens
        with pytest.raises(BudgetExhausted, match="3,000"):
            client.beta.conversations.start(inputs="hi", model="m")
    assert len(rec.requests) == 1


# -- one budget, both clients closed --------------------------------------------------------
def test_sync_and_async_calls_share_one_limiter_and_estimator() -> None:
    rec = Recorder()
    with make_client(rec) as client:
        sync_t = client.http_client._transport
        async_t = client.async_http_client._transport
        assert sync_t.limiter is async_t.limiter is client.limiter
        assert sync_t.estimator is async_t.estimator is client.estimator
        client.beta.conversations.start(inputs="hi", model="m")
        asyncio.run(client.beta.conversations.start_async(inputs="hi", model="m"))
        assert client.stats().requests_admitted == 2
        assert client.stats() == client.limiter.stats()


def test_a_given_limiter_is_shared_between_clients() -> None:
    limiter = RateLimiter(RatelimitConfig(requests_per_second=1000, api_key="k"))
    rec = Recorder()
    with make_client(rec, limiter=limiter) as a, make_client(rec, limiter=limiter) as b:
        a.beta.conversations.start(inputs="hi", model="m")
        b.beta.conversations.start(inputs="hi", model="m")
        assert a.limiter is b.limiter is limiter
    assert limiter.stats().requests_admitted == 2


def _both_closed(client: MistralRatelimitClient) -> bool:
    return bool(client.http_client.is_closed and client.async_http_client.is_closed)


def test_with_closes_both_http_clients() -> None:
    with make_client(Recorder()) as client:
        assert not client.http_client.is_closed
    assert _both_closed(client)


def test_async_with_closes_both_http_clients() -> None:
    async def main() -> MistralRatelimitClient:
        async with make_client(Recorder()) as client:
            await client.beta.conversations.start_async(inputs="hi", model="m")
        return client

    assert _both_closed(asyncio.run(main()))


def test_close_and_aclose_close_both_and_are_idempotent() -> None:
    a = make_client(Recorder())
    a.close()
    a.close()
    assert _both_closed(a)
    b = make_client(Recorder())
    asyncio.run(b.aclose())
    asyncio.run(b.aclose())
    assert _both_closed(b)


def test_sync_close_inside_a_running_loop_does_not_block() -> None:
    async def main() -> MistralRatelimitClient:
        client = make_client(Recorder())
        with client:  # sync exit from async code
            await client.beta.conversations.start_async(inputs="hi", model="m")
        await asyncio.sleep(0)  # the close task runs on this loop
        return client

    assert _both_closed(asyncio.run(main()))


def test_closing_also_when_the_body_raised() -> None:
    rec = Recorder(lambda _req: http.Response(429, json=RATE_LIMITED))
    with pytest.raises(SDKError), make_client(rec, max_retries=0) as client:
        client.beta.conversations.start(inputs="hi", model="m")
    assert _both_closed(client)


def test_default_async_transport_keeps_one_pool_per_event_loop() -> None:
    created: list[Any] = []

    def factory() -> Any:
        created.append(http.MockTransport(_ok_async))
        return created[-1]

    async def _ok_async(_req: Any) -> Any:
        return http.Response(200, json=conversation_response())

    loop_local = LoopLocalAsyncTransport(factory)
    client = MistralRatelimitClient(server_url=LOCAL, async_transport=loop_local, **FAST)

    async def two_calls() -> None:
        for _ in range(2):
            await client.beta.conversations.start_async(inputs="hi", model="m")

    asyncio.run(two_calls())
    assert len(created) == 1  # the same pool within one loop
    asyncio.run(two_calls())
    assert len(created) == 2  # a fresh pool for the next loop
    client.close()


def test_request_body_reaches_the_server_unchanged() -> None:
    rec = Recorder()
    with make_client(rec) as client:
        client.beta.conversations.start(
            inputs="What is the capital of France?",
            model="mistral-small-latest",
            completion_args={"max_tokens": 64},
        )
    body = json.loads(rec.requests[0].content)
    assert body["inputs"] == "What is the capital of France?"
    assert body["completion_args"] == {"max_tokens": 64}


def test_the_note_hook_leaves_an_error_it_cannot_rebuild() -> None:
    from mistral_ratelimit.sdk import RetryNoteHook

    class OddError(Exception):
        def __init__(self, status_code: int) -> None:  # not the (message, response, body) shape
            super().__init__(status_code)

    response = http.Response(429, json=RATE_LIMITED)
    response.extensions["mistral_ratelimit"] = {"attempts": 2, "waited": 1.0}
    hook = RetryNoteHook(OddError)
    assert hook.after_error(None, response, None) == (response, None)
    result, err = RetryNoteHook(SDKError).after_error(None, response, None)
    assert result is None and isinstance(err, SDKError)
