"""Usage from JSON bodies and from SSE streams sniffed on the side (any chunking, any coding)."""

from __future__ import annotations

import gzip
import itertools
import json
import random
import sys
import zlib
from collections.abc import Callable

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mistral_ratelimit.accounting import decoding
from mistral_ratelimit.accounting.decoding import IncrementalDecoder
from mistral_ratelimit.accounting.types import ResponseFacts, Usage
from mistral_ratelimit.accounting.usage import StreamSniffer, load_json, parse_json_response


def _event(name: str, payload: dict[str, object]) -> str:
    return f"event: {name}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


DELTAS = ["The", " weather", " in Par\u2028is", " is ☀️", " today."]
ARGUMENTS = ['{"city": ', '"Paris"}']

CONVERSATION = (
    _event(
        "conversation.response.started",
        {
            "type": "conversation.response.started",
            "conversation_id": "conv_067f",
            "created_at": "2025-06-01T10:00:00Z",
        },
    )
    + "".join(
        _event(
            "message.output.delta",
            {
                "type": "message.output.delta",
                "output_index": 0,
                "id": "msg_1",
                "content_index": 0,
                "model": "mistral-medium-2505",
                "agent_id": "ag_1",
                "role": "assistant",
                "content": d,
            },
        )
        for d in DELTAS
    )
    + ": keep-alive\n\n"
    + "".join(
        _event(
            "function.call.delta",
            {
                "type": "function.call.delta",
                "id": "fc_1",
                "name": "get_weather",
                "tool_call_id": "tc_1",
                "arguments": a,
                "output_index": 1,
            },
        )
        for a in ARGUMENTS
    )
    + _event(
        "conversation.response.done",
        {
            "type": "conversation.response.done",
            "created_at": "2025-06-01T10:00:02Z",
            "usage": {
                "completion_tokens": 183,
                "prompt_tokens": 18709,
                "total_tokens": 18892,
                "connector_tokens": None,
                "connectors": None,
            },
        },
    )
).encode()
CONVERSATION_USAGE = Usage(prompt_tokens=18709, completion_tokens=183, total_tokens=18892)
CONVERSATION_CHARS = sum(map(len, DELTAS)) + sum(map(len, ARGUMENTS))


def _chunk(content: str, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    doc: dict[str, object] = {
        "id": "cmpl-1",
        "object": "chat.completion.chunk",
        "created": 1718000000,
        "model": "mistral-small-latest",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    if usage is not None:
        doc["usage"] = usage
    return f"data: {json.dumps(doc, ensure_ascii=False)}\r\n\r\n"


CHAT_PIECES = ["Bonjour", ", ", "ça va\u2028?"]
CHAT = (
    _chunk("")
    + "".join(_chunk(p) for p in CHAT_PIECES[:-1])
    + _chunk(
        CHAT_PIECES[-1],
        "length",
        {"prompt_tokens": 34, "total_tokens": 134, "completion_tokens": 100},
    )
    + "data: [DONE]\r\n\r\n"
).encode()
CHAT_USAGE = Usage(prompt_tokens=34, completion_tokens=100, total_tokens=134)


def _sniff(chunks: list[bytes], encoding: str | None = None) -> StreamSniffer:
    sniffer = StreamSniffer(encoding)
    for chunk in chunks:
        sniffer.feed(chunk)
    sniffer.close()
    return sniffer


def _summary(s: StreamSniffer) -> tuple[object, ...]:
    return (s.facts, s.finished, s.error, s.output_chars, s.failed)


def _random_chunks(data: bytes, rng: random.Random, max_size: int = 50) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        step = rng.randint(1, max_size)
        out.append(data[i : i + step])
        i += step
    return out


# --- JSON bodies -----------------------------------------------------------------------------


def test_conversation_response_json() -> None:
    body = json.dumps(
        {
            "object": "conversation.response",
            "conversation_id": "conv_1",
            "outputs": [{"type": "message.output", "content": "hi"}],
            "usage": {
                "prompt_tokens": 644,
                "total_tokens": 1488,
                "completion_tokens": 844,
                "connector_tokens": None,
                "connectors": None,
            },
            "guardrails": None,
        }
    ).encode()
    assert parse_json_response(body) == ResponseFacts(Usage(644, 844, 1488), "conv_1")


def test_usage_without_total_sums_prompt_and_completion() -> None:
    facts = parse_json_response(b'{"usage": {"prompt_tokens": 10, "completion_tokens": 5}}')
    assert facts.usage is not None
    assert facts.usage.total == 15
    assert facts.conversation_id is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b"42",
        b"not json",
        b"\xff\xfe\x00",
        b"[" * 100_000,
        b'{"usage": "lots"}',
        b'{"usage": {"total_tokens": "12"}}',
        b'{"usage": {"total_tokens": true}}',
        b'{"usage": {"total_tokens": -5}}',
        b'{"usage": {"total_tokens": 1.5}}',
        b'{"usage": {}}',
        b'{"conversation_id": 12}',
        b'{"usage": {"total_tokens": NaN}}',
        b'{"usage": {"total_tokens": Infinity}}',
        # No total and a part that is garbage: the other part alone under-states it (found
        # by a break-it helper: this settled to 1 token).
        b'{"usage": {"prompt_tokens": NaN, "completion_tokens": 1, "total_tokens": Infinity}}',
        b'{"usage": {"prompt_tokens": 5, "completion_tokens": "772"}}',
    ],
)
def test_garbage_json_gives_no_facts(body: bytes) -> None:
    assert parse_json_response(body) == ResponseFacts()


