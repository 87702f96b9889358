"""Request bodies checked before anything is charged, answered as the real API answers them.

A body the API cannot use gets a 422 in FastAPI's shape,
``{"detail": [{"type": ..., "loc": ["body", ...], "msg": ..., "input": ...}]}``: the shape
the SDK parses into ``HTTPValidationError`` (``models/httpvalidationerror.py``,
``validationerror.py``: ``loc``, ``msg``, ``type``, ``input``) and the emulator's only
422 shape; the messages and types are pydantic's. The fields and their types are the SDK's
request models (reference: mistral-wire.md §1). Only the types the emulator relies on are
checked, so a value it would mishandle is refused and not a crash, and unknown fields
pass, as they do at the API.

A 422 costs no tokens: the body is refused before its prompt is counted. It still counts
as a request, as the gate admitted it on arrival: rate limits are metered at the gateway,
in front of the service that validates bodies (the ``x-kong-*`` headers of Mistral's
responses; reference §4).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Deepest nesting of arrays and objects accepted. pydantic-core's JSON parser stops at
#: about this depth ("recursion limit exceeded", tested offline with 2.x); Python's own
#: parser and every recursive walk of the body (token counting, tool arguments) would
#: otherwise meet the interpreter's recursion limit on a deeper one.
MAX_JSON_DEPTH = 200

Detail = dict[str, Any]


@dataclass(frozen=True)
class Expect:
    """What a field must hold: one of ``types`` (``None`` always allowed), optionally one
    of ``choices`` or a number at least ``ge``, and for objects and lists what their
    fields and items must hold."""

    types: tuple[type, ...]
    msg: str
    type_: str
    choices: tuple[str, ...] = ()
    fields: Mapping[str, Expect] = field(default_factory=dict)
    items: Expect | None = None
    ge: int | None = None


STRING = Expect((str,), "Input should be a valid string", "string_type")
INTEGER = Expect((int,), "Input should be a valid integer", "int_type")
#: ``max_tokens``: the API answers 422 for a negative one (pydantic's ``ge=0``), and for
#: a float, even ``1e30`` or ``3.0``, or a bool, as for any integer field here.
COUNT = Expect(INTEGER.types, INTEGER.msg, INTEGER.type_, ge=0)
NUMBER = Expect((int, float), "Input should be a valid number", "float_type")
BOOLEAN = Expect((bool,), "Input should be a valid boolean", "bool_type")
OBJECT = Expect((dict,), "Input should be a valid dictionary", "dict_type")
LIST = Expect((list,), "Input should be a valid list", "list_type")


def _one_of(*choices: str) -> Expect:
    quoted = ", ".join(f"'{c}'" for c in choices)
    return Expect((str,), f"Input should be {quoted}", "literal_error", choices=choices)


COMPLETION_ARGS = Expect(
    (dict,),
    OBJECT.msg,
    OBJECT.type_,
    fields={
        "max_tokens": COUNT,
        "random_seed": INTEGER,
        "temperature": NUMBER,
        "top_p": NUMBER,
        "presence_penalty": NUMBER,
        "frequency_penalty": NUMBER,
        "stop": Expect(
            (str, list), "Input should be a valid string or list", "union_type", items=STRING
        ),
        "response_format": OBJECT,
        "prediction": OBJECT,
    },
)
ENTRY = Expect(
    (dict,),
    OBJECT.msg,
    OBJECT.type_,
    fields={
        "type": STRING,
        "role": _one_of("user", "assistant"),
        "content": Expect((str, list), "Input should be a valid string or list", "union_type"),
        "id": STRING,
    },
)
INPUTS = Expect(
    (str, list), "Input should be a valid string or list of entries", "union_type", items=ENTRY
)
FUNCTION = Expect(
    (dict,),
    OBJECT.msg,
    OBJECT.type_,
    fields={"name": STRING, "description": STRING, "parameters": OBJECT},
)
TOOL = Expect((dict,), OBJECT.msg, OBJECT.type_, fields={"type": STRING, "function": FUNCTION})
TOOLS = Expect((list,), LIST.msg, LIST.type_, items=TOOL)
_CONVERSATION = {
    "inputs": INPUTS,
    "stream": BOOLEAN,
    "store": BOOLEAN,
    "handoff_execution": _one_of("client", "server"),
    "completion_args": COMPLETION_ARGS,
    "instructions": STRING,
    "tools": TOOLS,
    "guardrails": LIST,
    "name": STRING,
    "description": STRING,
    "metadata": OBJECT,
    "tool_confirmations": Expect((list,), LIST.msg, LIST.type_, items=OBJECT),
}
START = {
    **_CONVERSATION,
    "model": STRING,
    "agent_id": STRING,
    "agent_version": Expect((str, int), "Input should be a valid string or integer", "union_type"),
}
APPEND = _CONVERSATION
RESTART = {**_CONVERSATION, "from_entry_id": STRING}
AGENT = {
    "model": STRING,
    "name": STRING,
    "description": STRING,
    "instructions": STRING,
    "tools": TOOLS,
    "completion_args": COMPLETION_ARGS,
    "handoffs": LIST,
    "metadata": OBJECT,
}


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: no JSON number is infinite
        raise ValueError(f"number out of range: {text}")
    return value


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes | str) -> Any:
    """``json.loads`` of a strict JSON document, as pydantic-core's parser reads one: no
    ``NaN`` or infinite numbers, no lone surrogate escapes (``"\\ud800"``), nesting at most
    :data:`MAX_JSON_DEPTH` deep. Such values would also fail later, when a reply that
    quotes them is encoded (``JSONResponse`` refuses both).

    Raises ``ValueError`` for anything else."""
    try:
        doc = json.loads(raw, parse_float=_finite, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("recursion limit exceeded") from None
    # Depth first with an explicit stack: the walk itself must not recurse.
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            node.encode()  # UnicodeEncodeError (a ValueError) for a lone surrogate
            continue
        if depth > MAX_JSON_DEPTH:
            raise ValueError("recursion limit exceeded")
        if isinstance(node, dict):
            stack.extend((key, depth) for key in node)
            node = node.values()
        stack.extend((c, depth + 1) for c in node if isinstance(c, (str, dict, list)))
    return doc


def _check(
    value: Any, expect: Expect, loc: list[str | int], out: list[Detail], nullable: bool = True
) -> None:
    if value is None and nullable:
        return
    # bool is an int to isinstance, never to the API.
    wrong_type = not isinstance(value, expect.types) or (
        isinstance(value, bool) and bool not in expect.types
    )
    if wrong_type or (expect.choices and value not in expect.choices):
        out.append({"type": expect.type_, "loc": loc, "msg": expect.msg, "input": value})
    elif expect.ge is not None and value < expect.ge:
        out.append(
            {
                "type": "greater_than_equal",
                "loc": loc,
                "msg": f"Input should be greater than or equal to {expect.ge}",
                "input": value,
                "ctx": {"ge": expect.ge},
            }
        )
    elif isinstance(value, dict):
        for name, inner in expect.fields.items():
            _check(value.get(name), inner, [*loc, name], out)
    elif isinstance(value, list) and expect.items is not None:
        for i, item in enumerate(value):
            _check(item, expect.items, [*loc, i], out, nullable=False)


def body_errors(
    body: Mapping[str, Any], fields: Mapping[str, Expect], required: tuple[str, ...] = ()
) -> list[Detail]:
    """FastAPI's ``detail`` list for ``body``: empty when it is usable."""
    out: list[Detail] = []
    for name, expect in fields.items():
        value = body.get(name)
        if value is None and name in required:
            detail = {"type": "missing", "loc": ["body", name], "msg": "Field required"}
            out.append({**detail, "input": dict(body)})
        else:
            _check(value, expect, ["body", name], out)
    return out


__all__ = [
    "AGENT",
    "APPEND",
    "MAX_JSON_DEPTH",
    "RESTART",
    "START",
    "body_errors",
    "parse_json",
]
