"""The incremental SSE parser: any chunking, only CR/LF/CRLF line ends, bounded memory."""

from __future__ import annotations

import itertools
import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mistral_ratelimit.accounting.sse import SSEEvent, SSEParser


def _event(name: str, payload: dict[str, object], eol: str = "\n") -> str:
    # ensure_ascii=False keeps raw U+2028 / emoji on the wire, as a server may send them.
    return f"event: {name}{eol}data: {json.dumps(payload, ensure_ascii=False)}{eol}{eol}"


CONVERSATION = (
    _event(
        "conversation.response.started",
        {
            "type": "conversation.response.started",
            "conversation_id": "conv_067f",
            "created_at": "2025-06-01T10:00:00Z",
        },
    )
    + ": keep-alive\n\n"
    + _event(
        "message.output.delta",
        {
            "type": "message.output.delta",
            "output_index": 0,
            "id": "msg_1",
            "content_index": 0,
            "model": "mistral-medium-2505",
            "role": "assistant",
            "content": "Héllo \u2028wörld 🌍",
        },
    )
    + _event(
        "message.output.delta", {"type": "message.output.delta", "content": " again\u2029\x85"}
    )
    + _event(
        "function.call.delta",
        {
            "type": "function.call.delta",
            "id": "fc_1",
            "name": "get_weather",
            "tool_call_id": "tc_1",
            "arguments": '{"city": "Paris"}',
        },
    )
    + _event(
        "conversation.response.done",
        {
            "type": "conversation.response.done",
            "padding": "x" * 300,
            "usage": {
                "total_tokens": 18892,
                "completion_tokens": 183,
                "prompt_tokens": 18709,
                "connector_tokens": None,
                "connectors": {},
            },
        },
    )
).encode()


def _feed_all(chunks: list[bytes], *, at_eof: bool = False) -> list[SSEEvent]:
    parser = SSEParser(dispatch_at_eof=at_eof)
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    out.extend(parser.close())
    return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_realistic_conversation_stream_in_one_chunk() -> None:
    events = _feed_all([CONVERSATION])
    names = [e.event for e in events]
    assert names == [
        "conversation.response.started",
        "message.output.delta",
        "message.output.delta",
        "function.call.delta",
        "conversation.response.done",
    ]
    first_delta = json.loads(events[1].data)
    assert first_delta["content"] == "Héllo \u2028wörld 🌍"
    assert json.loads(events[2].data)["content"] == " again\u2029\x85"
    assert json.loads(events[-1].data)["usage"]["total_tokens"] == 18892


def test_every_two_chunk_split_and_byte_at_a_time_give_identical_events() -> None:
    whole = _feed_all([CONVERSATION])
    assert len(whole) == 5
    for cut in range(len(CONVERSATION) + 1):
        assert _feed_all(_split(CONVERSATION, [cut])) == whole, cut
    one_by_one = [CONVERSATION[i : i + 1] for i in range(len(CONVERSATION))]
    assert _feed_all(one_by_one) == whole


def test_crlf_stream_split_between_cr_and_lf() -> None:
    data = CONVERSATION.replace(b"\n", b"\r\n")
    whole = _feed_all([data])
    assert [e.event for e in whole] == [e.event for e in _feed_all([CONVERSATION])]
    for index in [i for i, b in enumerate(data) if b == 0x0D]:
        # The chunk ends right after a CR: the LF starting the next chunk is the same line end.
        assert _feed_all([data[: index + 1], data[index + 1 :]]) == whole


def test_lone_cr_line_ends() -> None:
    events = _feed_all([b"event: a\rdata: 1\r\rdata: 2\r", b"\r"])
    assert events == [SSEEvent("a", "1"), SSEEvent("message", "2")]


def test_cr_then_cr_lf_is_a_blank_line() -> None:
    # "\r" ends "data: x"; the following "\r\n" is an empty line, which dispatches.
    assert _feed_all([b"data: x\r", b"\r\n"]) == [SSEEvent("message", "x")]


def test_unicode_line_separators_inside_data_do_not_split_lines() -> None:
    for sep in ("\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"):
        payload = json.dumps({"content": f"a{sep}b"}, ensure_ascii=False)
        events = _feed_all([f"data: {payload}\n\n".encode()])
        assert len(events) == 1
        assert json.loads(events[0].data)["content"] == f"a{sep}b"


def test_multibyte_character_split_across_chunks() -> None:
    data = "data: 🌍é\u2028\n\n".encode()
    whole = _feed_all([data])
    assert whole == [SSEEvent("message", "🌍é\u2028")]
    for cut in range(len(data) + 1):
        assert _feed_all(_split(data, [cut])) == whole


