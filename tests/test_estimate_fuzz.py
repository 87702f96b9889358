"""The estimator never raises: arbitrary bytes, arbitrary JSON, wrong types in every field."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mistral_ratelimit.accounting.request import Estimator
from mistral_ratelimit.accounting.types import Estimate, Usage

PATHS = [
    "/v1/conversations",
    "/v1/conversations/conv_1",
    "/v1/conversations/conv_1/restart",
    "/v1/chat/completions",
    "/v1/fim/completions",
    "/v1/agents/completions",
    "/v1/embeddings",
    "/v1/ocr",
    "/v1/moderations",
    "/v1/unknown",
]
ESTIMATOR = Estimator()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)

# A realistic body for each endpoint; the fuzzer replaces one field (at any depth) with junk.
TEMPLATES: list[tuple[str, dict[str, Any]]] = [
    (
        "/v1/conversations",
        {
            "inputs": [
                {
                    "type": "message.input",
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "hi"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        },
                    ],
                },
                {"type": "function.call", "tool_call_id": "c", "name": "f", "arguments": {"a": 1}},
                {"type": "function.result", "tool_call_id": "c", "result": "r"},
                {
                    "type": "message.output",
                    "content": [{"type": "thinking", "thinking": [{"type": "text", "text": "t"}]}],
                },
                {"type": "tool.execution", "name": "web_search", "arguments": "{}", "info": {}},
                {"type": "agent.handoff", "previous_agent_name": "a", "next_agent_name": "b"},
            ],
            "instructions": "be brief",
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
                },
                {"type": "web_search"},
            ],
            "completion_args": {
                "max_tokens": 10,
                "response_format": {"type": "json_schema", "json_schema": {"schema": {}}},
                "prediction": {"type": "content", "content": "p"},
            },
            "model": "m",
            "stream": False,
        },
    ),
    (
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "abc", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "abc", "content": "r"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "max_tokens": 5,
            "n": 2,
        },
    ),
    ("/v1/fim/completions", {"model": "c", "prompt": "p", "suffix": "s", "max_tokens": 3}),
    ("/v1/embeddings", {"model": "e", "input": ["a", "b"]}),
    (
        "/v1/ocr",
        {"model": "o", "document": {"type": "image_url", "image_url": "data:image/png;base64,xx"}},
    ),
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return copy


def check(estimate: Estimate) -> None:
    assert isinstance(estimate, Estimate)
    assert estimate.prompt_tokens >= 0 and estimate.completion_tokens >= 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=2000),
    st.sampled_from(PATHS),
    st.sampled_from(["POST", "GET", "PUT", "x"]),
    st.booleans(),
)
def test_arbitrary_bytes(raw: bytes, path: str, method: str, exact: bool) -> None:
    check(ESTIMATOR.estimate(method, path, raw, {"accept": "*/*"}, exact=exact))


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from(PATHS), st.booleans())
def test_arbitrary_json(value: Any, path: str, exact: bool) -> None:
    raw = json.dumps(value).encode()
    estimator = Estimator()
    est = estimator.estimate("POST", path, raw, exact=exact)
    check(est)
    assert estimator.failures == 0
    estimator.observe(est, Usage(est.prompt_tokens, 1, 0), "conv_1")


@settings(max_examples=500, deadline=None)
@given(st.data(), json_values, st.booleans())
def test_wrong_type_in_any_field(data: st.DataObject, junk: Any, exact: bool) -> None:
    path, template = data.draw(st.sampled_from(TEMPLATES))
    field = data.draw(st.sampled_from(_paths(template)))
    raw = json.dumps(_replace(template, field, junk)).encode()
    estimator = Estimator()
    check(estimator.estimate("POST", path, raw, exact=exact))
    # The readers handle wrong types themselves; the catch-all fallback is not needed.
    assert estimator.failures == 0


@settings(max_examples=50, deadline=None)
@given(
    st.text(max_size=200),
    st.sampled_from(PATHS),
    st.dictionaries(st.text(max_size=12), st.text(max_size=30), max_size=4),
)
def test_odd_paths_and_headers(path: str, known: str, headers: dict[str, str]) -> None:
    check(ESTIMATOR.estimate("POST", known + path, b'{"inputs": "x"}', headers))
    check(ESTIMATOR.estimate(path, path, None, headers))


def test_deep_nesting() -> None:
    for depth in (100, 10_000, 200_000):
        for raw in ("[" * depth + "]" * depth, '{"inputs": ' + "[" * depth + "]" * depth + "}"):
            check(ESTIMATOR.estimate("POST", "/v1/conversations", raw.encode()))
    for depth in (400, 5_000):  # deep but parseable, or beyond json's own recursion limit
        nested = '{"content": [' * depth + '"leaf"' + "]}" * depth
        for path in ("/v1/unknown", "/v1/chat/completions", "/v1/moderations"):
            raw = '{"messages": [' + nested + '], "input": ' + nested + "}"
            check(ESTIMATOR.estimate("POST", path, raw.encode()))


def test_huge_bodies() -> None:
    many = {"inputs": [{"type": "message.input", "role": "user", "content": "hi"}] * 100_000}
    check(ESTIMATOR.estimate("POST", "/v1/conversations", json.dumps(many).encode()))
    wide = {"messages": [{"role": "user", "content": [{"type": "text", "text": "é"}] * 200_000}]}
    check(ESTIMATOR.estimate("POST", "/v1/chat/completions", json.dumps(wide).encode()))
