"""A real HTTP/1.1 server on 127.0.0.1 whose replies come from a test's script.

The transport tests script their server as a callable from a request to an ``httpx`` or
``httpx2`` ``Response``. Over ``MockTransport`` the client reads request and response bodies
up front, which hides what only a socket shows: a body sent twice, a pooled connection
reused or thrown away, a chunked error body. This server plays the same scripts over a
socket, so the same tests run both ways.

Each request reaches the script as an ``httpx.Request`` whose body is exactly the bytes
that arrived, with ``extensions["connection"]``: the index of the TCP connection it came on.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import h11
import httpx

Script = Callable[[httpx.Request], Any]


def _body_chunks(response: Any) -> Iterator[bytes]:
    """The response's raw body (still content-encoded) as it is produced, from a sync or
    an async stream alike."""
    stream = response.stream
    if hasattr(stream, "__aiter__"):
        loop = asyncio.new_event_loop()
        try:
            iterator = stream.__aiter__()
            while True:
                try:
                    yield loop.run_until_complete(iterator.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.close()
    yield from stream


class ScriptedServer:
    """``with ScriptedServer() as server: server.script = ...; server.url``."""

    def __init__(self) -> None:
        self.script: Script = lambda request: httpx.Response(404)
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self._lock = threading.Lock()

    def __enter__(self) -> ScriptedServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                index = self.connections
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        http = h11.Connection(h11.SERVER)
        try:
            while True:
                request = self._read_request(conn, http, index)
                if request is None:
                    return
                self._reply(conn, http, self.script(request))
                if http.our_state is h11.MUST_CLOSE:
                    return
                http.start_next_cycle()
        except (OSError, h11.ProtocolError):
            return
        finally:
            conn.close()

    def _read_request(
        self, conn: socket.socket, http: h11.Connection, index: int
    ) -> httpx.Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = conn.recv(65536)
                http.receive_data(data)
                if not data and head is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return httpx.Request(
                    head.method.decode(),
                    self.url + head.target.decode(),
                    headers=[(k.decode(), v.decode("latin-1")) for k, v in head.headers],
                    content=bytes(body),
                    extensions={"connection": index},
                )
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def _reply(self, conn: socket.socket, http: h11.Connection, response: Any) -> None:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"connection"]
        names = {k.lower() for k, _ in headers}
        if b"content-length" not in names and b"transfer-encoding" not in names:
            headers.append((b"transfer-encoding", b"chunked"))
        conn.sendall(http.send(h11.Response(status_code=response.status_code, headers=headers)))
        for chunk in _body_chunks(response):
            if chunk:
                conn.sendall(http.send(h11.Data(data=chunk)))
        conn.sendall(http.send(h11.EndOfMessage()))
