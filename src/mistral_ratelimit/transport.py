"""The transport logic shared by the httpx and httpx2 classes: build a request view,
drive the lifecycle, wrap the response stream. No retry or accounting logic lives here."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .accounting.request import Estimator
from .accounting.tokenizer import preload_in_background
from .config import RatelimitConfig
from .driving import (
    Depart,
    deliver,
    departure_async,
    departure_sync,
    drive_async,
    drive_sync,
    finish_async,
    finish_sync,
)
from .lifecycle import Deliver, Lifecycle, RequestOptions, RequestView, Send
from .limiter.base import Limiter
from .limiter.memory import RateLimiter
from .streams import AsyncStream, SyncStream, aread_prefix, read_prefix

log = logging.getLogger("mistral_ratelimit")


def _is_json(headers: Mapping[str, str]) -> bool:
    ctype = (headers.get("content-type") or "").lower()
    return not ctype or "json" in ctype


def _not_read(exc: BaseException) -> bool:
    return type(exc).__name__ == "RequestNotRead"


def _rewinds(request: Any) -> bool:
    """Whether a body that was not read up front can be sent again on a retry.

    httpx's (and httpx2's) multipart stream renders its fields afresh on each pass and
    seeks each file back to the start first; a file that cannot seek (a pipe, a socket, a
    one-way reader) would go out empty the second time. A generator body never rewinds.
    """
    if type(request.stream).__name__ != "MultipartStream":
        return False
    for field in getattr(request.stream, "fields", ()):
        file = getattr(field, "file", None)
        if file is None or isinstance(file, (str, bytes)):
            continue
        seekable = getattr(file, "seekable", None)
        if not callable(getattr(file, "seek", None)) or (callable(seekable) and not seekable()):
            return False
    return True


def _already_read(outcome: Deliver) -> bool:
    """A response built from bytes (MockTransport, caches) arrives read and closed: its
    stream will never be iterated, so it is observed and settled at once."""
    return outcome.observer is not None and bool(
        getattr(outcome.response, "is_stream_consumed", False)
    )


#: httpcore's trace event that marks a request fully written (HTTP/1.1 and HTTP/2).
_SENT_EVENT = "send_request_body.complete"


class _SendTimer:
    """Hooks the ``trace`` extension (httpcore, under httpx and httpx2's HTTPTransport) to
    tell ``depart`` when the request body really left, keeping any trace hook the caller
    set."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.user_trace = request.extensions.get("trace")

    def restore(self) -> None:
        if self.user_trace is None:
            self.request.extensions.pop("trace", None)
        else:
            self.request.extensions["trace"] = self.user_trace

    def install_sync(self, depart: Depart) -> None:
        user_trace = self.user_trace

        def trace(name: str, info: Any) -> None:
            if name.endswith(_SENT_EVENT):
                depart(time.monotonic())
            if user_trace is not None:
                user_trace(name, info)

        self.request.extensions["trace"] = trace

    def install_async(self, depart: Callable[[float], Awaitable[None]]) -> None:
        user_trace = self.user_trace

        async def trace(name: str, info: Any) -> None:
            if name.endswith(_SENT_EVENT):
                await depart(time.monotonic())
            if user_trace is not None:
                await user_trace(name, info)

        self.request.extensions["trace"] = trace


def _view(
    request: Any, body: bytes | None, replayable: bool, options: RequestOptions
) -> RequestView:
    # Only Accept tells the estimator anything (a stream); copying every header would cost
    # more than estimating the body.
    accept = request.headers.get("accept")
    return RequestView(
        method=str(request.method).upper(),
        path=str(request.url.path),
        headers={} if accept is None else {"accept": accept},
        body=body,
        replayable=replayable,
        options=options,
    )


_shared_estimators: weakref.WeakKeyDictionary[Any, Estimator] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def shared_estimator(limiter: Limiter, config: RatelimitConfig) -> Estimator:
    """The estimator of every transport on ``limiter``: a conversation started through one
    client (sync) and appended to through another (async) is costed with its known history,
    which an estimator of its own would price at ``unknown_history_tokens``."""
    with _shared_lock:
        try:
            first = _shared_estimators.get(limiter)
            if first is None:
                first = _shared_estimators[limiter] = Estimator.from_config(config)
        except TypeError:  # a limiter that cannot be weakly referenced: nothing to share
            return Estimator.from_config(config)
        return first.sharing(config)


class _Core:
    """Construction shared by all four transport classes."""

    def __init__(
        self,
        transport: Any = None,
        *,
        limiter: Limiter | None = None,
        config: RatelimitConfig | None = None,
        estimator: Estimator | None = None,
    ) -> None:
        self.config = config if config is not None else RatelimitConfig.from_env()
        self.limiter: Limiter = limiter if limiter is not None else RateLimiter(self.config)
        self.estimator = (
            estimator if estimator is not None else shared_estimator(self.limiter, self.config)
        )
        self.lifecycle = Lifecycle(self.limiter, self.estimator, self.config)
        preload_in_background()
        self.transport = transport if transport is not None else self._default_transport()

    def _default_transport(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(transport={self.transport!r}, limiter={self.limiter!r})"


class SyncTransportCore(_Core):
    def handle_request(self, request: Any) -> Any:
        # First: a bad option raises before the body is read or anything is reserved.
        options = RequestOptions.from_extensions(request.extensions)
        try:
            body, replayable = request.content, True
        except Exception as exc:
            if not _not_read(exc):
                raise
            body, replayable = None, _rewinds(request)
            if _is_json(request.headers):
                request.read()  # a streamed JSON body is buffered once, so a retry can resend it
                body, replayable = request.content, True
        view = _view(request, body, replayable, options)
        lifecycle = self.lifecycle
        admitted = lifecycle.admit(view)
        outcome = None
        if admitted is not None:
            try:
                admitted.response = self._send(request, lifecycle.sending(admitted.reservation))
            except BaseException as exc:  # the lifecycle decides: retry, or raise it
                admitted.error = exc
            outcome = lifecycle.express(admitted)
        if outcome is None:
            outcome = drive_sync(
                lifecycle.run(view, admitted),
                self.limiter,
                lambda effect: self._send(request, effect),
                read_prefix,
            )
        if _already_read(outcome):
            assert outcome.observer is not None
            outcome.observer.feed_decoded(outcome.response.content)
            finish_sync(outcome.observer, self.limiter)
            return outcome.response
        return deliver(outcome, SyncStream, self.limiter)

    def _send(self, request: Any, effect: Send) -> Any:
        if effect.departed is None:
            return self.transport.handle_request(request)
        timer = _SendTimer(request)
        timer.install_sync(departure_sync(self.limiter, effect.departed))
        try:
            return self.transport.handle_request(request)
        finally:
            timer.restore()

    def close(self) -> None:
        self.transport.close()


class AsyncTransportCore(_Core):
    async def handle_async_request(self, request: Any) -> Any:
        # First: a bad option raises before the body is read or anything is reserved.
        options = RequestOptions.from_extensions(request.extensions)
        try:
            body, replayable = request.content, True
        except Exception as exc:
            if not _not_read(exc):
                raise
            body, replayable = None, _rewinds(request)
            if _is_json(request.headers):
                await request.aread()
                body, replayable = request.content, True
        view = _view(request, body, replayable, options)
        lifecycle = self.lifecycle
        admitted = lifecycle.admit(view)
        outcome = None
        if admitted is not None:
            try:
                admitted.response = await self._asend(
                    request, lifecycle.sending(admitted.reservation)
                )
            except BaseException as exc:  # as in the sync transport
                admitted.error = exc
            outcome = lifecycle.express(admitted)
        if outcome is None:
            outcome = await drive_async(
                lifecycle.run(view, admitted),
                self.limiter,
                lambda effect: self._asend(request, effect),
                aread_prefix,
            )
        if _already_read(outcome):
            assert outcome.observer is not None
            outcome.observer.feed_decoded(outcome.response.content)
            await finish_async(outcome.observer, self.limiter)
            return outcome.response
        return deliver(outcome, AsyncStream, self.limiter)

    async def _asend(self, request: Any, effect: Send) -> Any:
        if effect.departed is None:
            return await self.transport.handle_async_request(request)
        timer = _SendTimer(request)
        timer.install_async(departure_async(self.limiter, effect.departed))
        try:
            return await self.transport.handle_async_request(request)
        finally:
            timer.restore()

    async def aclose(self) -> None:
        await self.transport.aclose()
