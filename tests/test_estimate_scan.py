"""The cheap estimate reads text-only bodies without parsing them; it must never under-count."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mistral_ratelimit.accounting import request
from mistral_ratelimit.accounting.request import Estimator, _scan

CORPUS = Path(__file__).parent / "corpus"
ESTIMATOR = Estimator()


def corpus() -> list[dict[str, str]]:
    items: list[dict[str, str]] = []
    for name in ("sdk_bodies.json", "handmade.json", "random.json"):
        items.extend(json.loads((CORPUS / name).read_text(encoding="utf-8")))
    return items


def test_scan_bound_never_under_counts_the_exact_count() -> None:
    est = Estimator()
    scanned = 0
    for item in corpus():
        body = item["body"].encode()
        headers = {"accept": item.get("accept", "application/json")}
        cheap = est.estimate(item["method"], item["path"], body, headers, exact=False)
        exact = est.estimate(item["method"], item["path"], body, headers, exact=True)
        conversation = cheap.endpoint.startswith("conversations.")
        if _scan(body, conversation) is not None and cheap.endpoint == exact.endpoint:
            scanned += 1
        assert cheap.prompt_tokens >= exact.prompt_tokens, item["name"]
        assert cheap.completion_tokens == exact.completion_tokens, item["name"]
        assert cheap.stream == exact.stream, item["name"]
    assert scanned > 70  # the fast path really ran on the text-only bodies of the corpus


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"inputs":"hi","completion_args":{"max_tokens":64},"stream":true}', (64, True, None)),
        (
            b'{"inputs":"say \\"max_tokens\\": 5","model":"mistral-small-latest"}',
            (None, False, "mistral-small-latest"),
        ),
        (
            b'{"inputs":[{"type":"message.input","content":[{"type":"image_url",'
            b'"image_url":"https://x/y.png"}]}]}',
            None,
        ),
        (b'{"inputs":"hi","agent_id":"ag_1"}', None),
        (b'{"inputs":"hi","tools":[{"type":"web_search"}]}', None),
        (b'{"messages":[],"n":3,"max_tokens":10}', None),
    ],
)
def test_scan_reads_only_what_bounds_the_cost(
    body: bytes, expected: tuple[int | None, bool, str | None] | None
) -> None:
    assert _scan(body, True) == expected


# -- the bound, against the exact count, on bodies built to break it ---------------------


def _enum_tool(values: list[Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"x": {"enum": values}}}
    return {"type": "function", "function": {"name": "f", "description": "d", "parameters": schema}}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


ADVERSARIAL: list[tuple[str, str, dict[str, Any]]] = [
    # Numbers the template re-spells: 1e15 -> 1000000000000000.0 (18 tokens for 4 bytes).
    ("tool enum 1e15", "/v1/conversations", {"inputs": "hi", "tools": [_enum_tool([1e15] * 2000)]}),
    (
        "tool enum 1.5e-7",
        "/v1/conversations",
        {"inputs": "hi", "tools": [_enum_tool([1.5e-7] * 3000)]},
    ),
    (
        "compact tool result",
        "/v1/conversations",
        {
            "inputs": [
                {"type": "function.result", "tool_call_id": "c", "result": _compact([1] * 5000)}
            ]
        },
    ),
    (
        "compact arguments",
        "/v1/conversations",
        {
            "inputs": [
                {
                    "type": "function.call",
                    "tool_call_id": "c",
                    "name": "f",
                    "arguments": _compact({"a": [1] * 5000}),
                }
            ]
        },
    ),
    (
        "chat arguments object",
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "abc", "function": {"name": "f", "arguments": {"a": [1] * 5000}}}
                    ],
                },
            ]
        },
    ),
    (
        "chat tool message",
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "c", "content": _compact([1e15] * 1000)},
            ]
        },
    ),
    (
        "text that is not a string",
        "/v1/conversations",
        {"inputs": [{"role": "user", "content": [{"type": "text", "text": [1e15] * 1000}]}]},
    ),
    (
        "thinking that is not a string",
        "/v1/conversations",
        {
            "inputs": [
                {
                    "role": "assistant",
                    "content": [{"type": "thinking", "thinking": {"a": [1] * 3000}}],
                }
            ]
        },
    ),
    ("fim prompt that is not a string", "/v1/fim/completions", {"prompt": [1e15] * 1000}),
    (
        "schema",
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"enum": [1e15] * 1000}},
        },
    ),
    (
        "prediction that is not a string",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "prediction": {"content": [1] * 3000}},
    ),
    (
        "a file costs its policy, not its bytes",
        "/v1/conversations",
        {"inputs": [{"role": "user", "content": [{"type": "file"}]}]},
    ),
]


@pytest.mark.parametrize(("name", "path", "obj"), ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL])
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
def test_cheap_never_under_counts_what_the_template_reserialises(
    name: str, path: str, obj: dict[str, Any], separators: tuple[str, str]
) -> None:
    body = json.dumps(obj, separators=separators).encode()
    cheap = ESTIMATOR.estimate("POST", path, body, exact=False)
    exact = ESTIMATOR.estimate("POST", path, body, exact=True)
    assert cheap.prompt_tokens >= exact.prompt_tokens
    assert cheap.completion_tokens == exact.completion_tokens


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"inputs":"hi","too\\u006cs":[{"type":"function"}],"model":"mistral-x"}', "escaped key"),
        ('{"inputs":"hi"}'.encode("utf-16"), "UTF-16"),
        (b' {"inputs":"hi"}', "leading space"),
        (b'{"inputs":"hi","model":"' + b"m" * 100 + b'"}', "a long model name is blanked"),
        (b'{"inputs":"' + b"x" * 100 + b'\\n","n":2}', "a marker after prose ending in an escape"),
        (b'{"inputs":"hi","completion_args":{"max_tokens":64.0}}', "a float cap"),
        (b'{"inputs":"hi","completion_args":{"max_tokens":1234567890123456789}}', "19 digits"),
    ],
)
def test_scan_leaves_doubtful_bodies_to_the_parser(body: bytes, why: str) -> None:
    assert _scan(body, True) is None, why
    json.loads(body.decode("utf-16") if why == "UTF-16" else body)  # each is valid JSON


def test_prose_ending_in_an_escape_is_not_a_marker() -> None:
    # Prose is blanked whole: cut to its last byte, "...\n" left "n", the marker for n > 1.
    body = json.dumps({"inputs": "line\n" * 40, "model": "x"}).encode()
    assert _scan(body, True) == (None, False, "x")


@pytest.mark.parametrize(
    ("body", "conversation", "expected"),
    [
        # Nested keys are not the request's: the cap sits in the top-level completion_args.
        (
            b'{"inputs":[{"type":"message.output","content":"a","model":"inner-model"}],'
            b'"metadata":{"max_tokens":5,"stream":true,"completion_args":{"max_tokens":6}},'
            b'"completion_args":{"temperature":0.5,"stop":["}"],"max_tokens":7},"model":"outer"}',
            True,
            (7, False, "outer"),
        ),
        (b'{"inputs":"hi","max_tokens":5}', True, (None, False, None)),
        (
            b'{"messages":[],"completion_args":{"max_tokens":5},"max_tokens":9}',
            False,
            (9, False, None),
        ),
        # The last duplicate wins, as in json.loads.
        (
            b'{"inputs":"hi","completion_args":{"max_tokens":5},"completion_args":null}',
            True,
            (None, False, None),
        ),
        (
            b'{"inputs":"hi","stream":true,"stream":false,"model":"a-model","model":null}',
            True,
            (None, False, None),
        ),
        # Escaped quotes and backslashes inside strings do not shift the structure.
        (
            b'{"inputs":"say \\"hi\\", \\\\","model":"mistral-x",'
            + b'"instructions":"'
            + b"x" * 150
            + b'\\"","stream":true}',
            True,
            (None, True, "mistral-x"),
        ),
    ],
)
def test_scan_reads_the_top_level_members(
    body: bytes, conversation: bool, expected: tuple[int | None, bool, str | None]
) -> None:
    assert _scan(body, conversation) == expected
    obj = json.loads(body)
    path = "/v1/conversations" if conversation else "/v1/chat/completions"
    cheap = ESTIMATOR.estimate("POST", path, body, exact=False)
    exact = ESTIMATOR.estimate("POST", path, body, exact=True)
    assert (cheap.completion_tokens, cheap.stream, cheap.model) == (
        exact.completion_tokens,
        exact.stream,
        exact.model,
    ), obj


# -- property: cheap >= exact over generated bodies --------------------------------------

#: Numbers as other serialisers spell them (orjson, JavaScript), which Python's json.dumps
#: never writes: the template re-spells them (1e15 -> 1000000000000000.0, 1e400 -> Infinity).
_SPELLINGS = ["1e15", "1E15", "1.5e-7", "1e-7", "2E+2", "1e300", "1e400", "-1e400", "0e0", "1"]
_RAW = re.compile(rb'"\\u0000([-+.eE0-9]+)\\u0000"')


def _spelt(number: str) -> str:
    """A placeholder that ``_encode`` turns into the bare number."""
    return f"\x00{number}\x00"


def _encode(value: Any, separators: tuple[str, str], ascii_only: bool) -> bytes:
    text = json.dumps(value, separators=separators, ensure_ascii=ascii_only)
    return _RAW.sub(rb"\1", text.encode())


_NUMBERS = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**18),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from(_SPELLINGS).map(_spelt),
)
_TEXT = st.one_of(
    st.text(max_size=60),
    st.text(alphabet='ab "\\\n\t{}[]:,é中😀', max_size=40),
    st.sampled_from(["", "x" * 150 + '"', "y" * 120 + "\\", "model", "max_tokens", "text"]),
)
_KEYS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["model", "stream", "max_tokens", "completion_args", "text", "n", "tools"]),
)
_JSON = st.recursive(
    st.none() | st.booleans() | _NUMBERS | _TEXT,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)

#: What the template re-serialises: mostly many short numbers, which grow the most.
_PAYLOAD = st.one_of(
    *[st.lists(st.sampled_from(_SPELLINGS).map(_spelt) | st.just(1), min_size=50, max_size=300)]
    * 2,
    _JSON,
)


@st.composite
def _json_text(draw: st.DrawFn) -> str:
    """A JSON document as a string, compact or spaced (tool arguments and results)."""
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    return _encode(draw(_PAYLOAD), separators, True).decode()


_TOOLS = st.lists(
    st.builds(
        lambda name, params: {
            "type": "function",
            "function": {"name": name, "description": "d", "parameters": params},
        },
        _TEXT,
        st.dictionaries(_KEYS, _PAYLOAD, min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=2,
)
_ARGUMENTS = _json_text() | st.dictionaries(_KEYS, _PAYLOAD, min_size=1, max_size=3)
_CAP = st.integers(min_value=0, max_value=10**6) | _JSON
#: What the template re-serialises; each generated body holds at most one of them, so that
#: each must be caught on its own.
_RISKS = ["tools", "calls", "results", "schema", "prediction", "json text"]


def _with(items: st.SearchStrategy[list[Any]], risky: st.SearchStrategy[Any]) -> Any:
    return st.tuples(items, risky).map(lambda pair: [*pair[0], pair[1]])


def _bodies(risk: str | None) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """Request bodies of the scannable endpoints, text only, or with one ``risk``."""
    text = _PAYLOAD if risk == "json text" else _TEXT
    chunk = st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": text}),
        st.fixed_dictionaries({"type": st.just("thinking"), "thinking": text}),
        st.fixed_dictionaries({"type": st.sampled_from(["reference", "file"]), "x": _TEXT}),
    )
    content = _TEXT | st.lists(chunk, max_size=3)
    entry = st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("message.input"), "role": st.sampled_from(["user", "assistant"])},
            optional={"content": content, "prefix": st.booleans()},
        ),
        st.fixed_dictionaries(
            {"type": st.just("message.output"), "content": content}, optional={"model": _TEXT}
        ),
        _TEXT,
    )
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"])}, optional={"content": content}
    )
    entries, messages = st.lists(entry, max_size=5), st.lists(message, max_size=5)
    if risk == "calls":
        call = {"tool_call_id": _TEXT, "name": _TEXT, "arguments": _ARGUMENTS}
        entries = _with(entries, st.fixed_dictionaries({"type": st.just("function.call"), **call}))
        function = st.fixed_dictionaries({"name": _TEXT, "arguments": _ARGUMENTS})
        calls = st.lists(st.fixed_dictionaries({"id": _TEXT, "function": function}), min_size=1)
        messages = _with(
            messages, st.fixed_dictionaries({"role": st.just("assistant"), "tool_calls": calls})
        )
    elif risk == "results":
        result = _json_text()
        entries = _with(
            entries,
            st.fixed_dictionaries(
                {"type": st.just("function.result"), "tool_call_id": _TEXT, "result": result}
            ),
        )
        messages = _with(
            messages,
            st.fixed_dictionaries(
                {"role": st.just("tool"), "tool_call_id": _TEXT, "content": result}
            ),
        )
    args: dict[str, st.SearchStrategy[Any]] = {
        "max_tokens": _CAP,
        "temperature": _NUMBERS,
        "stop": st.lists(_TEXT, max_size=2),
    }
    extras: dict[str, st.SearchStrategy[Any]] = {}
    if risk == "schema":
        extras["response_format"] = st.fixed_dictionaries(
            {"type": st.just("json_schema"), "json_schema": _PAYLOAD}
        )
    elif risk == "prediction":
        extras["prediction"] = st.fixed_dictionaries({"content": _PAYLOAD})
    elif risk == "tools":
        extras["tools"] = _TOOLS
    optional: dict[str, st.SearchStrategy[Any]] = {
        "model": _TEXT | _JSON,
        "stream": st.booleans() | _JSON,
        "metadata": st.dictionaries(_KEYS, _JSON, max_size=3),
        "temperature": _NUMBERS,
        "max_tokens": _CAP,
        "completion_args": st.fixed_dictionaries({}, optional=args),
    }
    conversation_paths = [
        "/v1/conversations",
        "/v1/conversations/c1",
        "/v1/conversations/c1/restart",
    ]
    # Conversations keep response_format and prediction in completion_args.
    conversation_args = {**args, **{k: v for k, v in extras.items() if k != "tools"}}
    conversation_extras = {k: v for k, v in extras.items() if k == "tools"}
    if conversation_args.keys() != args.keys():
        conversation_extras["completion_args"] = st.fixed_dictionaries(conversation_args)
    return st.one_of(
        st.tuples(
            st.sampled_from(conversation_paths),
            st.fixed_dictionaries(
                {"inputs": entries if risk else _TEXT | entries, **conversation_extras},
                optional={k: v for k, v in optional.items() if k not in conversation_extras}
                | {"instructions": _TEXT},
            ),
        ),
        st.tuples(
            st.just("/v1/chat/completions"),
            st.fixed_dictionaries({"messages": messages, **extras}, optional=optional),
        ),
        st.tuples(
            st.just("/v1/fim/completions"),
            st.fixed_dictionaries(
                {"prompt": text, **extras}, optional={**optional, "suffix": _TEXT}
            ),
        ),
    )


@pytest.mark.parametrize("risk", [None, *_RISKS])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    separators=st.sampled_from([(",", ":"), (", ", ": ")]),
    ascii_only=st.booleans(),
    accept=st.sampled_from(["application/json", "text/event-stream"]),
)
def test_cheap_is_an_upper_bound_of_the_exact_count(
    risk: str | None,
    data: st.DataObject,
    separators: tuple[str, str],
    ascii_only: bool,
    accept: str,
) -> None:
    case = data.draw(_bodies(risk))
    path, obj = case
    body = _encode(obj, separators, ascii_only)
    conversation = path.startswith("/v1/conversations")
    event("scanned" if _scan(body, conversation) is not None else "parsed")
    headers = {"Accept": accept}
    cheap = ESTIMATOR.estimate("POST", path, body, headers, exact=False)
    exact = ESTIMATOR.estimate("POST", path, body, headers, exact=True)
    assert cheap.prompt_tokens >= exact.prompt_tokens
    assert (cheap.completion_tokens, cheap.stream, cheap.model) == (
        exact.completion_tokens,
        exact.stream,
        exact.model,
    )


def test_readings_are_kept_per_shape_and_bounded() -> None:
    def body(prose: str, cap: int) -> bytes:
        return json.dumps({"inputs": prose, "completion_args": {"max_tokens": cap}}).encode()

    first = body("a" * 500, 64)
    assert _scan(first, True) == (64, False, None)
    assert _scan(body("b" * 900, 64), True) == (64, False, None)  # same shape, other prose
    assert _scan(body("b" * 900, 65), True) == (65, False, None)  # a shape of its own
    for cap in range(2 * request._MAX_READINGS):
        assert _scan(body("c" * 200, cap), True) == (cap, False, None)
    assert len(request._READINGS) <= request._MAX_READINGS
