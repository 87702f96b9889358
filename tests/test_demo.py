"""``mistral-ratelimit demo``: its figures, its chart, its live view, and short real runs
against the in-process emulator (the real-API path with the emulator standing in)."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rich")
pytest.importorskip("matplotlib")
pytest.importorskip("uvicorn")

from rich.console import Console

from mistral_ratelimit import Limit, MistralRatelimitClient
from mistral_ratelimit.cli import main as cli_main
from mistral_ratelimit.demo import runner
from mistral_ratelimit.demo.chart import Timeline, draw, timeline_from_log
from mistral_ratelimit.demo.live import Snapshot, progress_line, render
from mistral_ratelimit.demo.session import Session, open_session
from mistral_ratelimit.demo.summary import allowed_requests, peak_in_window, rows, summarize
from mistral_ratelimit.demo.tracking import Progress, Tracker, percentile, status_of
from mistral_ratelimit.emulator import RequestRecord
from mistral_ratelimit.limiter.base import LimiterStats

RPS = Limit(3, 1.0, "requests")
TPM = Limit(50_000, 60.0, "tokens")


# -- figures ------------------------------------------------------------------------------------
def test_allowed_requests_is_the_sliding_window_maximum() -> None:
    assert allowed_requests(RPS, 0.0) == 3  # a full window at once
    assert allowed_requests(RPS, 0.999) == 3
    assert allowed_requests(RPS, 1.0) == 6  # (t-1, t] holds the new window's three
    assert allowed_requests(Limit(1, 1.0, "requests"), 59.5) == 60


def test_peak_in_window_uses_half_open_windows() -> None:
    assert peak_in_window([(0.0, 10.0), (1.0, 7.0)], 1.0) == 10.0  # (0, 1] drops t=0
    assert peak_in_window([(0.0, 10.0), (1.0, 7.0)], 1.01) == 17.0
    events = [(0.0, 10.0), (0.5, 5.0), (1.0, 7.0), (3.0, 1.0)]
    assert peak_in_window(events, 1.0) == 15.0
    assert peak_in_window(events, 1.01) == 22.0
    assert peak_in_window([], 60.0) == 0.0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0], 0.95) == 3.0


class Http429(Exception):
    status_code = 429


class WrappedError(Exception):
    def __init__(self) -> None:
        super().__init__("boom")
        self.raw_response = type("R", (), {"status_code": 503})()


def test_tracker_classifies_and_swallows_failures() -> None:
    now = [100.0]
    tracker = Tracker(clock=lambda: now[0])
    with tracker.call("start", "async") as rec:
        now[0] = 101.0
        tracker.mark_sent()
        tracker.mark_sent()  # a retry: the first send time is kept
        now[0] = 102.0
        rec.tokens = 30
    with tracker.call("append", "sync"):
        raise Http429("Rate limit exceeded")
    with tracker.call("append", "sync"):
        raise WrappedError()
    ok, limited, failed = tracker.records()
    assert (ok.outcome, ok.sent, ok.attempts, ok.wait, ok.finished) == ("ok", 101.0, 2, 1.0, 102.0)
    assert limited.outcome == "rate_limited"
    assert failed.outcome == "error" and "boom" in (failed.error or "")
    assert status_of(WrappedError()) == 503
    p = tracker.progress()
    assert (p.done, p.ok, p.rate_limited, p.errors, p.queued, p.tokens) == (3, 1, 1, 1, 0, 30)


def test_tracker_counts_queued_calls_and_the_current_wait() -> None:
    now = [0.0]
    tracker = Tracker(clock=lambda: now[0])
    with tracker.call("start", "async"):
        now[0] = 2.5
        p = tracker.progress()
    assert (p.queued, p.at_server, p.current_wait) == (1, 0, 2.5)


def test_response_note_sets_the_wait() -> None:
    tracker = Tracker()
    response = type("Resp", (), {"extensions": {"mistral_ratelimit": {"waited": 1.25}}})()
    with tracker.call("start", "sync") as rec:
        tracker.note_response(response)
    assert rec.waited == 1.25 and rec.wait == 1.25


def record(arrival: float, status: int, prompt: int = 0, completion: int = 0) -> RequestRecord:
    return RequestRecord(
        arrival=arrival,
        wall=arrival,
        method="POST",
        path="/v1/conversations",
        status=status,
        admitted=status == 200,
        prompt_tokens=prompt,
        completion_tokens=completion,
        finished=arrival + 0.5,
    )


def test_summary_from_a_server_log() -> None:
    tracker = Tracker()
    for _ in range(4):
        with tracker.call("start", "async"):
            tracker.mark_sent()
    log = [
        record(0.0, 200, 100, 20),
        record(0.1, 200, 100, 20),
        record(0.2, 429),
        record(1.5, 200, 200, 40),
        record(1.6, 200, 200, 40),
    ]
    s = summarize(
        source="test",
        elapsed=2.0,
        calls=tracker.records(),
        limits=[RPS, TPM],
        stats=LimiterStats(rate_limited_seen=1),
        estimate_stats={"count": 2.0, "mean": 0.01, "p95_abs": 0.02, "cheap_count": 2.0},
        server_log=log,
    )
    assert s.server_429 == 1 and s.retried_429 == 1
    assert s.server_requests == 4
    assert s.requests_allowed == 6  # span 1.6 s: two windows of three
    assert s.requests_utilisation == pytest.approx(4 / 6)
    assert s.tokens_total == 720 and s.tokens_peak == 720
    assert s.tokens_utilisation == pytest.approx(720 / 50_000)
    assert s.passed
    text = "\n".join(" | ".join(r) for r in rows(s))
    assert "429s that reached the caller | 0" in text
    assert "1 absorbed and retried" in text


def test_summary_fails_when_a_429_reached_the_caller() -> None:
    tracker = Tracker()
    with tracker.call("start", "sync"):
        raise Http429()
    s = summarize(
        source="t",
        elapsed=1.0,
        calls=tracker.records(),
        limits=[RPS],
        stats=LimiterStats(),
        estimate_stats={},
        server_log=None,
    )
    assert s.rate_limited == 1 and not s.passed
    assert s.server_429 is None
    assert any("FAILED" in detail for _, _, detail in rows(s))


# -- chart and live view ----------------------------------------------------------------------
def test_timeline_bins_and_trailing_tokens() -> None:
    log = [record(10.0, 200, 100, 10), record(10.2, 200, 50, 0), record(11.1, 429)]
    t = timeline_from_log(log, origin=10.0, end=13.0, requests_limit=RPS, tokens_limit=TPM)
    starts, counts = t.requests_per_window()
    assert starts == [0.0, 1.0, 2.0] and counts == [2, 0, 0]
    assert t.rejected_per_window()[1] == [0, 1, 0]
    times, tokens = t.tokens_trailing(step=0.5)
    by_time = dict(zip(times, tokens, strict=True))
    assert by_time[0.0] == 100.0  # prompt counted at arrival
    assert by_time[0.5] == 160.0  # the second prompt, and the first reply at its end
    assert max(tokens) == 160.0


def test_draw_writes_png_and_svg(tmp_path: Path) -> None:
    t = Timeline(
        admitted=(0.1, 0.2, 1.3),
        rejected=(1.4,),
        charges=((0.1, 500.0), (1.3, 800.0)),
        requests_limit=RPS,
        tokens_limit=TPM,
        end=3.0,
    )
    png = draw(t, tmp_path / "out" / "t.png")
    svg = draw(t, tmp_path / "out" / "t.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:2000]


def test_live_view_renders_the_figures() -> None:
    snap = Snapshot(
        progress=Progress(12.0, 30, 29, 0, 1, 4, 2, 3.5, 12_345),
        duration=42.0,
        requests_in_window=2,
        tokens_in_window=25_000,
        requests_limit=RPS,
        tokens_limit=TPM,
    )
    console = Console(record=True, width=120, force_terminal=True)
    console.print(render(snap))
    text = console.export_text()
    assert "calls done 30" in text
    assert "waiting for budget 4" in text
    assert "current wait  3.5 s" in text
    assert "25,000 / 50,000 tokens per 60 s" in text
    assert "2 / 3 requests per 1 s" in text
    # Without a terminal, the one-line report shows the same figures against the limits.
    line = progress_line(snap)
    assert "done 30 (ok 29, 429s to caller 0, errors 1)  waiting 4" in line
    assert "2 / 3 requests per 1 s  25,000 / 50,000 tokens per 60 s" in line


# -- real runs against the emulator ------------------------------------------------------------
def short_options(tmp_path: Path, **kw: Any) -> runner.DemoOptions:
    fields: dict[str, Any] = {
        "duration": 5.0,
        "output": tmp_path,
        "live": False,
        "requests_per_second": 5.0,
        "tokens_per_minute": 200_000,
        "stream_tokens_per_second": 400.0,
        "time_to_first_token": 0.02,
    }
    fields.update(kw)
    return runner.DemoOptions(**fields)


@pytest.mark.sdk
def test_short_demo_against_the_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "PROGRESS_EVERY", 1.0)
    out = io.StringIO()
    result = runner.run_demo(short_options(tmp_path), Console(file=out, width=400))
    s = result.summary
    text = out.getvalue()
    assert result.exit_code == 0, text
    assert s.rate_limited == 0 and s.errors == 0
    assert s.sync_calls > 0 and s.async_calls > 0
    for kind in ("start", "start_stream", "append", "append_stream", "restart"):
        assert s.by_kind.get(kind, 0) > 0, (kind, s.by_kind)
    # Every call reached the server exactly once more than the 429s it absorbed.
    assert s.server_requests == s.calls
    assert s.server_429 == s.retried_429
    assert s.requests_limit == Limit(5, 1.0, "requests")
    assert s.tokens_total > 0 and 0 < (s.tokens_utilisation or 0) <= 1.0
    # Every request was estimated: exactly, or by the cheap upper bound when room was ample.
    est = s.estimate_exact
    assert est["count"] + est["cheap_count"] == s.calls, est
    assert result.chart is not None and result.chart.read_bytes()[:4] == b"\x89PNG"
    assert "429s that reached the caller" in text
    # Not a terminal: plain progress lines, with the tokens against the limit.
    assert re.search(r"\d[\d,]* / 200,000 tokens per 60 s", text), text
    assert re.search(r"\d / 5 requests per 1 s", text), text
    assert f"Timeline chart: {result.chart.resolve()}" in text.replace("\n", "")
    assert "PASS" in text


@pytest.mark.sdk
def test_real_path_with_the_emulator_standing_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--real`` end to end, except that the "real API" is the emulator: the summary and
    the chart come from the callers' own records, as there is no server log to read."""
    monkeypatch.setenv("MISTRAL_API_KEY", "not-a-real-key")

    @contextlib.contextmanager
    def stand_in(**kw: Any) -> Iterator[Session]:
        assert kw["real"] is True
        with open_session(real=False, requests_per_second=5, tokens_per_minute=200_000) as session:
            yield Session(session.client, session.tracker, session.model, emulator=None)

    monkeypatch.setattr(runner, "open_session", stand_in)
    out = io.StringIO()
    result = runner.run_demo(
        runner.DemoOptions(real=True, duration=3.0, output=tmp_path, live=True),
        Console(file=out, width=140, force_terminal=True),
    )
    assert "waiting for budget" in out.getvalue()  # the live view was drawn
    s = result.summary
    assert result.exit_code == 0, out.getvalue()
    assert s.server_429 is None  # not knowable on the real API
    assert s.calls > 0 and s.server_requests == s.calls
    assert s.by_kind.get("start_stream", 0) + s.by_kind.get("append_stream", 0) > 0
    assert result.chart is not None and result.chart.exists()


