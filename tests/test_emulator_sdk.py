"""The real mistralai SDK (3.x on httpx2 here, 2.x on httpx under `make test-sdk2`, 1.x by hand) parses
every emulator response: Conversations (JSON and streams), Agents CRUD and Models."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from mistral_ratelimit.emulator import Emulator
from mistral_ratelimit.sdk import detect_sdk_line

# Whichever line is installed: 1.x has these at the top of ``mistralai``, 2.x and 3.x
# under ``mistralai.client``.
LINE = detect_sdk_line()
if TYPE_CHECKING:
    from mistralai.client import Mistral, models
    from mistralai.client.errors import SDKError
else:
    Mistral = LINE.mistral_class
    models = importlib.import_module(f"{LINE.package}.models")
    SDKError = LINE.sdk_error_class

pytestmark = pytest.mark.sdk

KEY = "test-key-not-secret"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(requests_per_second=500, tokens_per_minute=10_000_000, api_key=KEY) as e:
        yield e


@pytest.fixture
def client(emu: Emulator) -> Iterator[Mistral]:
    with Mistral(api_key=KEY, server_url=emu.url) as c:
        yield c


def _events(stream: Any) -> list[Any]:
    with stream as events:
        return list(events)


def test_start_append_restart_json(client: Mistral) -> None:
    first = client.beta.conversations.start(
        inputs="Reply with exactly: 4", model="mistral-small-latest", instructions="be brief"
    )
    assert isinstance(first, models.ConversationResponse)
    assert first.conversation_id.startswith("conv_")
    (out,) = first.outputs
    assert isinstance(out, models.MessageOutputEntry)
    assert out.content == "4"
    assert out.model == "mistral-small-latest"
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.usage.completion_tokens > 0

    second = client.beta.conversations.append(
        conversation_id=first.conversation_id, inputs="and now reply with exactly 'five'"
    )
    assert second.conversation_id == first.conversation_id
    assert second.outputs[0].content == "five"  # type: ignore[union-attr]
    # Append bills the whole stored history: at least everything billed the first time.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens

    history = client.beta.conversations.get_history(conversation_id=first.conversation_id)
    assert [type(e).__name__ for e in history.entries] == [
        "MessageInputEntry",
        "MessageOutputEntry",
        "MessageInputEntry",
        "MessageOutputEntry",
    ]
    restarted = client.beta.conversations.restart(
        conversation_id=first.conversation_id,
        from_entry_id=history.entries[1].id,  # type: ignore[arg-type]
        inputs="reply with exactly again",
    )
    assert restarted.conversation_id != first.conversation_id
    assert restarted.outputs[0].content == "again"  # type: ignore[union-attr]
    assert first.usage.prompt_tokens < restarted.usage.prompt_tokens < second.usage.prompt_tokens


def test_streams_parse_with_usage_in_done(client: Mistral) -> None:
    events = _events(
        client.beta.conversations.start_stream(
            inputs="Tell me something long about rate limits please", model="mistral-medium-latest"
        )
    )
    kinds = [e.event for e in events]
    assert kinds[0] == "conversation.response.started"
    assert kinds[-1] == "conversation.response.done"
    deltas = [e.data for e in events if isinstance(e.data, models.MessageOutputEvent)]
    assert len(deltas) >= 2
    done = events[-1].data
    assert isinstance(done, models.ResponseDoneEvent)
    conv_id = events[0].data.conversation_id
    history = client.beta.conversations.get_history(conversation_id=conv_id)
    stored = history.entries[-1]
    assert isinstance(stored, models.MessageOutputEntry)
    assert "".join(str(d.content) for d in deltas) == stored.content
    assert done.usage.completion_tokens > 0

    appended = _events(
        client.beta.conversations.append_stream(conversation_id=conv_id, inputs="go on")
    )
    assert appended[-1].data.usage.prompt_tokens > done.usage.total_tokens
    restarted = _events(
        client.beta.conversations.restart_stream(
            conversation_id=conv_id, from_entry_id=stored.id, inputs="once more"
        )
    )
    assert restarted[0].data.conversation_id != conv_id
    assert isinstance(restarted[-1].data, models.ResponseDoneEvent)


def test_function_call_json_and_stream(client: Mistral) -> None:
    resp = client.beta.conversations.start(
        inputs="What does get_weather say for Paris?",
        model="mistral-small-latest",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    (call,) = resp.outputs
    assert isinstance(call, models.FunctionCallEntry)
    assert call.name == "get_weather"
    result = client.beta.conversations.append(
        conversation_id=resp.conversation_id,
        inputs=[models.FunctionResultEntry(tool_call_id=call.tool_call_id, result='{"temp": 21}')],
    )
    assert isinstance(result.outputs[0], models.MessageOutputEntry)

    events = _events(
        client.beta.conversations.start_stream(
            inputs="call get_weather for Rome",
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
        )
    )
    deltas = [e.data for e in events if isinstance(e.data, models.FunctionCallEvent)]
    assert deltas and {d.name for d in deltas} == {"get_weather"}
    assert "city" in "".join(d.arguments for d in deltas)
    assert isinstance(events[-1].data, models.ResponseDoneEvent)


def test_reads_list_get_messages_delete(client: Mistral) -> None:
    resp = client.beta.conversations.start(inputs="hello", metadata={"suite": "sdk"})
    conv = client.beta.conversations.get(conversation_id=resp.conversation_id)
    assert isinstance(conv, models.ModelConversation)
    assert conv.id == resp.conversation_id
    listed = client.beta.conversations.list(page=0, page_size=100)
    assert resp.conversation_id in {c.id for c in listed}
    msgs = client.beta.conversations.get_messages(conversation_id=resp.conversation_id)
    assert [m.type for m in msgs.messages] == ["message.input", "message.output"]
    client.beta.conversations.delete(conversation_id=resp.conversation_id)
    with pytest.raises(SDKError) as err:
        client.beta.conversations.get(conversation_id=resp.conversation_id)
    assert err.value.status_code == 404


def test_agents_crud_and_agent_conversation(client: Mistral) -> None:
    agent = client.beta.agents.create(
        model="mistral-medium-latest", name="helper", instructions="reply with exactly OK"
    )
    assert isinstance(agent, models.Agent)
    assert agent.id.startswith("ag_") and agent.version == 0
    updated = client.beta.agents.update(agent_id=agent.id, description="updated")
    assert updated.version == 1 and updated.versions == [0, 1]
    assert updated.description == "updated"
    assert client.beta.agents.get(agent_id=agent.id).name == "helper"
    if LINE.major >= 2:  # later lines deprecate list() for list_pages()
        with pytest.warns(DeprecationWarning):
            listed = client.beta.agents.list()
    else:
        listed = client.beta.agents.list()
    assert agent.id in {a.id for a in listed}

    if hasattr(client.beta.agents, "list_pages"):
        others = [client.beta.agents.create(model="m", name=f"n{i}").id for i in range(3)]
        page = client.beta.agents.list_pages(page_size=2)
        seen = [a.id for a in page.result.data]
        assert page.result.next_page_token is not None
        while (page := page.next()) is not None:  # type: ignore[assignment]
            seen.extend(a.id for a in page.result.data)
        assert len(seen) == len(set(seen)) and {agent.id, *others} <= set(seen)
        for other in others:
            client.beta.agents.delete(agent_id=other)

    resp = client.beta.conversations.start(agent_id=agent.id, inputs="hi")
    assert resp.outputs[0].content == "OK"  # type: ignore[union-attr]
    conv = client.beta.conversations.get(conversation_id=resp.conversation_id)
    assert isinstance(conv, models.AgentConversation)
    assert conv.agent_id == agent.id

    client.beta.agents.delete(agent_id=agent.id)
    with pytest.raises(SDKError) as err:
        client.beta.agents.get(agent_id=agent.id)
    assert err.value.status_code == 404


def test_models_list(client: Mistral) -> None:
    listed = client.models.list()
    assert listed.data
    ids = {m.id for m in listed.data}
    assert "mistral-medium-latest" in ids
    assert all(isinstance(m, models.BaseModelCard) for m in listed.data)


def _http_validation_error() -> type[Exception]:
    """The SDK's class for a 422 (``errors`` on 2.x and 3.x, ``models`` on 1.x)."""
    for module in (f"{LINE.package}.errors", f"{LINE.package}.models"):
        try:
            found = getattr(importlib.import_module(module), "HTTPValidationError", None)
        except ImportError:
            continue
        if found is not None:
            return found  # type: ignore[no-any-return]
    raise AssertionError("this SDK has no HTTPValidationError")


