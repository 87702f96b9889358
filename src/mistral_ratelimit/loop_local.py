"""An async transport with one connection pool per event loop, each closed inside its loop.

A pooled connection belongs to the loop that opened it: reusing it from a later
``asyncio.run()`` raises ``RuntimeError: Event loop is closed`` (httpx and httpx2 alike),
and only that loop can close it, since its socket is one of the loop's transports. So the
facade's async client, which must survive several loops (``asyncio.run`` called twice,
threads each running their own loop), gives each loop its own inner transport and closes
each pool inside its own loop:

- when the loop shuts down: a keeper async generator is started in the loop with the pool,
  and ``asyncio.run``, ``asyncio.Runner`` and ``trio.run`` finalise every async generator
  after cancelling the remaining tasks (PEP 525 hooks), which closes the pool;
- when the client is closed: in the loop's own code directly (a sync ``close()`` inside a
  running loop leaves that to a task, which the keeper backs up should the loop end first);
  from another thread with ``run_coroutine_threadsafe`` or ``trio.from_thread``; an idle
  loop by running it once.

A loop closed without that shutdown (``loop.close()`` with no ``shutdown_asyncgens()``)
leaves its sockets open, and nothing can close them afterwards: close the client first.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio.to_thread

#: How long closing a pool may wait for a loop that runs in another thread.
CLOSE_TIMEOUT = 5.0


def _current_loop() -> Any:
    """The running asyncio loop or trio run, or None outside async code."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            return trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
    return None


def _loop_finished(loop: Any) -> bool:
    is_closed = getattr(loop, "is_closed", None)
    if callable(is_closed):
        return bool(is_closed())
    try:  # a trio token refuses new work once its run has ended
        loop.run_sync_soon(lambda: None)
    except Exception:
        return True
    return False


def _cancellations() -> tuple[type[BaseException], ...]:
    trio = sys.modules.get("trio")
    return (asyncio.CancelledError, trio.Cancelled) if trio else (asyncio.CancelledError,)


def _connections(transport: Any) -> list[Any]:
    """The connections of an httpx / httpx2 transport's pool (``connections`` is public on
    httpcore's pools; the pool itself is the transport's ``_pool``)."""
    pool = getattr(transport, "_pool", None)
    return list(getattr(pool, "connections", ()))


class ClosedAtLoopEnd:
    """Something only its event loop can close (its sockets are that loop's), closed by the
    loop itself when it shuts down: ``keep()`` starts a keeper async generator in the loop,
    and ``asyncio.run``, ``asyncio.Runner`` and ``trio.run`` finalise every async generator
    (PEP 525 hooks), which calls ``aclose()``."""

    _keeper: AsyncGenerator[None, None] | None = None  # a loop holds it only weakly

    async def keep(self) -> None:
        """Call from inside the loop."""
        self._keeper = self._close_at_loop_end()
        await self._keeper.asend(None)  # the first step registers it with the running loop

    async def _close_at_loop_end(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        raise NotImplementedError


class _Pool(ClosedAtLoopEnd):
    """One loop's inner transport."""

    def __init__(self, loop: Any, transport: Any) -> None:
        self.loop = loop
        self.transport = transport

    async def aclose(self) -> None:
        """Close every connection, from inside the loop. Safe to repeat.

        Connection by connection, so that a cancellation cannot strand any: ``asyncio.run``
        cancels every task as it ends and a native cancellation passes through httpcore's
        (anyio) shield; ``trio.run`` cancels async work while it finalises generators; and
        the pool's own ``aclose`` drops its list of connections before closing them. Each
        connection's socket is closed before its first await, so one cut short is closed.
        """
        cancelled: BaseException | None = None
        closers = [c.aclose for c in _connections(self.transport)]
        for close in [*closers, self.transport.aclose]:
            try:
                await close()
            except _cancellations() as exc:
                cancelled = cancelled or exc
        if cancelled is not None:
            raise cancelled

    def close_elsewhere(self) -> None:
        """Close from a thread that is not running this pool's loop (blocks)."""
        loop = self.loop
        if _loop_finished(loop):
            return  # its keeper closed it as the loop shut down
        if isinstance(loop, asyncio.AbstractEventLoop):
            if loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
                future.result(CLOSE_TIMEOUT)
            else:
                loop.run_until_complete(self.aclose())
            return
        import trio

        trio.from_thread.run(self.aclose, trio_token=loop)


class LoopLocalAsyncTransport:
    """An async transport that keeps one connection pool per event loop (see the module)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._pools: dict[int, _Pool] = {}

    async def _pool(self) -> _Pool:
        loop = _current_loop()
        with self._lock:
            pool = self._pools.get(id(loop))
            if pool is not None and pool.loop is loop:
                return pool
            for key, other in list(self._pools.items()):
                if _loop_finished(other.loop):  # closed by its keeper as it shut down
                    del self._pools[key]
            pool = _Pool(loop, self._factory())
            self._pools[id(loop)] = pool
        await pool.keep()
        return pool

    async def handle_async_request(self, request: Any) -> Any:
        pool = await self._pool()
        return await pool.transport.handle_async_request(request)

    def _take_all(self) -> list[_Pool]:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        return pools

    async def aclose(self) -> None:
        """Close every loop's pool: this loop's here, the others in their own loops."""
        loop = _current_loop()
        for pool in self._take_all():
            if pool.loop is loop:
                await pool.aclose()
            else:
                await anyio.to_thread.run_sync(pool.close_elsewhere)

    def __repr__(self) -> str:
        return f"LoopLocalAsyncTransport(loops={len(self._pools)})"


__all__ = ["ClosedAtLoopEnd", "LoopLocalAsyncTransport"]
