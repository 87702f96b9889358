"""Estimator behaviour: endpoints, streams, reserves, history, images, correction, limits."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mistral_ratelimit.accounting import request, tokenizer
from mistral_ratelimit.accounting.correction import MAX_FACTOR, MIN_OBSERVATIONS
from mistral_ratelimit.accounting.images import MAX_IMAGE_TOKENS, grid_tokens, image_url_tokens
from mistral_ratelimit.accounting.request import EXACT_TEXT_BUDGET, Estimator, route
from mistral_ratelimit.accounting.tokenizer import count_tokens
from mistral_ratelimit.accounting.types import Usage
from mistral_ratelimit.config import RatelimitConfig

CORPUS = Path(__file__).parent / "corpus"


def corpus() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in ("sdk_bodies.json", "handmade.json", "random.json"):
        out.extend(json.loads((CORPUS / name).read_text(encoding="utf-8")))
    return out


def body(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


@pytest.fixture
def fresh_tokenizer() -> Iterator[None]:
    tokenizer._reset_for_tests()
    yield
    tokenizer._reset_for_tests()


@pytest.mark.parametrize(
    ("method", "path", "endpoint", "conversation"),
    [
        ("POST", "/v1/conversations", "conversations.start", None),
        ("POST", "/v1/conversations/conv_1", "conversations.append", "conv_1"),
        ("POST", "/v1/conversations/conv_1/", "conversations.append", "conv_1"),
        ("POST", "/v1/conversations/conv_1/restart", "conversations.restart", "conv_1"),
        ("POST", "/proxy/mistral/v1/conversations/c2/restart", "conversations.restart", "c2"),
        ("post", "/v1/chat/completions", "chat", None),
        ("POST", "/v1/fim/completions", "fim", None),
        ("POST", "/v1/agents/completions", "agents.completions", None),
        ("POST", "/v1/embeddings", "embeddings", None),
        ("POST", "/v1/ocr", "ocr", None),
        ("POST", "/v1/moderations", "no_usage", None),
        ("POST", "/v1/chat/moderations", "no_usage", None),
        ("POST", "/v1/classifications", "no_usage", None),
        ("POST", "/v1/chat/classifications", "no_usage", None),
        ("POST", "/v1/agents", "other", None),
        ("POST", "/v1/files", "other", None),
        ("GET", "/v1/conversations/conv_1", "read", None),
        ("DELETE", "/v1/conversations/conv_1", "read", None),
        ("GET", "/v1/models", "read", None),
    ],
)
def test_route(method: str, path: str, endpoint: str, conversation: str | None) -> None:
    assert route(method, path) == (endpoint, conversation)


def test_stream_from_body_or_accept_header() -> None:
    e = Estimator()
    plain = body({"inputs": "hi", "stream": False})
    assert not e.estimate("POST", "/v1/conversations", plain).stream
    assert e.estimate("POST", "/v1/conversations", body({"inputs": "hi", "stream": True})).stream
    sse = "text/event-stream"
    for exact in (True, False):
        for headers in (
            {"ACCEPT": "Text/Event-Stream"},
            {"accept": sse},
            {"User-Agent": "x", "Accept": sse},
            httpx.Headers({"Accept": sse}),
            httpx.Headers([("accept", "application/json"), ("accept", sse)]),
        ):
            assert e.estimate("POST", "/v1/conversations", plain, headers, exact=exact).stream
            assert e.estimate("POST", "/v1/chat/completions", b"{}", headers, exact=exact).stream
        for headers in ({"Accept": "application/json"}, httpx.Headers({"user-agent": sse}), {}):
            assert not e.estimate("POST", "/v1/conversations", plain, headers, exact=exact).stream


def test_completion_reserve() -> None:
    e = Estimator(default_max_tokens=777)
    start = e.estimate(
        "POST", "/v1/conversations", body({"inputs": "hi", "completion_args": {"max_tokens": 64}})
    )
    assert start.completion_tokens == 64
    assert e.estimate("POST", "/v1/conversations", body({"inputs": "hi"})).completion_tokens == 777
    bad = body({"inputs": "hi", "completion_args": {"max_tokens": "lots"}})
    assert e.estimate("POST", "/v1/conversations", bad).completion_tokens == 777
    chat = body({"messages": [{"role": "user", "content": "x"}], "max_tokens": 50, "n": 3})
    assert e.estimate("POST", "/v1/chat/completions", chat).completion_tokens == 150
    assert e.estimate("POST", "/v1/embeddings", body({"input": ["a"]})).completion_tokens == 0
    assert e.estimate("GET", "/v1/models", None).total == 0


def test_from_config() -> None:
    config = RatelimitConfig(api_key="k", default_max_tokens=10, unknown_history_tokens=500)
    e = Estimator.from_config(config)
    est = e.estimate("POST", "/v1/conversations/c", body({"inputs": "hi"}))
    assert est.completion_tokens == 10
    assert est.prompt_tokens >= 500


def test_history_tracked_from_usage() -> None:
    e = Estimator(unknown_history_tokens=2048)
    start_body = body({"inputs": "Tell me about Lyon.", "model": "mistral-medium-latest"})
    start = e.estimate("POST", "/v1/conversations", start_body)
    assert start.conversation_id is None and start.exact
    e.observe(start, Usage(prompt_tokens=12, completion_tokens=300, total_tokens=312), "conv_a")

    append_body = body({"inputs": "And Marseille?"})
    text_only = Estimator(unknown_history_tokens=0).estimate(
        "POST", "/v1/conversations/x", append_body
    )
    append = e.estimate("POST", "/v1/conversations/conv_a", append_body)
    assert append.conversation_id == "conv_a"
    assert append.prompt_tokens == 312 + text_only.prompt_tokens
    assert append.model == "mistral-medium-latest"  # remembered from the start
    e.observe(append, Usage(prompt_tokens=330, completion_tokens=70, total_tokens=400), "conv_a")
    assert (
        e.estimate("POST", "/v1/conversations/conv_a", append_body).prompt_tokens
        == 400 + text_only.prompt_tokens
    )


def test_unknown_history_is_never_empty() -> None:
    e = Estimator(unknown_history_tokens=2048)
    restart = e.estimate(
        "POST", "/v1/conversations/zzz/restart", body({"from_entry_id": "m", "inputs": "again"})
    )
    assert restart.prompt_tokens > 2048
    assert not restart.exact


def test_history_is_bounded_lru() -> None:
    e = Estimator(unknown_history_tokens=5000, history_size=2)
    for cid in ("a", "b", "c"):
        est = e.estimate("POST", f"/v1/conversations/{cid}", body({"inputs": "x"}))
        e.observe(est, Usage(100, 10, 110), cid)
    assert len(e.history) == 2
    assert e.history.get("a") is None
    assert e.history.get("c") is not None and e.history.get("c").tokens == 110  # type: ignore[union-attr]


def test_observe_without_usage_keeps_an_upper_bound() -> None:
    e = Estimator()
    est = e.estimate(
        "POST", "/v1/conversations", body({"inputs": "hi", "completion_args": {"max_tokens": 20}})
    )
    e.observe(est, None, "conv_x")
    state = e.history.get("conv_x")
    assert state is not None and state.tokens == est.total


def _png(width: int, height: int, extra: int = 0) -> str:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = (
        struct.pack(">I", len(ihdr))
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    )
    raw = b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * extra
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def test_image_costs_its_grid_not_its_base64() -> None:
    e = Estimator()
    url = _png(640, 480, extra=300_000)  # a 400 KB data URL
    with_image = e.estimate(
        "POST",
        "/v1/chat/completions",
        body(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]}
        ),
    )
    without = e.estimate(
        "POST", "/v1/chat/completions", body({"messages": [{"role": "user", "content": []}]})
    )
    assert with_image.prompt_tokens - without.prompt_tokens == grid_tokens(640, 480) == 41 * 30
    assert with_image.exact


@pytest.mark.parametrize(
    "value",
    [
        "https://example.com/cat.png",
        "data:image/png;base64,!!!!",
        "data:",
        "",
        None,
        42,
        {"url": 7},
        "bm90IGFuIGltYWdl",
    ],
)
def test_unreadable_image_costs_the_largest_grid(value: Any) -> None:
    tokens, exact = image_url_tokens(value)
    assert tokens == MAX_IMAGE_TOKENS and not exact


def test_huge_image_is_scaled_like_the_encoder() -> None:
    tokens, exact = image_url_tokens(_png(8000, 100))
    assert exact and 0 < tokens <= MAX_IMAGE_TOKENS
    assert tokens == grid_tokens(1024, 13)


def test_text_and_tool_calls_in_one_assistant_turn_count_both() -> None:
    e = Estimator(unknown_history_tokens=0)
    text = "Let me check the weather for you in Paris."
    call = {
        "type": "function.call",
        "tool_call_id": "c1",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    out = {"type": "message.output", "content": text}
    both = e.estimate(
        "POST",
        "/v1/conversations",
        body({"inputs": [{"role": "user", "content": "hi"}, out, call]}),
    )
    only_call = e.estimate(
        "POST", "/v1/conversations", body({"inputs": [{"role": "user", "content": "hi"}, call]})
    )
    assert both.prompt_tokens >= only_call.prompt_tokens + count_tokens(text)


def test_cheap_mode_never_under_counts() -> None:
    e = Estimator()
    for case in corpus():
        raw = case["body"].encode()
        exact = e.estimate(case["method"], case["path"], raw)
        cheap = e.estimate(case["method"], case["path"], raw, exact=False)
        assert cheap.prompt_tokens >= exact.prompt_tokens, case["name"]
        assert not cheap.exact
        assert (
            cheap.endpoint == exact.endpoint and cheap.completion_tokens == exact.completion_tokens
        )


def test_big_text_spills_to_the_cheap_bound() -> None:
    e = Estimator()
    text = "word " * (EXACT_TEXT_BUDGET // 5 + 1000)
    est = e.estimate(
        "POST", "/v1/chat/completions", body({"messages": [{"role": "user", "content": text}]})
    )
    assert not est.exact
    assert est.prompt_tokens >= len(text.encode())


def test_fifty_megabyte_body_is_estimated() -> None:
    e = Estimator()
    raw = b'{"inputs": "' + b"a" * (50 * 1024 * 1024) + b'"}'
    est = e.estimate("POST", "/v1/conversations", raw)
    assert est.prompt_tokens >= 50 * 1024 * 1024 and not est.exact
    garbage = b"\xff" * (50 * 1024 * 1024)
    assert e.estimate("POST", "/v1/conversations", garbage).prompt_tokens > 0


def test_bodies_too_big_to_walk_are_bounded_from_their_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    turns = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]
    text_only = body({"model": "mistral-x", "max_tokens": 77, "messages": turns * 150_000})
    images = [{"image_url": 0}] * (request.MAX_WALKED_VALUES + 1)
    with_images = body({"messages": [{"role": "user", "content": images}]})
    many_strings = body({"x": ["ab"] * 2_000_000})
    # Not parsed at all: reading 300 000 messages took seconds.
    monkeypatch.setattr(request.json, "loads", lambda *_: pytest.fail("parsed"))
    e = Estimator()
    for exact in (True, False):
        est = e.estimate("POST", "/v1/chat/completions", text_only, exact=exact)
        # Text only: its bytes bound it. Its cap is not read: the default is reserved.
        assert len(text_only) <= est.prompt_tokens <= len(text_only) + 16
        assert est.completion_tokens == e.default_max_tokens
        est = e.estimate("POST", "/v1/chat/completions", with_images, exact=exact)
        assert est.prompt_tokens >= len(images) * MAX_IMAGE_TOKENS
        est = e.estimate("POST", "/v1/unknown", many_strings, exact=exact)
        assert est.prompt_tokens >= 2_000_000 and not est.exact  # was cut at 1 000 000 strings
    assert e.failures == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"not json",
        b"--boundary\r\nContent-Disposition: form-data; name=file\r\n\r\nxx",
        b"[1, 2, 3]",
        b"null",
        b'"just a string"',
        b"\xff\xfe",
    ],
)
def test_odd_bodies(raw: bytes) -> None:
    e = Estimator()
    for path in ("/v1/conversations", "/v1/files", "/v1/embeddings"):
        est = e.estimate("POST", path, raw)
        assert est.prompt_tokens >= 0 and est.completion_tokens >= 0


def test_unreadable_streaming_body_assumes_a_typical_prompt() -> None:
    e = Estimator(unknown_history_tokens=900, default_max_tokens=100)
    est = e.estimate("POST", "/v1/chat/completions", None)
    assert est.prompt_tokens == 900 and est.completion_tokens == 100 and not est.exact
    assert e.estimate("POST", "/v1/files", None).total == 0


def test_unknown_json_counts_its_strings() -> None:
    e = Estimator()
    est = e.estimate(
        "POST",
        "/v1/agents",
        body({"name": "travel agent", "instructions": "Plan trips in Europe."}),
    )
    assert est.endpoint == "other"
    assert est.prompt_tokens == 1 + count_tokens("travel agent") + count_tokens(
        "Plan trips in Europe."
    )


def test_correction_learns_and_is_bounded() -> None:
    e = Estimator()
    raw = body({"inputs": "x " * 200, "model": "m1"})
    base = e.estimate("POST", "/v1/conversations", raw)
    for _ in range(MIN_OBSERVATIONS - 1):
        est = e.estimate("POST", "/v1/conversations", raw)
        e.observe(est, Usage(int(base.prompt_tokens * 1.2), 1, 0), None)
    # Not applied before enough observations.
    assert e.estimate("POST", "/v1/conversations", raw).prompt_tokens == base.prompt_tokens
    for _ in range(20):
        est = e.estimate("POST", "/v1/conversations", raw)
        e.observe(est, Usage(int(base.prompt_tokens * 1.2), 1, 0), None)
    learnt = e.estimate("POST", "/v1/conversations", raw).prompt_tokens
    assert abs(learnt - base.prompt_tokens * 1.2) <= base.prompt_tokens * 0.02
    # One wild outlier cannot swing it far.
    est = e.estimate("POST", "/v1/conversations", raw)
    e.observe(est, Usage(base.prompt_tokens * 100, 1, 0), None)
    after = e.estimate("POST", "/v1/conversations", raw).prompt_tokens
    assert after <= learnt * 1.06
    # Other models are untouched.
    other = e.estimate("POST", "/v1/conversations", body({"inputs": "x " * 200, "model": "m2"}))
    assert other.prompt_tokens == base.prompt_tokens
    # And the factor never leaves its bounds.
    for _ in range(100):
        est = e.estimate("POST", "/v1/conversations", raw)
        e.observe(est, Usage(base.prompt_tokens * 100, 1, 0), None)
    assert (
        e.estimate("POST", "/v1/conversations", raw).prompt_tokens
        <= base.prompt_tokens * MAX_FACTOR + 1
    )


def test_error_stats() -> None:
    e = Estimator()
    assert e.error_stats()["count"] == 0
    raw = body({"inputs": "hello there", "model": "m"})
    for actual_delta in (0, 0, 1, 5):
        est = e.estimate("POST", "/v1/conversations", raw)
        e.observe(est, Usage(est.prompt_tokens + actual_delta, 1, 0), None)
    stats = e.error_stats()
    assert stats["count"] == 4
    assert stats["mean"] < 0  # estimates were low
    assert stats["p95_abs_tokens"] == 5
    assert 0 < stats["p95_abs"] < 1
    # Cheap-bound estimates over-count by design and are reported apart.
    cheap = e.estimate("POST", "/v1/conversations", raw, exact=False)
    e.observe(cheap, Usage(cheap.prompt_tokens // 3, 1, 0), None)
    after = e.error_stats()
    assert after["count"] == 4 and after["mean"] == stats["mean"]
    assert after["cheap_count"] == 1 and after["cheap_mean"] > 1


def test_forced_cost_does_not_feed_error_figures() -> None:
    # As the lifecycle builds one for a cost in the request's extensions.
    e = Estimator()
    base = e.estimate("POST", "/v1/conversations", None, exact=False)
    forced = dataclasses.replace(base, prompt_tokens=777, completion_tokens=0, exact=True)
    e.observe(forced, Usage(10, 1, 0), None)
    stats = e.error_stats()
    assert stats["count"] == 0 and stats["cheap_count"] == 0


def test_observe_never_raises() -> None:
    e = Estimator()
    est = e.estimate("POST", "/v1/conversations", b"{}")
    e.observe(est, Usage(-5, -1, 0), "c")
    e.observe(est, None, None)
    e.observe(object(), object(), 12)  # type: ignore[arg-type]


def test_concurrent_estimates_and_observations() -> None:
    e = Estimator(history_size=50)
    cases = corpus()[:60]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i, case in enumerate(cases):
                est = e.estimate(case["method"], case["path"], case["body"].encode())
                e.observe(est, Usage(est.prompt_tokens + 1, 3, 0), f"conv_{(i + offset) % 80}")
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(e.history) <= 50
    assert e.error_stats()["count"] == 4 * len(cases)


def test_estimates_offline(fresh_tokenizer: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Reference counts first, with the network available.
    cases = [c for c in corpus() if c["name"].startswith("sdk ")]
    expected = [Estimator().estimate(c["method"], c["path"], c["body"].encode()) for c in cases]
    tokenizer._reset_for_tests()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    offline = [Estimator().estimate(c["method"], c["path"], c["body"].encode()) for c in cases]
    assert tokenizer.tokenizer_info()["source"] == "tekken"
    assert offline == expected
    assert any(est.exact and est.prompt_tokens > 10 for est in offline)


def test_fallback_tokenizer_still_estimates(
    fresh_tokenizer: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = corpus()[:40]
    exact = [Estimator().estimate(c["method"], c["path"], c["body"].encode()) for c in cases]
    tokenizer._reset_for_tests()
    monkeypatch.setattr(tokenizer, "VOCAB_RESOURCE", "missing.vocab.z")
    fallback = [Estimator().estimate(c["method"], c["path"], c["body"].encode()) for c in cases]
    for a, b in zip(exact, fallback, strict=True):
        assert b.prompt_tokens >= a.prompt_tokens
        assert not b.exact or b.endpoint == "read"


def test_agent_overhead_is_learnt_additively() -> None:
    # An agent's instructions and tools live on the server: a constant the body never shows.
    e = Estimator()
    hidden = 600
    short = body({"inputs": "hello", "agent_id": "ag_1"})
    long = body({"inputs": "hello " * 300, "agent_id": "ag_1"})
    base_short = e.estimate("POST", "/v1/conversations", short).prompt_tokens
    base_long = e.estimate("POST", "/v1/conversations", long).prompt_tokens
    for i in range(30):
        est = e.estimate("POST", "/v1/conversations", short if i % 2 else long)
        raw = base_short if i % 2 else base_long
        e.observe(est, Usage(raw + hidden, 5, 0), f"conv_{i}")
    assert (
        abs(e.estimate("POST", "/v1/conversations", short).prompt_tokens - (base_short + hidden))
        <= 2
    )
    assert (
        abs(e.estimate("POST", "/v1/conversations", long).prompt_tokens - (base_long + hidden)) <= 2
    )
    # A different agent, and plain models, are untouched.
    other = e.estimate("POST", "/v1/conversations", body({"inputs": "hello", "agent_id": "ag_2"}))
    assert other.prompt_tokens == base_short
    assert e.correction.factors()["agent:ag_1"] == pytest.approx(hidden, abs=2)


def test_cheap_bounds_stay_above_corrected_estimates() -> None:
    # Digits cost a token a byte, so a learnt factor above 1 would lift the exact estimate
    # above the bytes; an agent's learnt overhead is not in the body at all.
    e = Estimator()
    digits = body({"inputs": "7" * 3000, "model": "m"})
    agent = body({"inputs": "hello", "agent_id": "ag_1"})
    for _ in range(30):
        for raw, extra in ((digits, 3000), (agent, 1000)):
            est = e.estimate("POST", "/v1/conversations", raw)
            e.observe(est, Usage(est.prompt_tokens + extra, 1, 0), None)
    for raw in (digits, agent):
        exact = e.estimate("POST", "/v1/conversations", raw)
        cheap = e.estimate("POST", "/v1/conversations", raw, exact=False)
        assert exact.prompt_tokens > len(raw)  # the correction raised it past the bytes
        assert cheap.prompt_tokens >= exact.prompt_tokens
