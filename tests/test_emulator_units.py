"""The emulator's pure parts: window algorithms on a hand-moved clock, replies, faults."""

from __future__ import annotations

import json

import pytest

from mistral_ratelimit.config import Limit
from mistral_ratelimit.emulator.arguments import call_arguments
from mistral_ratelimit.emulator.faults import Fault, FaultPlan, FaultRule
from mistral_ratelimit.emulator.limits import (
    FixedWindow,
    LimitSet,
    Rung,
    SlidingLog,
    TokenBucket,
    make_window,
)
from mistral_ratelimit.emulator.replies import ReplyShape, exact_answer, generate
from mistral_ratelimit.emulator.settings import EmulatorConfig
from mistral_ratelimit.emulator.tokens import count_text, prompt_tokens

T0 = 5_000.0


def _admit_all(window: SlidingLog | FixedWindow | TokenBucket, times: list[float]) -> list[float]:
    out = []
    for t in times:
        if window.fits(t, 1):
            window.charge(t, 1)
            out.append(t)
    return out


def _max_in_any_window(times: list[float], per: float) -> int:
    return max(sum(1 for u in times if t - per < u <= t) for t in times)


@pytest.mark.parametrize("amount,per", [(5, 1.0), (20, 1.0), (3, 0.5)])
def test_sliding_log_never_exceeds_in_any_window(amount: int, per: float) -> None:
    times = [T0 + i * 0.013 for i in range(2000)]  # far faster than the limit
    admitted = _admit_all(SlidingLog(amount, per), times)
    assert _max_in_any_window(admitted, per) == amount
    # ... and it is not lazier than needed: a full window admitted every `per` seconds.
    span = times[-1] - times[0]
    assert len(admitted) >= amount * int(span / per)


def test_fixed_window_resets_at_boundaries_and_can_double_across_one() -> None:
    w = FixedWindow(10, 1.0, origin=T0)
    late = [T0 + 0.9 + i * 0.001 for i in range(20)]
    early = [T0 + 1.0 + i * 0.001 for i in range(20)]
    admitted = _admit_all(w, late + early)
    assert len(admitted) == 20  # 10 just before the boundary, 10 just after
    assert _max_in_any_window(admitted, 1.0) == 20
    assert w.wait_for(T0 + 1.5, 1) == pytest.approx(0.5)


def test_token_bucket_bursts_then_paces() -> None:
    b = TokenBucket(10, 1.0, now=T0)
    burst = _admit_all(b, [T0] * 15)
    assert len(burst) == 10
    assert b.wait_for(T0, 1) == pytest.approx(0.1)
    assert not b.fits(T0 + 0.05, 1)
    assert b.fits(T0 + 0.1, 1)


def test_refund_restores_room_and_ignores_expired_charges() -> None:
    for algo in ("sliding", "fixed", "bucket"):
        w = make_window(algo, 10, 1.0, T0)  # type: ignore[arg-type]
        c = w.charge(T0, 10)
        assert not w.fits(T0 + 0.01, 1)
        w.refund(T0 + 0.01, c)
        assert w.fits(T0 + 0.01, 10), algo
    s = SlidingLog(10, 1.0)
    c = s.charge(T0, 10)
    s.charge(T0 + 1.5, 4)
    s.refund(T0 + 1.6, c)  # already expired: must not free room it no longer holds
    assert s.used(T0 + 1.6) == 4


def test_output_charged_after_the_fact_can_overdraw_and_delays_the_next() -> None:
    s = SlidingLog(100, 60.0)
    assert s.fits(T0, 90)
    s.charge(T0, 90)
    s.charge(T0 + 1, 50)  # output tokens: billed even though over the amount
    assert s.used(T0 + 2) == 140
    assert s.wait_for(T0 + 2, 10) == pytest.approx(58.0)


def test_limit_set_is_all_or_nothing_and_names_the_refusing_rung() -> None:
    rps = Rung("requests_per_second", "requests", SlidingLog(2, 1.0))
    rpm = Rung("requests_per_minute", "requests", SlidingLog(3, 60.0), "minute")
    limits = LimitSet([rps, rpm])
    for i in range(2):
        charges, refusal = limits.admit(T0 + i * 0.1, "requests", 1)
        assert refusal is None and len(charges) == 2
    _, refusal = limits.admit(T0 + 0.3, "requests", 1)
    assert refusal is not None and refusal.rung == "requests_per_second"
    assert rpm.window.used(T0 + 0.3) == 2  # the refused request charged nothing anywhere
    limits.admit(T0 + 1.5, "requests", 1)
    _, refusal = limits.admit(T0 + 3.0, "requests", 1)
    assert refusal is not None and refusal.rung == "requests_per_minute"
    assert refusal.retry_after == pytest.approx(57.0)
    assert limits.header_values(T0 + 3.0) == {
        "x-ratelimit-limit-req-minute": 3,
        "x-ratelimit-remaining-req-minute": 0,
    }


