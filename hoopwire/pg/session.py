"""The PostgreSQL listener: the startup of each client session, on the core's Listener.

Startup runs here in Python on asyncio streams: TLS negotiation, the startup packet, the token
(asked for as a cleartext password), identity and role checks, the upstream login. Then both
sockets are handed to the Cython relay (hoopwire.pg._wire.Relay), which reports to the core's Session
(hoopwire.core.session) from then on. What is not PostgreSQL -- accepting, limits, the handshake
timeout, the idle sweep, stop, the session's events -- is hoopwire.core.listener's.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import struct

from hoopwire import metrics
from hoopwire.pg._wire import Relay
from hoopwire.config import ConnectionConfig, RoleConfig
from hoopwire.core.errors import HandshakeDone, Refused as StartupRefused
from hoopwire.core.listener import Admission, Listener
from hoopwire.core.session import Session
from hoopwire.core.tls import start_server_tls
from hoopwire.identity import AuthError, Identity
from hoopwire.logs import event
from hoopwire.pg import messages as m
from hoopwire.pg.catalog import CatalogError
from hoopwire.pg import options as startup_options
from hoopwire.pg.encodings import safe_client_encoding
from hoopwire.pg.prepared import PreparedNames
from hoopwire.pg.masker import (NO_INFO, ConnectionMasking, SessionMasker, StatementInfo,
                                  WriteGuard)
from hoopwire.pg.adapter import ADAPTER
from hoopwire.pg.cancel import CancelKeys
from hoopwire.pg.dialect import DIALECT
from hoopwire.core.cancels import source_of
from hoopwire.pg.upstream import UpstreamError, connect_upstream, send_cancel, upstream_ssl_context

log = logging.getLogger("hoopwire.pg")

__all__ = ["PgListener", "StartupRefused"]

# Startup parameters that are ours to set, never the client's to pass on.
_NOT_FORWARDED = {"user", "database", "password", "replication"}


def _reported(status: list[bytes], name: bytes) -> str | None:
    """The value of ParameterStatus `name` among the raw messages of an upstream login."""
    for msg in status:
        if msg[:1] == b"S":
            key, _, rest = msg[5:].partition(b"\0")
            if key == name:
                return rest.partition(b"\0")[0].decode("ascii", "replace")
    return None


def _refuse_encoding(value: str):
    raise StartupRefused("blocked", "42501", f"client encoding \"{value}\" is not allowed "
                         "through the gateway while guardrails apply")


_cancels: set = set()     # cancels run here for a sibling worker, until they finish


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    # PostgreSQL 17's direct TLS (sslnegotiation=direct) requires ALPN "postgresql"; clients
    # that come through SSLRequest may offer it too
    ctx.set_alpn_protocols(["postgresql"])
    return ctx


_TLS_HANDSHAKE = 0x16       # a TLS record's first byte; a startup packet's length starts 0x00


async def _direct_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      ctx: ssl.SSLContext, first: bytes) -> None:
    """TLS from the first byte (sslnegotiation=direct): the ClientHello's record is already
    being read by the plain stream, so it is taken whole and handed to the TLS layer as if it
    had just arrived, once that layer is in place."""
    head = first + await reader.readexactly(4)
    (length,) = struct.unpack("!H", head[3:5])
    pending = head + await reader.readexactly(length)
    if reader._buffer:  # noqa: SLF001 -- a client speaks after the server's hello, not before
        raise m.ProtocolError("received data after the TLS ClientHello before the handshake")
    if not await start_server_tls(reader, writer, ctx, pending):
        raise m.ProtocolError("could not start TLS")
    alpn = writer.transport.get_extra_info("ssl_object").selected_alpn_protocol()
    if alpn != "postgresql":
        raise m.ProtocolError("received direct SSL connection request without ALPN protocol "
                              "negotiation extension")


_GUC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def startup_pairs(params: dict[str, str]) -> list[tuple[str, str]]:
    """Every (setting, value) a startup packet makes, `options` unpacked."""
    pairs = []
    for k, v in params.items():
        if k == "options":
            pairs.extend(startup_options.settings(v))
        elif k != "database":
            pairs.append((k, v))
    return pairs


_STARTUP_ROLE = frozenset(("set", "set_role"))


def startup_settings(params: dict[str, str]) -> list[bytes]:
    """Every setting a startup packet makes, written as the SET statement it amounts to."""
    out = []
    for name, value in startup_pairs(params):
        ident = name if _GUC_NAME.match(name) else '"' + name.replace('"', '""') + '"'
        out.append(f"SET {ident} = '{value.replace(chr(39), chr(39) * 2)}'".encode("utf-8", "replace"))
    return out


class PgListener(Listener):
    """Serves one [[connection]] with protocol = "postgres"."""

    adapter = ADAPTER
    dialect = DIALECT
    log = log

    def __init__(self, gateway, cfg: ConnectionConfig, policy_engine=None, mask_engine=None):
        self.masking: ConnectionMasking | None = None
        # every worker of one gateway derives the same keys (see hoopwire.pg.cancel)
        self.cancel_keys = CancelKeys(gateway.cancel_key)
        super().__init__(gateway, cfg, policy_engine, mask_engine)

    def apply_protocol(self, cfg: ConnectionConfig, mask_engine=None) -> None:
        """A (re)loaded configuration: open sessions get the new policy (the gateway compiled
        their group sets first, off the loop: see open_group_sets) and, where they mask
        already, the new mask rules from their next result on."""
        self.tls_context = server_ssl_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
        self.upstream_context = upstream_ssl_context(cfg.upstream_tls, cfg.upstream_ca)
        old_masking = self.masking
        self.masking = None
        if mask_engine is not None:
            self.masking = ConnectionMasking(
                mask_engine, unresolved=cfg.unresolved_columns, binary_copy=cfg.binary_copy,
                masked_writes=cfg.masked_writes,
                connect=self._catalog_connect, connection=cfg.name, timeout=cfg.connect_timeout)
        if old_masking is not None:
            old_masking.close()
        for s in list(self.sessions):
            if s.relay is None:
                continue
            if s.masker is not None:
                if self.masking is not None:
                    s.masker.rebind(self.masking)
                else:
                    s.masker.rebind(None)
            policy = self.policy_for(s.identity)
            if policy is not None:
                # What the session set at startup (or the encoding it switched to while no
                # rule applied) is judged by the new rules as a new session's would be.
                try:
                    self._judge_startup(policy, s.params, s.identity, s.peer,
                                        s.relay.client_encoding)
                except StartupRefused as e:
                    s.relay.shutdown("policy_reload", m.error_response("FATAL", e.code, e.message))
                    continue
            s.relay.policy = self._guarded(policy, s.masker)
            if s.relay.names is None and getattr(policy, "approves", False):
                # approve rules from now on: prepared statements are followed from here.
                # One prepared before the reload is not known, and its Executes run unheld
                # (a reload's rules apply to what is parsed after it; the README says so)
                s.relay.names = PreparedNames()

    @staticmethod
    def _guarded(policy, masker):
        """The relay's policy: the guardrails, wrapped in masking's WriteGuard while column rules
        apply (hoopwire/pg/masker.py)."""
        if masker is None or not masker.conn.has_columns:
            return policy
        return WriteGuard(policy, masker, refuse=masker.conn.masked_writes == "refuse")

    def _reads_text(self, policy) -> bool:
        """Whether the gateway reads this session's statement text: guardrails, or masking by
        column rules (what a statement mentions, its lineage). Either way an encoding that can
        hide a quote from the lexer is refused."""
        return policy is not None or (self.masking is not None and self.masking.active and
                                      self.masking.has_columns)

    def stopped(self) -> None:
        if self.masking is not None:
            self.masking.close()

    # ------------------------------------------------------------------------------------
    # startup

    async def handshake(self, reader, writer, peer: str, admission: Admission) -> None:
        await self._startup(reader, writer, peer, self.cfg, admission)

    async def _startup(self, reader, writer, peer: str, cfg: ConnectionConfig,
                       admission: Admission) -> None:
        tls = False
        first = await reader.readexactly(1)
        if first[0] == _TLS_HANDSHAKE:
            if self.tls_context is None:
                raise m.ProtocolError("direct TLS is not configured on this listener")
            await _direct_tls(reader, writer, self.tls_context, first)
            tls = True
        else:
            reader._buffer[:0] = first  # noqa: SLF001 -- not TLS: the packet's first byte back
        while True:
            startup = await m.read_startup(reader)
            if startup.code == m.SSL_REQUEST:
                if tls:
                    raise m.ProtocolError("SSLRequest after TLS was already negotiated")
                if self.tls_context is None:
                    writer.write(b"N")
                    continue
                writer.write(b"S")
                await writer.drain()
                if reader._buffer:  # noqa: SLF001 -- bytes sent before the TLS handshake
                    raise m.ProtocolError("received unencrypted data after SSL request")
                await writer.start_tls(self.tls_context)
                tls = True
                continue
            if startup.code == m.GSSENC_REQUEST:
                writer.write(b"N")  # GSSAPI encryption is not offered; the client may go on
                continue
            if startup.code == m.CANCEL_REQUEST:
                await self._cancel(startup.cancel_pid, startup.cancel_secret, peer)
                writer.close()
                raise HandshakeDone("cancel")
            break

        # Capacity is answered where the server answers it: after the SSLRequest (a FATAL in
        # its place reads as "error response during SSL exchange" and loses 53300)
        admission.take(StartupRefused("too_many_connections", "53300",
                                      "sorry, too many clients already"))

        params = startup.params
        if cfg.require_tls and not tls:
            raise StartupRefused("tls_required", "28000",
                                 f"connection \"{cfg.name}\" requires TLS (use sslmode=require)")
        if "replication" in params and params["replication"].lower() not in ("false", "off", "no", "0"):
            raise StartupRefused("replication", "28000",
                                 "replication connections are not supported through the gateway")
        user = params.get("user")
        if not user:
            raise StartupRefused("no_user", "28000", "no PostgreSQL user name specified in startup packet")
        if startup.minor > 0 or startup.unrecognised:
            writer.write(m.negotiate_protocol_version(m.PROTOCOL_3_0, startup.unrecognised))

        # The token, asked for as a password.
        writer.write(m.auth_request(m.AUTH_CLEARTEXT))
        await writer.drain()
        kind, body = await m.read_message(reader, max_size=16 * 1024)
        if kind != b"p":
            raise m.ProtocolError(f"expected a password message, got message type {kind!r}")
        # not stripped: a key or token with whitespace around it is refused, as on the admin API
        token = body.rstrip(b"\0").decode("utf-8", "replace")
        try:
            identity = await self.gateway.authenticator.authenticate(token)
        except AuthError as e:
            metrics.AUTH_FAILURES.labels(cfg.name, e.reason).inc()
            raise StartupRefused("auth_failed", "28P01",
                                 f"password authentication failed for user \"{user}\"",
                                 detail=f"{e.reason}: {e.detail}") from None

        role = self._pick_role(cfg, user)
        allowed = role.allow_groups if role.allow_groups else cfg.allow_groups
        if allowed and not (identity.groups & set(allowed)):
            metrics.AUTH_FAILURES.labels(cfg.name, "group_not_allowed").inc()
            raise StartupRefused("denied", "28000",
                                 f"identity is not allowed to use \"{user}\" on connection \"{cfg.name}\"",
                                 detail=f"subject={identity.subject} groups={sorted(identity.groups)}")

        try:
            # read as the server reads it, whether or not rules apply: what a switch does is
            # judged below, and a switch nobody can judge goes no further
            startup_options.settings(params.get("options", ""))
        except startup_options.OptionsRefused as e:
            raise StartupRefused("blocked", "42501", str(e)) from None

        policy = None
        if self.policy_engine is not None and not self.policy_engine.empty:
            # The first identity with a new group set compiles its rule set: off the event loop.
            policy = await asyncio.to_thread(self.policy_for, identity)
        if policy is not None:
            self._judge_startup(policy, params, identity, peer)
        elif self._reads_text(None):
            self._judge_encoding(params)

        database = cfg.database
        asked = params.get("database")
        if cfg.allow_client_database and asked:
            database = asked
        elif database is None:
            database = asked or user
        elif asked and asked not in (database, user):
            # A client that names another database must not land in this one unawares: the
            # server's own answer for a database one cannot use. libpq sends the user name
            # when no dbname is given, so that one means "the connection's database".
            raise StartupRefused("unknown_database", "3D000",
                                 f"database \"{asked}\" does not exist")
        up_params = {k: v for k, v in params.items() if k not in _NOT_FORWARDED}
        up_params["database"] = database
        password = role.password.get() if role.password is not None else None
        host, port = cfg.upstream
        up = await connect_upstream(host, port, user=role.user, password=password, params=up_params,
                                    tls_mode=cfg.upstream_tls, ssl_context=self.upstream_context,
                                    timeout=cfg.connect_timeout)
        metrics.UPSTREAM_CONNECT_SECONDS.labels(cfg.name).observe(up.connect_seconds)

        server_encoding = _reported(up.status, b"client_encoding")
        if self._reads_text(policy) and not safe_client_encoding(server_encoding):
            # the server took an encoding from the startup packet that no name check above
            # saw (an alias, getopt's forms of `options`): it reports what it uses
            up.writer.close()
            _refuse_encoding(server_encoding)
        session = Session(self, identity, role.name, peer, tls, database)
        session.params = params  # judged again if a reload brings rules it has not met
        session.pid = up.pid
        session.client_secret = self.cancel_keys.to_client(cfg.name, up.pid, up.secret)
        out = [m.auth_request(m.AUTH_OK), *up.status,
               m.backend_key_data(up.pid, session.client_secret), m.ready_for_query(up.tx_status)]
        writer.writelines(out)

        relay = Relay(self.stats, policy, session, cfg.max_message_size,
                      self.gateway.marker_prefix)
        relay.client_encoding = server_encoding
        statements = (self.gateway.recorder.statement_log(session)
                      if self.gateway.recorder is not None else None)
        if self.masking is not None and self.masking.active:
            masker = SessionMasker(self.masking, database)
            if not masker.catalog.fresh():
                try:
                    await masker.catalog.load()
                except CatalogError as e:
                    up.writer.close()
                    raise StartupRefused("mask_catalog_error", "08006",
                                         "the gateway cannot read the catalog it masks results by",
                                         detail=str(e)) from None
            relay.enable_results(masker, NO_INFO, StatementInfo(True), record=statements,
                                 capture_bytes=self._capture_bytes())
            masker.relay = relay
            masker.marker_prefix = self.gateway.marker_prefix
            session.masker = masker
            relay.policy = self._guarded(relay.policy, masker)
        elif statements is not None:
            relay.enable_results(None, NO_INFO, StatementInfo(True), record=statements,
                                 capture_bytes=self._capture_bytes())
        session.writers = (writer, up.writer)
        self.session_started(session, relay)
        self.cancel_keys.register(cfg.name, up.pid, session.client_secret, session)
        event(log, "session started", connection=cfg.name, session=session.id, peer=peer,
              issuer=identity.issuer or "", subject=identity.subject, method=identity.method,
              role=role.name,
              upstream_user=role.user, database=database, tls="on" if tls else "off",
              upstream_tls="on" if up.tls else "off", backend_pid=up.pid)
        # Bytes either side sent ahead of the switch are handed to the relay first.
        client_pending = bytes(reader._buffer)  # noqa: SLF001
        reader._buffer.clear()  # noqa: SLF001
        upstream_pending = bytes(up.reader._buffer)  # noqa: SLF001
        up.reader._buffer.clear()  # noqa: SLF001
        relay.start(writer.transport, up.writer.transport, client_pending, upstream_pending)

    @staticmethod
    def _judge_encoding(params: dict[str, str], current_encoding: str | None = None) -> None:
        """What the client asked for (names and aliases: a deny list, early), and what the
        server reports the session uses (its canonical name: the allow-list)."""
        from hoopwire.pg.packs import UNSAFE_CLIENT_ENCODINGS
        asked = [v for n, v in startup_pairs(params) if n.lower() == "client_encoding"]
        for value in asked:
            if re.sub(r"[^a-z0-9]", "", value.lower()) in UNSAFE_CLIENT_ENCODINGS:
                _refuse_encoding(value)
        if current_encoding and not safe_client_encoding(current_encoding):
            _refuse_encoding(current_encoding)

    def _judge_startup(self, policy, params: dict[str, str], identity: Identity, peer: str,
                       current_encoding: str | None = None) -> None:
        """Startup parameters are settings: `options=-c role=x` or a bare `role` parameter
        would be a SET ROLE that no statement shows, so guardrails judge them as SETs."""
        self._judge_encoding(params, current_encoding)
        for (name, _), setting in zip(startup_pairs(params), startup_settings(params)):
            # allow_kinds rules judge only a role change here: every client sets something
            # at startup (client_encoding, application_name, DateStyle, ...)
            verdict = policy.check(setting, kinds=_STARTUP_ROLE if name.lower() in
                                   ("role", "session_authorization") else frozenset())
            # A startup cannot wait for a human: a setting an approve rule covers is refused
            # here (run it as a statement, where it can be held).
            if verdict is None or verdict.action not in ("block", "approve"):
                continue
            metrics.STATEMENT_VERDICTS.labels(self.name, "block", verdict.rule).inc()
            event(log, "startup parameter blocked", logging.WARNING, connection=self.name,
                  peer=peer, issuer=identity.issuer or "", subject=identity.subject,
                  rule=verdict.rule,
                  statement=self.mask_statement(setting))
            raise StartupRefused("blocked", "42501",
                                 f"startup parameter blocked by hoopwire rule \"{verdict.rule}\""
                                 + (": it needs an approval, which a startup cannot wait for "
                                    "(run it as a statement)" if verdict.action == "approve"
                                    else f": {verdict.message}" if verdict.message else ""))

    def _capture_bytes(self) -> int:
        """Result bytes a session keeps for replay (record_results), 0 when off."""
        if self.gateway.recorder is None or not self.cfg.record_results:
            return 0
        return self.cfg.record_results_max_bytes

    async def _catalog_connect(self, database: str):
        """The side connection masking reads the catalog over (the connection's own user)."""
        cfg = self.cfg
        host, port = cfg.upstream
        return await connect_upstream(
            host, port, user=cfg.user, password=cfg.password.get() if cfg.password else None,
            params={"database": database, "application_name": "hoopwire-catalog"},
            tls_mode=cfg.upstream_tls, ssl_context=self.upstream_context,
            timeout=cfg.connect_timeout)

    def _pick_role(self, cfg: ConnectionConfig, user: str) -> RoleConfig:
        for role in cfg.roles:
            if role.name == user:
                return role
        return RoleConfig(name="default", user=cfg.user, password=cfg.password,
                          allow_groups=cfg.allow_groups)

    async def _cancel(self, pid: int, client_secret: int, peer: str) -> None:
        gw = self.gateway
        if not gw.cancel_limiter.allow(source_of(peer)):
            self._cancel_dropped("rate_limited", peer, pid)
            return
        known = self.cancel_keys.lookup(self.name, pid, client_secret)
        if known is None:
            # a key issued by no process of this gateway never reaches the upstream
            if gw.cancel_peers is not None and await gw.cancel_peers.ask(self.name, pid,
                                                                         client_secret):
                # the sibling that issued the key cancels (and logs it with the session)
                event(log, "cancel forwarded", connection=self.name, peer=peer,
                      backend_pid=pid, session="other-worker")
                return
            self._cancel_dropped("unknown_key", peer, pid)
            return
        await self._cancel_known(known, pid, client_secret, peer)

    def _cancel_dropped(self, reason: str, peer: str, pid: int) -> None:
        metrics.CANCEL_DROPPED.labels(self.name, reason).inc()
        quiet = self.gateway.cancel_log.note(reason)
        if quiet is not None:
            event(log, "cancel request dropped" + (": rate limited" if reason == "rate_limited"
                                                   else ": a key this gateway did not issue"),
                  logging.WARNING, connection=self.name, peer=peer, backend_pid=pid,
                  reason=reason, dropped_unlogged=quiet,
                  note="further drops in the next 10s are only counted "
                       "(hoopwire_cancel_dropped_total)")

    def cancel_owned(self, pid: int, client_secret: int, via: str) -> bool:
        """A sibling worker's question: is this key one of ours? If so, cancel it here."""
        known = self.cancel_keys.lookup(self.name, pid, client_secret)
        if known is None:
            return False
        task = asyncio.get_running_loop().create_task(
            self._cancel_known(known, pid, client_secret, via))
        _cancels.add(task)      # the loop keeps only a weak reference to a task
        task.add_done_callback(_cancels.discard)
        return True

    async def _cancel_known(self, known, pid: int, client_secret: int, peer: str) -> None:
        approvals = self.gateway.approvals
        if known.relay is not None and known.relay.held and \
                approvals is not None and approvals.client_cancelled(
                    known, self.adapter.condition("query_cancelled",
                                              "canceling statement due to user request")):
            # the held statement never reached the server: the cancel is answered here
            event(log, "cancel of a held statement", connection=self.name, peer=peer,
                  session=known.id)
            return
        secret = self.cancel_keys.to_upstream(self.name, pid, client_secret)
        host, port = self.cfg.upstream
        try:
            await send_cancel(host, port, pid, secret, self.upstream_context)
        except (OSError, asyncio.TimeoutError, ssl.SSLError, UpstreamError) as e:
            event(log, "cancel could not reach the upstream", logging.WARNING,
                  connection=self.name, error=repr(e))
            return
        event(log, "cancel forwarded", connection=self.name, peer=peer, backend_pid=pid,
              session=known.id)

    async def probe_upstream(self) -> str:
        """/readyz's login check (hoopwire.readiness): log in with the stored credentials and
        leave. Raises UpstreamError with the operator text (never the password)."""
        cfg = self.cfg
        host, port = cfg.upstream
        up = await connect_upstream(
            host, port, user=cfg.user, password=cfg.password.get() if cfg.password else None,
            params={"database": cfg.database or "postgres",
                    "application_name": "hoopwire-readiness"},
            tls_mode=cfg.upstream_tls, ssl_context=self.upstream_context,
            timeout=cfg.connect_timeout)
        try:
            up.writer.write(m.message(b"X"))
        finally:
            up.writer.close()
        return f"logged in to {host}:{port}"

    def cancel_running(self, session: Session):
        """Shutdown's hook (Listener.stop): the server's own CancelRequest for the statement
        `session` still runs upstream, so the server stops it rather than run it on after the
        gateway exits (closing the socket alone is not noticed by a backend that is not
        writing: a pg_sleep(60) ran its minute). The key is taken now; the session ends
        before the request is sent."""
        secret = self.cancel_keys.to_upstream(self.name, session.pid, session.client_secret)
        return self._shutdown_cancel(session.id, session.pid, secret)

    async def _shutdown_cancel(self, session_id: str, pid: int, secret: int) -> None:
        host, port = self.cfg.upstream
        try:
            await send_cancel(host, port, pid, secret, self.upstream_context, timeout=2.0)
        except (OSError, asyncio.TimeoutError, UpstreamError, ssl.SSLError) as e:
            event(log, "shutdown: cancel could not reach the upstream", logging.WARNING,
                  connection=self.name, session=session_id, error=str(e) or type(e).__name__)
            return
        event(log, "shutdown: running statement cancelled", connection=self.name,
              session=session_id, backend_pid=pid)

    def forget(self, session: Session) -> None:
        self.cancel_keys.unregister(self.name, session.pid, session.client_secret)
        masker = session.masker
        if masker is not None and not any(
                s.database == session.database and s.masker is not None for s in self.sessions):
            # the last session on this database: its catalog connection goes too, or a
            # client's DROP DATABASE of it fails with 55006 (asyncpg's and pg8000's suites)
            masker.conn.release(session.database)
