"""Emulator throughput and accuracy: requests per second served, and limits honoured.

    .venv/bin/python bench/bench_emulator.py [--seconds 5] [--workers 32]

Throughput: ``--workers`` keep-alive connections send small requests as fast as they can,
with the emulator's limits off. Two load generators: a minimal HTTP/1.1 client on asyncio
streams (``raw``: cheap per request, so it measures the server) and httpx's AsyncClient
(``httpx``: what tests use, itself the bottleneck on a small machine). Servers:

* ``process``: ``mistral-ratelimit serve`` in its own process (the client does not share
  the GIL with the server), and
* ``in-process``: ``Emulator`` in a background thread of the benchmark process, as tests
  and the demo use it.

Accuracy: the same unthrottled client against a 60 requests/s limit and a 4000 tokens/2 s
window; prints the most admitted in any window and per consecutive window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from mistral_ratelimit.emulator import Emulator

SMALL_START = {"inputs": "ping", "stream": False, "completion_args": {"max_tokens": 4}}


async def load(
    url: str, seconds: float, workers: int, method: str, path: str, body: Any
) -> tuple[int, int, float]:
    """(ok responses, other responses, elapsed seconds)."""
    ok = other = 0
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        await client.get("/health")  # warm up: tokenizer, connections
        for _ in range(3):
            await client.post("/v1/conversations", json=SMALL_START)
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal ok, other
            while time.perf_counter() < deadline:
                r = await client.request(method, path, json=body)
                if r.status_code == 200:
                    ok += 1
                else:
                    other += 1

        await asyncio.gather(*(worker() for _ in range(workers)))
        return ok, other, time.perf_counter() - start


async def raw_load(
    url: str, seconds: float, workers: int, method: str, path: str, body: Any
) -> tuple[int, int, float]:
    """The same as :func:`load` with a bare keep-alive HTTP/1.1 client."""
    import json

    host, port = url.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body).encode() if body is not None else b""
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    counts = {"ok": 0, "other": 0}

    async def worker(deadline: float) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                counts["ok" if head.startswith(b"HTTP/1.1 200") else "other"] += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(start + seconds) for _ in range(workers)))
    return counts["ok"], counts["other"], time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served_process() -> Iterator[str]:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "mistral_ratelimit.cli",
        "serve",
        "--port",
        str(port),
        "--rps",
        "off",
        "--tpm",
        "off",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def throughput(seconds: float, workers: int) -> None:
    cases = [
        ("POST /v1/conversations (JSON reply)", "POST", "/v1/conversations", SMALL_START),
        ("GET /v1/conversations/{missing} (404)", "GET", "/v1/conversations/conv_x", None),
    ]
    for mode in ("process", "in-process"):
        ctx = served_process() if mode == "process" else _inprocess()
        with ctx as url:
            for label, method, path, body in cases:
                for client, run in (("raw", raw_load), ("httpx", load)):
                    ok, other, elapsed = asyncio.run(run(url, seconds, workers, method, path, body))
                    rate = (ok + other) / elapsed
                    print(
                        f"{mode:11} {client:6} {label:40} {rate:6.0f} req/s"
                        f"  ({ok} ok, {other} other)"
                    )


@contextmanager
def _inprocess() -> Iterator[str]:
    with Emulator(requests_per_second=None, tokens_per_minute=None) as emu:
        yield emu.url


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args()
    print(f"# {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    throughput(args.seconds, args.workers)
    accuracy_report()
    return 0


def accuracy_report() -> None:
    body_small = {"inputs": "ping", "stream": False, "completion_args": {"max_tokens": 4}}
    with Emulator(requests_per_second=60, tokens_per_minute=None) as emu:
        ok, other, elapsed = asyncio.run(
            load(emu.url, 3.3, 24, "POST", "/v1/conversations", body_small)
        )
        log = emu.log
        t0 = min(r.arrival for r in log.admitted())
        per_window = [log.admitted_between(t0 + k, t0 + k + 1) for k in range(3)]
        print(
            f"requests: limit 60/1s, offered {(ok + other) / elapsed:.0f} req/s, "
            f"max in any 1 s window {log.max_in_window(1.0):.0f}, consecutive windows "
            f"{per_window}"
        )
    body = {
        "inputs": "a short question about rate limits " * 3,
        "stream": False,
        "completion_args": {"max_tokens": 16},
    }
    with Emulator(
        requests_per_second=None, tokens_per_minute=None, limits=[(4000, 2.0, "tokens")]
    ) as emu:
        ok, other, elapsed = asyncio.run(load(emu.url, 6.5, 24, "POST", "/v1/conversations", body))
        log = emu.log
        t0 = min(r.arrival for r in log.admitted())
        per_window = [log.tokens_between(t0 + 2 * k, t0 + 2 * k + 2) for k in range(3)]
        print(
            f"tokens: limit 4000/2s, offered {(ok + other) / elapsed:.0f} req/s, "
            f"max in any 2 s window {log.max_in_window(2.0, unit='tokens'):.0f}, "
            f"consecutive windows {per_window}"
        )


if __name__ == "__main__":
    sys.exit(main())
