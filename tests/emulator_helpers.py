"""Small helpers for the emulator tests: SSE parsing and a raw conversation start."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import httpx

RATE_HEADERS = (
    "x-ratelimit-limit-tokens-minute",
    "x-ratelimit-remaining-tokens-minute",
    "x-ratelimit-tokens-query-cost",
    "x-ratelimit-limit-req-minute",
    "x-ratelimit-remaining-req-minute",
)
MONTH_HEADERS = ("x-ratelimit-limit-tokens-month", "x-ratelimit-remaining-tokens-month")


def parse_sse(lines: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs from SSE text lines."""
    events: list[tuple[str, dict[str, Any]]] = []
    name, data = "", ""
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif line == "" and data:
            events.append((name, json.loads(data)))
            name, data = "", ""
    if data:
        events.append((name, json.loads(data)))
    return events


def start_body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"inputs": text, "stream": False, "model": "mistral-small-latest", **extra}


def start(client: httpx.Client, text: str = "hello", **extra: Any) -> httpx.Response:
    return client.post("/v1/conversations", json=start_body(text, **extra))


async def hammer(
    url: str,
    *,
    seconds: float,
    workers: int,
    body: dict[str, Any],
    path: str = "/v1/conversations",
) -> list[int]:
    """Send as fast as possible from ``workers`` concurrent tasks for ``seconds``: an
    unthrottled client. Returns every status code."""
    import asyncio
    import time

    statuses: list[int] = []
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < deadline:
                r = await client.post(path, json=body)
                statuses.append(r.status_code)

        await asyncio.gather(*(worker() for _ in range(workers)))
    return statuses