def test_config_builds_rungs_like_the_client_reads_rps() -> None:
    cfg = EmulatorConfig(
        requests_per_second=2.5,
        tokens_per_minute=1000,
        tokens_per_month=10**6,
        limits=[(500, 10, "tokens"), Limit(7, 2, "requests")],
    )
    limits = cfg.build_limits(T0)
    by_name = {r.name: r for r in limits.rungs}
    assert by_name["requests_per_second"].amount == 2
    assert by_name["requests_per_second"].window.per_seconds == pytest.approx(0.8)
    assert {"tokens_per_minute", "tokens_per_month", "500/10s:tokens", "7/2s:requests"} <= set(
        by_name
    )
    headers = limits.header_values(T0)
    assert headers["x-ratelimit-limit-req-minute"] == 150  # reported per minute
    assert headers["x-ratelimit-limit-tokens-month"] == 10**6
    assert EmulatorConfig(requests_per_minute=0).zero_limit
    with pytest.raises(ValueError, match="algorithm"):
        EmulatorConfig(algorithm="leaky")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_concurrency"):
        EmulatorConfig(max_concurrency=0)
    assert "secret" not in repr(EmulatorConfig(api_key="secret"))


def test_prompt_tokens_add_template_overhead_to_text() -> None:
    text = "Bonjour, combien de jetons ici ?"
    entry = {"type": "message.input", "role": "user", "content": text}
    plain = count_text(text)
    assert plain > 0
    assert prompt_tokens([entry]) == 1 + plain + 2  # BOS + [INST] .. [/INST]
    with_sys = prompt_tokens([entry], instructions="be brief")
    assert with_sys == prompt_tokens([entry]) + count_text("be brief") + 2
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert prompt_tokens([entry], tools=tools) > prompt_tokens([entry])
    chunks = {"type": "message.input", "content": [{"type": "text", "text": text}]}
    assert prompt_tokens([chunks]) == prompt_tokens([entry])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Please reply with exactly: PONG", "PONG"),
        ('REPLY WITH EXACTLY "two words"', "two words"),
        ("reply with exactly 42\nand nothing else", "42"),
        ("nothing to see", None),
    ],
)
def test_exact_answer(text: str, expected: str | None) -> None:
    assert exact_answer([text]) == expected


def _msg(text: str) -> dict[str, object]:
    return {"type": "message.input", "role": "user", "content": text}


def test_replies_are_deterministic_follow_the_input_and_respect_max_tokens() -> None:
    short = generate(inputs=[_msg("hi")], input_tokens=4)
    again = generate(inputs=[_msg("hi")], input_tokens=4)
    assert short == again
    long = generate(inputs=[_msg("x " * 200)], input_tokens=200)
    assert long.completion_tokens > short.completion_tokens
    assert long.completion_tokens == count_text(long.text)
    assert sum(long.chunk_tokens) == long.completion_tokens
    capped = generate(
        inputs=[_msg("x " * 200)], input_tokens=200, completion_args={"max_tokens": 5}
    )
    assert 0 < capped.completion_tokens <= 5
    shaped = generate(inputs=[_msg("hi")], input_tokens=4, shape=ReplyShape(min_tokens=40, ratio=0))
    assert shaped.completion_tokens >= 40
    assert generate(inputs=[_msg("hi")], input_tokens=4, seed=1).text != short.text


def test_exact_reply_from_instructions_and_its_chunks() -> None:
    r = generate(inputs=[_msg("hello")], input_tokens=3, instructions="Reply with exactly: a b  c")
    assert r.text == "a b  c"
    assert len(r.chunks) == 3
    assert r.completion_tokens == count_text("a b  c")


def test_function_call_when_a_tool_is_named() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            },
        },
    }
    call = generate(inputs=[_msg("use get_weather please")], input_tokens=5, tools=[tool])
    assert call.kind == "function_call" and call.name == "get_weather"
    args = json.loads(call.text)
    assert set(args) == {"city", "unit"} and args["unit"] == "C"
    assert call.tool_call_id and len(call.tool_call_id) == 9
    plain = generate(inputs=[_msg("just chat")], input_tokens=3, tools=[tool])
    assert plain.kind == "message"
    forced = generate(
        inputs=[_msg("just chat")],
        input_tokens=3,
        tools=[tool],
        completion_args={"tool_choice": "any"},
    )
    assert forced.kind == "function_call"
    after = generate(
        inputs=[{"type": "function.result", "tool_call_id": "x", "result": "21"}],
        input_tokens=3,
        tools=[tool],
        completion_args={"tool_choice": "any"},
    )
    assert after.kind == "message"


