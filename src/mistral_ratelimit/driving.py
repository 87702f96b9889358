"""Drive the sans-IO lifecycle: the sync driver and the async driver.

These two functions, and the two stream wrappers, are the only places where the sync and
async worlds differ; httpx and httpx2 share them, since both libraries' responses offer
the same ``read``/``close``/``aread``/``aclose`` and transports the same ``handle_*``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio

from .lifecycle import Acquire, BodyObserver, Call, Close, Deliver, ReadBody, Send, Sleep, Steps
from .limiter.base import Limiter, is_nonblocking
from .limiter.waiting import aacquire, acquire

log = logging.getLogger("mistral_ratelimit")

Depart = Callable[[float], None]


def _call_sync(limiter: Limiter, call: Call) -> Any:
    return getattr(limiter, call.name)(*call.args)


async def _call_async(limiter: Limiter, call: Call) -> Any:
    twin = getattr(limiter, "a" + call.name, None)
    if twin is None:  # local bookkeeping with no I/O has no async twin
        return getattr(limiter, call.name)(*call.args)
    return await twin(*call.args)


def finish_sync(observer: BodyObserver, limiter: Limiter) -> None:
    """Settle and release what ``observer`` watched (``BodyObserver.finish``)."""
    if is_nonblocking(limiter):
        observer.finish_now(limiter)
    else:
        drive_sync(observer.finish(), limiter, no_send)


async def finish_async(observer: BodyObserver, limiter: Limiter) -> None:
    """Async twin of :func:`finish_sync`."""
    if is_nonblocking(limiter):
        observer.finish_now(limiter)
    else:
        await drive_async(observer.finish(), limiter, no_asend)


def departure_sync(limiter: Limiter, departed: Callable[[float], Call | None]) -> Depart:
    """What the sync transport calls when a request body has been written (``Send``)."""

    def depart(sent_at: float) -> None:
        try:
            call = departed(sent_at)
            if call is not None:
                _call_sync(limiter, call)
        except Exception:  # best effort: it must never fail the request on its way
            log.debug("could not count a request from when it left", exc_info=True)

    return depart


def departure_async(
    limiter: Limiter, departed: Callable[[float], Call | None]
) -> Callable[[float], Awaitable[None]]:
    """Async twin of :func:`departure_sync`: shielded, as every limiter call is."""
    direct = is_nonblocking(limiter)

    async def depart(sent_at: float) -> None:
        try:
            call = departed(sent_at)
            if call is None:
                return
            if direct:
                _call_sync(limiter, call)
            else:
                with anyio.CancelScope(shield=True):
                    await _call_async(limiter, call)
        except Exception:
            log.debug("could not count a request from when it left", exc_info=True)

    return depart


def drive_sync(
    steps: Steps,
    limiter: Limiter,
    send: Callable[[Send], Any],
    read_prefix: Callable[[Any, int], tuple[bytes, bool]] | None = None,
) -> Any:
    """Run ``steps`` to completion with blocking I/O; returns the generator's value.

    ``send`` and ``read_prefix`` perform the ``Send`` and ``ReadBody`` effects."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            if isinstance(effect, Call):
                value = _call_sync(limiter, effect)
            elif isinstance(effect, Send):
                value = send(effect)
            elif isinstance(effect, Acquire):
                value = acquire(limiter, effect.tokens, priority=effect.priority)
            elif isinstance(effect, Close):
                effect.response.close()
            elif isinstance(effect, ReadBody):
                assert read_prefix is not None
                value = read_prefix(effect.response, effect.limit)
            elif isinstance(effect, Sleep):
                time.sleep(effect.seconds)
        except BaseException as exc:  # handed to the lifecycle, which re-raises
            error = exc


async def drive_async(
    steps: Steps,
    limiter: Limiter,
    send: Callable[[Send], Awaitable[Any]],
    read_prefix: Callable[[Any, int], Awaitable[tuple[bytes, bool]]] | None = None,
) -> Any:
    """Async twin of :func:`drive_sync`, on anyio so it runs under asyncio and trio.

    Limiter calls and closes are shielded from cancellation: a cancelled request must
    still give its reservation back. A limiter whose calls never wait on I/O
    (``nonblocking``) is called directly: nothing can interrupt a call that never suspends,
    and a shield costs more than the call itself (~6 µs, more than a whole reservation).
    """
    direct = is_nonblocking(limiter)
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            if isinstance(effect, Call):
                if direct:
                    value = _call_sync(limiter, effect)
                else:
                    with anyio.CancelScope(shield=True):
                        value = await _call_async(limiter, effect)
            elif isinstance(effect, Send):
                value = await send(effect)
            elif isinstance(effect, Acquire):
                value = await aacquire(limiter, effect.tokens, priority=effect.priority)
            elif isinstance(effect, Close):
                with anyio.CancelScope(shield=True):
                    await effect.response.aclose()
            elif isinstance(effect, ReadBody):
                assert read_prefix is not None
                value = await read_prefix(effect.response, effect.limit)
            elif isinstance(effect, Sleep):
                await anyio.sleep(effect.seconds)
        except BaseException as exc:
            error = exc


class ObservedStreamBase:
    """Common state of the stream wrappers: the inner stream and its observer."""

    def __init__(self, inner: Any, observer: BodyObserver, limiter: Limiter) -> None:
        self._inner = inner
        self._observer = observer
        self._limiter = limiter

    def _finish_later(self) -> None:
        """Hand the settlement to the limiter's next call, if it can take it (see
        ``RateLimiter.settle_later``): for a stream finalized by the garbage collector,
        which may run inside one of the limiter's own locks."""
        later = getattr(self._limiter, "settle_later", None)
        if not self._observer.finished and callable(later):
            later(self._observer.reservation, self._observer.abandon())

    def __del__(self) -> None:
        # Dropped without being closed or read to the end (an abandoned SDK event stream):
        # its in-flight slot must still come back, or a max_concurrency client hangs.
        with contextlib.suppress(Exception):
            self._finish_later()


class ObservedSyncStream(ObservedStreamBase):
    """Yields the inner stream's bytes unchanged, as they come, while the observer reads
    along; settles when the stream ends or is closed, whichever comes first."""

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                self._observer.feed(chunk)
                yield chunk
        except GeneratorExit:
            # The iterator was abandoned and is being finalized (perhaps by the collector).
            self._finish_later()
            raise
        finally:
            finish_sync(self._observer, self._limiter)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            finish_sync(self._observer, self._limiter)


class ObservedAsyncStream(ObservedStreamBase):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                self._observer.feed(chunk)
                yield chunk
        finally:
            await finish_async(self._observer, self._limiter)

    async def aclose(self) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self._inner.aclose()
        finally:
            await finish_async(self._observer, self._limiter)


def no_send(_: Send) -> Any:  # pragma: no cover - finish() never sends
    raise RuntimeError("settlement does not send requests")


async def no_asend(_: Send) -> Any:  # pragma: no cover
    raise RuntimeError("settlement does not send requests")


def deliver(outcome: Deliver, stream_class: type[ObservedStreamBase], limiter: Limiter) -> Any:
    """Swap the response's stream for an observing wrapper of the client library's type."""
    response = outcome.response
    if outcome.observer is not None:
        response.stream = stream_class(response.stream, outcome.observer, limiter)
    return response
