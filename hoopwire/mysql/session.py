"""The MySQL/MariaDB listener: the handshake of each client session, on the core's Listener.

The server speaks first, so the gateway greets each client with its own HandshakeV10 (its own
connection id and nonce, the capabilities it relays), upgrades to TLS on an SSLRequest, reads the
HandshakeResponse41, asks for the token with an AuthSwitchRequest to mysql_clear_password, checks
identity, role and schema, logs in upstream with the stored credentials (hoopwire.mysql.upstream)
and hands both sockets to the Cython relay (hoopwire.mysql._wire.Relay), which reports to the
core's Session from then on.

Every refusal here is an ERR packet with the sequence id the client expects next (a wrong one
reads as "packets out of order" in the drivers and hides the message); the handshake writes it
itself and closes, so the core's own refusal write finds the writer closed and only logs and
counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import logging
import os
import ssl
import struct
import time

from hoopwire import metrics
from hoopwire.config import ConnectionConfig, RoleConfig
from hoopwire.core.errors import ClientProtocolError, Refused, UpstreamLoginError
from hoopwire.core.listener import OVER_LIMIT_TIMEOUT, Admission, Listener
from hoopwire.core.session import Session
from hoopwire.core.tls import start_server_tls
from hoopwire.identity import AuthError
from hoopwire.logs import event
from hoopwire.mysql import packets as p
from hoopwire.mysql.adapter import ADAPTER
from hoopwire.mysql.charsets import safe_charset, safe_collation
from hoopwire.mysql.dialect import DIALECT
from hoopwire.mysql.packets import CLIENT, PacketError
from hoopwire.mysql.upstream import (Upstream, UpstreamError, connect_upstream, read_packet,
                                     upstream_ssl_context)

log = logging.getLogger("hoopwire.mysql")

__all__ = ["MysqlListener", "GATEWAY_CAPABILITIES", "server_ssl_context"]

# What the gateway offers a client. LONG_PASSWORD set is how a MariaDB client learns it talks
# to "MySQL": no MariaDB extended capabilities (progress reports, COM_MULTI, bulk execute,
# extended or cached metadata), which the relay does not follow. Never offered: compression
# (the relay reads every packet), query attributes and optional metadata (the relay's result
# walk needs the column definitions), expired passwords (the gateway logs in, not the client).
GATEWAY_CAPABILITIES = (
    CLIENT.LONG_PASSWORD | CLIENT.FOUND_ROWS | CLIENT.LONG_FLAG | CLIENT.CONNECT_WITH_DB
    | CLIENT.IGNORE_SPACE | CLIENT.PROTOCOL_41 | CLIENT.INTERACTIVE | CLIENT.IGNORE_SIGPIPE
    | CLIENT.TRANSACTIONS | CLIENT.SECURE_CONNECTION | CLIENT.MULTI_STATEMENTS
    | CLIENT.MULTI_RESULTS | CLIENT.PS_MULTI_RESULTS | CLIENT.PLUGIN_AUTH | CLIENT.CONNECT_ATTRS
    | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT.SESSION_TRACK | CLIENT.DEPRECATE_EOF)

# A handshake packet is small: a HandshakeResponse41 with connection attributes is under 1 KiB
# from every driver we test (mysql-connector's is the largest, ~400 bytes); MySQL caps the
# attributes at 64 KiB. More than that is not a client.
_HANDSHAKE_PACKET_MAX = 64 * 1024 + 1024
_CLEAR = "mysql_clear_password"
# the greeting's version when the upstream's is not known yet and cannot be learnt
_FALLBACK_VERSION = "8.0.0-hoopwire"
# attributes forwarded upstream: what the client said about itself (bounded), and ours
_ATTRS_MAX = 4096

_ids = itertools.count(1)
# gateway connection id -> session, for KILL: one table per process (each worker numbers its
# own connections apart from the others': see _next_id). A KILL of an id this worker does not
# hold asks the sibling workers (hoopwire.core.cancelpeers): see MysqlListener.kill_answer.
_sessions: dict[int, Session] = {}
# A sibling's yes to a KILL: the upstream thread (4 bytes) and the owner's _kill_mark (16)
_KILL_ANSWER = struct.Struct("!I16s")


def _next_id(worker: int, workers: int) -> int:
    """A connection id no other live connection of this gateway has: the worker's residue
    class mod `workers`, 32 bits, never 0."""
    while True:
        n = (next(_ids) * max(1, workers) + worker) & 0xFFFFFFFF
        if n and n not in _sessions:
            return n


def _kill_mark(upstream: tuple[str, int], identity) -> bytes:
    """Who may KILL a session, as 16 bytes a sibling worker can compare: the upstream and the
    identity (issuer, subject). 128 bits: an id guess never meets another identity's mark."""
    host, port = upstream
    text = f"{host}:{port}\0{identity.issuer or ''}\0{identity.subject}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


