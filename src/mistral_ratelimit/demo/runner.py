"""``mistral-ratelimit demo``: the workload, live progress, the summary and the chart.

Without ``--real`` it always runs against the in-process emulator, even when
``MISTRAL_API_KEY`` is set: spending quota takes an explicit flag.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from ..accounting.tokenizer import tokenizer_info
from ..config import Limit, RatelimitConfig
from .chart import draw, timeline_from_calls, timeline_from_log
from .live import Snapshot, live_view, progress_line
from .session import Session, api_key_present, open_session
from .summary import Summary, summarize, table
from .workload import Workload, WorkloadPlan

#: Free tier is 1 request/s and 500,000 tokens/min. Tightened so a one-minute run shows
#: both limits binding: requests for most of it, tokens once long documents arrive.
DEMO_REQUESTS_PER_SECOND = 3.0
DEMO_TOKENS_PER_MINUTE = 50_000
DEMO_PLAN = WorkloadPlan()
#: Against the real API: a few calls, small replies, the account's own limits.
REAL_PLAN = WorkloadPlan(
    duration=12.0,
    conversations=2,
    sync_threads=1,
    turns=3,
    max_tokens=48,
    document_phases=(),
)
CHART_NAME = "demo-timeline"
#: Seconds between progress lines when the output is not a terminal (no live view).
PROGRESS_EVERY = 5.0


@dataclass(frozen=True)
class DemoOptions:
    real: bool = False
    duration: float | None = None  # seconds of new calls; None: the plan's default
    output: Path = Path("demo-output")
    chart_format: str = "png"
    requests_per_second: float = DEMO_REQUESTS_PER_SECOND
    tokens_per_minute: float = DEMO_TOKENS_PER_MINUTE
    live: bool | None = None  # None: only on a terminal
    stream_tokens_per_second: float = 150.0
    time_to_first_token: float = 0.15


@dataclass(frozen=True)
class DemoResult:
    summary: Summary
    chart: Path | None
    exit_code: int


def _server_limits(session: Session, options: DemoOptions) -> list[Limit]:
    if session.emulator is not None:
        cfg = RatelimitConfig(
            api_key="unused",
            requests_per_second=options.requests_per_second,
            tokens_per_minute=options.tokens_per_minute,
        )
        return [lim for lim, _ in cfg.engine_limits()]
    # The real API: what the client discovered from the headers (or the tier defaults).
    return list(session.client.stats().limits)


def _sampler(session: Session, duration: float, limits: list[Limit]) -> Snapshot:
    requests_limit = next((lim for lim in limits if lim.unit == "requests"), None)
    tokens_limit = next((lim for lim in limits if lim.unit == "tokens"), None)
    r_window = requests_limit.per_seconds if requests_limit else 1.0
    t_window = tokens_limit.per_seconds if tokens_limit else 60.0
    now = time.monotonic()
    if session.emulator is not None:
        log = session.emulator.log
        requests = float(log.admitted_between(now - r_window, now + 1e-6))
        tokens = float(log.tokens_between(now - t_window, now + 1e-6))
    else:
        calls = session.tracker.records()
        requests = float(sum(1 for c in calls if c.sent is not None and c.sent > now - r_window))
        tokens = float(sum(c.tokens for c in calls if (c.finished or 0.0) > now - t_window))
    return Snapshot(
        progress=session.tracker.progress(),
        duration=duration,
        requests_in_window=requests,
        tokens_in_window=tokens,
        requests_limit=requests_limit,
        tokens_limit=tokens_limit,
    )


async def _drive(workload: Workload, session: Session, console: Console, live: bool) -> None:
    duration = workload.plan.duration

    def sample() -> Snapshot:
        # The client's limits: the server's own once discovered from its headers.
        return _sampler(session, duration, list(session.client.stats().limits))

    if live:
        async with live_view(sample, console):
            await workload.run()
        return

    async def report() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            console.print(progress_line(sample()), highlight=False)

    task = asyncio.create_task(report())
    try:
        await workload.run()
    finally:
        task.cancel()


def run_demo(options: DemoOptions, console: Console | None = None) -> DemoResult:
    console = console if console is not None else Console()
    live = console.is_terminal if options.live is None else options.live
    if options.real:
        if not api_key_present():
            raise SystemExit("--real needs the MISTRAL_API_KEY environment variable")
        plan = REAL_PLAN
        fields: dict[str, Any] = {}
        emulator_settings: dict[str, Any] = {}
    else:
        plan = DEMO_PLAN
        fields = {
            "requests_per_second": options.requests_per_second,
            "tokens_per_minute": options.tokens_per_minute,
        }
        emulator_settings = {
            "stream_tokens_per_second": options.stream_tokens_per_second,
            "time_to_first_token": options.time_to_first_token,
        }
    if options.duration is not None:
        plan = replace(plan, duration=options.duration)
    # Load the tokenizer vocabulary now, not inside the first requests: the load holds the
    # GIL for a few hundred ms, and a request granted before it but delivered after it
    # reaches the server later than the limiter booked it (the window margin is 25 ms).
    tokenizer_info()
    with open_session(real=options.real, emulator_settings=emulator_settings, **fields) as session:
        console.print(f"Driving {session.where}", highlight=False)
        console.print(
            f"{plan.conversations} async conversations + {plan.sync_threads} sync thread(s) "
            f"for {plan.duration:.0f} s, through one MistralRatelimitClient "
            f"({session.client.limiter!r})",
            highlight=False,
        )
        workload = Workload(session.client, session.tracker, plan, session.model)
        asyncio.run(_drive(workload, session, console, live))
        end = time.monotonic()
        limits = _server_limits(session, options)
        server_log = session.emulator.log.snapshot() if session.emulator is not None else None
        calls = session.tracker.records()
        summary = summarize(
            source=session.where,
            elapsed=end - session.tracker.started,
            calls=calls,
            limits=limits,
            stats=session.client.stats(),
            estimate_stats=session.client.estimator.error_stats(),
            server_log=server_log,
        )
    console.print(table(summary))
    requests_limit = summary.requests_limit
    tokens_limit = summary.tokens_limit
    origin = min((c.started for c in calls), default=session.tracker.started)
    timeline = (
        timeline_from_log(server_log, origin, end, requests_limit, tokens_limit)
        if server_log is not None
        else timeline_from_calls(calls, origin, end, requests_limit, tokens_limit)
    )
    path = options.output / f"{CHART_NAME}.{options.chart_format}"
    chart = draw(timeline, path, title=f"mistral-ratelimit demo against {summary.source}")
    console.print(f"Timeline chart: {chart.resolve()}", highlight=False)
    if summary.passed:
        console.print("[green]PASS[/green]: zero 429s reached the caller.")
        code = 0
    else:
        console.print(
            f"[bold red]FAIL[/bold red]: {summary.rate_limited} 429s reached the caller, "
            f"{summary.errors} other errors."
        )
        code = 1
    return DemoResult(summary, chart, code)


__all__ = ["DEMO_PLAN", "REAL_PLAN", "DemoOptions", "DemoResult", "run_demo"]
