"""The base listener: what serving one [[connection]] means, whatever its protocol.

It owns the listening socket, the limits (max_handshakes apart from max_connections: sockets
that never finish a handshake cannot take the slots of clients that log in), the handshake
timeout, the idle sweep, reload (`apply`) and stop, the set of live sessions, and the log of
capacity refusals (RefusalLog: a flood of them is summarised, not logged line by line). A
protocol subclasses it and writes only its handshake (`handshake`) and what a reload means for
its sessions (`apply_protocol`); every refusal it raises is one of hoopwire.core.errors, worded for
the client by the protocol's adapter.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING

from hoopwire import metrics
from hoopwire.core.errors import ClientProtocolError, HandshakeDone, Refused, UpstreamLoginError
from hoopwire.identity import Identity
from hoopwire.logs import event

if TYPE_CHECKING:
    from hoopwire.core.gateway import Gateway
    from hoopwire.core.session import Session

log = logging.getLogger("hoopwire.listener")

__all__ = ["Listener", "Admission", "RefusalLog"]

# A listener over max_handshakes still answers its client's first message (as the server
# would) but within this bound, not the configured handshake timeout.
OVER_LIMIT_TIMEOUT = 5.0
# Seconds a stopping listener gives its cancels of still-running statements (each one is a
# connection to the upstream and one packet; 2 s each in the PostgreSQL listener).
CANCEL_BOUND = 3.0
# A full listener refuses as fast as clients retry: one client looping on a full http
# listener was refused 900 times a second (2 cores at load 10), a WARNING line each. Past the
# first refusal, the log gets one summary line per this many seconds while they go on (8,640
# a day at most per listener and worker); hoopwire_connections_total still counts each one.
REFUSAL_LOG_WINDOW = 10.0
# the refusals a flood makes; the others (auth_failed, tls_required ...) name a client's
# own fault, one line each
CAPACITY_REASONS = frozenset(("too_many_connections", "too_many_handshakes"))
# distinct client hosts a summary tells apart (the busiest is named); past it, "256+"
_PEER_HOSTS = 256


class RefusalLog:
    """The log lines of one listener's capacity refusals: the first in full; then, while they
    go on, one summary per `window` seconds with their count by reason and the busiest host.
    A window without any ends the summary: the next refusal is logged in full again."""

    __slots__ = ("listener", "window", "counts", "hosts", "since", "timer")

    def __init__(self, listener: "Listener", window: float = REFUSAL_LOG_WINDOW):
        self.listener = listener
        self.window = window
        self.counts: dict[str, int] = {}
        self.hosts: dict[str, int] = {}
        self.since = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def refused(self, peer: str, reason: str, detail: str) -> None:
        if self.timer is None:
            lst = self.listener
            event(lst.log, "connection refused", logging.WARNING, connection=lst.name,
                  peer=peer, reason=reason, detail=detail,
                  then=f"a summary every {self.window:g} s while refusals go on")
            self.since = time.monotonic()
            self.timer = asyncio.get_running_loop().call_later(self.window, self._tick)
            return
        self.counts[reason] = self.counts.get(reason, 0) + 1
        host = peer.rpartition(":")[0] or peer
        if host in self.hosts or len(self.hosts) < _PEER_HOSTS:
            self.hosts[host] = self.hosts.get(host, 0) + 1

    def _tick(self) -> None:
        self.timer = None
        if self.counts:
            self.flush()
            self.timer = asyncio.get_running_loop().call_later(self.window, self._tick)

    def flush(self) -> None:
        """Log the refusals counted since the last line, if any."""
        if not self.counts:
            return
        lst = self.listener
        now = time.monotonic()
        top, top_n = max(self.hosts.items(), key=lambda kv: kv[1]) if self.hosts else ("", 0)
        event(lst.log, "connections refused since the last line", logging.WARNING,
              connection=lst.name, refused=sum(self.counts.values()),
              seconds=round(now - self.since, 1),
              reasons=",".join(f"{r}:{n}" for r, n in sorted(self.counts.items())),
              hosts=len(self.hosts) if len(self.hosts) < _PEER_HOSTS else f"{_PEER_HOSTS}+",
              busiest=f"{top}:{top_n}")
        self.counts.clear()
        self.hosts.clear()
        self.since = now

    def close(self) -> None:
        """The listener stops: the pending count is logged, not lost."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.flush()