def test_mixed_valid_and_invalid_counters() -> None:
    facts = parse_json_response(
        b'{"usage": {"prompt_tokens": "x", "completion_tokens": 7, "total_tokens": 20.0}}'
    )
    assert facts.usage == Usage(prompt_tokens=0, completion_tokens=7, total_tokens=20)
    # A part that is absent (embeddings have no completion) or null is not garbage.
    facts = parse_json_response(b'{"usage": {"prompt_tokens": 5, "total_tokens": "x"}}')
    assert facts.usage == Usage(prompt_tokens=5, completion_tokens=0, total_tokens=0)
    facts = parse_json_response(b'{"usage": {"prompt_tokens": null, "completion_tokens": 3}}')
    assert facts.usage == Usage(prompt_tokens=0, completion_tokens=3, total_tokens=0)


def test_json_in_utf16_is_still_read() -> None:
    body = json.dumps({"usage": {"total_tokens": 9}}).encode("utf-16")
    assert parse_json_response(body).usage == Usage(total_tokens=9)


# --- streams ---------------------------------------------------------------------------------


def test_conversation_stream() -> None:
    s = _sniff([CONVERSATION])
    assert s.facts == ResponseFacts(CONVERSATION_USAGE, "conv_067f")
    assert s.finished
    assert s.error is None
    assert s.output_chars == CONVERSATION_CHARS
    assert not s.failed


def test_chat_stream_with_done_sentinel() -> None:
    s = _sniff([CHAT])
    assert s.facts == ResponseFacts(CHAT_USAGE, None)
    assert s.finished
    assert s.output_chars == sum(map(len, CHAT_PIECES))


@pytest.mark.parametrize("stream", [CONVERSATION, CHAT], ids=["conversation", "chat"])
def test_every_split_point_and_byte_at_a_time(stream: bytes) -> None:
    expected = _summary(_sniff([stream]))
    assert expected[0] != ResponseFacts()
    for cut in range(len(stream) + 1):
        assert _summary(_sniff([stream[:cut], stream[cut:]])) == expected, cut
    assert _summary(_sniff([stream[i : i + 1] for i in range(len(stream))])) == expected


def test_chat_usage_chunk_without_done_sentinel_still_finishes() -> None:
    stream = CHAT.replace(b"data: [DONE]\r\n\r\n", b"")
    s = _sniff([stream])
    assert s.facts.usage == CHAT_USAGE
    assert s.finished


def test_final_event_without_trailing_blank_line_is_still_read() -> None:
    # The SDK parses its leftover buffer at EOF, so the user would see this usage; so must we.
    s = _sniff([CONVERSATION.rstrip(b"\n")])
    assert s.facts.usage == CONVERSATION_USAGE
    assert s.finished


def test_stream_cut_before_usage() -> None:
    cut = CONVERSATION.index(b"event: function.call.delta")
    s = _sniff([CONVERSATION[:cut]])
    assert not s.finished
    assert s.facts.usage is None
    assert s.facts.conversation_id == "conv_067f"
    assert s.output_chars == sum(map(len, DELTAS))
    assert not s.failed


def test_stream_cut_inside_the_done_event() -> None:
    cut = CONVERSATION.index(b'"usage"')
    s = _sniff([CONVERSATION[:cut]])
    assert s.facts.usage is None
    assert not s.finished
    assert s.output_chars == CONVERSATION_CHARS


def test_error_event() -> None:
    stream = (
        CONVERSATION.split(b"event: conversation.response.done")[0]
        + _event(
            "conversation.response.error",
            {"type": "conversation.response.error", "message": "Internal failure", "code": 3000},
        ).encode()
    )
    s = _sniff([stream])
    assert s.error == "Internal failure"
    assert s.facts.usage is None
    assert not s.finished


def test_last_usage_wins_and_nested_data_usage_is_found() -> None:
    stream = (
        b'data: {"usage": {"total_tokens": 5}}\n\n'
        b'data: {"type": "custom", "data": {"usage": {"total_tokens": 9}}}\n\n'
        b'data: {"usage": {"total_tokens": "bad"}}\n\n'
    )
    s = _sniff([stream])
    assert s.facts.usage == Usage(total_tokens=9)
    assert not s.finished