def test_multi_line_data_is_joined_with_newlines() -> None:
    events = _feed_all([b"data: first\ndata:second\ndata\ndata:  fourth\n\n"])
    # "data" alone is an empty value; only one leading space is removed.
    assert events == [SSEEvent("message", "first\nsecond\n\n fourth")]


def test_comments_keepalives_and_blank_runs_produce_nothing() -> None:
    stream = b": ping\n\n\n\n:\n\r\n" + b": keep-alive\r\n\r\n" + b"data: x\n: inside\n\n"
    assert _feed_all([stream]) == [SSEEvent("message", "x")]


def test_id_and_retry_only_blocks_dispatch_nothing_but_id_is_remembered() -> None:
    stream = (
        b"id: 7\n\nretry: 3000\n\nevent: lonely\n\ndata: a\n\nid: 8\ndata: b\n\nid\ndata: c\n\n"
    )
    assert _feed_all([stream]) == [
        SSEEvent("message", "a", "7"),
        SSEEvent("message", "b", "8"),
        SSEEvent("message", "c", ""),
    ]


def test_id_with_nul_is_ignored() -> None:
    assert _feed_all([b"id: 1\n\nid: a\x00b\ndata: x\n\n"]) == [SSEEvent("message", "x", "1")]


def test_unknown_fields_and_field_without_space() -> None:
    stream = b"foo: bar\nevent:named\nDATA: upper\nevent : spaced\ndata:x\nwhatever\n\n"
    # Field names are case-sensitive: "DATA" and "event " are unknown.
    assert _feed_all([stream]) == [SSEEvent("named", "x")]


def test_leading_bom_is_stripped_once_even_when_split() -> None:
    data = b"\xef\xbb\xbfdata: a\n\n"
    for cut in range(5):
        assert _feed_all(_split(data, [cut])) == [SSEEvent("message", "a")]
    # A second BOM is content: the first line's field name is then "\ufeffdata", unknown.
    assert _feed_all([b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n"]) == [
        SSEEvent("message", "b")
    ]


def test_incomplete_event_at_eof_follows_spec_by_default() -> None:
    data = b"data: a\n\nevent: last\ndata: b\n"
    assert _feed_all([data]) == [SSEEvent("message", "a")]
    # The mistralai SDK parses its leftover buffer at EOF; dispatch_at_eof mirrors it.
    assert _feed_all([data], at_eof=True) == [SSEEvent("message", "a"), SSEEvent("last", "b")]
    assert _feed_all([b"data: no newline"], at_eof=True) == [SSEEvent("message", "no newline")]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert _feed_all([b"data: a\xffb\n\n"]) == [SSEEvent("message", "a\ufffdb")]


def test_oversized_line_makes_the_parser_give_up() -> None:
    parser = SSEParser(max_line_bytes=1000)
    assert parser.feed(b"data: ok\n\n") == [SSEEvent("message", "ok")]
    for _ in range(20):
        parser.feed(b"x" * 100)  # one unterminated line growing past the bound
    assert parser.failed
    assert parser.feed(b"\n\ndata: later\n\n") == []
    assert parser.close() == []


def test_oversized_event_of_many_data_lines_makes_the_parser_give_up() -> None:
    parser = SSEParser(max_line_bytes=1000)
    for _ in range(50):
        parser.feed(b"data: " + b"y" * 50 + b"\n")
    assert parser.failed


def test_single_huge_chunk_line_is_rejected_without_buffering() -> None:
    parser = SSEParser(max_line_bytes=1000)
    assert parser.feed(b"data: " + b"z" * 5000 + b"\n\n") == []
    assert parser.failed


def test_random_chunkings_agree() -> None:
    rng = random.Random(1234)
    data = CONVERSATION.replace(b"\n", b"\r\n") + CONVERSATION
    whole = _feed_all([data])
    for _ in range(200):
        cuts = rng.sample(range(len(data)), rng.randint(1, 40))
        assert _feed_all(_split(data, cuts)) == whole


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_random_bytes_never_raise(chunks: list[bytes]) -> None:
    parser = SSEParser(max_line_bytes=256, dispatch_at_eof=True)
    for chunk in chunks:
        for event in parser.feed(chunk):
            assert isinstance(event.data, str)
    parser.close()


_LINE_PARTS = st.sampled_from(
    [
        b"data: ",
        b"data:",
        b"event: x",
        b"id: 1",
        b"retry: 5",
        b":c",
        b"\r",
        b"\n",
        b"\r\n",
        b'{"a": 1}',
        "\u2028".encode(),
        "é".encode(),
        b"\xef\xbb\xbf",
        b"\xff",
        b"x",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE_PARTS, max_size=40), st.data())
def test_sse_like_streams_parse_the_same_under_any_chunking(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    assert _feed_all(_split(stream, cuts), at_eof=True) == _feed_all([stream], at_eof=True)
