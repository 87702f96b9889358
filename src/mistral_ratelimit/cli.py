"""Command line: ``mistral-ratelimit demo | serve``."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from .cli_types import number


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--real",
        action="store_true",
        help="a small run against the real API (needs MISTRAL_API_KEY; spends quota)",
    )
    parser.add_argument(
        "--duration",
        type=number(),
        default=None,
        help="seconds during which new calls start (default: 42; 12 with --real)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("demo-output"),
        help="directory for the timeline chart (default: ./demo-output)",
    )
    parser.add_argument("--format", choices=("png", "svg"), default="png", dest="chart_format")
    parser.add_argument("--rps", type=number(), default=None, help="emulator requests per second")
    parser.add_argument("--tpm", type=number(), default=None, help="emulator tokens per minute")
    parser.add_argument(
        "--no-live", action="store_true", help="plain progress lines instead of a live view"
    )


def _run_demo(args: argparse.Namespace) -> int:
    try:
        from .demo.runner import DemoOptions, run_demo
    except ImportError as exc:
        print(
            f"the demo needs the [demo] extra ({exc.name} is missing): "
            "pip install 'mistral-ratelimit[demo]'",
            file=sys.stderr,
        )
        return 2
    options = DemoOptions(real=args.real, output=args.output, chart_format=args.chart_format)
    if args.duration is not None:
        options = replace(options, duration=args.duration)
    if args.rps is not None:
        options = replace(options, requests_per_second=args.rps)
    if args.tpm is not None:
        options = replace(options, tokens_per_minute=args.tpm)
    if args.no_live:
        options = replace(options, live=False)
    if args.real and not os.environ.get("MISTRAL_API_KEY"):
        print("--real needs the MISTRAL_API_KEY environment variable", file=sys.stderr)
        return 2
    return run_demo(options).exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mistral-ratelimit")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo_arguments(
        sub.add_parser(
            "demo",
            help="drive a mixed workload through the limits and show that no 429 gets through",
        )
    )
    from .emulator import command as serve_command

    serve_parser = sub.add_parser("serve", help="run the Mistral emulator")
    serve_command.add_arguments(serve_parser)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_command.run(args, serve_parser)
    if args.command == "demo":
        return _run_demo(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