def test_type_taken_from_json_when_event_line_is_missing() -> None:
    stream = (
        b'data: {"type": "message.output.delta", "content": [{"type": "text", "text": "abc"}]}\n\n'
        b'data: {"type": "conversation.response.done", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n'
    )
    s = _sniff([stream])
    assert s.finished
    assert s.output_chars == 3
    assert s.facts.usage is not None and s.facts.usage.total == 3


def test_tool_call_arguments_in_chat_chunks_count_as_output() -> None:
    doc = {
        "choices": [
            {
                "index": 0,
                "finish_reason": None,
                "delta": {"tool_calls": [{"function": {"name": "f", "arguments": '{"x": 1}'}}]},
            }
        ]
    }
    s = _sniff([f"data: {json.dumps(doc)}\n\n".encode()])
    assert s.output_chars == len('{"x": 1}')


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "raw-deflate", "br", "gzip, br"])
def test_compressed_streams_in_random_chunk_sizes(coding: str) -> None:
    payload = CONVERSATION + CHAT.replace(b"data: [DONE]\r\n\r\n", b"")
    if coding in ("gzip", "x-gzip"):
        raw = gzip.compress(payload)
    elif coding == "deflate":
        raw = zlib.compress(payload)
    elif coding == "raw-deflate":
        co = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        raw, coding = co.compress(payload) + co.flush(), "deflate"
    elif coding == "br":
        raw = brotli.compress(payload)
    else:  # applied in order: gzip first, then br
        raw = brotli.compress(gzip.compress(payload))
    expected = _summary(_sniff([payload]))
    assert expected[0] == ResponseFacts(CHAT_USAGE, "conv_067f")
    rng = random.Random(coding)
    for _ in range(20):
        assert _summary(_sniff(_random_chunks(raw, rng), coding)) == expected
    assert _summary(_sniff([raw[i : i + 1] for i in range(len(raw))], coding)) == expected


def test_multi_member_gzip() -> None:
    half = CONVERSATION.index(b"event: function.call.delta")
    raw = gzip.compress(CONVERSATION[:half]) + gzip.compress(CONVERSATION[half:])
    assert _summary(_sniff([raw], "gzip")) == _summary(_sniff([CONVERSATION]))


def test_corrupt_gzip_disables_sniffing_quietly() -> None:
    raw = bytearray(gzip.compress(CONVERSATION))
    raw[len(raw) // 2] ^= 0xFF
    raw[len(raw) // 2 + 1] ^= 0xFF
    s = _sniff([bytes(raw)], "gzip")
    assert s.failed
    assert s.facts.usage is None


def test_unknown_encoding_disables_sniffing_quietly() -> None:
    s = _sniff([CONVERSATION], "zstd-but-not-really")
    assert s.failed
    assert s.facts == ResponseFacts()


def test_identity_and_empty_encodings_pass_through() -> None:
    for coding in (None, "", "identity", "IDENTITY", " identity , "):
        assert _sniff([CONVERSATION], coding).facts.usage == CONVERSATION_USAGE


def test_oversized_line_makes_the_sniffer_give_up_without_raising() -> None:
    s = StreamSniffer()
    s.feed(b"data: " + b"a" * (9 * 1024 * 1024))
    s.feed(b"\n\n" + CONVERSATION)
    s.close()
    assert s.failed
    assert s.facts.usage is None


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_decompression_bomb_is_refused(coding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The bound is lowered so the bomb stays small enough to build quickly.
    monkeypatch.setattr(decoding, "MAX_OUTPUT_PER_FEED", 3 * 1024 * 1024)
    zeros = b"\0" * (8 * 1024 * 1024)
    compress = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[coding]
    bomb = compress(zeros)
    assert len(bomb) < 64 * 1024
    decoder = IncrementalDecoder(coding)
    assert decoder.feed(bomb) == b""
    assert decoder.failed
    assert decoder.feed(b"more") == b""
    assert decoder.flush() == b""
    # Below the bound the same data decodes in full.
    monkeypatch.setattr(decoding, "MAX_OUTPUT_PER_FEED", 16 * 1024 * 1024)
    decoder = IncrementalDecoder(coding)
    assert decoder.feed(bomb) + decoder.flush() == zeros


def test_brotli_without_output_limit_support_still_decodes() -> None:
    # brotli 1.1 (allowed by the "brotli" extra) has no output_buffer_limit argument.
    class OldDecompressor:
        def __init__(self) -> None:
            self._real = brotli.Decompressor()

        def process(self, data: bytes) -> bytes:
            return bytes(self._real.process(data))

    decoder = IncrementalDecoder("br")
    decoder._stages[0]._obj = OldDecompressor()  # type: ignore[attr-defined]
    raw = brotli.compress(CONVERSATION)
    out = b"".join(decoder.feed(raw[i : i + 7]) for i in range(0, len(raw), 7))
    assert out + decoder.flush() == CONVERSATION
    assert not decoder.failed


def test_brotli_missing_disables_sniffing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "brotli", None)  # makes "import brotli" raise ImportError
    assert IncrementalDecoder("br").failed
    s = _sniff([brotli.compress(CONVERSATION)], "br")
    assert s.failed
    assert s.facts.usage is None


def test_feed_after_close_is_ignored() -> None:
    s = _sniff([CHAT])
    s.feed(b'data: {"usage": {"total_tokens": 1}}\n\n')
    s.close()
    assert s.facts.usage == CHAT_USAGE


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=200), max_size=15),
    st.sampled_from([None, "gzip", "deflate", "br", "gzip, br", "bogus"]),
)
def test_random_bytes_never_raise(chunks: list[bytes], coding: str | None) -> None:
    s = StreamSniffer(coding)
    for chunk in chunks:
        s.feed(chunk)
    s.close()
    assert s.output_chars >= 0


