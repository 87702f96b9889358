"""Run every benchmark with the arguments docs/benchmarks.md quotes, one after another.

Run: ``make bench`` (or ``.venv/bin/python bench/run_all.py [--only NAME ...]``). It takes
about ten minutes; each script prints its own table. Nothing here asserts a time: figures
are compared within one run, as the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (name, script, arguments) in the order docs/benchmarks.md presents them.
BENCHMARKS: list[tuple[str, str, list[str]]] = [
    ("estimate", "bench_estimate.py", []),
    ("emulator", "bench_emulator.py", []),
    ("redis", "bench_redis.py", ["--seconds", "3", "--clients", "1,4,16"]),
    ("pause", "bench_pause.py", []),
    ("queued", "bench_queued.py", []),
    ("engine", "bench_engine.py", []),
    ("soak", "soak.py", []),
    ("zero429", "bench_zero429.py", ["--rounds", "3"]),
    ("first-byte", "bench_first_byte.py", ["--requests", "300"]),
    ("transport", "bench_transport.py", ["--seconds", "2", "--rounds", "5"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    names = [name for name, _, _ in BENCHMARKS]
    parser.add_argument("--only", nargs="+", choices=names, help="run only these")
    args = parser.parse_args()
    failed = []
    for name, script, extra in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        command = [sys.executable, str(HERE / script), *extra]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command)
        print(f"=== {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
