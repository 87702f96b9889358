"""When the emulator counts a request: the kernel's arrival time against the app's own clock.

Run: .venv/bin/python bench/bench_arrival.py [--rounds 10] [--hogs 2]

The workload of examples/test_async.py, the case CI caught: four conversations at once
through one ``MistralRatelimitClient`` at 2 requests/s, each a start then a streamed
follow-up, against the in-process emulator (as the examples, the demo and most tests run
it), while ``--hogs`` busy processes keep the CPU full. Rounds alternate between the two
ways of stamping an arrival (``kernel_arrival=True``, the default, and ``False``). A round
"fails" when the server refused any request: the client spaced every pair a second and a
``window_margin`` apart, so a refusal means the server counted a request later than it
arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from mistral_ratelimit.demo import open_session

QUESTIONS = ("What is a token?", "What is a window?", "What is a budget?", "What is a 429?")


async def ask(conv: Any, model: str, question: str) -> None:
    r = await conv.start_async(inputs=question, model=model, completion_args={"max_tokens": 48})
    events = await conv.append_stream_async(
        conversation_id=r.conversation_id,
        inputs="One more sentence, please.",
        completion_args={"max_tokens": 48},
    )
    async with events:
        async for _ in events:
            pass


def one_round(kernel: bool) -> tuple[int, int, float]:
    """Server 429s, admitted requests and seconds, for one round."""
    settings = {"requests_per_second": 2, "tokens_per_minute": 100_000, "kernel_arrival": kernel}
    with open_session(
        real=False, emulator_settings=settings, requests_per_second=2, tokens_per_minute=100_000
    ) as session:
        conv = session.client.beta.conversations
        started = time.monotonic()

        async def run() -> None:
            await asyncio.gather(*(ask(conv, session.model, q) for q in QUESTIONS))

        asyncio.run(run())
        elapsed = time.monotonic() - started
        assert session.emulator is not None
        log = session.emulator.log
        return log.count(429), len(log.admitted()), elapsed


@contextlib.contextmanager
def hogs(n: int) -> Iterator[None]:
    procs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="rounds per mode")
    parser.add_argument("--hogs", type=int, default=2, help="busy processes meanwhile")
    args = parser.parse_args()
    results: dict[bool, list[tuple[int, int, float]]] = {True: [], False: []}
    with hogs(args.hogs):
        for _ in range(args.rounds):
            for kernel in (True, False):
                results[kernel].append(one_round(kernel))
    print(f"{args.rounds} rounds per mode, {args.hogs} CPU hogs, {sys.platform}")
    print("| arrival stamped | rounds with server 429s | server 429s | admitted | seconds |")
    print("|---|---|---|---|---|")
    for kernel in (True, False):
        rows = results[kernel]
        refused = sum(r[0] for r in rows)
        bad = sum(1 for r in rows if r[0])
        admitted = sum(r[1] for r in rows)
        seconds = sum(r[2] for r in rows) / len(rows)
        name = "kernel (default)" if kernel else "app clock"
        print(f"| {name} | {bad}/{len(rows)} | {refused} | {admitted} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
