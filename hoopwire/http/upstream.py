"""The upstream side of an http connection: one pool of keep-alive HTTP/1.1 connections per
[[connection]], each an asyncio Protocol (no StreamReader: the relay gets the bytes as they
arrive, and the response parser cuts them).

A request takes an idle connection or opens one (at most `upstream_max_connections`; past that
it waits for one to come back, within connect_timeout), and gives it back when its response
ended cleanly and both sides allow keep-alive. TLS is verify-full with SNI by default
(`upstream_tls`, hoopwire.core.tls.upstream_ssl_context).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time

from hoopwire.logs import event

log = logging.getLogger("hoopwire.http")

__all__ = ["Pool", "UpstreamConn", "UpstreamUnavailable", "host_header"]

# An idle pooled connection older than this is closed rather than reused: servers close idle
# keep-alive connections after 5 s (nginx's keepalive_timeout is 75 s, aiohttp's 75 s,
# Node's 5 s, gunicorn's 2 s); a request on one the server is closing fails before any byte
# and is retried once on a fresh connection (idempotent requests only), so this only spares
# that retry for the common case.
IDLE_MAX = 4.0


class UpstreamUnavailable(Exception):
    """No connection to the upstream (refused, unreachable, TLS failed, or the pool stayed
    full); the text is for the operator's log."""


def host_header(scheme: str, host: str, port: int) -> bytes:
    """The Host the upstream expects from a client that was given its URL."""
    h = f"[{host}]" if ":" in host else host
    if port != (443 if scheme == "https" else 80):
        h += f":{port}"
    return h.encode("idna" if not h.isascii() else "ascii")


class UpstreamConn(asyncio.Protocol):
    """One connection to the upstream. `relay` is the client relay whose request it carries
    (None while idle in the pool)."""

    __slots__ = ("pool", "transport", "parser", "relay", "reused", "closed", "idle_since",
                 "paused")

    def __init__(self, pool: "Pool"):
        self.pool = pool
        self.transport = None
        self.parser = pool.new_parser()
        self.relay = None
        self.reused = False
        self.closed = False
        self.idle_since = 0.0
        self.paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is None:
            # a server that speaks on an idle connection (a 408 before it closes): not a
            # response to anything we sent; the connection is not reused
            self.close()
            return
        relay.upstream_data(self, data)

    def eof_received(self):
        return False     # close our side too

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.lost(self)
        relay = self.relay
        if relay is not None:
            self.relay = None
            relay.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        # the upstream reads slower than the client sends: stop reading the client
        if self.relay is not None:
            self.relay.pause_client("upstream")

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.resume_client("upstream")

    def write(self, data) -> None:
        self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.relay = None
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.relay = None
        if self.transport is not None:
            self.transport.abort()


if not os.environ.get("HOOPWIRE_HTTP_PURE"):
    # the relay's plumbing in C (hoopwire.http._relay): the response goes from here to the
    # relay's C upstream_data without a Python call in between
    from hoopwire.http._relay import upstream_conn_data_received

    UpstreamConn.data_received = upstream_conn_data_received


class Pool:
    """The keep-alive connections of one [[connection]]'s upstream."""

    def __init__(self, *, name: str, host: str, port: int, ssl_context, max_connections: int,
                 connect_timeout: float, parser_factory):
        self.name = name
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.new_parser = parser_factory
        self.idle: collections.deque[UpstreamConn] = collections.deque()
        self.count = 0               # open or opening connections
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.closing = False

    def take_idle(self) -> UpstreamConn | None:
        """An idle connection, most recently used first (its server has it warmest), or None."""
        idle = self.idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > IDLE_MAX:
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    async def open(self) -> UpstreamConn:
        """A new connection (after waiting for room in the pool, within connect_timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        while self.count >= self.max_connections:
            conn = self.take_idle()
            if conn is not None:
                return conn
            fut = loop.create_future()
            self.waiters.append(fut)
            try:
                await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise UpstreamUnavailable(
                    f"all {self.max_connections} upstream connections busy for "
                    f"{self.connect_timeout:g}s") from None
            finally:
                if fut in self.waiters:
                    self.waiters.remove(fut)
        self.count += 1
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: UpstreamConn(self), self.host, self.port, ssl=self.ssl_context,
                server_hostname=self.host if self.ssl_context is not None else None),
                max(0.01, deadline - loop.time()))
        except asyncio.TimeoutError:
            self._gone()
            raise UpstreamUnavailable(f"connecting to {self.host}:{self.port} took over "
                                      f"{self.connect_timeout:g}s") from None
        except (OSError, ValueError) as e:
            # ssl.SSLError is an OSError: a certificate that does not verify lands here
            self._gone()
            raise UpstreamUnavailable(f"{self.host}:{self.port}: {type(e).__name__}: {e}") \
                from None
        except BaseException:
            self._gone()
            raise
        return conn

    def release(self, conn: UpstreamConn, reusable: bool) -> None:
        """A request is done with `conn`: back to the pool, or closed."""
        conn.relay = None
        if conn.paused:
            conn.paused = False
            conn.transport.resume_reading()
        if not reusable or conn.closed or self.closing:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self._wake()

    def lost(self, conn: UpstreamConn) -> None:
        """A connection closed (by either side)."""
        self._gone()

    def _gone(self) -> None:
        self.count -= 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def close(self) -> None:
        """Stop pooling (a reload changed the upstream, or the gateway stops): idle
        connections close now, busy ones when their request ends."""
        self.closing = True
        while self.idle:
            self.idle.pop().close()
        if self.count <= 0:
            event(log, "upstream pool closed", logging.DEBUG, connection=self.name)


if not os.environ.get("HOOPWIRE_HTTP_PURE"):
    # take_idle and release in C as well (hoopwire.http._relay.install_pool)
    from hoopwire.http._relay import install_pool

    install_pool(Pool, IDLE_MAX)
