"""How the budget fills and drains: the real engine on a simulated clock. No API key needed.

Two runs of ``RateLimiter`` (the in-memory engine every client uses), driven by a fake clock
so the picture is exact and instant:

1. ``requests_per_second=1.2`` with six requests fired at once. The engine reads 1.2/s as
   one request per 0.833 s window, so the requests go one by one, each one window plus the
   engine's margin after the previous: 0, 0.867, 1.733, ... Two requests never share an
   instant. (A token-bucket timeline that sends requests 3 and 4 both at 0.67 s at
   1.2 requests/s puts two requests in one 0.833 s window.)
2. ``tokens_per_minute=10,000`` with 3,000-token requests every 5 s: three fit at once,
   the fourth waits until the first has left the 60 s window.

Prints both timelines and saves the chart as PNG and SVG.

    python examples/visualize_rate_limiting.py [--output DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mistral_ratelimit import Limit, RatelimitConfig, RateLimiter
from mistral_ratelimit.limiter.window import WindowState


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def grant_times(
    config: RatelimitConfig, requests: Sequence[tuple[float, float]]
) -> tuple[list[float], Limit, float]:
    """When each ``(arrival, tokens)`` request may go, as the engine books it.

    Returns the grant times, the engine's binding limit (its only one here) and the
    window margin.
    """
    clock = FakeClock()
    limiter = RateLimiter(config, clock=clock)
    grants = []
    for arrival, tokens in requests:
        clock.now = arrival
        grants.append(limiter.reserve(tokens).at)
    (limit,) = limiter.limits
    return grants, limit, config.window_margin


def requests_timeline(rps: float = 1.2, count: int = 6) -> list[float]:
    config = RatelimitConfig(api_key="-", requests_per_second=rps, tokens_per_minute=None)
    return grant_times(config, [(0.0, 0.0)] * count)[0]


def fill_curve(
    grants: Sequence[float], costs: Sequence[float], limit: Limit, margin: float, end: float
) -> tuple[list[float], list[float]]:
    """How much of the window is in use over time: each charge counts from the moment it is
    made until the expiry the engine's own window arithmetic gives it."""
    window = WindowState(limit, margin)
    spans = [
        (at, window.expiry(window.slot_of(at)), cost)
        for at, cost in zip(grants, costs, strict=True)
    ]
    step = limit.per_seconds / 400
    times = [i * step for i in range(int(end / step) + 1)]
    return times, [sum(c for at, until, c in spans if at <= t < until) for t in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("demo-output"))
    args = parser.parse_args()

    # 1. requests per second
    rps = 1.2
    req_cfg = RatelimitConfig(api_key="-", requests_per_second=rps, tokens_per_minute=None)
    req_grants, req_limit, margin = grant_times(req_cfg, [(0.0, 0.0)] * 6)
    print(
        f"requests_per_second={rps}: one request per {req_limit.per_seconds:.3f} s window, "
        f"plus a {margin * 1000:.0f} ms margin; six requests fired at t=0"
    )
    print(f"{'#':>3} {'fired':>7} {'goes at':>8} {'gap':>7}")
    for i, at in enumerate(req_grants):
        gap = "" if i == 0 else f"{at - req_grants[i - 1]:.3f}"
        print(f"{i + 1:>3} {0.0:7.3f} {at:8.3f} {gap:>7}")

    # 2. tokens per minute
    tpm = 10_000
    tok_cfg = RatelimitConfig(api_key="-", requests_per_second=None, tokens_per_minute=tpm)
    tok_requests = [(5.0 * i, 3_000.0) for i in range(8)]
    tok_grants, tok_limit, _ = grant_times(tok_cfg, tok_requests)
    print(f"\ntokens_per_minute={tpm:,}: 3,000-token requests fired every 5 s")
    print(f"{'#':>3} {'fired':>7} {'goes at':>8} {'waited':>7}")
    for i, ((fired, _), at) in enumerate(zip(tok_requests, tok_grants, strict=True)):
        print(f"{i + 1:>3} {fired:7.1f} {at:8.2f} {at - fired:7.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7))
    end = req_grants[-1] + req_limit.per_seconds + 0.5
    times, used = fill_curve(req_grants, [1.0] * len(req_grants), req_limit, margin, end)
    top.fill_between(times, used, step="post", color="#4878cf", alpha=0.35)
    top.plot(times, used, color="#4878cf", drawstyle="steps-post", label="requests in the window")
    top.axhline(req_limit.amount, color="black", linestyle="--", linewidth=1, label="limit")
    for i, at in enumerate(req_grants):
        top.axvline(at, color="#d65f5f", linewidth=0.8)
        top.annotate(f"#{i + 1}\n{at:.3f}s", (at, req_limit.amount * 1.05), fontsize=8)
    top.set_ylim(0, req_limit.amount * 1.4)
    top.set_title(f"requests_per_second={rps}: six requests fired at t=0")
    top.set_xlabel("seconds")
    top.legend(loc="lower right")

    end = tok_grants[-1] + tok_limit.per_seconds + 5
    costs = [tokens for _, tokens in tok_requests]
    times, used = fill_curve(tok_grants, costs, tok_limit, margin, end)
    bottom.fill_between(times, used, step="post", color="#6acc65", alpha=0.5)
    bottom.plot(times, used, color="#2d7a2a", drawstyle="steps-post", label="tokens in the window")
    bottom.axhline(tok_limit.amount, color="black", linestyle="--", linewidth=1, label="limit")
    for (fired, _), at in zip(tok_requests, tok_grants, strict=True):
        bottom.annotate("", (at, 0), (fired, 0), arrowprops={"arrowstyle": "->", "color": "gray"})
        bottom.axvline(at, color="#d65f5f", linewidth=0.6)
    bottom.set_title(f"tokens_per_minute={tpm:,}: 3,000-token requests every 5 s")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right")
    fig.tight_layout()

    args.output.mkdir(parents=True, exist_ok=True)
    for suffix in ("png", "svg"):
        path = args.output / f"rate-limiting-timeline.{suffix}"
        fig.savefig(path, dpi=100)
        print(f"saved {path.resolve()}")
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
