"""Redis clients for one limiter: a sync client, one async client per event loop, and the
registered scripts on each. Rebuilt in a forked child, which must not share sockets.

redis.asyncio connections belong to the loop that opened them, while a limiter may be used
from several ``asyncio.run()`` calls, threads and trio; so async clients are made per loop,
and where no asyncio loop runs (trio) the sync client is driven from a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript, Script

from ..loop_local import ClosedAtLoopEnd
from .scripts import script_sources

#: Connection settings copied from a sync client to the async clients derived from it.
_SHARED_KWARGS = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_keepalive_options",
    "client_name",
    "health_check_interval",
    "encoding",
    "encoding_errors",
    "decode_responses",
    "protocol",
    "credential_provider",
)
_SSL_KWARGS = (
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_check_hostname",
    "ssl_min_version",
    "ssl_ciphers",
)

AnyClient = Any  # redis.Redis | redis.cluster.RedisCluster: redis-py's own types are loose


class _LoopClient(ClosedAtLoopEnd):
    """One asyncio loop's client, closed by that loop as it ends (or ``aclose`` in it)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, client: AnyClient, scripts: dict[str, AsyncScript]
    ) -> None:
        self.loop = loop
        self.client = client
        self.scripts = scripts

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):  # a server already gone: nothing left to close
            await self.client.aclose()
            await self.client.connection_pool.disconnect()


class Connections:
    def __init__(
        self,
        source: str | AnyClient,
        async_client: AnyClient | None,
        *,
        socket_timeout: float,
        connect_timeout: float,
        max_connections: int,
        test_clock: bool = False,
    ) -> None:
        self._source = source
        self._user_async = async_client
        self._timeouts: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
        }
        self._max_connections = max_connections
        self._sources = script_sources(test_clock=test_clock)
        self._build()

    def _build(self) -> None:
        self.pid = os.getpid()
        self._owned_sync = False
        source = self._source
        if isinstance(source, str):
            # No retries inside redis-py: a script whose reply was lost must not be sent again
            # behind our back; the limiter's own policy decides (on_backend_error).
            # A blocking pool: callers beyond max_connections wait for a connection instead
            # of failing with MaxConnectionsError (which is not an outage).
            self.sync: AnyClient = redis.Redis(
                connection_pool=redis.BlockingConnectionPool.from_url(
                    source,
                    max_connections=self._max_connections,
                    timeout=None,
                    retry=redis.retry.Retry(NoBackoff(), 0),
                    **self._timeouts,
                )
            )
            self._owned_sync = True
        elif isinstance(source, redis.asyncio.Redis):
            self._user_async = self._user_async or source
            self.sync = redis.Redis(
                connection_pool=redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
                    max_connections=self._max_connections,
                    timeout=None,
                    **self._sync_kwargs_from(source),
                )
            )
            self._owned_sync = True
        else:
            self.sync = source
        self.scripts: dict[str, Script] = {
            name: self.sync.register_script(text) for name, text in self._sources.items()
        }
        self._user_async_scripts: dict[str, AsyncScript] | None = None
        self._per_loop: dict[int, _LoopClient] = {}

    def check_fork(self) -> bool:
        """Rebuild after ``fork()``; True when this process is a new child."""
        if os.getpid() == self.pid:
            return False
        # The parent's sockets stay the parent's: drop them without closing them.
        self._build()
        return True

    # -- async ------------------------------------------------------------------------------
    async def async_for_running_loop(self) -> tuple[AnyClient, dict[str, AsyncScript]] | None:
        """The async client for the running asyncio loop, or None (trio, or no way to make one)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if self._user_async is not None:
            if self._user_async_scripts is None:
                self._user_async_scripts = {
                    name: self._user_async.register_script(text)
                    for name, text in self._sources.items()
                }
            return self._user_async, self._user_async_scripts
        found = self._per_loop.get(id(loop))
        if found is not None and found.loop is loop:
            return found.client, found.scripts
        client = self._derive_async()
        if client is None:
            return None
        scripts = {name: client.register_script(text) for name, text in self._sources.items()}
        found = _LoopClient(loop, client, scripts)
        # Clients of loops that have ended were closed by their keepers: forget them.
        for key in [k for k, other in self._per_loop.items() if other.loop.is_closed()]:
            del self._per_loop[key]
        self._per_loop[id(loop)] = found
        await found.keep()
        return client, scripts

    def _derive_async(self) -> AnyClient | None:
        if isinstance(self._source, str):
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self._source,
                max_connections=self._max_connections,
                timeout=None,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
                **self._timeouts,
            )
            return redis.asyncio.Redis(connection_pool=pool)
        sync_pool = getattr(self.sync, "connection_pool", None)
        if sync_pool is None:  # Redis Cluster: pass async_client=, else a worker thread is used
            return None
        kwargs = sync_pool.connection_kwargs
        out = {k: kwargs[k] for k in _SHARED_KWARGS if k in kwargs}
        out["retry"] = redis.asyncio.retry.Retry(NoBackoff(), 0)
        cls = sync_pool.connection_class
        conn_class: type[Any]
        if issubclass(cls, redis.connection.UnixDomainSocketConnection):
            out.pop("host", None)
            out.pop("port", None)
            out["path"] = kwargs.get("path")
            conn_class = redis.asyncio.UnixDomainSocketConnection
        elif issubclass(cls, redis.connection.SSLConnection):
            out.update({k: kwargs[k] for k in _SSL_KWARGS if k in kwargs})
            conn_class = redis.asyncio.SSLConnection
        elif issubclass(cls, redis.connection.Connection):
            conn_class = redis.asyncio.Connection
        else:
            return None
        pool = redis.asyncio.BlockingConnectionPool(
            max_connections=self._max_connections,
            timeout=None,
            connection_class=conn_class,
            **out,
        )
        return redis.asyncio.Redis(connection_pool=pool)

    @staticmethod
    def _sync_kwargs_from(client: AnyClient) -> dict[str, Any]:
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        out = {k: kwargs[k] for k in _SHARED_KWARGS if k in kwargs}
        out["retry"] = redis.retry.Retry(NoBackoff(), 0)
        cls = pool.connection_class
        if issubclass(cls, redis.asyncio.connection.UnixDomainSocketConnection):
            out.pop("host", None)
            out.pop("port", None)
            out["path"] = kwargs.get("path")
            out["connection_class"] = redis.connection.UnixDomainSocketConnection
        elif issubclass(cls, redis.asyncio.connection.SSLConnection):
            out.update({k: kwargs[k] for k in _SSL_KWARGS if k in kwargs})
            out["connection_class"] = redis.connection.SSLConnection
        return out

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the clients this object made (never a client the caller passed in)."""
        if self._owned_sync:
            self.sync.close()
        self._per_loop = {}  # each loop's client is closed by its keeper as the loop ends

    async def aclose(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        found = self._per_loop.pop(id(loop), None)
        if found is not None and found.loop is loop:
            await found.aclose()

    def describe(self) -> str:
        """Where the backend lives, for error messages: host and port only, never credentials."""
        pool = getattr(self.sync, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", {}) if pool is not None else {}
        if "path" in kwargs:
            return f"unix:{kwargs['path']}"
        if "host" in kwargs:
            return f"{kwargs['host']}:{kwargs.get('port', 6379)}"
        return type(self.sync).__name__
