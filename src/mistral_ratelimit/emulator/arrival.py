"""When a request reached the server: the kernel's time, not when the event loop got to it.

A real API counts a request when it reaches its gateway, whatever else the gateway is
doing. The emulator is one process on the same machine as its clients: when the machine is
busy, it can lose the CPU for tens of milliseconds, and by the app's clock a request that
arrived meanwhile arrives when the app finally runs. Two requests a client sent together
were then counted 60 ms apart, the next pair was counted on time, and the server refused
requests the client had spaced correctly (examples/test_async.py on a loaded 2-core
machine; bench/bench_arrival.py).

The kernel notes when data last arrived on each TCP connection, and on Linux
``TCP_INFO`` reports how long ago that was (``tcpi_last_data_recv``, in milliseconds but
counted in kernel ticks: 4 ms at 250 Hz). :class:`Connections` keeps each open connection's
socket by its peer address, which is how the ASGI scope names the client, so the app can
ask. Elsewhere, or when the socket cannot say, the app's own clock is used, as before.

A count of whole ticks can put the arrival up to a tick before the send, and a server that
counts a request before it was sent refuses a client that paced exactly (a break-it run at
20 requests/s, one request every 50.1 ms: 7 of 200 refused). So the stamp is taken a tick
later: never before the true arrival, at most two ticks after it, as a network would.
"""

from __future__ import annotations

import functools
import itertools
import logging
import socket
import struct
import sys
import time
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger(__name__)

#: ``struct tcp_info`` (linux/tcp.h): 8 one-byte fields, 9 u32 (rto ... fackets), then
#: ``tcpi_last_data_sent``, ``tcpi_last_ack_sent`` and ``tcpi_last_data_recv``.
_LAST_DATA_RECV_OFFSET = 8 + 9 * 4 + 2 * 4
_TCP_INFO_SIZE = _LAST_DATA_RECV_OFFSET + 4
_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None
#: The loop is never this late: data older than this on a connection is not this request's.
_MAX_BACKDATE = 1.0

#: Used when the tick cannot be measured: the longest of the usual ones (100 Hz).
_DEFAULT_TICK = 0.010

Peer = tuple[str, int]


def _last_data_recv_ms(sock: Any) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    ms: int = struct.unpack_from("I", info, _LAST_DATA_RECV_OFFSET)[0]
    return ms


@functools.lru_cache(maxsize=1)
def kernel_tick() -> float:
    """The step of ``tcpi_last_data_recv``, in seconds: watch it count up on a loopback
    connection for a few ticks (about 25 ms, once per process)."""
    if _TCP_INFO is None:
        return _DEFAULT_TICK
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            with client, server:
                client.sendall(b"x")
                seen = {_last_data_recv_ms(server)}
                deadline = time.monotonic() + 0.025
                while time.monotonic() < deadline:
                    seen.add(_last_data_recv_ms(server))
                    time.sleep(0.0005)
    except (OSError, struct.error) as exc:
        log.debug("cannot measure the kernel tick: %s", exc)
        return _DEFAULT_TICK
    values = sorted(seen)
    steps = [b - a for a, b in itertools.pairwise(values)]
    # A starved process can miss ticks and see a longer step: no usual tick is longer.
    return min(min(steps) / 1000.0, _DEFAULT_TICK) if steps else _DEFAULT_TICK


def _peer_key(address: Any) -> Peer | None:
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None  # a Unix socket, or no address


class Connections:
    """Open connections' sockets by peer address. Only the server's event loop thread
    touches it (connections open and close there, and the app runs there)."""

    def __init__(self) -> None:
        self._sockets: dict[Peer, tuple[Any, Any]] = {}  # peer: (transport, socket)
        self._last = 0.0
        self._tick = kernel_tick()

    def opened(self, transport: Any) -> None:
        key = _peer_key(transport.get_extra_info("peername"))
        sock = transport.get_extra_info("socket")
        if key is not None and sock is not None:
            self._sockets[key] = (transport, sock)

    def closed(self, transport: Any) -> None:
        key = _peer_key(transport.get_extra_info("peername"))
        # Only its own entry: a new connection from a reused port may have replaced it.
        if key is not None and self._sockets.get(key, (None,))[0] is transport:
            del self._sockets[key]

    def __len__(self) -> int:
        return len(self._sockets)

    def arrival(self, client: Any, now: float) -> float:
        """When the request from ``client`` (the scope's ``client``) reached the server, on
        the ``time.monotonic()`` clock; ``now`` when that cannot be known.

        Never earlier than an arrival already given: the limits count charges in order. Two
        requests that arrived together can reach the app in either order; the second one
        handled then counts at the first one's time, a few ms later than its own at most.
        """
        at = now
        key = _peer_key(client)
        entry = self._sockets.get(key) if key is not None else None
        if entry is not None and _TCP_INFO is not None:
            try:
                ago_ms = _last_data_recv_ms(entry[1])
            except (OSError, struct.error, ValueError) as exc:
                log.debug("no kernel arrival time for %s: %s", key, exc)
            else:
                ago = ago_ms / 1000.0 - self._tick  # a tick later: never before the send
                at = now - min(max(ago, 0.0), _MAX_BACKDATE)
        at = max(at, self._last)  # the clock given is monotonic, so this is still <= now
        self._last = at
        return at


def stamping_protocol(connections: Connections) -> type[Any]:
    """uvicorn's own HTTP protocol class, telling ``connections`` of each connection."""

    class StampingHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            self._stamped = transport
            connections.opened(transport)
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            connections.closed(self._stamped)
            super().connection_lost(exc)

    return StampingHTTPProtocol


__all__ = ["Connections", "stamping_protocol"]
