"""Running the emulator: in a background thread for tests and the demo, or in the foreground.

``Emulator`` binds its socket itself (port 0 by default, so the OS picks a free port with no
race), hands it to uvicorn, and serves from a daemon thread with its own event loop. It can
therefore be started from any thread, including one that runs an event loop (the demo).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from .app import EmulatorApp, quiet_abrupt_cuts
from .arrival import stamping_protocol
from .faults import Fault, FaultKind, FaultPlan
from .log import RequestLog
from .settings import EmulatorConfig

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT = 10.0
BACKLOG = 4096


def _ready_tokenizer() -> None:
    """Load the vocabulary before serving: loading it inside the first request would block
    the event loop ~0.3 s while requests queue unstamped, so their arrival times (what the
    limits count) would come late and bunched, as no real server's would."""
    from ..accounting.tokenizer import tokenizer_info

    tokenizer_info()


def _run_loop(coro: Any) -> None:
    """Run the server on uvloop when it is installed (the ``[emulator]`` extra brings it,
    and httptools, which uvicorn then picks by itself).

    The limits count a request when the app first sees it. On asyncio's pure-Python loop
    and h11 parser, a burst on fresh connections was stamped up to 40 ms after the client
    sent it (accepting and parsing one connection after another, slower still when the
    CPU is shared), while the next burst on warm connections was stamped at once: the
    server then saw more in one window than the client sent, and refused requests no real
    server would (bench/bench_zero429.py with a CPU hog: 3 rounds in 6 drew 429s; with
    uvloop and httptools, none of 6).
    """
    factory: Any = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    if factory is None or sys.version_info < (3, 11):
        asyncio.run(coro)  # asyncio.Runner, which takes a loop factory, is 3.11+
        return
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


class BindError(OSError):
    """The server's address cannot be listened on: the port is in use, or the host is not
    an address of this machine (its ``errno`` is the socket's)."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this. Without it, a stream's first event after the response
    # headers waited ~40 ms for the client's delayed ACK (Nagle): a latency no real API adds,
    # which hid the transport's own first-byte cost (bench/bench_first_byte.py).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0-65535
        sock.close()
        code = getattr(exc, "errno", None)
        if code == errno.EADDRINUSE:
            why = f"port {port} is in use on {host} (choose another, or 0 for a free one)"
        else:
            why = f"cannot listen on {host} port {port}: {getattr(exc, 'strerror', None) or exc}"
        error = BindError(why)
        error.errno = code
        raise error from exc
    sock.set_inheritable(True)
    # Listening now, not when uvicorn starts serving: whoever reads the URL (the `serve`
    # command prints it at once) may connect at once; connections wait in the backlog.
    sock.listen(BACKLOG)
    return sock


def uvicorn_config(
    app: EmulatorApp,
    *,
    log_level: str | int = "warning",
    access_log: bool = False,
    configure_logging: bool = False,
) -> uvicorn.Config:
    kwargs: dict[str, Any] = {}
    if app.config.kernel_arrival:
        kwargs["http"] = stamping_protocol(app.connections)
    if not configure_logging:
        kwargs["log_config"] = None  # never reconfigure the host program's logging
    return uvicorn.Config(
        app,
        lifespan="off",
        access_log=access_log,
        log_level=log_level,
        server_header=False,
        date_header=True,
        timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
        backlog=BACKLOG,
        **kwargs,
    )


class Emulator:
    """A Mistral-compatible server with real limits, on 127.0.0.1 and a free port.

    >>> with Emulator(requests_per_second=5, tokens_per_minute=50_000) as emu:  # doctest: +SKIP
    ...     client = Mistral(api_key="k", server_url=emu.url)

    Keyword arguments are those of :class:`EmulatorConfig`; pass ``config=`` instead to
    reuse one. ``port=0`` picks a free port.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **kwargs: Any,
    ) -> None:
        if config is not None and kwargs:
            raise TypeError("pass either config= or keyword settings, not both")
        self.config = config if config is not None else EmulatorConfig(**kwargs)
        self.host = host
        self.port = port
        self.app = EmulatorApp(self.config)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Emulator({self.url if self.running else self.host}, {state})"

    # lifecycle

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, the ``server_url`` to give the SDK."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Emulator:
        if self.running:
            return self
        quiet_abrupt_cuts()
        _ready_tokenizer()
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn_config(self.app))
        self._server = server
        self._error = None

        def run() -> None:
            try:
                _run_loop(server.serve(sockets=[sock]))
            except BaseException as exc:  # reported by start() or stop()
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(
            target=run, name=f"mistral-emulator:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"emulator did not start: {self._error!r}")
            time.sleep(0.005)
        logger.debug("emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # for tests and the demo

    @property
    def log(self) -> RequestLog:
        """Every request so far (thread-safe; reads return copies)."""
        return self.app.state.log

    @property
    def faults(self) -> FaultPlan:
        return self.config.fault_plan

    def inject(self, fault: Fault | FaultKind, count: int = 1) -> None:
        """Make the next ``count`` generation requests fail with ``fault``."""
        self.config.fault_plan.push(fault, count)

    def reset(self) -> None:
        """Forget every request, window, conversation, agent and queued fault."""
        self.app.state.reset()

    def headers_now(self) -> dict[str, int]:
        """The x-ratelimit-* values a response would carry right now."""
        with self.app.state.lock:
            return self.app.state.limits.header_values(time.monotonic())


def serve(
    config: EmulatorConfig, *, host: str = "127.0.0.1", port: int = 8787, log_level: str = "info"
) -> None:
    """Serve in the foreground until interrupted (``mistral-ratelimit serve``).

    Prints the URL (with the real port when ``port`` is 0) on stdout once bound.
    """
    quiet_abrupt_cuts()
    _ready_tokenizer()
    app = EmulatorApp(config)
    server = uvicorn.Server(
        uvicorn_config(app, log_level=log_level, access_log=True, configure_logging=True)
    )
    sock = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"mistral-ratelimit emulator on http://{shown}:{sock.getsockname()[1]}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["BindError", "Emulator", "serve"]
