"""Command line: ``mistral-ratelimit demo | serve``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mistral-ratelimit")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the main job against the local emulator")
    from .emulator import command as serve_command

    serve_command.add_arguments(sub.add_parser("serve", help="run the Mistral emulator"))
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_command.run(args)
    if args.command == "demo":
        from .config import RatelimitConfig
        from .limiter import RateLimiter

        lim = RateLimiter(RatelimitConfig(requests_per_second=8))
        print(lim, [round(lim.reserve(1).at - lim.now(), 2) for _ in range(20)])
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
