"""Self-check: driven by an unthrottled client, the emulator admits exactly its limits.

Like Microsoft's Azure OpenAI simulator checks its own accuracy in CI: admitted requests
per window within 2% of the limit, admitted tokens per window within 5%. Windows are short
(1-2 s) so the checks take seconds; the per-minute rungs use the same code with 60 s.
Every bound below is a count taken from the emulator's own log, never a duration.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from emulator_helpers import hammer, start_body
from mistral_ratelimit.emulator import Emulator
from mistral_ratelimit.emulator.limits import FixedWindow

pytestmark = pytest.mark.realclock

WORKERS = 24
SMALL = start_body("ping", completion_args={"max_tokens": 4})


def _run(emu: Emulator, seconds: float, body: dict[str, object] = SMALL) -> list[int]:
    return asyncio.run(hammer(emu.url, seconds=seconds, workers=WORKERS, body=body))


def test_sliding_requests_per_window_within_2_percent() -> None:
    limit = 60
    with Emulator(requests_per_second=limit, tokens_per_minute=None) as emu:
        statuses = _run(emu, 2.3)
        log = emu.log
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > 0, "the client must offer more than the limit"
    assert len(log) == len(statuses)
    assert statuses.count(200) == len(log.admitted())
    # Strict: no window of 1 s ever holds more than the limit...
    assert log.max_in_window(1.0) <= limit
    # ...and every full window is used to within 2%.
    t0 = min(r.arrival for r in log.admitted())
    for k in range(2):
        got = log.admitted_between(t0 + k, t0 + k + 1)
        assert abs(got - limit) <= 0.02 * limit, (k, got)
    assert {r.reason for r in log.rejected()} == {"requests_per_second"}


def test_fixed_window_requests_per_window_within_2_percent() -> None:
    limit = 60
    with Emulator(requests_per_second=limit, tokens_per_minute=None, algorithm="fixed") as emu:
        statuses = _run(emu, 2.3)
        window = emu.app.state.limits.rungs[0].window
        assert isinstance(window, FixedWindow)
        origin = window.origin
        log = emu.log
    assert statuses.count(429) > 0
    # Windows are aligned to the emulator's start; the first may begin before the load.
    first = int(min(r.arrival for r in log.admitted()) - origin) + 1
    for k in range(first, first + 1):
        got = log.admitted_between(origin + k, origin + k + 1)
        assert abs(got - limit) <= 0.02 * limit, (k, got)
    for k in range(first - 1, first + 2):
        assert log.admitted_between(origin + k, origin + k + 1) <= limit


def test_token_bucket_admits_burst_plus_rate() -> None:
    rate = 60
    with Emulator(requests_per_second=rate, tokens_per_minute=None, algorithm="bucket") as emu:
        _run(emu, 2.3)
        log = emu.log
    admitted = sorted(r.arrival for r in log.admitted())
    span = admitted[-1] - admitted[0]
    expected = rate + rate * span  # a full bucket at the start, then the refill rate
    assert abs(len(admitted) - expected) <= 0.02 * expected, (len(admitted), expected)


def test_tokens_per_window_within_5_percent() -> None:
    amount, per = 4000, 2.0
    body = start_body("a short question about rate limits " * 3, completion_args={"max_tokens": 16})
    with Emulator(
        requests_per_second=None, tokens_per_minute=None, limits=[(amount, per, "tokens")]
    ) as emu:
        statuses = _run(emu, 4.5, body)
        log = emu.log
    assert statuses.count(429) > 0
    assert {r.reason for r in log.rejected()} == {f"{amount}/{per:g}s:tokens"}
    assert log.max_in_window(per, unit="tokens") <= amount * 1.05
    t0 = min(r.arrival for r in log.admitted())
    for k in range(2):
        got = log.tokens_between(t0 + k * per, t0 + (k + 1) * per)
        assert abs(got - amount) <= 0.05 * amount, (k, got)
    # The log's token ledger matches what the responses reported.
    assert sum(r.tokens for r in log.admitted()) == log.tokens_between(0, float("inf"))