def test_real_needs_a_key_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)

    def no_session(**kw: Any) -> Any:
        raise AssertionError("no client may be built without a key")

    monkeypatch.setattr(runner, "open_session", no_session)
    assert cli_main(["demo", "--real"]) == 2
    assert "MISTRAL_API_KEY" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="MISTRAL_API_KEY"):
        runner.run_demo(runner.DemoOptions(real=True))


def test_real_session_targets_the_real_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", "sk-test-not-real")
    with open_session(real=True) as session:  # built, nothing sent
        assert session.real and session.emulator is None
        assert "real Mistral API" in session.where
        assert "sk-test-not-real" not in repr(session.client)


def test_emulator_session_never_sends_the_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", "sk-secret-from-env")
    with open_session(real=False, requests_per_second=50) as session:
        assert session.client.config.api_key != "sk-secret-from-env"
        assert session.emulator is not None


@pytest.mark.sdk
def test_default_client_keeps_the_free_tier_per_second_window() -> None:
    from mistral_ratelimit.emulator import Emulator

    with Emulator() as emu:  # the free tier: 1 request/s, 500,000 tokens/min
        client = MistralRatelimitClient(server_url=emu.url)  # tier defaults, from headers
        with client:
            for i in range(2):
                client.beta.conversations.start(inputs=f"hello {i}", model="m")
            requests = [lim for lim in client.stats().limits if lim.unit == "requests"]
    # What the client learnt (60 per minute) comes with its pace: never 2 in one second.
    assert Limit(60, 60.0, "requests") in requests
    assert any(lim.amount <= 1 and lim.per_seconds >= 1.0 for lim in requests)