class Admission:
    """One connection's claim on a session slot, taken by the handshake once it is past the
    point where the protocol's server would count it (PostgreSQL: after the SSLRequest)."""

    __slots__ = ("listener", "over", "taken")

    def __init__(self, listener: "Listener", over: Refused | None):
        self.listener = listener
        self.over = over            # the refusal to give instead: too many handshakes
        self.taken = False

    def take(self, refusal: Refused) -> None:
        """Claim a slot, or raise the refusal due (over max_handshakes, or `refusal` when
        max_connections are in use)."""
        if self.over is not None:
            raise self.over
        lst = self.listener
        if lst.open_connections() + lst.admitted >= lst.cfg.max_connections:
            raise refusal
        lst.admitted += 1
        self.taken = True


class Listener:
    """Serves one [[connection]]. Subclasses set `adapter` and `dialect` and write
    `handshake` and `apply_protocol`."""

    adapter = None       # the protocol's ProtocolAdapter
    dialect = None       # the protocol's Dialect (SQL protocols)
    log = log

    def __init__(self, gateway: "Gateway", cfg, policy_engine=None, mask_engine=None):
        self.gateway = gateway
        self.stats = metrics.conn_stats(cfg.name, self.adapter.protocol)
        self.sessions: set["Session"] = set()
        self.starting = 0
        self.admitted = 0           # handshakes past the max_connections check, not yet sessions
        self.server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task | None = None
        self.refusals = RefusalLog(self)
        self.apply(cfg, policy_engine, mask_engine)

    @property
    def name(self) -> str:
        return self.cfg.name

    def apply(self, cfg, policy_engine=None, mask_engine=None) -> None:
        """Take a (re)loaded configuration: new sessions use it; open ones it no longer admits
        end, the others get what the protocol decides (apply_protocol)."""
        self.cfg = cfg
        self.policy_engine = policy_engine
        for s in list(self.sessions):
            why = self.revoked(s)
            if why is not None and s.relay is not None:
                # what the reload took away is not kept by a session opened before it: a
                # leaked key rotated out must not keep the sessions it opened
                event(self.log, "session ended by a reload", logging.WARNING,
                      connection=self.name, session=s.id, issuer=s.identity.issuer or "",
                      subject=s.identity.subject, why=why)
                s.relay.shutdown("identity_revoked", self.adapter.condition(
                    "access_revoked", "the gateway's configuration no longer admits this "
                    f"session: {why}", fatal=True))
        self.apply_protocol(cfg, mask_engine)

    def revoked(self, s: "Session") -> str | None:
        """Why the current configuration would refuse this session's start (its issuer or
        API key, or its groups on this connection); None while it still admits it."""
        why = self.gateway.authenticator.revoked(s.identity)
        if why is not None:
            return why
        role = next((r for r in self.cfg.roles if r.name == s.role), None)
        allowed = role.allow_groups if role is not None and role.allow_groups \
            else self.cfg.allow_groups
        if allowed and not (s.identity.groups & set(allowed)):
            return "its groups are no longer allowed on this connection"
        return None

    def apply_protocol(self, cfg, mask_engine) -> None:
        raise NotImplementedError

    def open_connections(self) -> int:
        """Client connections past their handshake that hold a max_connections slot. A SQL
        session lives exactly as long as its connection; a protocol whose connections outlive
        or precede their sessions (http: identity is per request, so an unauthenticated
        keep-alive socket has none) counts its connections instead."""
        return len(self.sessions)

    def mask_statement(self, sql: bytes) -> str:
        """A statement as it may appear in a log line: literals replaced by '?'."""
        return self.dialect.mask_literals(sql[:self.gateway.statement_text_limit])

    def open_group_sets(self) -> set[frozenset[str]]:
        return {s.identity.groups for s in self.sessions}

    def policy_for(self, identity: Identity):
        engine = self.policy_engine
        if engine is None or engine.empty:
            return None
        policy = engine.for_groups(identity.groups)
        return None if policy.empty else policy  # no rule applies: skip inspection entirely

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = self.cfg.listen
        self.server = await asyncio.start_server(
            self._accept, host, port, reuse_port=self.gateway.workers > 1, backlog=1024,
            limit=64 * 1024)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        bound = self.server.sockets[0].getsockname()
        self.bound = (bound[0], bound[1])
        event(self.log, "listening", connection=self.name, protocol=self.adapter.protocol,
              address=f"{bound[0]}:{bound[1]}", tls="on" if self.tls_context else "off",
              upstream="%s:%d" % self.cfg.upstream)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; give the sessions `grace` seconds to end; then end every session
        with the protocol's shutdown error (PostgreSQL: FATAL 57P01) and cancel the statements
        still running upstream (cancel_running, bounded by CANCEL_BOUND)."""
        if self.server is not None:
            self.server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.refusals.close()
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Ended without a cancel, the server runs a statement on after we are gone (a
        # pg_sleep(60) did, for the whole minute). The cancels are taken before the sessions
        # end (their keys go with them) and sent after: sent first, the server's "canceled"
        # error reached the client ahead of the shutdown error, as if the client had cancelled.
        cancels = [c for s in list(self.sessions)
                   if s.relay is not None and s.relay.units_sent != s.relay.units_done
                   for c in (self.cancel_running(s),) if c is not None]
        shutdown = self.adapter.condition(
            "shutting_down", "terminating connection: the gateway is shutting down", fatal=True)
        for s in list(self.sessions):
            if s.relay is not None:
                s.relay.shutdown("gateway_shutdown", shutdown)
        if cancels:
            try:
                await asyncio.wait_for(asyncio.gather(*cancels, return_exceptions=True),
                                       CANCEL_BOUND)
            except asyncio.TimeoutError:
                event(self.log, "shutdown: cancels did not finish in time", logging.WARNING,
                      connection=self.name, sessions=len(cancels), bound=CANCEL_BOUND)
        self.stopped()

    def cancel_running(self, session: "Session"):
        """The protocol's way to stop the statement `session` runs upstream (PostgreSQL: a
        CancelRequest): an awaitable that sends it, holding what it needs already (the session
        ends before it runs), or None. By default None: closing the connection is all."""
        return None

    def stopped(self) -> None:
        """The protocol's own cleanup once no session is left."""

    async def _sweep(self) -> None:
        """Close sessions idle longer than idle_timeout, and those whose client left a message
        half sent for longer than read_timeout (whatever idle_timeout says, 0 included)."""
        notice = self.adapter.condition("idle_timeout",
                                        "terminating connection due to idle timeout", fatal=True)
        while True:
            limit = self.cfg.idle_timeout
            stall = self.cfg.read_timeout
            await asyncio.sleep(min(1.0, limit / 4 if limit else 1.0, stall / 4 if stall else 1.0))
            if stall:
                self._sweep_stalled(stall)
            if not limit:
                continue
            for s in list(self.sessions):
                # a session waiting for an approval is not idle (its rule's timeout applies),
                # nor one whose statement is still running (pg_sleep(3) under a 1 s limit)
                r = s.relay
                if r is not None and not r.held and r.units_sent == r.units_done and \
                        r.idle_seconds() > limit:
                    s.relay.shutdown("idle_timeout", notice)

    def _sweep_stalled(self, bound: float) -> None:
        """A client that sends a header (or part of a message) and stops would hold its session
        and the upstream's connection for ever: past `bound` seconds without a byte, the
        session ends with the protocol's read-timeout error (MySQL's own bound for the same
        wait, net_read_timeout, is 30 s). A message that keeps arriving, however slowly, is
        never cut: the clock restarts at every read. A relay that bounds its reads itself
        (http: request_timeout) has no read_stalled."""
        notice = None
        for s in list(self.sessions):
            r = s.relay
            stalled = getattr(r, "read_stalled", None)
            if stalled is None:
                continue
            waited = stalled()
            if waited > bound:
                if notice is None:
                    notice = self.adapter.condition(
                        "read_timeout", "terminating connection: the client stopped in the "
                        f"middle of a message (no byte for {bound:g} s)", fatal=True)
                event(self.log, "client stopped mid-message", logging.WARNING,
                      connection=self.name, session=s.id, peer=s.peer,
                      seconds=round(waited, 1), bound=bound)
                r.shutdown("read_timeout", notice)

    # -- one connection ------------------------------------------------------------------------

    async def handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        peer: str, admission: Admission) -> None:
        """The protocol's part: from the first byte to a running relay (and
        `session_started`), or one of hoopwire.core.errors."""
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        cfg = self.cfg
        adapter = self.adapter
        result = "ok"
        self.starting += 1
        over = None
        timeout = cfg.handshake_timeout
        if self.starting > cfg.max_handshakes:
            # Handshakes are counted apart from sessions: sockets that never finish one
            # (200 silent ones held a 200-slot listener for 15 s) cannot take the slots of
            # clients that log in. One over this limit is refused, but only where the
            # protocol's server would answer it, and within a short bound.
            over = Refused("too_many_handshakes", adapter.too_many_clients_code,
                           "sorry, too many clients already",
                           detail=f"{self.starting - 1} handshakes in progress")
            timeout = min(timeout, OVER_LIMIT_TIMEOUT)
        admission = Admission(self, over)
        try:
            await asyncio.wait_for(self.handshake(reader, writer, peer_s, admission), timeout)
        except HandshakeDone as e:
            result = e.result
        except Refused as e:
            result = e.reason
            if e.reason in CAPACITY_REASONS:
                self.refusals.refused(peer_s, e.reason, e.detail or e.message)
            else:
                event(self.log, "connection refused", logging.WARNING, connection=cfg.name,
                      peer=peer_s, reason=e.reason, detail=e.detail or e.message)
            await self._refuse(writer, adapter.fatal(e.code, e.message))
        except ClientProtocolError as e:
            result = "protocol_error"
            event(self.log, "bad startup", logging.WARNING, connection=cfg.name, peer=peer_s,
                  error=str(e))
            await self._refuse(writer, adapter.fatal(e.code, str(e)))
        except UpstreamLoginError as e:
            result = "upstream_error"
            event(self.log, "upstream login failed", logging.ERROR, connection=cfg.name,
                  peer=peer_s, error=str(e))
            await self._refuse(writer, e.server_error or adapter.fatal(e.code, e.client_message))
        except asyncio.TimeoutError:
            result = "handshake_timeout"
            event(self.log, "startup timed out", logging.WARNING, connection=cfg.name,
                  peer=peer_s, timeout=cfg.handshake_timeout)
            await self._refuse(writer, adapter.condition("handshake_timeout", "startup timed out",
                                                         fatal=True))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as e:
            result = "client_gone"
            event(self.log, "client left during startup", logging.DEBUG, connection=cfg.name,
                  peer=peer_s, error=type(e).__name__)
            writer.close()
        except asyncio.CancelledError:
            writer.close()
            raise
        except Exception:
            result = "internal_error"
            self.log.exception("startup failed",
                               extra={"fields": {"connection": cfg.name, "peer": peer_s}})
            await self._refuse(writer, adapter.condition(
                "internal", "internal error in the gateway", fatal=True))
        finally:
            self.starting -= 1
            if admission.taken:
                self.admitted -= 1
            metrics.CONNECTIONS_TOTAL.labels(cfg.name, result).inc()

    async def _refuse(self, writer: asyncio.StreamWriter, err: bytes) -> None:
        try:
            if not writer.is_closing():
                writer.write(err)
                await asyncio.wait_for(writer.drain(), 2.0)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass
        writer.close()

    # -- sessions ------------------------------------------------------------------------------

    def session_started(self, session: "Session", relay) -> None:
        """The handshake made a session and its relay: count it, record it, refuse its
        statements at once while the audit cannot be written."""
        session.relay = relay
        self.sessions.add(session)
        expires = session.identity.expires_at
        if expires is not None and self.gateway.config.identity.end_sessions_at_expiry:
            loop = asyncio.get_running_loop()
            session.expiry = loop.call_at(loop.time() + max(0.0, expires - time.time()),
                                          self._expired, session)
        recorder = self.gateway.recorder
        if recorder is not None:
            recorder.session_started(session)
            if recorder.refusing:
                relay.refuse_statements(recorder.refuse_error(session))
        metrics.CONNECTIONS_ACTIVE.labels(self.name).inc()

    def _expired(self, session: "Session") -> None:
        session.expiry = None
        if session in self.sessions and session.relay is not None:
            event(self.log, "session ended: its token expired", connection=self.name,
                  session=session.id, issuer=session.identity.issuer or "",
                  subject=session.identity.subject)
            session.relay.shutdown("token_expired", self.adapter.condition(
                "access_revoked", "terminating connection: the session's token expired",
                fatal=True))

    def session_ended(self, session: "Session", reason: str) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        gw = self.gateway
        if gw.approvals is not None:
            gw.approvals.session_closed(session)
        if gw.recorder is not None and session.relay is not None:
            gw.recorder.session_ended(session, reason, session.relay.bytes_in,
                                      session.relay.bytes_out)
        self.forget(session)
        metrics.CONNECTIONS_ACTIVE.labels(self.name).dec()
        metrics.SESSIONS_CLOSED.labels(self.name, reason).inc()
        event(self.log, "session closed", connection=self.name, session=session.id,
              issuer=session.identity.issuer or "", subject=session.identity.subject,
              reason=reason, seconds=round(time.time() - session.started, 3))

    def forget(self, session: "Session") -> None:
        """The protocol's own cleanup of an ended session (its cancel key)."""
