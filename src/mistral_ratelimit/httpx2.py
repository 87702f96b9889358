"""Rate-limiting transports for ``httpx2`` (the mistralai 3.x line)."""

from __future__ import annotations

from typing import Any

import httpx2

from .transport import AsyncTransportCore, SyncTransportCore


class RateLimitTransport(SyncTransportCore, httpx2.BaseTransport):
    """``httpx2.Client(transport=RateLimitTransport(...))``: limits, retries, settles."""

    def _default_transport(self) -> Any:
        return httpx2.HTTPTransport()


class AsyncRateLimitTransport(AsyncTransportCore, httpx2.AsyncBaseTransport):
    """``httpx2.AsyncClient(transport=AsyncRateLimitTransport(...))``."""

    def _default_transport(self) -> Any:
        return httpx2.AsyncHTTPTransport()


__all__ = ["AsyncRateLimitTransport", "RateLimitTransport"]
