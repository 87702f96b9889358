"""Live progress while the demo runs: calls done and queued, the current wait, and how full
each limit's window is. Drawn with rich; refreshed from the event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..config import Limit
from .tracking import Progress


@dataclass(frozen=True)
class Snapshot:
    progress: Progress
    duration: float
    requests_in_window: float  # in the request limit's current window
    tokens_in_window: float  # in the token limit's trailing window
    requests_limit: Limit | None
    tokens_limit: Limit | None


def against_limit(used: float, limit: Limit | None, unit: str) -> str:
    """``25,000 / 50,000 tokens per 60 s``: what the window holds, against its limit."""
    if limit is None:
        return f"{used:,.0f} {unit} (no limit)"
    return f"{used:,.0f} / {limit.amount:,.0f} {unit} per {limit.per_seconds:g} s"


def _gauge(used: float, limit: Limit | None, unit: str) -> Table:
    grid = Table.grid(padding=(0, 1))
    if limit is None:
        grid.add_row(Text(against_limit(used, limit, unit)))
        return grid
    share = min(1.0, used / limit.amount) if limit.amount else 0.0
    grid.add_row(
        ProgressBar(total=1.0, completed=share, width=40),
        Text(against_limit(used, limit, unit)),
    )
    return grid


def progress_line(s: Snapshot) -> str:
    """The same figures as :func:`render`, on one plain line, for output that is not a
    terminal (a log, CI)."""
    p = s.progress
    return (
        f"{p.elapsed:5.1f} s  done {p.done} (ok {p.ok}, 429s to caller {p.rate_limited}, "
        f"errors {p.errors})  waiting {p.queued}  current wait {p.current_wait:.1f} s  "
        f"{against_limit(s.requests_in_window, s.requests_limit, 'requests')}  "
        f"{against_limit(s.tokens_in_window, s.tokens_limit, 'tokens')}  "
        f"(tokens reported {p.tokens:,})"
    )


def render(s: Snapshot) -> Group:
    p = s.progress
    head = Text.assemble(
        ("mistral-ratelimit demo  ", "bold"),
        f"{p.elapsed:5.1f} s of ~{s.duration:.0f} s   ",
        ("calls done ", "dim"),
        f"{p.done}  ",
        ("ok ", "dim"),
        (f"{p.ok}", "green"),
        ("  429s to caller ", "dim"),
        (f"{p.rate_limited}", "green" if p.rate_limited == 0 else "bold red"),
        ("  errors ", "dim"),
        (f"{p.errors}", "green" if p.errors == 0 else "bold red"),
    )
    queue = Text.assemble(
        ("waiting for budget ", "dim"),
        f"{p.queued}  ",
        ("at the server ", "dim"),
        f"{p.at_server}  ",
        ("current wait ", "dim"),
        f"{p.current_wait:4.1f} s  ",
        ("tokens reported ", "dim"),
        f"{p.tokens:,}",
    )
    return Group(
        head,
        queue,
        _gauge(s.requests_in_window, s.requests_limit, "requests"),
        _gauge(s.tokens_in_window, s.tokens_limit, "tokens"),
    )


@contextlib.asynccontextmanager
async def live_view(
    sample: Callable[[], Snapshot], console: Console, *, refresh: float = 0.25
) -> AsyncIterator[None]:
    """Show ``sample()`` until the block ends. On a non-terminal only the last frame shows."""
    with Live(render(sample()), console=console, auto_refresh=False, transient=False) as live:

        async def update() -> None:
            while True:
                await asyncio.sleep(refresh)
                live.update(render(sample()), refresh=True)

        task = asyncio.create_task(update())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            live.update(render(sample()), refresh=True)


__all__ = ["Snapshot", "against_limit", "live_view", "progress_line", "render"]
