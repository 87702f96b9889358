"""A full garbage collection that really runs, for tests that drop an object on purpose."""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

FULL = 2


def collect_garbage(timeout: float = 5.0) -> None:
    """Run a full collection in this thread, even while another thread is in one.

    CPython's ``gc.collect()`` does nothing and returns 0 while any thread is collecting,
    and a collection that runs a finalizer lets other threads run in its middle. The
    emulator's and Redis's threads allocate all the time, so a test that drops a stream and
    calls ``gc.collect()`` once found it, now and then, not finalized at all.
    """
    me = threading.get_ident()
    ran = threading.Event()

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info.get("generation") == FULL and threading.get_ident() == me:
            ran.set()

    gc.callbacks.append(seen)
    try:
        deadline = time.monotonic() + timeout
        while True:
            gc.collect()
            if ran.is_set():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no full garbage collection could run in {timeout} s")
            time.sleep(0.001)  # let the other thread's collection end
    finally:
        gc.callbacks.remove(seen)
