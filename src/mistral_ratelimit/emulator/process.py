"""The emulator in a process of its own, as a real server is.

An in-process :class:`~mistral_ratelimit.emulator.Emulator` shares the GIL and the CPU with
the client under test. On Linux its limits count each request at the kernel's arrival time
(``arrival.py``), which neither moves; elsewhere a request that arrived while the client
held the GIL is stamped late, so the server counts requests later and closer together than
they were sent and refuses some no real server would. Either way the server's own work
slows the client down. A limit measured at the server is best measured by a server in
another process:

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


#: Why a child can end before it ran any of our code: "spawn" re-imports the parent's main
#: module (``multiprocessing`` "Safe importing of main module"), so a script that starts an
#: EmulatorProcess at its top level starts one again inside the child, which multiprocessing
#: refuses; the parent only sees the pipe close.
_NO_MAIN_GUARD = (
    "the emulator process exited before it ran (exit code {code}): it is a fresh "
    "interpreter that imports your main module again, so a script that starts an "
    'EmulatorProcess must do it under `if __name__ == "__main__":` (the child\'s '
    "traceback above says more)"
)


def _serve(conn: Connection, settings: dict[str, Any]) -> None:
    try:
        from .server import Emulator

        emu = Emulator(**settings).start()
    except Exception as exc:  # told to the parent, which raises it in the caller's code
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    with emu:
        conn.send(("url", emu.url))
        while (message := conn.recv()) != "stop":
            assert message == "log", message
            conn.send(emu.log)


class EmulatorProcess:
    """An :class:`Emulator` (same keyword settings) serving from a child process.

    The child is started with ``spawn`` on every platform, so code that starts one at a
    script's top level must sit under ``if __name__ == "__main__":``.
    """

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
        try:
            if not parent.poll(STARTUP_TIMEOUT):
                raise RuntimeError("the emulator process did not start")
            kind, value = parent.recv()
        except EOFError:
            self._process.join(5)
            code = self._process.exitcode
            self.stop()
            raise RuntimeError(_NO_MAIN_GUARD.format(code=code)) from None
        except BaseException:
            self.stop()
            raise
        if kind == "error":
            self.stop()
            raise RuntimeError(f"the emulator process did not start: {value}")
        self.url = value
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
