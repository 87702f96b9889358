"""``mistral-ratelimit serve``: the emulator as a foreground server.

Argument definitions import nothing heavy; Starlette and uvicorn load only when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os

from ..cli_types import integer, limit, number
from .settings import (
    FREE_TIER_REQUESTS_PER_SECOND,
    FREE_TIER_TOKENS_PER_MINUTE,
    FREE_TIER_TOKENS_PER_MONTH,
)

API_KEY_ENV = "MISTRAL_RATELIMIT_EMULATOR_API_KEY"


#: uvicorn's log levels (uvicorn.config.LOG_LEVELS).
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
#: A request rung may be 0: the server then refuses every request, as Mistral does for a
#: model a key may not use. A token rung of 0 would mean no rung at all, so it is refused.
_request_rate = number(inclusive=True, off=True)
_token_budget = number(off=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    add(
        "--port",
        type=integer(0, 65535),
        default=8787,
        help="port (default 8787; 0 picks a free one)",
    )
    add(
        "--rps",
        type=_request_rate,
        default=FREE_TIER_REQUESTS_PER_SECOND,
        help="requests per second (0 refuses every request; 'off' to disable)",
    )
    add("--rpm", type=_request_rate, default=None, help="requests per minute rung")
    add(
        "--tpm",
        type=_token_budget,
        default=FREE_TIER_TOKENS_PER_MINUTE,
        help="tokens per minute ('off' to disable)",
    )
    add(
        "--tokens-per-month",
        type=_token_budget,
        default=FREE_TIER_TOKENS_PER_MONTH,
        help="tokens per month (default: the free tier's 1 billion; 'off' to disable)",
    )
    add("--max-concurrency", type=integer(1), default=None, help="concurrent requests allowed")
    add(
        "--limit",
        type=limit,
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
    add("--stream-tps", type=number(), default=None, help="streamed tokens per second")
    add(
        "--ttft",
        type=number(inclusive=True),
        default=0.0,
        help="time to first token, seconds",
    )
    add("--retry-after", choices=("seconds", "http-date"), default=None)
    add("--seed", type=int, default=0, help="seed of the deterministic replies")
    add("--log-level", choices=LOG_LEVELS, default="info")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve until interrupted; an address that cannot be bound is a usage error (exit 2)."""
    from .server import BindError, serve
    from .settings import EmulatorConfig

    config = EmulatorConfig(
        requests_per_second=args.rps,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        tokens_per_month=args.tokens_per_month,
        max_concurrency=args.max_concurrency,
        limits=tuple(args.limit),
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
    try:
        with contextlib.suppress(KeyboardInterrupt):
            serve(config, host=args.host, port=args.port, log_level=args.log_level)
    except BindError as exc:
        option = "--port" if exc.errno == errno.EADDRINUSE else "--host"
        parser.error(f"argument {option}: {exc}")
    return 0


__all__ = ["API_KEY_ENV", "add_arguments", "run"]
