"""``MistralRatelimitClient``: the Mistral SDK users know, inside their budget.

It builds a real ``mistralai.Mistral`` whose sync and async HTTP clients carry this
package's transports, both drawing on one limiter and one estimator, and hands every
attribute lookup to that SDK object, so every namespace and method (including those a
future SDK adds) is reached exactly as on the SDK.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

from .config import Default, RatelimitConfig
from .errors import RatelimitError
from .limiter.base import Limiter, LimiterStats
from .limiter.memory import RateLimiter
from .loop_local import LoopLocalAsyncTransport
from .sdk import (
    SdkLine,
    aread_error_body,
    detect_sdk_line,
    install_retry_note,
    is_loopback_url,
    read_error_body,
)
from .transport import shared_estimator

log = logging.getLogger("mistral_ratelimit")

#: Sent to a loopback server when no key is configured; the emulator accepts any key.
LOCAL_SERVER_KEY = "mistral-ratelimit-local"


class MissingApiKey(RatelimitError, ValueError):
    """No API key for the real Mistral API."""


class MistralRatelimitClient:
    """A ``mistralai.Mistral`` client whose every call stays inside one budget.

    ``MistralRatelimitClient(requests_per_second=1.2, tokens_per_minute=100_000)`` takes a
    :class:`RatelimitConfig` or its fields as keywords (keywords win; unset fields come
    from ``MISTRAL_RATELIMIT_*`` and ``MISTRAL_API_KEY``).

    - ``limiter``: share one limiter between several clients (its own limits apply).
    - ``server_url``, ``server`` (``"eu"``, ``"us"``) and ``timeout_ms`` are passed to the SDK.
      Without ``timeout_ms``, an explicitly set ``timeout`` (seconds) becomes the per-request
      timeout; otherwise the SDK's own default applies (300 s on 2.5+ and 3.x).
    - ``transport`` / ``async_transport``: the inner transports requests go through after
      the limiter (a proxy, a mock); by default the SDK's HTTP library's own.

    The SDK's retries are switched off: this client retries 429s itself, on the shared
    budget, and a retry loop inside another would multiply attempts.
    """

    def __init__(
        self,
        config: RatelimitConfig | None = None,
        *,
        limiter: Limiter | None = None,
        server_url: str | None = None,
        server: str | None = None,
        timeout_ms: int | None = None,
        transport: Any = None,
        async_transport: Any = None,
        **config_fields: Any,
    ) -> None:
        self.config = RatelimitConfig.coerce(config, config_fields)
        api_key = self.config.api_key
        if not api_key:
            if not is_loopback_url(server_url):
                raise MissingApiKey(
                    "no Mistral API key: set the MISTRAL_API_KEY environment variable or "
                    "pass api_key=... (a local emulator on 127.0.0.1 needs none)"
                )
            api_key = LOCAL_SERVER_KEY
        self.sdk_line: SdkLine = detect_sdk_line()
        self.limiter: Limiter = limiter if limiter is not None else RateLimiter(self.config)
        # One estimator for both directions (and every other client on this limiter), so a
        # conversation started with the sync client and appended to from async code is
        # costed with its known history.
        self.estimator = shared_estimator(self.limiter, self.config)
        line = self.sdk_line
        http = line.http
        if async_transport is None:
            async_transport = LoopLocalAsyncTransport(http.AsyncHTTPTransport)
        shared = {"limiter": self.limiter, "config": self.config, "estimator": self.estimator}
        sync_transport = line.transport_module.RateLimitTransport(transport, **shared)
        async_rl_transport = line.transport_module.AsyncRateLimitTransport(
            async_transport, **shared
        )
        timeout = http.Timeout(self.config.timeout)
        self.http_client: Any = http.Client(
            transport=sync_transport,
            timeout=timeout,
            follow_redirects=True,
            event_hooks={"response": [read_error_body]},
        )
        self.async_http_client: Any = http.AsyncClient(
            transport=async_rl_transport,
            timeout=timeout,
            follow_redirects=True,
            event_hooks={"response": [aread_error_body]},
        )
        if timeout_ms is None and not isinstance(self.config.timeout, Default):
            timeout_ms = round(self.config.timeout * 1000)
        self._server_url = server_url
        self._server = server
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self.sdk: Any = line.mistral_class(
            api_key=api_key,
            server=server,
            server_url=server_url,
            client=self.http_client,
            async_client=self.async_http_client,
            retry_config=line.no_retries(),
            timeout_ms=timeout_ms,
        )
        install_retry_note(self.sdk, line)

    # -- the SDK, as it is ----------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class does not define: chat, beta, agents, ...
        sdk = self.__dict__.get("sdk")
        if sdk is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(sdk, name)

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        sdk = self.__dict__.get("sdk")
        if sdk is not None:
            names.update(n for n in dir(sdk) if not n.startswith("_"))
        return sorted(names)

    def stats(self) -> LimiterStats:
        """The shared limiter's counters: admitted, waited, tokens reserved and refunded..."""
        return self.limiter.stats()

    def __repr__(self) -> str:
        where = self._server_url or self._server or "https://api.mistral.ai"
        return (
            f"{type(self).__name__}(mistralai {self.sdk_line.version} on "
            f"{self.sdk_line.http_name}, server={where!r}, config={self.config!r}, "
            f"limiter={self.limiter!r})"
        )

    # -- closing both HTTP clients -------------------------------------------------------
    def close(self) -> None:
        """Close the sync and the async HTTP client (the SDK would close only one)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.http_client.close()
        finally:
            self._close_async_client_from_sync_code()

    async def aclose(self) -> None:
        """Close both HTTP clients from async code."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.async_http_client.aclose()
        finally:
            self.http_client.close()

    def _close_async_client_from_sync_code(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            # Sync close() called inside a running loop: the pool of this loop is closed
            # by a task on it, since blocking here would deadlock the loop. Should the loop
            # end before that task is done, the pool is closed as the loop shuts down
            # (loop_local.py).
            self._close_task = loop.create_task(self.async_http_client.aclose())
            return
        try:
            # Each loop's pool is closed in its own loop; this one only drives that.
            asyncio.run(self.async_http_client.aclose())
        except Exception:  # a user-supplied async transport that cannot close from here
            log.warning("closing the async HTTP client failed", exc_info=True)

    def __enter__(self) -> MistralRatelimitClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> MistralRatelimitClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


__all__ = ["LOCAL_SERVER_KEY", "MissingApiKey", "MistralRatelimitClient"]
