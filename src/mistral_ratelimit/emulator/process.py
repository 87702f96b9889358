"""The emulator in a process of its own, as a real server is.

An in-process :class:`~mistral_ratelimit.emulator.Emulator` shares the GIL with the client
under test: while the client's threads and event loop hold it, requests that already
arrived wait to be stamped, so the server counts them later and closer together than they
were sent, and refuses some that no real server would. A limit measured at the server must
therefore be measured by a server in another process:

>>> with EmulatorProcess(requests_per_second=10) as emu:  # doctest: +SKIP
...     client = MistralRatelimitClient(server_url=emu.url, requests_per_second=10)
...     ...
...     log = emu.log()  # a copy of the request log, fetched from the server process
"""

from __future__ import annotations

import contextlib
import multiprocessing
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from .log import RequestLog

STARTUP_TIMEOUT = 60.0  # a fresh interpreter imports the server stack and the vocabulary


def _serve(conn: Connection, settings: dict[str, Any]) -> None:
    from .server import Emulator

    with Emulator(**settings) as emu:
        conn.send(emu.url)
        while (message := conn.recv()) != "stop":
            assert message == "log", message
            conn.send(emu.log)


class EmulatorProcess:
    """An :class:`Emulator` (same keyword settings) serving from a child process."""

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self._conn: Connection | None = None
        self._process: Any = None
        self.url = ""

    def start(self) -> EmulatorProcess:
        # "spawn": a fresh interpreter, never a fork of a parent that runs threads.
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, self._settings), name="mistral-emulator", daemon=True
        )
        self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(STARTUP_TIMEOUT):
            self.stop()
            raise RuntimeError("the emulator process did not start")
        self.url = parent.recv()
        return self

    def log(self) -> RequestLog:
        """A copy of every request the server has seen so far."""
        assert self._conn is not None, "not started"
        self._conn.send("log")
        log: RequestLog = self._conn.recv()
        return log

    def stop(self) -> None:
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            with contextlib.suppress(OSError):  # the child is gone already
                conn.send("stop")
            conn.close()
        if process is not None:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = ["EmulatorProcess"]
