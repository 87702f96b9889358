"""Stream wrapper classes that pass the isinstance checks of httpx *and* httpx2 clients.

Each client asserts that a transport's response stream is an instance of its own
``SyncByteStream`` / ``AsyncByteStream``; the two libraries' classes are unrelated, so the
wrappers subclass both when httpx2 is installed (reference: mistral-wire.md §6).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from .driving import ObservedAsyncStream, ObservedStreamBase, ObservedSyncStream

_LIBS: list[Any] = [httpx]
try:
    import httpx2

    _LIBS.append(httpx2)
except ImportError:  # the mistralai 1.x/2.x line does not need it
    pass


def _bases(ours: type, name: str) -> tuple[type, ...]:
    return (ours, *(getattr(lib, name) for lib in _LIBS))


SyncStream: type[ObservedStreamBase] = type(
    "SyncStream", _bases(ObservedSyncStream, "SyncByteStream"), {"__slots__": ()}
)
AsyncStream: type[ObservedStreamBase] = type(
    "AsyncStream", _bases(ObservedAsyncStream, "AsyncByteStream"), {"__slots__": ()}
)


class _Replay:
    """A body of which the first chunks were already read: they are yielded again, then
    the rest as it comes; closing closes the original stream."""

    def __init__(self, head: list[bytes], rest: Any, inner: Any) -> None:
        self._head = head
        self._rest = rest  # the original stream's iterator, or None when it was read whole
        self._inner = inner


class _SyncReplay(_Replay):
    def __iter__(self) -> Iterator[bytes]:
        yield from self._head
        if self._rest is not None:
            yield from self._rest

    def close(self) -> None:
        self._inner.close()


class _AsyncReplay(_Replay):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._head:
            yield chunk
        if self._rest is not None:
            async for chunk in self._rest:
                yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


SyncReplay: type[_Replay] = type("SyncReplay", _bases(_SyncReplay, "SyncByteStream"), {})
AsyncReplay: type[_Replay] = type("AsyncReplay", _bases(_AsyncReplay, "AsyncByteStream"), {})


def read_prefix(response: Any, limit: int) -> tuple[bytes, bool]:
    """Read the raw body until it ends or passes ``limit`` bytes; the caller still gets it
    all, from the first byte (``ReadBody`` of the lifecycle)."""
    head: list[bytes] = []
    size = 0
    rest = iter(response.stream)
    for chunk in rest:
        head.append(chunk)
        size += len(chunk)
        if size > limit:
            response.stream = SyncReplay(head, rest, response.stream)
            return b"".join(head), False
    response.stream = SyncReplay(head, None, response.stream)
    return b"".join(head), True


async def aread_prefix(response: Any, limit: int) -> tuple[bytes, bool]:
    head: list[bytes] = []
    size = 0
    rest = response.stream.__aiter__()
    async for chunk in rest:
        head.append(chunk)
        size += len(chunk)
        if size > limit:
            response.stream = AsyncReplay(head, rest, response.stream)
            return b"".join(head), False
    response.stream = AsyncReplay(head, None, response.stream)
    return b"".join(head), True
