"""A throw-away ``redis-server`` on a free loopback port, in its own temp dir.

Tests that need it call :func:`shared_server` (one per test process, stopped at exit) or
make their own :class:`RedisServer` when they must stop and restart it. Without the
``redis-server`` binary (Debian package ``redis-server``) they skip with that message.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

BINARY = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)
SKIP_REASON = (
    "redis-server not found on PATH: install the Debian package 'redis-server' "
    "(.ci/run does) to run the Redis backend tests"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` keep the same port."""

    def __init__(self, port: int | None = None) -> None:
        if BINARY is None:
            pytest.skip(SKIP_REASON)
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="mrl-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        assert BINARY is not None
        self.proc = subprocess.Popen(
            [
                BINARY,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_shared: RedisServer | None = None


def shared_server() -> RedisServer:
    """One server for every test of this process (skips without the binary)."""
    global _shared
    if _shared is None or _shared.proc is None or _shared.proc.poll() is not None:
        _shared = RedisServer().start()
        atexit.register(_shared.close)
    return _shared


def fresh_key() -> str:
    """A budget name no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"
