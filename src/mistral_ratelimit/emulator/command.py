"""``mistral-ratelimit serve``: the emulator as a foreground server.

Argument definitions import nothing heavy; Starlette and uvicorn load only when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

from ..config import Limit
from .settings import (
    FREE_TIER_REQUESTS_PER_SECOND,
    FREE_TIER_TOKENS_PER_MINUTE,
    FREE_TIER_TOKENS_PER_MONTH,
)

API_KEY_ENV = "MISTRAL_RATELIMIT_EMULATOR_API_KEY"


def _off(value: str) -> float | None:
    return None if value.strip().lower() in ("none", "off") else float(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    add("--port", type=int, default=8787, help="port (default 8787; 0 picks a free one)")
    add(
        "--rps",
        type=_off,
        default=FREE_TIER_REQUESTS_PER_SECOND,
        help="requests per second ('off' to disable)",
    )
    add("--rpm", type=_off, default=None, help="requests per minute rung")
    add(
        "--tpm",
        type=_off,
        default=FREE_TIER_TOKENS_PER_MINUTE,
        help="tokens per minute ('off' to disable)",
    )
    add(
        "--tokens-per-month",
        type=_off,
        default=FREE_TIER_TOKENS_PER_MONTH,
        help="tokens per month (default: the free tier's 1 billion; 'off' to disable)",
    )
    add("--max-concurrency", type=int, default=None, help="concurrent requests allowed")
    add(
        "--limit",
        action="append",
        default=[],
        metavar="AMOUNT/SECONDS[:unit]",
        help="an extra window, e.g. 50000/10:tokens (repeatable)",
    )
    add("--algorithm", choices=("sliding", "fixed", "bucket"), default="sliding")
    add(
        "--api-key",
        default=None,
        help=f"require this bearer key (better: set {API_KEY_ENV})",
    )
    add("--stream-tps", type=float, default=None, help="streamed tokens per second")
    add("--ttft", type=float, default=0.0, help="time to first token, seconds")
    add("--retry-after", choices=("seconds", "http-date"), default=None)
    add("--seed", type=int, default=0, help="seed of the deterministic replies")
    add("--log-level", default="info")


def run(args: argparse.Namespace) -> int:
    from .server import serve
    from .settings import EmulatorConfig

    config = EmulatorConfig(
        requests_per_second=args.rps,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        tokens_per_month=args.tokens_per_month,
        max_concurrency=args.max_concurrency,
        limits=tuple(Limit.parse(text) for text in args.limit),
        algorithm=args.algorithm,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        stream_tokens_per_second=args.stream_tps,
        time_to_first_token=args.ttft,
        retry_after=args.retry_after,
        seed=args.seed,
        max_log_records=100_000,  # a long-running server must not grow without bound
    )
    logging.getLogger(__name__).info("emulator limits: %r", config)
    # uvicorn re-raises Ctrl-C after its graceful shutdown; that is a normal stop here.
    with contextlib.suppress(KeyboardInterrupt):
        serve(config, host=args.host, port=args.port, log_level=args.log_level)
    return 0


__all__ = ["API_KEY_ENV", "add_arguments", "run"]
