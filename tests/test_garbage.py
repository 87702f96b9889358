"""The tests' collect_garbage() finalizes what a plain gc.collect() can miss."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from garbage import collect_garbage


class Slow:
    def __del__(self) -> None:
        time.sleep(0.2)  # lets other threads run in the middle of this thread's collection


class Cycle:
    me: Cycle


def test_a_collection_in_another_thread_does_not_make_it_a_no_op() -> None:
    started = threading.Event()

    def collect_slowly() -> None:
        slow = Slow()
        slow.me = slow  # type: ignore[attr-defined]
        del slow
        started.set()
        gc.collect()

    other = threading.Thread(target=collect_slowly)
    other.start()
    started.wait(5)
    time.sleep(0.05)  # the other thread is inside its collection, in the finalizer
    garbage = Cycle()
    garbage.me = garbage
    ref = weakref.ref(garbage)
    del garbage
    collect_garbage()
    assert ref() is None
    other.join(5)
