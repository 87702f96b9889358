"""One-minute soak at the free tier: 1 request/s and 500,000 tokens/min, enforced by the
emulator, with sync and async callers on one ``MistralRatelimitClient``.

    .venv/bin/python bench/soak.py [--duration 60] [--async-callers 3] [--sync-callers 2]
                                   [--window-margin SECONDS]

The client is told the same limits explicitly:
``MistralRatelimitClient(requests_per_second=1, tokens_per_minute=500_000)``.
``--tier-defaults`` leaves them at the tier defaults instead, which the client replaces by
what the server reports in its headers (see docs/benchmarks.md, "Soak", for what happens). Every caller always has a call waiting,
so the requests limit is the bottleneck from start to end. Conversations open with a
~3,300-token document and every append re-bills the history, so tokens flow too.

Pass criteria (issue 3): zero 429s reach the caller, and the server admits at least 95% of
the requests its window allows between the first and the last admitted request.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import statistics
import sys
import time
from typing import Any

from mistral_ratelimit import Limit
from mistral_ratelimit.demo.session import open_session
from mistral_ratelimit.demo.summary import allowed_requests, peak_in_window
from mistral_ratelimit.demo.workload import Workload, WorkloadPlan

FREE_TIER_RPS = 1.0
FREE_TIER_TPM = 500_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--async-callers", type=int, default=3)
    parser.add_argument("--sync-callers", type=int, default=2)
    parser.add_argument(
        "--window-margin", type=float, default=None, help="override the client's margin"
    )
    parser.add_argument(
        "--tier-defaults",
        action="store_true",
        help="leave the client at its tier defaults (limits then follow the server's headers)",
    )
    args = parser.parse_args()

    plan = WorkloadPlan(
        duration=args.duration,
        conversations=args.async_callers,
        sync_threads=args.sync_callers,
        turns=4,
        max_tokens=128,
        document_phases=((0.0, 1.0),),
        document_words=3000,
    )
    explicit: dict[str, Any] = {}
    if not args.tier_defaults:
        explicit = {"requests_per_second": FREE_TIER_RPS, "tokens_per_minute": FREE_TIER_TPM}
    client_fields: dict[str, Any] = dict(explicit)
    if args.window_margin is not None:
        client_fields["window_margin"] = args.window_margin
    settings = {"requests_per_second": FREE_TIER_RPS, "tokens_per_minute": FREE_TIER_TPM}
    with open_session(real=False, emulator_settings=settings, **client_fields) as session:
        assert session.emulator is not None
        print(f"client: {session.client.limiter!r}; margin {session.client.config.window_margin} s")
        print(
            f"{args.async_callers} async + {args.sync_callers} sync callers for "
            f"{args.duration:.0f} s against {session.emulator.url}",
            flush=True,
        )
        started = time.monotonic()
        asyncio.run(Workload(session.client, session.tracker, plan, session.model).run())
        elapsed = time.monotonic() - started
        log = session.emulator.log.snapshot()
        calls = session.tracker.records()
        stats = session.client.stats()

    admitted = sorted(r.arrival for r in log if r.admitted)
    server_429 = sum(r.status == 429 for r in log)
    to_caller = sum(c.outcome == "rate_limited" for c in calls)
    errors = sum(c.outcome == "error" for c in calls)
    span = admitted[-1] - admitted[0]
    limit = Limit(1, 1.0 / FREE_TIER_RPS, "requests")
    allowed = allowed_requests(limit, span)
    share = len(admitted) / allowed
    gaps = [b - a for a, b in itertools.pairwise(admitted)]
    charges = [(r.arrival, float(r.tokens)) for r in log if r.admitted]
    peak_tokens = peak_in_window(charges, 60.0)
    waits = sorted(w for c in calls if (w := c.wait) is not None)

    print(f"\nmachine: {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"run: {elapsed:.1f} s (new calls for {args.duration:.0f} s, then the queue drained)")
    print(f"calls: {len(calls)} ({sum(c.mode == 'sync' for c in calls)} sync)")
    print(f"429s that reached the caller: {to_caller}; other errors: {errors}")
    refused_at = ", ".join(f"{r.arrival - log[0].arrival:.2f}" for r in log if r.status == 429)
    print(
        f"429s the server issued: {server_429} (retried by the client: {stats.rate_limited_seen})"
        + (f", at {refused_at} s" if refused_at else "")
    )
    print(
        f"requests admitted: {len(admitted)} of {allowed} allowed over {span:.2f} s = {share:.1%}"
    )
    print(
        f"gap between admitted requests: mean {statistics.mean(gaps):.4f} s, "
        f"min {min(gaps):.4f} s, median {statistics.median(gaps):.4f} s, max {max(gaps):.4f} s"
    )
    print(
        f"tokens: {sum(n for _, n in charges):,.0f} in all; peak {peak_tokens:,.0f} in any 60 s "
        f"= {peak_tokens / FREE_TIER_TPM:.1%} of {FREE_TIER_TPM:,}"
    )
    print(f"caller wait: median {statistics.median(waits):.2f} s, max {waits[-1]:.2f} s")
    ok = to_caller == 0 and errors == 0 and share >= 0.95
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
