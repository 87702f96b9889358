"""Rate-limiting transports for ``httpx`` (the mistralai 1.x/2.x line)."""

from __future__ import annotations

from typing import Any

import httpx

from .transport import AsyncTransportCore, SyncTransportCore


class RateLimitTransport(SyncTransportCore, httpx.BaseTransport):
    """``httpx.Client(transport=RateLimitTransport(...))``: limits, retries, settles."""

    def _default_transport(self) -> Any:
        return httpx.HTTPTransport()


class AsyncRateLimitTransport(AsyncTransportCore, httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=AsyncRateLimitTransport(...))``."""

    def _default_transport(self) -> Any:
        return httpx.AsyncHTTPTransport()


__all__ = ["AsyncRateLimitTransport", "RateLimitTransport"]
