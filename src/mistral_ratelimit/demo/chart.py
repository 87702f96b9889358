"""The demo's timeline chart: requests admitted per window and tokens in the trailing token
window, each against its limit. Data from the server's log (or, on the real API, from what
the callers saw); drawn with matplotlib's Agg backend, so no display is needed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Limit
from .tracking import CallRecord

if TYPE_CHECKING:
    from ..emulator import RequestRecord


@dataclass(frozen=True)
class Timeline:
    """Events in seconds since ``origin``."""

    admitted: tuple[float, ...]
    rejected: tuple[float, ...]  # 429s the server issued
    charges: tuple[tuple[float, float], ...]  # (time, tokens)
    requests_limit: Limit | None
    tokens_limit: Limit | None
    end: float

    def requests_per_window(self) -> tuple[list[float], list[int]]:
        """Admitted requests counted in consecutive windows of the request limit."""
        width = self.requests_limit.per_seconds if self.requests_limit else 1.0
        return _bins(self.admitted, width, self.end)

    def rejected_per_window(self) -> tuple[list[float], list[int]]:
        width = self.requests_limit.per_seconds if self.requests_limit else 1.0
        return _bins(self.rejected, width, self.end)

    def tokens_trailing(self, step: float = 0.25) -> tuple[list[float], list[float]]:
        """Tokens in the trailing token window ``(t - W, t]``, sampled every ``step``."""
        window = self.tokens_limit.per_seconds if self.tokens_limit else 60.0
        charges = sorted(self.charges)
        times: list[float] = []
        values: list[float] = []
        n = math.ceil(self.end / step) + 1
        for i in range(n):
            t = i * step
            times.append(t)
            values.append(sum(c for at, c in charges if t - window < at <= t))
        return times, values


def _bins(events: Sequence[float], width: float, end: float) -> tuple[list[float], list[int]]:
    count = max(1, math.ceil(end / width))
    starts = [i * width for i in range(count)]
    totals = [0] * count
    for t in events:
        i = min(count - 1, max(0, int(t // width)))
        totals[i] += 1
    return starts, totals


def timeline_from_log(
    records: Sequence[RequestRecord],
    origin: float,
    end: float,
    requests_limit: Limit | None,
    tokens_limit: Limit | None,
) -> Timeline:
    """From the emulator's log: prompt tokens count at admission, output when it ended."""
    admitted = [r for r in records if r.admitted]
    charges: list[tuple[float, float]] = []
    for r in admitted:
        charges.append((r.arrival - origin, float(r.prompt_tokens)))
        if r.completion_tokens:
            charges.append(((r.finished or r.arrival) - origin, float(r.completion_tokens)))
    return Timeline(
        admitted=tuple(r.arrival - origin for r in admitted),
        rejected=tuple(r.arrival - origin for r in records if r.status == 429),
        charges=tuple(charges),
        requests_limit=requests_limit,
        tokens_limit=tokens_limit,
        end=end - origin,
    )


def timeline_from_calls(
    calls: Sequence[CallRecord],
    origin: float,
    end: float,
    requests_limit: Limit | None,
    tokens_limit: Limit | None,
) -> Timeline:
    """From the callers' records (the real API keeps no log we can read)."""
    return Timeline(
        admitted=tuple(c.sent - origin for c in calls if c.sent is not None),
        rejected=(),
        charges=tuple(((c.finished or c.started) - origin, float(c.tokens)) for c in calls),
        requests_limit=requests_limit,
        tokens_limit=tokens_limit,
        end=end - origin,
    )


def draw(timeline: Timeline, path: Path, *, title: str = "mistral-ratelimit demo") -> Path:
    """Save the chart to ``path`` (PNG or SVG by its suffix) and return the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in threads and CI
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    try:
        starts, counts = timeline.requests_per_window()
        width = timeline.requests_limit.per_seconds if timeline.requests_limit else 1.0
        top.bar(starts, counts, width=width * 0.9, align="edge", color="#4878cf", label="admitted")
        r_starts, r_counts = timeline.rejected_per_window()
        if any(r_counts):
            top.bar(
                r_starts,
                r_counts,
                bottom=counts,
                width=width * 0.9,
                align="edge",
                color="#d65f5f",
                label="429 from the server",
            )
        if timeline.requests_limit is not None:
            top.axhline(
                timeline.requests_limit.amount,
                color="black",
                linestyle="--",
                linewidth=1,
                label=f"limit: {timeline.requests_limit.amount:g} per {width:g} s",
            )
        top.set_ylabel(f"requests per {width:g} s")
        top.legend(loc="upper right")
        top.set_title(title)

        times, values = timeline.tokens_trailing()
        window = timeline.tokens_limit.per_seconds if timeline.tokens_limit else 60.0
        bottom.fill_between(times, values, step="post", color="#6acc65", alpha=0.5)
        bottom.plot(times, values, color="#2d7a2a", label=f"tokens in the last {window:g} s")
        if timeline.tokens_limit is not None:
            bottom.axhline(
                timeline.tokens_limit.amount,
                color="black",
                linestyle="--",
                linewidth=1,
                label=f"limit: {timeline.tokens_limit.amount:,.0f} per {window:g} s",
            )
        bottom.set_ylabel("tokens")
        bottom.set_xlabel("seconds since start")
        bottom.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


__all__ = ["Timeline", "draw", "timeline_from_calls", "timeline_from_log"]
