"""The cheap estimate reads text-only bodies without parsing them; it must never under-count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mistral_ratelimit.accounting.request import Estimator, _scan

CORPUS = Path(__file__).parent / "corpus"


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
        if _scan(body) is not None and cheap.endpoint == exact.endpoint:
            scanned += 1
        assert cheap.prompt_tokens >= exact.prompt_tokens, item["name"]
        assert cheap.completion_tokens == exact.completion_tokens, item["name"]
        assert cheap.stream == exact.stream, item["name"]
    assert scanned > 100  # the fast path really ran on most of the corpus


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
    assert _scan(body) == expected
