"""Replies over real sockets are deterministic: the same request body gets the same reply,
from the same emulator and from another one, streamed or not, and tool calls carry
arguments taken from the tool's schema and the user's words."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from emulator_helpers import parse_sse, start_body
from mistral_ratelimit.emulator import Emulator

pytestmark = pytest.mark.realclock

LIMITS: dict[str, Any] = {"requests_per_second": 1000, "tokens_per_minute": 5_000_000}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
BODIES = {
    "text": start_body("Tell me about sliding windows and why they keep a budget."),
    "entries": start_body(
        [
            {"type": "message.input", "role": "user", "content": "First, a word on tokens."},
            {"type": "message.input", "role": "user", "content": "Then one on requests."},
        ],
        instructions="Be brief.",
    ),
    "tool": start_body(
        "What is the weather in Paris? Use the get_weather tool.",
        tools=[WEATHER_TOOL],
        completion_args={"tool_choice": "any"},
    ),
}


@pytest.fixture(scope="module")
def clients() -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with (
        Emulator(**LIMITS) as one,
        Emulator(**LIMITS) as two,
        httpx.Client(base_url=one.url, timeout=10) as a,
        httpx.Client(base_url=two.url, timeout=10) as b,
    ):
        yield a, b


def _reply(response: httpx.Response) -> dict[str, Any]:
    """What the model said: the output without its server-made id and timestamps."""
    assert response.status_code == 200, response.text
    body = response.json()
    (output,) = body["outputs"]
    fields = ("type", "role", "content", "name", "arguments", "tool_call_id")
    return {"output": {k: output[k] for k in fields if k in output}, "usage": body["usage"]}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_the_same_body_gets_the_same_reply_twice_and_on_another_emulator(
    clients: tuple[httpx.Client, httpx.Client], name: str
) -> None:
    a, b = clients
    body = BODIES[name]
    first = _reply(a.post("/v1/conversations", json=body))
    assert first == _reply(a.post("/v1/conversations", json=body))
    assert first == _reply(b.post("/v1/conversations", json=body))
    assert first["usage"]["completion_tokens"] > 0


def test_different_content_gets_a_different_reply(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    a, _ = clients
    # So that the equality above means something: the text does depend on the content.
    one = _reply(a.post("/v1/conversations", json=start_body("Tell me about sliding windows.")))
    two = _reply(a.post("/v1/conversations", json=start_body("Tell me about fixed windows.")))
    assert one["output"]["content"] != two["output"]["content"]


def test_a_stream_says_what_the_json_reply_says(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    a, b = clients
    body = BODIES["text"]
    expected = _reply(a.post("/v1/conversations", json=body))
    for client in (a, b):
        with client.stream("POST", "/v1/conversations", json={**body, "stream": True}) as r:
            events = parse_sse(r.read().decode().splitlines())
        text = "".join(d["content"] for name, d in events if name == "message.output.delta")
        assert text == expected["output"]["content"]
        assert events[-1][1]["usage"] == expected["usage"]


def test_appends_to_equal_conversations_get_equal_replies(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    replies = []
    for client in clients:
        cid = client.post("/v1/conversations", json=BODIES["text"]).json()["conversation_id"]
        appended = client.post(f"/v1/conversations/{cid}", json={"inputs": "And a fixed one?"})
        replies.append(_reply(appended))
    assert replies[0] == replies[1]


def test_a_tool_call_takes_its_arguments_from_the_user_text(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    a, _ = clients
    call = _reply(a.post("/v1/conversations", json=BODIES["tool"]))["output"]
    assert call["type"] == "function.call"
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    rome = start_body(
        "call get_weather for Rome", tools=[WEATHER_TOOL], completion_args={"tool_choice": "any"}
    )
    call = _reply(a.post("/v1/conversations", json=rome))["output"]
    assert json.loads(call["arguments"]) == {"city": "Rome"}