_FRAGMENTS = st.sampled_from(
    [
        b"data: ",
        b"event: conversation.response.done",
        b"event: message.output.delta",
        b'{"usage": {"total_tokens": 3}}',
        b'{"content": "ab"}',
        b'{"content": 5}',
        b"[DONE]",
        b'{"choices": [{"finish_reason": "stop", "delta": {"content": "x"}}], "usage": {"total_tokens": 2}}',
        b"\n",
        b"\r",
        b"\r\n",
        b"\n\n",
        b":",
        b"{",
        b"\xff",
        "\u2028".encode(),
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=30), st.data())
def test_sse_like_streams_sniff_the_same_under_any_chunking(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert _summary(_sniff(chunks)) == _summary(_sniff([stream]))


def test_finish_reason_without_usage_is_not_the_end() -> None:
    # Some servers send usage in a separate chunk after the finish_reason chunk.
    stream = (
        _chunk("done", "stop") + 'data: {"usage": {"total_tokens": 12}, "choices": []}\r\n\r\n'
    ).encode()
    s = _sniff([stream[: stream.index(b"data: {", 10)]])
    assert not s.finished
    assert s.facts.usage is None
    s = _sniff([stream])
    assert s.facts.usage == Usage(total_tokens=12)


def _outcome(load: Callable[[bytes], object], body: bytes) -> tuple[str, str]:
    try:
        return "ok", repr(load(body))  # repr: NaN equals itself
    except RecursionError:
        return "too deep", ""
    except Exception as exc:  # the same error, as the same type and message
        return type(exc).__name__, str(exc)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400)
@given(
    doc=st.dictionaries(st.text(), _JSON_VALUES, max_size=5),
    before=st.sampled_from(["", " ", "\ufeff", "\n\t"]),
    after=st.sampled_from(["", " ", "\r\n", "x", "{}", "\x00", "\u00a0", ",", "]"]),
    encoding=st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-32", "latin-1"]),
    ascii_only=st.booleans(),
)
def test_load_json_reads_every_body_as_json_loads_does(
    doc: dict[str, object], before: str, after: str, encoding: str, ascii_only: bool
) -> None:
    text = before + json.dumps(doc, ensure_ascii=ascii_only) + after
    try:
        body = text.encode(encoding)
    except UnicodeEncodeError:
        body = text.encode("utf-8", "surrogatepass")
    assert _outcome(load_json, body) == _outcome(json.loads, body)


@settings(max_examples=400)
@given(st.binary(max_size=64).map(lambda b: b"{" + b))
def test_load_json_reads_any_bytes_after_a_brace_as_json_loads_does(body: bytes) -> None:
    assert _outcome(load_json, body) == _outcome(json.loads, body)


@pytest.mark.parametrize("body", [b'{"a": 1} x', b"{}{}", b"{}\x00", b"{} \n ,", b'{"a":"\xff"}'])
def test_load_json_raises_what_json_loads_raises(body: bytes) -> None:
    assert _outcome(load_json, body) == _outcome(json.loads, body)
    assert _outcome(load_json, body)[0] != "ok"


def test_load_json_of_what_is_not_bytes_is_json_loads() -> None:
    for body in (memoryview(b"{}"), bytearray(b"{}"), '{"a": 1}'):
        assert _outcome(load_json, body) == _outcome(json.loads, body)  # type: ignore[arg-type]


def test_load_json_of_a_body_nested_too_deep_fails_as_json_loads_does() -> None:
    body = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    assert _outcome(load_json, body) == _outcome(json.loads, body) == ("too deep", "")