def test_a_negative_max_tokens_is_the_sdks_validation_error(client: Mistral) -> None:
    # The real API answers 422 (pydantic's ge=0) and the SDK parses it, ctx included.
    with pytest.raises(_http_validation_error()) as info:
        client.beta.conversations.start(
            inputs="hi", model="mistral-small-latest", completion_args={"max_tokens": -1}
        )
    err: Any = info.value
    assert type(err).__name__ == "HTTPValidationError"
    (detail,) = err.data.detail
    assert (list(detail.loc), detail.type) == (
        ["body", "completion_args", "max_tokens"],
        "greater_than_equal",
    )


def test_wrong_key_is_401(emu: Emulator) -> None:
    with Mistral(api_key="wrong", server_url=emu.url) as bad, pytest.raises(SDKError) as err:
        bad.models.list()
    assert err.value.status_code == 401


def test_async_surface(emu: Emulator) -> None:
    async def main() -> None:
        async with Mistral(api_key=KEY, server_url=emu.url) as c:
            first = await c.beta.conversations.start_async(inputs="reply with exactly async")
            assert first.outputs[0].content == "async"  # type: ignore[union-attr]
            again = await c.beta.conversations.append_async(
                conversation_id=first.conversation_id, inputs="more"
            )
            assert again.usage.prompt_tokens > first.usage.total_tokens
            stream = await c.beta.conversations.start_stream_async(inputs="stream it")
            events = [e async for e in stream]
            assert isinstance(events[-1].data, models.ResponseDoneEvent)
            cid = first.conversation_id
            stream = await c.beta.conversations.append_stream_async(conversation_id=cid, inputs="x")
            assert [e.event async for e in stream][-1] == "conversation.response.done"
            history = await c.beta.conversations.get_history_async(conversation_id=cid)
            restarted = await c.beta.conversations.restart_async(
                conversation_id=cid, from_entry_id=history.entries[0].id, inputs="y"
            )
            assert restarted.conversation_id != cid
            stream = await c.beta.conversations.restart_stream_async(
                conversation_id=cid, from_entry_id=history.entries[0].id, inputs="z"
            )
            kinds = [e.event async for e in stream]
            assert kinds[0] == "conversation.response.started"
            assert (await c.beta.conversations.get_async(conversation_id=cid)).id == cid
            assert await c.beta.conversations.list_async()
            msgs = await c.beta.conversations.get_messages_async(conversation_id=cid)
            assert len(msgs.messages) == 6  # start, append, append_stream
            await c.beta.conversations.delete_async(conversation_id=cid)
            agent = await c.beta.agents.create_async(model="mistral-small-latest", name="a")
            agent = await c.beta.agents.update_async(agent_id=agent.id, name="b")
            assert (await c.beta.agents.get_async(agent_id=agent.id)).name == "b"
            await c.beta.agents.delete_async(agent_id=agent.id)
            assert (await c.models.list_async()).data

    asyncio.run(main())


def test_429_reaches_the_sdk_with_mistral_body() -> None:
    with (
        Emulator(requests_per_second=1, tokens_per_minute=1_000_000) as emu,
        Mistral(api_key="k", server_url=emu.url) as c,
    ):
        c.beta.conversations.start(inputs="one")
        with pytest.raises(SDKError) as err:
            c.beta.conversations.start(inputs="two")
    assert err.value.status_code == 429
    assert '"code":"1300"' in err.value.body
    assert err.value.headers["x-ratelimit-tokens-query-cost"] == "0"
