"""The demo's figures, computed from what the callers saw, what the server logged and what
the limiter and estimator counted; and the table that shows them."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import Limit
from ..limiter.base import LimiterStats
from .tracking import CallRecord, percentile

if TYPE_CHECKING:
    from rich.table import Table

    from ..emulator import RequestRecord


def allowed_requests(limit: Limit, span: float) -> int:
    """Most requests a sliding window of ``limit`` admits in a closed interval of ``span``
    seconds: a full window at the start, then a full window per whole period after it."""
    return int(limit.amount * (math.floor(span / limit.per_seconds + 1e-9) + 1))


def peak_in_window(events: Sequence[tuple[float, float]], seconds: float) -> float:
    """Largest sum of weights over any window ``(t - seconds, t]``."""
    ordered = sorted(events)
    best = total = 0.0
    lo = 0
    for t, weight in ordered:
        total += weight
        while ordered[lo][0] <= t - seconds:
            total -= ordered[lo][1]
            lo += 1
        best = max(best, total)
    return best


@dataclass(frozen=True)
class Summary:
    source: str  # "emulator" or "real API"
    elapsed: float
    calls: int
    ok: int
    rate_limited: int  # 429s that reached the caller: the goal is 0
    errors: int
    by_kind: Mapping[str, int]
    sync_calls: int
    async_calls: int
    server_requests: int  # requests the server admitted (or, on the real API, sent)
    server_429: int | None  # 429s the server issued (None: not known on the real API)
    retried_429: int  # 429s the client absorbed and retried
    requests_limit: Limit | None
    requests_allowed: int
    tokens_limit: Limit | None
    tokens_total: float
    tokens_peak: float  # most tokens in any window of the token limit
    wait_p50: float
    wait_p95: float
    wait_max: float
    estimate_exact: Mapping[str, float] = field(default_factory=dict)
    estimate_limiter_mean: float = 0.0
    estimate_samples: int = 0
    first_errors: tuple[str, ...] = ()

    @property
    def requests_utilisation(self) -> float | None:
        return self.server_requests / self.requests_allowed if self.requests_allowed else None

    @property
    def tokens_utilisation(self) -> float | None:
        if self.tokens_limit is None or not self.tokens_limit.amount:
            return None
        return self.tokens_peak / self.tokens_limit.amount

    @property
    def passed(self) -> bool:
        """Zero 429s reached the caller and every call succeeded."""
        return self.calls > 0 and self.rate_limited == 0 and self.errors == 0


def summarize(
    *,
    source: str,
    elapsed: float,
    calls: Sequence[CallRecord],
    limits: Sequence[Limit],
    stats: LimiterStats,
    estimate_stats: Mapping[str, float],
    server_log: Sequence[RequestRecord] | None = None,
) -> Summary:
    """``limits`` are the server's (the emulator's settings, or what the client discovered)."""
    requests_limit = next((lim for lim in limits if lim.unit == "requests"), None)
    tokens_limit = next(
        (lim for lim in limits if lim.unit == "tokens" and lim.per_seconds <= 3600), None
    )
    if server_log is not None:
        admitted = [r for r in server_log if r.admitted]
        arrivals = [r.arrival for r in admitted]
        charges: list[tuple[float, float]] = []
        for r in admitted:
            charges.append((r.arrival, float(r.prompt_tokens)))
            charges.append((r.finished or r.arrival, float(r.completion_tokens)))
        server_429: int | None = sum(1 for r in server_log if r.status == 429)
    else:
        arrivals = [c.sent for c in calls if c.sent is not None]
        charges = [(c.finished or c.started, float(c.tokens)) for c in calls]
        server_429 = None
    span = max(arrivals) - min(arrivals) if arrivals else 0.0
    waits = [w for c in calls if (w := c.wait) is not None]
    done = [c for c in calls if c.outcome is not None]
    return Summary(
        source=source,
        elapsed=elapsed,
        calls=len(done),
        ok=sum(c.outcome == "ok" for c in done),
        rate_limited=sum(c.outcome == "rate_limited" for c in done),
        errors=sum(c.outcome == "error" for c in done),
        by_kind=dict(Counter(c.kind for c in done)),
        sync_calls=sum(c.mode == "sync" for c in done),
        async_calls=sum(c.mode == "async" for c in done),
        server_requests=len(arrivals),
        server_429=server_429,
        retried_429=stats.rate_limited_seen,
        requests_limit=requests_limit,
        requests_allowed=(
            allowed_requests(requests_limit, span) if requests_limit and arrivals else 0
        ),
        tokens_limit=tokens_limit,
        tokens_total=sum(n for _, n in charges),
        tokens_peak=peak_in_window(charges, tokens_limit.per_seconds) if tokens_limit else 0.0,
        wait_p50=percentile(waits, 0.50),
        wait_p95=percentile(waits, 0.95),
        wait_max=max(waits, default=0.0),
        estimate_exact=dict(estimate_stats),
        estimate_limiter_mean=stats.estimate_error_mean,
        estimate_samples=stats.estimate_samples,
        first_errors=tuple(c.error for c in done if c.error)[:3],
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _limit(limit: Limit | None) -> str:
    if limit is None:
        return "none"
    return f"{limit.amount:,.0f} {limit.unit} / {limit.per_seconds:g} s"


def rows(s: Summary) -> list[tuple[str, str, str]]:
    """(figure, value, comment) rows of the summary table."""
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(s.by_kind.items()))
    est = s.estimate_exact
    exact_n = int(est.get("count", 0))
    cheap_n = int(est.get("cheap_count", 0))
    exact = (
        f"{est.get('mean', 0.0):+.1%} mean, {est.get('p95_abs', 0.0):.1%} p95 |err|"
        if exact_n
        else "no exact estimates"
    )
    out = [
        ("calls", f"{s.calls}", f"{s.async_calls} async, {s.sync_calls} sync; {kinds}"),
        (
            "429s that reached the caller",
            f"{s.rate_limited}",
            "goal: 0" + ("" if s.rate_limited == 0 else "  <-- FAILED"),
        ),
        (
            "429s the server issued",
            "n/a" if s.server_429 is None else f"{s.server_429}",
            f"{s.retried_429} absorbed and retried by the client",
        ),
        ("other errors", f"{s.errors}", "; ".join(s.first_errors)),
        (
            "requests limit",
            _pct(s.requests_utilisation),
            f"{s.server_requests} of {s.requests_allowed} allowed; {_limit(s.requests_limit)}",
        ),
        (
            "tokens limit",
            _pct(s.tokens_utilisation),
            f"peak {s.tokens_peak:,.0f} in one window; {_limit(s.tokens_limit)};"
            f" {s.tokens_total:,.0f} tokens in all",
        ),
        (
            "wait before sending",
            f"p50 {s.wait_p50:.2f} s",
            f"p95 {s.wait_p95:.2f} s, max {s.wait_max:.2f} s",
        ),
        (
            "estimate error (prompt tokens)",
            f"{exact_n} exact",
            f"{exact}; {cheap_n} cheap upper bounds, {est.get('cheap_mean', 0.0):+.0%} mean",
        ),
        ("run time", f"{s.elapsed:.1f} s", s.source),
    ]
    return out


def table(s: Summary) -> Table:
    from rich.table import Table

    t = Table(title="mistral-ratelimit demo: summary", show_lines=False)
    t.add_column("figure", style="bold")
    t.add_column("value", justify="right")
    t.add_column("detail", overflow="fold")
    for name, value, detail in rows(s):
        style = None
        if name.startswith("429s that reached"):
            style = "green" if s.rate_limited == 0 else "bold red"
        t.add_row(name, value, detail, style=style)
    return t


__all__ = ["Summary", "allowed_requests", "peak_in_window", "rows", "summarize", "table"]
