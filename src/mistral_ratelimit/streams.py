"""Stream wrapper classes that pass the isinstance checks of httpx *and* httpx2 clients.

Each client asserts that a transport's response stream is an instance of its own
``SyncByteStream`` / ``AsyncByteStream``; the two libraries' classes are unrelated, so the
wrappers subclass both when httpx2 is installed (reference: mistral-wire.md §6).
"""

from __future__ import annotations

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