def _nonce() -> bytes:
    # printable bytes 1..127 like the servers' own: some drivers treat the nonce as a C string
    return bytes(1 + b % 127 for b in os.urandom(20))


def _is_loopback(peer: str) -> bool:
    host = peer.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host(peer: str) -> str:
    return peer.rsplit(":", 1)[0].strip("[]")


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


async def _start_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     ctx: ssl.SSLContext) -> None:
    """TLS after an SSLRequest. A MySQL client does not wait for an answer to it: its
    ClientHello follows at once and may already sit in the plain stream's buffer, which
    start_server_tls hands to the TLS layer."""
    if not await start_server_tls(reader, writer, ctx):
        raise PacketError("could not start TLS")


def _safe_now(relay) -> bool:
    """The session's character set as the server last reported it (the relay follows SET
    NAMES by the server's answers), or the handshake's collation before any report."""
    name = relay.character_set_client
    return safe_charset(name) if name else safe_collation(relay.charset)


def _with_seq(packet: bytes, seq: int) -> bytes:
    """An adapter-built packet (sequence id 0) with the sequence id due."""
    return packet[:3] + bytes((seq & 0xFF,)) + packet[4:]


def _own_session(gateway_id: int, mark: bytes) -> Session | None:
    """The session a KILL of `gateway_id` by the holder of `mark` (_kill_mark) reaches: the live
    session with that connection id, when it is the same identity's on the same upstream.

    Only the gateway's ids count. Upstream thread ids live in the same number range (both
    count up from 1 here), so taking an id that is no gateway id as a thread id made one
    number mean two sessions: a KILL of another identity's connection id reached the
    caller's own session whose thread had that number."""
    s = _sessions.get(gateway_id)
    if s is None or s.relay is None:
        return None
    return s if _kill_mark(s.listener.cfg.upstream, s.identity) == mark else None


class _Conn:
    """One client's handshake: its streams and the sequence id due next."""

    __slots__ = ("reader", "writer", "seq", "tls")

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.seq = 0
        self.tls = False

    async def read(self) -> bytes:
        seq, payload = await read_packet(self.reader, _HANDSHAKE_PACKET_MAX)
        if seq != self.seq:
            raise PacketError(f"packet with sequence id {seq}, expected {self.seq}")
        self.seq = (seq + 1) & 0xFF
        return payload

    def send(self, payload: bytes) -> None:
        self.writer.write(p.frame(payload, self.seq))
        self.seq = (self.seq + 1) & 0xFF

    def refuse(self, packet: bytes) -> None:
        """A whole ERR packet, at the sequence id due, then close (the bytes are flushed)."""
        if not self.writer.is_closing():
            self.writer.write(_with_seq(packet, self.seq))
            self.writer.close()