def test_the_seed_is_the_content_not_the_server_ids() -> None:
    entry = {**_msg("tell me about windows"), "id": "msg_1", "created_at": "2026-01-01"}
    moved = {**entry, "id": "msg_2", "created_at": "2026-02-02"}
    assert generate(inputs=[entry], input_tokens=5) == generate(inputs=[moved], input_tokens=5)
    base = generate(inputs=[entry], input_tokens=5)
    for other in (
        {"inputs": [_msg("tell me about buckets")]},
        {"inputs": [entry], "model": "mistral-large-latest"},
        {"inputs": [entry], "instructions": "Be brief."},
        {"inputs": [entry], "history": [_msg("before")]},
        {"inputs": [entry], "completion_args": {"random_seed": 7}},
    ):
        assert generate(input_tokens=5, **other).text != base.text, other  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "properties,texts,expected",
    [
        ({"city": {"type": "string"}}, ["What is the weather in Paris?"], {"city": "Paris"}),
        (
            {"city": {"type": "string"}, "country": {"type": "string"}},
            ["Is it raining in New York, United States?"],
            {"city": "New York", "country": "United States"},
        ),
        (
            {"city": {"type": "string"}, "days": {"type": "integer"}},
            ["get_weather for Rome over the next 3 days"],
            {"city": "Rome", "days": 3},
        ),
        (
            {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            ["Temperature in Fahrenheit please"],
            {"unit": "fahrenheit"},
        ),
        (
            {"query": {"type": "string"}, "limit": {"type": "integer", "default": 10}},
            ['search for "sliding windows"'],
            {"query": "sliding windows", "limit": 10},
        ),
        ({"city": {"type": "string"}}, ["city: Lyon. Not Paris!"], {"city": "Lyon"}),
        (
            {"where": {"type": "object", "properties": {"city": {"type": "string"}}}},
            ["Book a table in Madrid"],
            {"where": {"city": "Madrid"}},
        ),
        (
            {"tags": {"type": "array", "items": {"type": "string"}}},
            ["tag it Urgent"],
            {"tags": ["Urgent"]},
        ),
        (
            {"city": {"type": "string", "default": "Oslo"}},
            ["what is the weather"],
            {"city": "Oslo"},
        ),
        ({"city": {"type": "string"}}, ["what is the weather"], {"city": "weather"}),
        ({"ok": {"type": "boolean"}, "n": {"type": "number"}}, ["go"], {"ok": True, "n": 1}),
    ],
)
def test_call_arguments_follow_the_schema_and_the_user_text(
    properties: dict[str, object], texts: list[str], expected: dict[str, object]
) -> None:
    schema = {"type": "object", "properties": properties}
    assert call_arguments(schema, texts, "get_weather") == expected


def test_fault_plan_queue_every_nth_and_probability() -> None:
    plan = FaultPlan([FaultRule(Fault("server_error", status=502), every=3)], seed=7)
    picks = [plan.pick(generation=True, stream=False) for _ in range(9)]
    assert [p.status if p else None for p in picks] == [None, None, 502] * 3
    assert plan.pick(generation=False, stream=False) is None  # generation_only rule

    queue = FaultPlan()
    queue.push("capacity")
    assert queue.pick(generation=False, stream=False) is None  # queued faults wait
    picked = queue.pick(generation=True, stream=False)
    assert picked is not None and picked.kind == "capacity"

    queue.push(Fault("stream_cut"))
    assert queue.pick(generation=True, stream=False) is None  # not a stream: kept
    assert queue.pending() == 1
    picked = queue.pick(generation=True, stream=True)
    assert picked is not None and picked.kind == "stream_cut"
    assert queue.pending() == 0

    rng_plan = FaultPlan([FaultRule(Fault("capacity"), probability=0.25)], seed=1)
    hits = sum(rng_plan.pick(generation=True, stream=False) is not None for _ in range(4000))
    assert 800 < hits < 1200
    with pytest.raises(ValueError):
        Fault("server_error", status=404)
    with pytest.raises(ValueError):
        FaultRule(Fault("capacity"), probability=2)


def test_request_log_bound_drops_the_oldest() -> None:
    from mistral_ratelimit.emulator.log import RequestLog, RequestRecord

    log = RequestLog(max_records=3)
    for i in range(5):
        rec = log.open(RequestRecord(float(i), float(i), "GET", f"/v1/{i}", admitted=True))
        log.charge(rec, float(i), prompt=10)
    assert [r.path for r in log] == ["/v1/2", "/v1/3", "/v1/4"]
    assert log.tokens_between(0, 10) == 50  # charges are kept longer (4x) than records
    assert log.max_in_window(1.5) == 2


def test_request_log_counts_arrivals_and_travels_between_processes() -> None:
    import pickle

    from mistral_ratelimit.emulator.log import RequestLog, RequestRecord

    log = RequestLog()
    for t, admitted in ((0.0, True), (0.2, False), (0.4, True), (0.6, False), (2.0, True)):
        log.open(RequestRecord(t, t, "POST", "/v1/conversations", admitted=admitted))
    assert log.max_in_window(1.0) == 2  # what the server let through
    assert log.max_in_window(1.0, arrivals=True) == 4  # what the client sent
    copy = pickle.loads(pickle.dumps(log))
    assert copy.snapshot() == log.snapshot()
    assert copy.max_in_window(1.0, arrivals=True) == 4
