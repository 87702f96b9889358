"""The emulator counts a request when it reached the server's socket, by the kernel's clock,
however late its event loop gets to it."""

from __future__ import annotations

import random
import socket
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("uvicorn")

from mistral_ratelimit.emulator import Emulator
from mistral_ratelimit.emulator.arrival import Connections, kernel_tick

pytestmark = [
    pytest.mark.realclock,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO is Linux's"),
]


class FakeTransport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> object:
        return {"peername": self.sock.getpeername(), "socket": self.sock}.get(name)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    with client, server:
        yield client, server


def test_the_kernels_arrival_time_is_used(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    conns = Connections()
    conns.opened(FakeTransport(server))
    before = time.monotonic()
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")  # on loopback, received inside this call
    after = time.monotonic()
    time.sleep(0.2)  # the server's loop gets to it late
    now = time.monotonic()
    at = conns.arrival(client.getsockname(), now)
    # When it was sent (never before, at most two kernel ticks after), not when it was read.
    assert before <= at <= after + 2 * kernel_tick(), (at - before, after - before, now - before)


def test_a_stamp_is_never_before_the_send(pair: tuple[socket.socket, socket.socket]) -> None:
    """The kernel counts whole ticks; read as they are, a stamp fell up to a tick before
    the send, 3-8% of the time, and the server refused clients that paced exactly."""
    client, server = pair
    conns = Connections()
    conns.opened(FakeTransport(server))
    tick = kernel_tick()
    assert 0.0005 <= tick <= 0.010
    chance = random.Random(7)
    for _ in range(60):
        time.sleep(chance.uniform(0, tick))  # sends fall anywhere within a tick
        before = time.monotonic()
        client.sendall(b"x")
        after = time.monotonic()
        time.sleep(chance.choice([0.0, 0.001, 0.003, 0.02]))
        at = conns.arrival(client.getsockname(), time.monotonic())
        assert before <= at <= after + 2 * tick, (at - before, tick)
        server.recv(16)


def test_unknown_peers_and_closed_connections_use_the_apps_clock(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    conns, transport = Connections(), FakeTransport(server)
    conns.opened(transport)
    assert len(conns) == 1
    now = time.monotonic() + 100.0  # later than any real stamp, so the last one never wins
    assert conns.arrival(("127.0.0.1", 1), now) == now
    assert conns.arrival(None, now + 1) == now + 1
    conns.closed(FakeTransport(server))  # another transport for the same peer: not its own
    assert len(conns) == 1
    conns.closed(transport)
    assert len(conns) == 0
    assert conns.arrival(client.getsockname(), now + 2) == now + 2


def test_arrivals_never_go_back(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    conns = Connections()
    conns.opened(FakeTransport(server))
    client.sendall(b"x")
    time.sleep(0.1)
    later = conns.arrival(None, time.monotonic())  # another request, handled first
    # This one arrived ~100 ms earlier, but the limits have already counted one at `later`.
    assert conns.arrival(client.getsockname(), time.monotonic()) == later


def test_a_request_that_waits_for_a_busy_server_counts_from_its_arrival() -> None:
    """The server's loop is stuck (here: on its own lock, inside another request) while a
    second request arrives on a new connection; it counts from when it was sent."""
    with Emulator(requests_per_second=1000) as emu:
        lock = emu.app.state.lock
        with httpx.Client(base_url=emu.url, timeout=10) as warm:
            warm.get("/v1/models")
        sending: dict[str, float] = {}  # when the request started to be written
        sent: dict[str, float] = {}  # when it was all written

        def call(name: str) -> None:
            def trace(event: str, info: object) -> None:
                if event == "http11.send_request_headers.started":
                    sending[name] = time.monotonic()
                elif event == "http11.send_request_body.complete":
                    sent[name] = time.monotonic()

            with httpx.Client(base_url=emu.url, timeout=10) as c:
                response = c.get("/v1/models", extensions={"trace": trace})
                assert response.status_code == 200

        with lock:  # the first request stops the loop inside the app
            first = threading.Thread(target=call, args=("first",))
            first.start()
            time.sleep(0.1)
            second = threading.Thread(target=call, args=("second",))
            second.start()
            time.sleep(0.4)
            released = time.monotonic()
        first.join(10)
        second.join(10)
        assert released - sent["second"] > 0.2  # it was sent while the loop was stuck
        records = sorted(emu.log.snapshot(), key=lambda r: r.arrival)
        # All three served, the two stuck ones after the lock was let go.
        assert [r.status for r in records] == [200, 200, 200]
        assert all(r.finished is not None and r.finished >= released for r in records[1:])
        # Counted from when it was sent (a kernel tick), not from when the loop got to it.
        late = records[2]
        assert sending["second"] <= late.arrival <= sent["second"] + 2 * kernel_tick()
        # The wall clock moved with it.
        assert abs((late.wall - late.arrival) - (time.time() - time.monotonic())) < 0.05
        # Closed connections are forgotten (as soon as the server has seen them close).
        deadline = time.monotonic() + 5
        while len(emu.app.connections) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(emu.app.connections) == 0