class MysqlListener(Listener):
    """Serves one [[connection]] with protocol = "mysql"."""

    adapter = ADAPTER
    dialect = DIALECT
    log = log

    def __init__(self, gateway, cfg: ConnectionConfig, policy_engine=None, mask_engine=None):
        self.masking = None
        self._server = None          # the upstream's greeting (version, collation), once known
        self._learning: asyncio.Future | None = None
        super().__init__(gateway, cfg, policy_engine, mask_engine)

    # -- configuration --------------------------------------------------------------------------

    def apply_protocol(self, cfg: ConnectionConfig, mask_engine=None) -> None:
        self.tls_context = server_ssl_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
        self.upstream_context = upstream_ssl_context(cfg.upstream_tls, cfg.upstream_ca)
        self._server = None          # the upstream may have changed: learn its version again
        old = self.masking
        self.masking = None
        if mask_engine is not None:
            from hoopwire.mysql.masker import ConnectionMasking
            self.masking = ConnectionMasking(
                mask_engine, unresolved=cfg.unresolved_columns, masked_writes=cfg.masked_writes,
                connect=self._catalog_connect, connection=cfg.name, timeout=cfg.connect_timeout)
        if old is not None:
            old.close()
        for s in list(self.sessions):
            if s.relay is None:
                continue
            if s.masker is not None:
                s.masker.rebind(self.masking)
            policy = self.policy_for(s.identity)
            if self._reads_text(policy) and not _safe_now(s.relay):
                s.relay.shutdown("policy_reload", self.adapter.fatal(
                    "1227/42000", "the client's character set is not allowed through the "
                    "gateway while guardrails or masking apply"))
                continue
            s.relay.policy = self._guarded(policy, s.masker)

    @staticmethod
    def _guarded(policy, masker):
        """The relay's policy: the guardrails, wrapped in masking's WriteGuard while column
        rules apply (as PostgreSQL's)."""
        if masker is None or not masker.conn.has_columns:
            return policy
        from hoopwire.mysql.masker import WriteGuard
        return WriteGuard(policy, masker, refuse=masker.conn.masked_writes == "refuse")

    def _reads_text(self, policy) -> bool:
        return policy is not None or (self.masking is not None and self.masking.active and
                                      self.masking.has_columns)

    def stopped(self) -> None:
        if self.masking is not None:
            self.masking.close()

    def forget(self, session: Session) -> None:
        if _sessions.get(session.client_secret) is session:
            _sessions.pop(session.client_secret, None)

    # -- the handshake --------------------------------------------------------------------------

    async def handshake(self, reader, writer, peer: str, admission: Admission) -> None:
        conn = _Conn(reader, writer)
        t0 = time.monotonic()
        try:
            await self._handshake(conn, peer, admission)
        except Refused as e:
            conn.refuse(self.adapter.fatal(e.code, e.message))
            raise
        except UpstreamError as e:
            conn.refuse(p.frame(e.server_err, 0) if e.server_err is not None
                        else self.adapter.fatal(e.code, e.client_message))
            raise
        except UpstreamLoginError as e:
            conn.refuse(self.adapter.fatal(e.code, e.client_message))
            raise
        except ClientProtocolError as e:
            conn.refuse(self.adapter.fatal(e.code, str(e)))
            raise
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            raise                   # the client left: nobody to tell
        except Exception:
            # a fault of ours: the core logs the traceback; the client hears it at its seq id
            conn.refuse(self.adapter.condition("internal", "internal error in the gateway",
                                               fatal=True))
            raise
        except asyncio.CancelledError:
            # the core's handshake timeout (or a stop): the client hears why, at its sequence id
            bound = min(self.cfg.handshake_timeout,
                        OVER_LIMIT_TIMEOUT if admission.over is not None else float("inf"))
            if time.monotonic() - t0 >= bound - 0.05:
                conn.refuse(self.adapter.condition("handshake_timeout", "startup timed out",
                                                   fatal=True))
            raise

    async def _handshake(self, conn: _Conn, peer: str, admission: Admission) -> None:
        cfg = self.cfg
        # A server counts a connection at accept and answers ERR 1040 in place of its greeting.
        admission.take(Refused("too_many_connections", self.adapter.too_many_clients_code,
                               "Too many connections"))
        server = await self._server_greeting()
        conn_id = _next_id(self.gateway.worker_index, self.gateway.workers)
        offered = GATEWAY_CAPABILITIES
        if self.tls_context is not None:
            offered |= CLIENT.SSL
        if cfg.load_data_local:
            offered |= CLIENT.LOCAL_FILES
        nonce = _nonce()
        conn.send(p.HandshakeV10(
            server_version=server.server_version, connection_id=conn_id, auth_data=nonce,
            capabilities=offered, charset=server.charset, status=p.SERVER_STATUS.AUTOCOMMIT,
            auth_plugin="mysql_native_password").encode())
        await conn.writer.drain()

        payload = await conn.read()
        if p.is_ssl_request(payload):
            if self.tls_context is None:
                raise PacketError("SSLRequest on a listener without TLS (it offered none)")
            await _start_tls(conn.reader, conn.writer, self.tls_context)
            conn.tls = True
            payload = await conn.read()
        hello = p.HandshakeResponse41.decode(payload)
        caps = hello.capabilities & offered
        user = hello.user
        host = _host(peer)
        if cfg.require_tls and not conn.tls:
            raise Refused("tls_required", "3159/HY000",
                          "Connections using insecure transport are prohibited: connection "
                          f"\"{cfg.name}\" requires TLS (ssl-mode=REQUIRED)")
        if not user:
            raise Refused("no_user", "1045/28000",
                          f"Access denied for user ''@'{host}' (using password: NO)")

        token = await self._token(conn, hello, caps, peer)
        try:
            identity = await self.gateway.authenticator.authenticate(token)
        except AuthError as e:
            metrics.AUTH_FAILURES.labels(cfg.name, e.reason).inc()
            raise Refused("auth_failed", "1045/28000",
                          f"Access denied for user '{user}'@'{host}' (using password: YES)",
                          detail=f"{e.reason}: {e.detail}") from None

        role = self._pick_role(cfg, user)
        allowed = role.allow_groups if role.allow_groups else cfg.allow_groups
        if allowed and not (identity.groups & set(allowed)):
            metrics.AUTH_FAILURES.labels(cfg.name, "group_not_allowed").inc()
            raise Refused("denied", "1045/28000",
                          f"Access denied for user '{user}'@'{host}': the identity is not "
                          f"allowed to use \"{user}\" on connection \"{cfg.name}\"",
                          detail=f"subject={identity.subject} groups={sorted(identity.groups)}")

        database = self._schema(cfg, hello.database if caps & CLIENT.CONNECT_WITH_DB else None,
                                user, host)
        policy = None
        if self.policy_engine is not None and not self.policy_engine.empty:
            # the first identity with a new group set compiles its rule set: off the event loop
            policy = await asyncio.to_thread(self.policy_for, identity)
        # the collation the client asks for (a gbk/big5/sjis/cp932 one hides a quote from a
        # lexer reading bytes), here and again by the server's own word once logged in
        if self._reads_text(policy) and not safe_collation(hello.charset):
            raise Refused("blocked", "1227/42000",
                          f"the client's character set (collation {hello.charset}) is not "
                          "allowed through the gateway while guardrails or masking apply: "
                          "use utf8mb4")

        session = Session(self, identity, role.name, peer, conn.tls, database or "")
        attrs = {k: v for k, v in hello.attrs.items()}
        if sum(len(k) + len(v) for k, v in attrs.items()) > _ATTRS_MAX:
            attrs = {}
        attrs["hoopwire_session"] = session.id
        host_up, port_up = cfg.upstream
        up = await connect_upstream(
            host_up, port_up, user=role.user,
            password=role.password.get() if role.password is not None else None,
            database=database, capabilities=caps, charset=hello.charset, attrs=attrs,
            ssl_context=self.upstream_context, timeout=cfg.connect_timeout, track_session=True)
        metrics.UPSTREAM_CONNECT_SECONDS.labels(cfg.name).observe(up.connect_seconds)
        self._server = up.greeting
        try:
            await self._start(conn, session, up, caps, hello, policy, conn_id)
        except BaseException:
            up.close()
            raise
        event(log, "session started", connection=cfg.name, session=session.id, peer=peer,
              issuer=identity.issuer or "", subject=identity.subject, method=identity.method,
              role=role.name, upstream_user=role.user, database=database or "",
              tls="on" if conn.tls else "off", upstream_tls="on" if up.tls else "off",
              thread_id=up.thread_id, connection_id=conn_id, auth_plugin=up.plugin)

    async def _token(self, conn: _Conn, hello: p.HandshakeResponse41, caps: int,
                     peer: str) -> str:
        """The token, as a mysql_clear_password answer: taken from the first response when the
        client already used that plugin, else asked for with an AuthSwitchRequest."""
        cfg = self.cfg
        if not conn.tls and not (cfg.cleartext_without_tls == "loopback" and _is_loopback(peer)):
            raise Refused("cleartext_refused", "1251/08004",
                          f"the gateway takes the token as a cleartext password, over TLS only: "
                          f"connect with TLS (ssl-mode=REQUIRED) to connection \"{cfg.name}\"")
        if hello.auth_plugin == _CLEAR and hello.auth_response:
            raw = hello.auth_response
        else:
            if not caps & CLIENT.PLUGIN_AUTH:
                raise Refused("no_plugin_auth", "1251/08004",
                              "Client does not support authentication protocol requested by "
                              "server; consider upgrading MySQL client")
            conn.send(p.auth_switch_request(_CLEAR))
            await conn.writer.drain()
            raw = await conn.read()
        # the plugin sends the password and a NUL; not stripped further: a token with
        # whitespace around it is refused, as on the admin API
        if raw.endswith(b"\0"):
            raw = raw[:-1]
        return raw.decode("utf-8", "replace")

    def _schema(self, cfg: ConnectionConfig, asked: str | None, user: str,
                host: str) -> str | None:
        """The upstream default schema: the configured one; the client's only where
        allow_client_database is on. A client that names another schema is refused with the
        server's own answer (1044) rather than landing in the configured one unawares."""
        if asked == "":
            asked = None
        if cfg.allow_client_database and asked:
            return asked
        if cfg.database is None:
            return asked
        if asked and asked != cfg.database:
            raise Refused("unknown_database", "1044/42000",
                          f"Access denied for user '{user}'@'{host}' to database '{asked}'")
        return cfg.database

    async def _start(self, conn: _Conn, session: Session, up: Upstream, caps: int,
                     hello: p.HandshakeResponse41, policy, conn_id: int) -> None:
        from hoopwire.mysql._wire import Relay
        cfg = self.cfg
        sql_mode, charset_client, schema = await self._session_state(up)
        if self._reads_text(policy) and not safe_charset(charset_client):
            raise Refused("blocked", "1227/42000",
                          f"the client's character set ({charset_client}) is not allowed "
                          "through the gateway while guardrails or masking apply: use utf8mb4")
        session.pid = up.thread_id          # the upstream's connection id: KILL's target
        session.client_secret = conn_id     # the id the client knows the session by
        masker = None
        if self.masking is not None and self.masking.active:
            from hoopwire.mysql.catalog import CatalogError
            from hoopwire.mysql.masker import SessionMasker
            masker = SessionMasker(self.masking, session.database or None)
            try:
                await self.masking.ready()
            except CatalogError as e:
                raise Refused("mask_catalog_error", "1105/HY000",
                              "the gateway cannot read the catalog it masks results by",
                              detail=str(e)) from None
        relay = Relay(self.stats, policy, session, max_message_size=cfg.max_message_size,
                      marker_prefix=self.gateway.marker_prefix, capabilities=caps,
                      thread_id=up.thread_id, load_data_local=cfg.load_data_local,
                      kill_target=lambda gid, s=session: self._kill_target(s, gid),
                      charset=hello.charset, dialect=DIALECT, sql_mode=sql_mode,
                      character_set_client=charset_client, schema=schema,
                      upstream_capabilities=up.capabilities)
        statements = (self.gateway.recorder.statement_log(session)
                      if self.gateway.recorder is not None else None)
        if masker is not None or statements is not None:
            relay.enable_results(masker, record=statements, capture_bytes=self._capture_bytes())
        if masker is not None:
            masker.relay = relay
            session.masker = masker
            relay.policy = self._guarded(policy, masker)
        # The client's OK carries the server's status flags; not the login OK itself, whose
        # session-state block is in the upstream's format (SESSION_TRACK the client may lack)
        conn.send(p.ok_packet(p.OK(status=up.status), caps))
        session.writers = (conn.writer, up.writer)
        _sessions[conn_id] = session
        self.session_started(session, relay)
        client_pending = bytes(conn.reader._buffer)  # noqa: SLF001
        conn.reader._buffer.clear()  # noqa: SLF001
        upstream_pending = bytes(up.reader._buffer)  # noqa: SLF001
        up.reader._buffer.clear()  # noqa: SLF001
        relay.start(conn.writer.transport, up.writer.transport, client_pending, upstream_pending)

    async def _session_state(self, up: Upstream) -> tuple[str | None, str | None, str | None]:
        """What the relay starts from: the server's sql_mode, character_set_client and schema.
        Where the server tracks session state, it is asked to report changes of those (and
        the schema) in every OK from now on, so the relay follows the server's word rather
        than a statement's claim. Two round trips per login."""
        timeout = self.cfg.connect_timeout
        try:
            if up.capabilities & CLIENT.SESSION_TRACK:
                await up.query("SET SESSION session_track_system_variables = 'autocommit,"
                               "character_set_client,character_set_connection,"
                               "character_set_results,sql_mode,time_zone', "
                               "session_track_schema = ON", timeout)
            rows = await up.query("SELECT @@sql_mode, @@character_set_client, DATABASE()",
                                  timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, PacketError) as e:
            raise UpstreamError(f"upstream failed after the login: {type(e).__name__}: {e}") \
                from None
        return rows[0] if rows else (None, None, None)

    def _kill_target(self, session: Session, gateway_id: int):
        """KILL [QUERY] <id>: the upstream thread to kill, None (1094 Unknown thread id), or
        with --workers, a future of either while the sibling workers are asked.

        The id is the gateway's connection id: what the greeting gave the client, and what
        drivers and the CLI's Ctrl-C send. Only a session of the same identity on the same
        upstream counts: a server lets a user kill its own threads, and here every session
        logs in as the same stored user, so the identity is what "its own" means. An upstream
        thread id (CONNECTION_ID()'s answer, the server's) is not taken: it would be a second
        meaning of the same number (see _own_session). The KILL itself goes over the killer's
        own upstream connection, on any worker."""
        mark = _kill_mark(self.cfg.upstream, session.identity)
        target = _own_session(gateway_id, mark)
        if target is not None:
            return target.pid
        peers = self.gateway.cancel_peers
        if peers is None:
            self._kill_refused(session, gateway_id)
            return None
        return asyncio.ensure_future(self._ask_siblings(peers, session, gateway_id, mark))

    async def _ask_siblings(self, peers, session: Session, gateway_id: int,
                            mark: bytes) -> int | None:
        """The upstream thread behind another worker's session `gateway_id`, when it is this
        identity's; None otherwise, or when no sibling answers within ASK_TIMEOUT (1 s)."""
        try:
            answer = await peers.ask(self.name, gateway_id, int.from_bytes(mark[:4], "big"))
        except Exception as e:  # noqa: BLE001 -- the KILL is answered 1094; the loop goes on
            event(log, "cannot ask the sibling workers about a KILL", logging.WARNING,
                  connection=self.name, session=session.id, error=repr(e))
            answer = None
        if isinstance(answer, bytes) and len(answer) == _KILL_ANSWER.size:
            thread, theirs = _KILL_ANSWER.unpack(answer)
            if theirs == mark and thread:
                event(log, "KILL of a session on another worker", connection=self.name,
                      session=session.id, connection_id=gateway_id, thread_id=thread)
                return thread
        self._kill_refused(session, gateway_id)
        return None

    def _kill_refused(self, session: Session, gateway_id: int) -> None:
        event(log, "KILL refused: no session of this identity has that id (1094)",
              logging.WARNING, connection=self.name, session=session.id,
              subject=session.identity.subject, connection_id=gateway_id)

    def cancel_owned(self, pid: int, secret: int, via: str) -> bytes | bool:
        """A sibling worker's question about a KILL: is connection id `pid` one of this
        worker's sessions, of the identity whose mark starts with `secret`? The answer is the
        thread and the session's whole mark, which the asker compares with its own before it
        kills anything; this worker kills nothing."""
        target = _sessions.get(pid)
        if target is None or target.relay is None:
            return False
        mark = _kill_mark(target.listener.cfg.upstream, target.identity)
        if int.from_bytes(mark[:4], "big") == secret:
            return _KILL_ANSWER.pack(target.pid, mark)
        return False

    def _capture_bytes(self) -> int:
        if self.gateway.recorder is None or not self.cfg.record_results:
            return 0
        return self.cfg.record_results_max_bytes

    def _pick_role(self, cfg: ConnectionConfig, user: str) -> RoleConfig:
        for role in cfg.roles:
            if role.name == user:
                return role
        return RoleConfig(name="default", user=cfg.user, password=cfg.password,
                          allow_groups=cfg.allow_groups)

    # -- upstream side connections --------------------------------------------------------------

    async def _side_connection(self, database: str | None, purpose: str) -> Upstream:
        cfg = self.cfg
        host, port = cfg.upstream
        return await connect_upstream(
            host, port, user=cfg.user, password=cfg.password.get() if cfg.password else None,
            database=database, capabilities=CLIENT.PROTOCOL_41 | CLIENT.LONG_FLAG,
            attrs={"program_name": f"hoopwire-{purpose}"}, ssl_context=self.upstream_context,
            timeout=cfg.connect_timeout)

    async def _catalog_connect(self, database: str | None = None) -> Upstream:
        """The side connection masking reads information_schema over (the connection's own
        stored user): an object with `async query(sql)` and `close()`."""
        return await self._side_connection(database, "catalog")

    async def _server_greeting(self) -> p.HandshakeV10:
        """The upstream's greeting, for the version and collation the gateway's own greeting
        shows: drivers pick features by the version (MariaDB or MySQL, 8.0 or 5.7). Learnt
        once per configuration by a login with the stored credentials (one, whoever many
        clients wait for it), then kept fresh by every session's own login."""
        if self._server is not None:
            return self._server
        if self._learning is None:
            self._learning = asyncio.get_running_loop().create_task(self._learn())
        learning = self._learning
        try:
            return await asyncio.shield(learning)
        finally:
            if learning.done():
                self._learning = None

    async def _learn(self) -> p.HandshakeV10:
        try:
            up = await self._side_connection(self.cfg.database, "probe")
        except UpstreamLoginError as e:
            event(log, "upstream version unknown: greeting clients as a generic server",
                  logging.WARNING, connection=self.name, error=str(e))
            return p.HandshakeV10(_FALLBACK_VERSION, 0, b"\0" * 20, 0)
        up.close()
        self._server = up.greeting
        return up.greeting

    async def probe_upstream(self) -> str:
        """/readyz's login check: log in with the stored credentials and leave."""
        up = await self._side_connection(self.cfg.database, "readiness")
        self._server = up.greeting
        up.close()
        host, port = self.cfg.upstream
        return f"logged in to {host}:{port}"
