# The relay: a MySQL session after the handshake. Two protocol objects (one per socket) share a
# Relay; packets are framed in place and written to the other side, usually as the very chunk
# that arrived. Python is entered for a statement that policy judges and for events.
#
# The client's commands: each logical packet with sequence id 0 is one. Those that get an
# answer go into the results FIFO (MyResults); those the gateway answers itself (a block, a
# refusal, a denied approval, a refused command) are never sent upstream: the ERR goes to the
# client at once when nothing is in flight, else when the answers before it are through.
import logging
import re

_log = logging.getLogger("hoopwire.mysql")

cdef Py_ssize_t HOLD_READ_LIMIT = 1024 * 1024
# statement shapes a session remembers (Relay.memo); past it the memo starts again. A key is
# about twice its text: 256 shapes of 100-byte statements are ~60 KB a session
cdef Py_ssize_t MEMO_MAX = 256
# a shape the policy cannot answer for as a whole (Relay._memo_put said no): remembered too,
# so that it is asked once per shape, not on every statement of it
cdef PlanMemo NO_MEMO = PlanMemo.__new__(PlanMemo)
# MySQL's max_allowed_packet can be at most 1 GB: no row from a server is larger
cdef Py_ssize_t UPSTREAM_MAX_LOGICAL = 1024 * 1024 * 1024

# Error numbers the relay itself answers with (the server's own for the same situation)
cdef enum:
    ER_NOT_ALLOWED_COMMAND = 1148        # LOAD DATA LOCAL refused (42000)
    ER_NET_PACKET_TOO_LARGE = 1153       # 08S01
    ER_NET_PACKETS_OUT_OF_ORDER = 1156   # 08S01
    ER_UNKNOWN_COM_ERROR = 1047          # 08S01
    ER_NO_SUCH_THREAD = 1094             # HY000: KILL of an id that is not the client's
    ER_SPECIFIC_ACCESS_DENIED = 1227     # 42000: a guardrail, COM_CHANGE_USER
    ER_NOT_SUPPORTED_YET = 1235          # 42000: server-side cursors
    ER_MALFORMED_PACKET = 1835           # HY000
    ER_SERVER_SHUTDOWN = 1053            # 08S01


class _RefusedVerdict:
    action = "block"
    rule = "audit-unavailable"
    message = "the audit log cannot be written"
    matched = ("audit-unavailable",)


REFUSED_VERDICT = _RefusedVerdict()
# after the marker prefix in a refused statement's recorded error (hoopwire/audit/recorder.py)
REFUSED_MARK = b"r"


cdef bytes set_seq(bytes packet, int seq):
    """A whole packet (one) with its sequence id set."""
    if PyBytes_GET_SIZE(packet) < 4:
        raise ValueError("not a packet")
    return packet[:3] + bytes((seq & 0xff,)) + packet[4:]


cdef inline double wallclock() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef int sql_mode_bits(str mode) noexcept:
    cdef int bits = 0
    if mode is None:
        return 0
    for part in mode.upper().split(","):
        part = part.strip()
        if part == "NO_BACKSLASH_ESCAPES":
            bits |= 1
        elif part == "ANSI_QUOTES":
            bits |= 2
        elif part == "MSSQL":
            # MariaDB's MSSQL mode reads [name] as a quoted identifier (and implies ANSI_QUOTES)
            bits |= 4 | 2
    return bits


def mode_bits(str sql_mode):
    """The dialect's mode bits of an sql_mode value (1 NO_BACKSLASH_ESCAPES, 2 ANSI_QUOTES,
    4 MSSQL)."""
    return sql_mode_bits(sql_mode)


# KILL [HARD|SOFT] [CONNECTION|QUERY] <id>: the one shape the relay maps; any other statement
# the dialect reads as a KILL (KILL USER, KILL QUERY ID, a KILL among other statements or
# inside an executable comment) is refused rather than sent with an id the client made up.
_KILL = re.compile(rb"\A\s*kill(\s+(?:hard|soft))?(\s+(?:connection|query))?\s+(\d{1,20})\s*;?\s*\Z",
                   re.I)


cdef bint _has_kill(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Whether the bytes hold the word KILL in any ASCII case, anywhere (in a comment, a
    literal, a longer word): no statement can kill without it. The test every COM_QUERY pays;
    the regular expressions run only when it says yes. (It was a case-blind re.search per
    query, twice: 2 us each on a sysbench point select here, against 0.23 us for has_kill
    below called from Python, the call included; the loop itself runs in C.)"""
    cdef Py_ssize_t i
    for i in range(n - 3):
        # | 0x20 folds exactly the ASCII upper-case letters K, I, L onto k, i, l
        if (p[i] | 0x20) == 0x6b and (p[i + 1] | 0x20) == 0x69 and \
                (p[i + 2] | 0x20) == 0x6c and (p[i + 3] | 0x20) == 0x6c:
            return True
    return False


def has_kill(sql):
    """Tests: _has_kill over bytes."""
    cdef bytes b = bytes(sql)
    return _has_kill(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef long long _kill_id(bytes sql):
    """The id of a KILL statement the relay maps, or -1."""
    m = _KILL.match(sql)
    if m is None or len(m.group(3)) > 10:
        return -1
    return int(m.group(3))


cdef bint _safe_charset(str name):
    try:
        from hoopwire.mysql.charsets import safe_charset
    except ImportError:
        return name in ("utf8mb4", "utf8mb3", "utf8", "latin1", "ascii", "binary")
    return safe_charset(name)


cdef bint _safe_collation(int cid):
    try:
        from hoopwire.mysql.charsets import safe_collation
    except ImportError:
        return True
    return safe_collation(cid)


cdef class Relay:
    """One authenticated MySQL session: client transport <-> upstream transport."""

    def __init__(self, ConnStats stats, object policy=None, object events=None, *,
                 Py_ssize_t max_message_size=64 * 1024 * 1024,
                 bytes marker_prefix=b"hoopwire_blocked", unsigned int capabilities=0,
                 unsigned int thread_id=0, bint load_data_local=False, kill_target=None,
                 int charset=0, dialect=None, str sql_mode=None, str character_set_client=None,
                 str schema=None, upstream_capabilities=None):
        self.stats = stats
        self.policy = policy
        self.events = events
        self.dialect = dialect
        self.kill_target = kill_target
        self.capabilities = capabilities
        self.deprecate_eof = (capabilities & CLIENT_DEPRECATE_EOF) != 0
        ucaps = capabilities if upstream_capabilities is None else upstream_capabilities
        self.session_track = (ucaps & CLIENT_SESSION_TRACK) != 0
        self.client_session_track = (capabilities & CLIENT_SESSION_TRACK) != 0
        self.thread_id = thread_id
        self.load_data_local = load_data_local
        self.charset = charset
        self.character_set_client = character_set_client
        self.sql_mode = sql_mode
        self.mode = sql_mode_bits(sql_mode)
        self.schema = schema
        self.initial = (charset, character_set_client, sql_mode, self.mode, schema)
        self.marker_prefix = marker_prefix
        self.max_row = UPSTREAM_MAX_LOGICAL
        self.stmts = {}
        self.last_stmt = -1
        self.notices = []
        self.client = ClientSide.__new__(ClientSide)
        self.client.relay = self
        # one packet past the limit is refused at its header, before its body is read
        self.client.max_size = (max_message_size if max_message_size < MAX_PAYLOAD
                                else MAX_PAYLOAD) + 4
        self.client.max_logical = max_message_size
        self.upstream = UpstreamSide.__new__(UpstreamSide)
        self.upstream.relay = self
        self.upstream.max_size = MAX_PAYLOAD + 4
        self.upstream.max_logical = UPSTREAM_MAX_LOGICAL
        self.results = MyResults(self)
        self.last_activity = monotonic()

    def start(self, client_tr, upstream_tr, bytes client_pending=b"", bytes upstream_pending=b""):
        """Take over both transports (after the handshake); feed bytes it read ahead. A
        transport is used only through write, writelines, set_protocol, pause_reading,
        resume_reading, close and is_closing: tests drive a relay in-process with recording
        objects (tests/relaywire.py's MemoryTransport)."""
        self.client_tr = client_tr
        self.upstream_tr = upstream_tr
        self.client.peer_write = upstream_tr.write
        self.client.peer_writelines = upstream_tr.writelines
        self.upstream.peer_write = client_tr.write
        self.upstream.peer_writelines = client_tr.writelines
        client_tr.set_protocol(self.client)
        upstream_tr.set_protocol(self.upstream)
        if (self.policy is not None or self.results.mask_on) and \
                ((self.character_set_client is not None and
                  not _safe_charset(self.character_set_client)) or
                 (self.charset and not _safe_collation(self.charset))):
            self._close("unsafe_client_charset", err_packet(
                ER_SPECIFIC_ACCESS_DENIED, "42000", "the client character set is not allowed "
                "through the gateway while guardrails or masking apply"))
            return
        if upstream_pending:
            self.upstream.data_received(upstream_pending)
        if client_pending:
            self.client.data_received(client_pending)
        if not self.closed:
            client_tr.resume_reading()
            upstream_tr.resume_reading()

    def enable_results(self, masker, record=None, Py_ssize_t capture_bytes=0):
        """Mask results through `masker` (hoopwire.mysql.masker's session masker, or None) and/or
        record every statement into `record` (a hoopwire._auditlog.StatementLog). Before
        start()."""
        self.results = MyResults(self, masker, record, capture_bytes)

    def refuse_statements(self, bytes error=None):
        """While `error` (an ERR packet) is set, every new statement is answered with it."""
        self.refuse_error = error

    def decide(self, bint approved, bytes error=None, bytes notice=None):
        """Release a command held for approval: approved, it goes upstream; denied, the client
        gets `error` (an ERR packet) in its place and the session goes on."""
        if self.closed or not self.client.holding or self.waiting:
            return
        self.decision = DECISION_APPROVED if approved else DECISION_DENIED
        self.deny_error = error
        self._resume_client()
        self.decision = DECISION_NONE

    cdef int _resume_client(self) except -1:
        try:
            self.waiting = False
            self.client.resume_feed()
        except Exception as e:
            self._client_failed(e)
            return 0
        if not self.closed:
            self.client.flush()
            if not self.client.holding and not self.upstream_full:
                self.client_tr.resume_reading()
        return 0

    def notify_client(self, bytes message):
        """MySQL has no message a server may send unasked (a packet out of turn breaks the
        client's sequence), so a notice is logged and kept here, never sent: False."""
        if message:
            _log.info("notice not sent to a MySQL client (the protocol has none): %s",
                      message[:200].decode("utf-8", "replace"))
            if len(self.notices) < 16:
                self.notices.append(message)
        return False

    @property
    def held(self):
        """A command is held for approval."""
        return self.client.holding and not self.waiting

    @property
    def is_closed(self):
        return self.closed

    @property
    def in_flight(self):
        return len(self.results.queue)

    def resume_upstream(self):
        """Go on after the masker's HOLD (it has what it waited for)."""
        if self.closed:
            return
        try:
            self.upstream.resume_feed()
        except Exception as e:
            self._upstream_failed(e)
            return
        if not self.closed:
            self.upstream.flush()
            self._after_upstream()
            if not self.upstream.holding and not self.client_full:
                self.upstream_tr.resume_reading()

    def idle_seconds(self):
        return monotonic() - self.last_activity

    def read_stalled(self):
        """Seconds the client has left a packet half sent without a new byte: 0 between
        packets, and while the gateway itself does not read it (the upstream's buffer is
        full, or a command waits for an approval). The listener ends a session past
        read_timeout (hoopwire/core/listener.py)."""
        if self.closed or self.upstream_full:
            return 0.0
        return self.client.stalled_for(monotonic())

    def shutdown(self, str reason, bytes notify_client=None):
        """Close the session from outside (idle timeout, gateway stopping): `notify_client` is
        an ERR packet (sequence id 0), numbered here as the client expects its next packet."""
        if notify_client is not None and self.results.queue:
            notify_client = set_seq(notify_client, self.upstream.next_seq)
        self._close(reason, notify_client)

    cdef int _close(self, str reason, object notify_client) except -1:
        if self.closed:
            return 0
        self.closed = True
        self.close_reason = reason
        if self.client_tr is not None and not self.client_tr.is_closing():
            # injected bytes never land inside a packet the client is reading
            if notify_client is not None and self.upstream.skip == 0 and \
                    self.upstream.held is None and self.upstream.hdr_have == 0 and \
                    not self.upstream.in_run:
                self.client_tr.write(notify_client)
            self.client_tr.close()
        if self.upstream_tr is not None and not self.upstream_tr.is_closing():
            if reason != "client_terminate" and self.client.skip == 0 and \
                    self.client.held is None and self.client.hdr_have == 0 and \
                    not self.client.in_run:
                self.upstream_tr.write(COM_QUIT_PACKET)     # the server ends the thread cleanly
            self.upstream_tr.close()
        if self.events is not None:
            self.events.session_closed(self, reason)
        return 0

    cdef int _client_failed(self, object e) except -1:
        """A bad packet from the client is the client's: it hears why, the session ends. Any
        other error is ours: the session ends and the error is raised on (logged)."""
        if isinstance(e, FrameError):
            code = e.code if isinstance(e.code, int) else ER_MALFORMED_PACKET
            self._close("client_protocol_error", err_packet(
                code, "08S01" if code != ER_MALFORMED_PACKET else "HY000", str(e),
                self.upstream.next_seq if self.results.queue else 0))
            return 0
        self._close("internal_error", err_packet(1105, "HY000", "internal error in the gateway"))
        raise e

    cdef int _upstream_failed(self, object e) except -1:
        if isinstance(e, FrameError):
            _log.warning("upstream protocol violation: %s", e)
            self._close("upstream_protocol_error", err_packet(
                2027, "HY000", "malformed packet from the upstream server",
                self.upstream.next_seq))
        elif isinstance(e, MaskRowError):
            if self.events is not None:
                self.events.masking_failed(self, str(e))
            self._close("mask_error", err_packet(
                1105, "HY000", "the gateway could not mask this result; the session is closed",
                self.upstream.next_seq))
        else:
            self._close("internal_error", err_packet(1105, "HY000", "internal error in the gateway",
                                                     self.upstream.next_seq))
            raise e
        return 0

    # -- commands ---------------------------------------------------------------------------

    cdef object _command(self, int seq, const unsigned char* p, Py_ssize_t n, int npackets):
        """One client command (the whole logical packet): None to forward it, bytes to send
        upstream instead, b"" when the gateway answered it, or HOLD."""
        cdef int cmd = p[0]
        cdef int aseq = (seq + npackets) & 0xff      # the answer's first sequence id
        self.cur_aseq = aseq
        cdef Cmd c
        cdef Cursor cu
        cdef unsigned int stmt_id, target
        cdef object out = None
        cdef object known
        cdef bytes sql
        cdef bint is_kill
        cdef object key = None
        cdef PlanMemo memo = None
        if cmd == COM_QUERY or cmd == COM_STMT_PREPARE:
            sql = p[1:n]
            if self.refuse_error is not None:
                return self._local(self.refuse_error, aseq, sql, REFUSED_MARK)
            if self.policy is not None and self._changes_in_flight():
                # a statement in flight may change sql_mode or the character set: this one is
                # judged once the server has said what they are
                self.waiting = True
                return HOLD_
            if self.results.mask_on and (self.catalog_due or self.catalog_wait is not None) \
                    and self._catalog_hold():
                return HOLD_
            is_kill = cmd == COM_QUERY and _has_kill(p + 1, n - 1)
            if is_kill and self._kill_hold(_kill_id(sql)):
                return HOLD_
            if cmd == COM_QUERY and not is_kill and self.results.memo_on and \
                    (self.policy is not None or self.results.mask_on):
                key = memo_key(p + 1, n - 1)
                if key is not None and self._memo_ready():
                    memo = self.memo.get(key)
                    if memo is NO_MEMO:
                        memo = None
                        key = None         # judged as before, and not asked again
            if memo is None:
                out = self._judge_text(cmd, sql, sql, aseq)
                if out is HOLD_ or (out is not None and PyBytes_GET_SIZE(out) == 0):
                    return out
            if is_kill:
                kill = self._kill(sql, aseq)
                if kill is not None:
                    if PyBytes_GET_SIZE(kill) == 0:
                        return kill
                    out = kill
            c = Cmd.__new__(Cmd)
            c.cmd = cmd
            c.sql = sql
            if memo is not None:
                # a shape judged before: no verdict, and the masker's reading of it
                c.info = memo.info
            else:
                c.info = self.results.masker.statement(sql) if self.results.mask_on else None
                if key is not None and out is None and self.judged_none and \
                        (c.info is None or not c.info.ddl):
                    memo = self._memo_put(key, sql, c.info)
            c.memo = memo
            c.may_change = cmd == COM_QUERY
            if cmd == COM_QUERY:
                c.state = U_FIRST
                self.stats.queries += 1
            else:
                c.state = U_PREPARE
                c.verdict = self.pending_verdict
                c.sql = sql
            self.pending_verdict = None
            self._send(c)
            return out
        if cmd == COM_STMT_EXECUTE:
            cu = cursor(p + 1, n - 1)
            stmt_id = cur_le32(&cu)
            flags = cur_u8(&cu)
            if cu.bad:
                raise MysqlFrameError("malformed COM_STMT_EXECUTE", ER_MALFORMED_PACKET)
            if flags & 0x0f:
                return self._local(err_packet(ER_NOT_SUPPORTED_YET, "42000",
                                              "server-side cursors are not supported through "
                                              "the gateway"), aseq, None, None)
            if stmt_id == 0xffffffff:
                stmt_id = <unsigned int>self.last_stmt if self.last_stmt >= 0 else stmt_id
            known = self.stmts.get(stmt_id)
            if known is None and self._prepare_in_flight():
                self.waiting = True         # its id comes with the prepare's answer
                return HOLD_
            sql = known[1] if known is not None else b"<unknown prepared statement>"
            if self.refuse_error is not None:
                return self._local(self.refuse_error, aseq, sql, REFUSED_MARK)
            if known is not None and known[0] is not None:
                res = self._approval(known[0], sql)
                if res is HOLD_:
                    return res
                if res is not None:
                    return self._local(res, aseq, sql, b"")
            c = Cmd.__new__(Cmd)
            c.cmd = cmd
            c.state = U_FIRST
            c.binary = True
            c.may_change = True
            c.sql = sql
            c.info = known[2] if known is not None else None
            c.memo = known[3] if known is not None else None
            if c.memo is not None:
                self._prepared_info(c, sql)
            self.stats.executes += 1
            self._send(c)
            return None
        if cmd == COM_STMT_CLOSE:
            cu = cursor(p + 1, n - 1)
            stmt_id = cur_le32(&cu)
            if cu.bad:
                raise MysqlFrameError("malformed COM_STMT_CLOSE", ER_MALFORMED_PACKET)
            self.stmts.pop(stmt_id, None)
            return None                 # no answer
        if cmd == COM_STMT_SEND_LONG_DATA:
            return None                 # no answer
        if cmd == COM_QUIT:
            self.close_reason = "client_terminate"
            return None
        if cmd == COM_INIT_DB:
            schema = p[1:n]
            # a schema switch is a policy decision: judged as the statement that does the same
            sql = b"USE `" + schema.replace(b"`", b"``") + b"`"
            if self.refuse_error is not None:
                return self._local(self.refuse_error, aseq, sql, REFUSED_MARK)
            if self.policy is not None and self._changes_in_flight():
                self.waiting = True
                return HOLD_
            out = self._judge_text(cmd, sql, sql, aseq)
            if out is HOLD_ or out is not None:
                return out
            c = Cmd.__new__(Cmd)
            c.cmd = cmd
            c.state = U_SIMPLE
            c.sql = sql
            c.arg = schema.decode("utf-8", "replace")
            self._send(c)
            return None
        if cmd == COM_PROCESS_KILL:
            cu = cursor(p + 1, n - 1)
            stmt_id = cur_le32(&cu)
            if cu.bad:
                raise MysqlFrameError("malformed COM_PROCESS_KILL", ER_MALFORMED_PACKET)
            sql = b"KILL CONNECTION %d" % stmt_id
            if self._kill_hold(stmt_id):
                return HOLD_
            out = self._judge_text(cmd, sql, sql, aseq)
            if out is HOLD_ or out is not None:
                return out
            target = self._kill_target(stmt_id)
            if target == 0:
                return self._local(err_packet(ER_NO_SUCH_THREAD, "HY000",
                                              f"Unknown thread id: {stmt_id}"), aseq, sql, None)
            c = Cmd.__new__(Cmd)
            c.cmd = cmd
            c.state = U_SIMPLE
            c.sql = sql
            self._send(c)
            return _hdr(5, seq) + b"\x0c" + bytes((
                target & 0xff, (target >> 8) & 0xff, (target >> 16) & 0xff, (target >> 24) & 0xff))
        if cmd == COM_PING or cmd == COM_STMT_RESET or cmd == COM_SET_OPTION or \
                cmd == COM_RESET_CONNECTION or cmd == COM_STATISTICS or cmd == COM_FIELD_LIST or \
                cmd == COM_DEBUG:
            if cmd == COM_DEBUG:
                # writes the server's debug information to its error log: needs SUPER upstream
                return self._local(err_packet(ER_SPECIFIC_ACCESS_DENIED, "42000",
                                              "COM_DEBUG is not allowed through the gateway"),
                                   aseq, None, None)
            c = Cmd.__new__(Cmd)
            c.cmd = cmd
            c.state = U_STRING if cmd == COM_STATISTICS else \
                (U_FIELDS if cmd == COM_FIELD_LIST else U_SIMPLE)
            c.may_change = cmd == COM_RESET_CONNECTION
            self._send(c)
            return None
        if cmd == COM_CHANGE_USER:
            # it would log in upstream as someone else, past the gateway's identity check
            return self._local(err_packet(ER_SPECIFIC_ACCESS_DENIED, "42000",
                                          "COM_CHANGE_USER is not allowed through the gateway: "
                                          "connect again with the other role"), aseq, None, None)
        if cmd == COM_STMT_FETCH:
            return self._local(err_packet(ER_NOT_SUPPORTED_YET, "42000",
                                          "server-side cursors are not supported through the "
                                          "gateway"), aseq, None, None)
        return self._local(err_packet(ER_UNKNOWN_COM_ERROR, "08S01", "Unknown command"),
                           aseq, None, None)

    cdef int _send(self, Cmd c) except -1:
        c.aseq = self.cur_aseq
        c.t = wallclock()
        c.t_mono = self.last_activity
        self.units_sent += 1
        self.results.push(c)
        return 0

    cdef bint _changes_in_flight(self):
        cdef Cmd c
        if not self.results.queue:
            return False
        for c in self.results.queue:
            if c.may_change:
                return True
        return False

    cdef bint _prepare_in_flight(self):
        cdef Cmd c
        for c in self.results.queue:
            if c.cmd == COM_STMT_PREPARE:
                return True
        return False

    cdef bint _kill_hold(self, long long gid) except -1:
        """Before a KILL of `gid` is judged: find its upstream thread (`kill_known`). True while
        the answer is still to come -- the id may be a session on another worker, asked over
        hoopwire.core.cancelpeers (at most its ASK_TIMEOUT, 1 s) -- and the command is held
        (`waiting`) until then. gid < 0: not a KILL. Read again after an approval decision,
        the KILL keeps the target found before it was held (asking again would hold it again
        and lose the decision)."""
        if self.decision != DECISION_NONE and self.kill_known is not None and \
                self.kill_known[0] == gid:
            return False
        self.kill_known = None
        if gid < 0 or gid > 0xffffffff or self.kill_target is None:
            return False
        if self.kill_wait is not None:
            fut = self.kill_wait
            if not fut.done():
                self.waiting = True
                return True
            self.kill_wait = None
            try:
                t = fut.result()
            except Exception:
                _log.exception("kill_target failed")
                t = None
        else:
            try:
                t = self.kill_target(<unsigned int>gid)
            except Exception:
                _log.exception("kill_target failed")
                t = None
            if t is not None and not isinstance(t, int):
                # a future: the command is read again once it has its answer
                self.kill_wait = t
                self.waiting = True
                t.add_done_callback(self._kill_answered)
                return True
        self.kill_known = (gid, 0 if t is None else t)
        return False

    cdef bint _catalog_hold(self) except -1:
        """True while the statement after this session's DDL waits (`waiting`, bounded by the
        masker's _DDL_READ_WAIT) for the catalog read that DDL asked for: planned before it,
        the new table's rows would be masked whole (SessionMasker.pending_read). Called only
        once a DDL has been answered (`catalog_due`) or while a read is awaited: the masker is
        not asked on every statement."""
        if self.catalog_wait is not None:
            if not self.catalog_wait.done():
                self.waiting = True
                return True
            self.catalog_wait = None
            return False
        self.catalog_due = False
        fut = self.results.masker.pending_read()
        if fut is None:
            return False
        self.catalog_wait = fut
        self.waiting = True
        fut.add_done_callback(self._kill_answered)     # the same wake-up: read the command again
        return True

    def _kill_answered(self, fut):
        if not self.closed and self.waiting and self.client.holding:
            self._resume_client()

    cdef unsigned int _kill_target(self, unsigned int gid):
        """The upstream thread id behind the gateway's connection id `gid`, when it is a session
        of the same identity; 0 when none (no server thread has id 0). Found by _kill_hold
        before the statement was judged."""
        known = self.kill_known
        self.kill_known = None
        if known is None or known[0] != gid:
            return 0
        return <unsigned int>known[1]

    cdef object _kill(self, bytes sql, int aseq):
        """A COM_QUERY holding the word KILL (_has_kill): None when it is no KILL statement; the
        statement with the mapped id to send instead; b"" when the gateway answered (unknown
        id, or a KILL it cannot map)."""
        cdef unsigned int target
        is_kill = False
        nstmts = 1
        if self.dialect is not None:
            code = self.dialect.statement_views(sql, False, mode=self.mode)[0]
            nstmts = len(code)
            is_kill = any(bytes(s).lstrip()[:4].lower() == b"kill" for s in code)
        else:
            is_kill = True
        if not is_kill:
            return None
        m = _KILL.match(sql)
        if m is None or nstmts != 1:
            return self._local(err_packet(
                ER_SPECIFIC_ACCESS_DENIED, "42000",
                "through the gateway KILL takes the form KILL [QUERY|CONNECTION] <id>, as a "
                "statement of its own"), aseq, sql, None)
        gid = int(m.group(3))
        target = self._kill_target(gid) if gid <= 0xffffffff else 0
        if target == 0:
            return self._local(err_packet(ER_NO_SUCH_THREAD, "HY000", f"Unknown thread id: {gid}"),
                               aseq, sql, None)
        payload = b"\x03" + b"KILL" + (m.group(1) or b"") + (m.group(2) or b"") + \
            b" %d" % target
        return _hdr(len(payload), 0) + payload

    cdef object _judge_text(self, int cmd, bytes sql, bytes judged, int aseq):
        """Policy on a statement's text: None to go on, HOLD, or b"" when the gateway answered
        it (blocked, denied). A COM_STMT_PREPARE under an approve rule goes on: each execute of
        it waits for a person instead (pending_verdict)."""
        self.judged_none = True
        if self.policy is None:
            return None
        verdict = self.policy.check(judged)
        if verdict is None:
            return None
        self.judged_none = False
        if verdict.action == "approve":
            if cmd == COM_STMT_PREPARE:
                self.pending_verdict = verdict
                return None
            res = self._approval(verdict, sql)
            if res is None or res is HOLD_:
                return res
            return self._local(res, aseq, sql, b"")
        if verdict.action != "block":
            if self.events is not None:
                self.events.statement_matched(self, verdict, sql)
            return None
        if self.events is not None:
            self.events.statement_blocked(self, verdict, sql)
        return self._local(err_packet(
            ER_SPECIFIC_ACCESS_DENIED, "42000",
            f"statement blocked by hoopwire rule \"{verdict.rule}\""
            + (f": {verdict.message}" if verdict.message else "")), aseq, sql, b"")

    cdef bint _memo_ready(self) except -1:
        """Whether the statement memo may answer now. It holds only for the policy and, while
        masking, the connection masking, catalog generation and schema it was filled under:
        when any of them moved it is emptied and starts again under the new ones. Not while
        the catalog is stale or past its TTL: the masker's own path then asks for the read
        (SessionMasker.statement), as it would without the memo."""
        cdef object masker, conn, gen, schema
        cdef bint same = self.memo is not None and self.policy is self.memo_policy
        if self.results.mask_on:
            masker = self.results.masker
            conn = masker.conn
            gen = conn.generation
            schema = masker.schema
            if same and (conn is not self.memo_conn or gen != self.memo_gen or
                         schema != self.memo_schema):
                same = False
            if not same:
                self.memo_conn = conn
                self.memo_gen = gen
                self.memo_schema = schema
                self.memo_cat = conn.catalog
                # the catalog's TTL, as of its last read: a read lands with a new generation
                self.memo_until = self.memo_cat.loaded_at + self.memo_cat.ttl
        if not same:
            self.memo = {}
            self.memo_policy = self.policy
        if self.results.mask_on and (self.memo_cat.stale or monotonic() >= self.memo_until):
            return False
        return True

    cdef int _prepared_info(self, Cmd c, bytes sql) except -1:
        """An execute's statement reading, as of the catalog now. What a statement mentions
        is read against the catalog (a view that reads a masked column is a mention), so a
        reading from before a catalog read is read again: kept from the prepare, a view
        redefined to read ssn was planned by its old reading and ssn went out in clear
        (tests/test_mysql_relay_cost.py)."""
        cdef PlanMemo m = c.memo
        masker = self.results.masker
        conn = masker.conn
        gen = conn.generation
        if m.info_conn is not conn or m.info_gen != gen:
            m.info = masker.statement(sql)
            m.info_conn = conn
            m.info_gen = gen
            m.filled = False
        c.info = m.info
        return 0

    cdef PlanMemo _memo_put(self, bytes key, bytes sql, object info):
        """After a statement judged without a verdict: remember its shape when the policy
        answers None for every text of it (passes_whole_shape: the guardrail engine's shape
        cache, which holds only verdicts true for a whole shape; masking's write verdicts are
        kept by (schema, text_key), which the key is finer than). A no is remembered as
        NO_MEMO: asked once per shape. The memo_key is at least as fine as the engine's shape
        and masking's text_key (sysbench's text point select made ~13 Python calls and three
        lexer passes a statement for WriteGuard.check, write_verdict, the engine's check and
        SessionMasker.statement; bench/README.md)."""
        cdef PlanMemo m
        if not self._memo_ready():
            return None
        policy = self.policy
        passes = None if policy is None else getattr(policy, "passes_whole_shape", None)
        if len(self.memo) >= MEMO_MAX:
            self.memo = {}
        if policy is not None and (passes is None or not passes(sql)):
            self.memo[key] = NO_MEMO
            return None
        m = PlanMemo.__new__(PlanMemo)
        m.info = info
        self.memo[key] = m
        return m

    cdef object _approval(self, object verdict, bytes sql):
        """None to let it through (approved on its replay, or a standing grant), HOLD to wait
        for a decision, or the deny error (bytes)."""
        cdef object err
        if self.decision == DECISION_APPROVED:
            self.decision = DECISION_NONE
            return None
        if self.decision == DECISION_DENIED:
            self.decision = DECISION_NONE
            err = self.deny_error
            self.deny_error = None
            return err if err is not None else err_packet(
                ER_SPECIFIC_ACCESS_DENIED, "42000", "statement not approved")
        if self.events is None or self.events.statement_held(self, verdict, sql) is None:
            return None
        return HOLD_

    cdef object _local(self, bytes err, int aseq, object sql, object mark):
        """Answer a command with the gateway's own ERR (never sent upstream): now when nothing
        is in flight, else after the answers before it. A statement is recorded, its error
        naming the marker (`mark`: b"" a block or denial, REFUSED_MARK a refusal) so the
        recorder tells which. Returns b"" (nothing goes upstream)."""
        cdef Cmd c
        cdef bytes rec = None
        err = set_seq(err, aseq)
        if sql is not None and self.results.record_on:
            if mark is not None:
                self.marker_seq += 1
                # the ERR's number and SQLSTATE, the marker for its message
                rec = err[4:13] + self.marker_prefix + mark + b"%d" % self.marker_seq
            else:
                rec = err[4:]
        if not self.results.queue:
            self.client_tr.write(err)
            if rec is not None:
                c = Cmd.__new__(Cmd)
                c.sql = sql
                c.t = wallclock()
                self.results.cur_error = rec
                self.results._record(c)
            return b""
        c = Cmd.__new__(Cmd)
        c.cmd = -1
        c.local = err
        c.rec_error = rec
        c.sql = sql if rec is not None else None
        c.t = wallclock()
        self.results.queue.append(c)
        return b""

    # -- answers ----------------------------------------------------------------------------

    cdef int _answered(self, object cmd) except -1:
        cdef Cmd c = <Cmd>cmd
        self.units_done += 1
        if c.info is not None and c.info.ddl:
            # a DDL's answer has the catalog read again from now on, for this session's next
            # statement (_catalog_hold) and for the other sessions that read what it made
            self.catalog_due = True
            self.results.masker.answered(c.info)
        self.stats.observe_rtt(monotonic() - c.t_mono)
        if self.waiting:
            self.resume_wanted = True
        return 0

    cdef int _after_upstream(self) except -1:
        """After an upstream read is written: a client command waiting for answers is judged."""
        if self.resume_wanted and not self.closed:
            self.resume_wanted = False
            if self.waiting and self.client.holding:
                self._resume_client()
        return 0

    cdef int _statement_prepared(self, object cmd, unsigned int stmt_id) except -1:
        cdef Cmd c = <Cmd>cmd
        cdef PlanMemo m = None
        if self.results.mask_on and self.results.memo_on:
            # its executes' result plans: the definitions do not change between them, so
            # after the first the plan is found here (MyResults._plan)
            m = PlanMemo.__new__(PlanMemo)
            m.info = c.info
        self.stmts[stmt_id] = (c.verdict, c.sql, c.info, m)
        self.last_stmt = stmt_id
        return 0

    cdef int _simple_ok(self, object cmd) except -1:
        """An OK to a command whose success changes the gateway's picture of the session."""
        cdef Cmd c = <Cmd>cmd
        if c.cmd == COM_INIT_DB:
            self.schema = c.arg
            if self.results.mask_on:
                self.results.masker.schema_changed(c.arg)
        elif c.cmd == COM_RESET_CONNECTION:
            # the server is back at the session's start: prepared statements gone, variables
            # reset (its OK may also report them; the tracked state below wins if so)
            self.charset, self.character_set_client, self.sql_mode, self.mode, schema = self.initial
            self.stmts = {}
            self.last_stmt = -1
        return 0

    cdef object _infile(self, int useq, int cseq):
        """The server asks for a client file (LOAD DATA LOCAL INFILE, or a server that asks
        unprompted). Allowed: relayed, and the client's file packets go up. Refused: the
        server gets an empty file from the gateway, the client an ERR, and the rest of the
        answer is dropped."""
        if self.load_data_local:
            self.infile_client = True
            return None
        self.upstream_tr.write(_hdr(0, useq + 1))
        self.results.skipping = True
        err = err_packet(ER_NOT_ALLOWED_COMMAND, "42000",
                         "LOAD DATA LOCAL INFILE is not allowed through the gateway "
                         "(load_data_local = false)", cseq)
        if self.results.record_on and self.results.cur_error is None:
            self.results.cur_error = err[4:]
        return err

    cdef int _status(self, unsigned int status) except -1:
        """Every OK / EOF status: without session tracking, NO_BACKSLASH_ESCAPES is the one
        part of sql_mode the server reports (SERVER_STATUS_NO_BACKSLASH_ESCAPES, 0x0200)."""
        if not self.session_track:
            self.mode = (self.mode & ~1) | (1 if status & 0x0200 else 0)
        return 0

    cdef int _session_state(self, const unsigned char* p, Py_ssize_t n) except -1:
        """SERVER_SESSION_STATE_CHANGED: what the server says the session now is."""
        cdef Cursor c = cursor(p, n)
        cdef Cursor d
        cdef unsigned int kind
        cdef Py_ssize_t ln, vl
        cdef const unsigned char* data
        cdef const unsigned char* name
        cdef const unsigned char* value
        while c.n > 0:
            kind = cur_u8(&c)
            data = cur_lenenc_str(&c, &ln)
            if c.bad:
                raise MysqlFrameError("malformed session state change", ER_MALFORMED_PACKET)
            if data == NULL:
                continue
            d = cursor(data, ln)
            if kind == SESSION_TRACK_SYSTEM_VARIABLES:
                name = cur_lenenc_str(&d, &vl)
                if d.bad or name == NULL:
                    continue
                key = name[:vl].decode("ascii", "replace").lower()
                value = cur_lenenc_str(&d, &vl)
                if d.bad:
                    continue
                val = value[:vl].decode("utf-8", "replace") if value != NULL else ""
                if key == "sql_mode":
                    self.sql_mode = val
                    self.mode = sql_mode_bits(val)
                elif key == "character_set_client":
                    self.character_set_client = val
                    if (self.policy is not None or self.results.mask_on) and \
                            not _safe_charset(val):
                        # the server now reads the client's bytes in a character set whose
                        # multibyte characters can end in a backslash: nothing more is judged
                        self._close("unsafe_client_charset", err_packet(
                            ER_SPECIFIC_ACCESS_DENIED, "42000",
                            f"character set \"{val}\" is not allowed through the gateway while "
                            "guardrails or masking apply; the session is closed",
                            self.upstream.last_seq + self.results.seq_delta))
            elif kind == SESSION_TRACK_SCHEMA:
                name = cur_lenenc_str(&d, &vl)
                if not d.bad and name != NULL:
                    self.schema = name[:vl].decode("utf-8", "replace")
                    if self.results.mask_on:
                        self.results.masker.schema_changed(self.schema)
        return 0


cdef bytes COM_QUIT_PACKET = b"\x01\x00\x00\x00\x01"


# The pieces of one read go out as one write up to this many bytes. An inspected answer comes
# out in pieces (a masked result: the held column definitions, each row, the EOF), and uvloop's
# writelines builds a write context and a writev for them where write of one bytes object does
# not: those were in every profile of a masked point select (perf, bench/README.md); the join
# copies a few hundred bytes there. A large answer is not copied.
cdef Py_ssize_t JOIN_MAX = 64 * 1024


cdef class RelaySide(MysqlFrameReader):

    cdef int flush(self) except -1:
        cdef list out = self.out
        cdef Py_ssize_t k = len(out), total = 0
        if k == 1:
            self.peer_write(out[0])
        elif k:
            for piece in out:
                total += len(piece)
                if total > JOIN_MAX:
                    self.peer_writelines(out)
                    return 0
            self.peer_write(b"".join(out))
        return 0


cdef class ClientSide(RelaySide):
    """The client's socket: commands towards the upstream."""

    cdef int on_packet_header(self, int seq, bint first, Py_ssize_t size) except -1:
        if self.relay.infile_client:
            # a file's contents: only the empty packet that ends it is read
            return INSPECT if size == 4 else FORWARD
        return INSPECT

    cdef object on_packet(self, int seq, const unsigned char* payload, Py_ssize_t n,
                          const unsigned char* raw, Py_ssize_t raw_n, int npackets):
        cdef Relay r = self.relay
        if r.infile_client:
            if n == 0:
                r.infile_client = False
            return None
        if seq != 0:
            raise MysqlFrameError(f"command packet with sequence id {seq} (expected 0)",
                                  ER_NET_PACKETS_OUT_OF_ORDER)
        if n == 0:
            raise MysqlFrameError("empty command packet", ER_MALFORMED_PACKET)
        return r._command(seq, payload, n, npackets)

    def connection_made(self, transport):
        pass

    def data_received(self, data):
        cdef Relay r = self.relay
        r.last_activity = monotonic()
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data) if PyBytes_CheckExact(data) else len(data)
        r.stats.bytes_from_client += n
        r.bytes_in += n
        if r.closed:
            return
        try:
            self.feed(data)
        except Exception as e:
            r._client_failed(e)
            return
        if not r.closed:
            self.flush()
            if self.holding and self.stalled is not None and \
                    PyBytes_GET_SIZE(self.stalled) > HOLD_READ_LIMIT:
                # held: what the client sends meanwhile waits in `stalled`, up to this bound
                r.client_tr.pause_reading()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef Relay r = self.relay
        r._close(r.close_reason or ("client_closed" if exc is None else "client_error"), None)

    def pause_writing(self):
        self.relay.client_full = True
        self.relay.upstream_tr.pause_reading()

    def resume_writing(self):
        self.relay.client_full = False
        if not self.relay.closed and not self.relay.upstream.holding:
            self.relay.upstream_tr.resume_reading()


cdef class UpstreamSide(RelaySide):
    """The upstream's socket: answers towards the client."""

    cdef int on_packet_header(self, int seq, bint first, Py_ssize_t size) except -1:
        self.last_seq = seq
        return self.relay.results.upstream_header(seq, first, size)

    cdef object on_packet(self, int seq, const unsigned char* payload, Py_ssize_t n,
                          const unsigned char* raw, Py_ssize_t raw_n, int npackets):
        cdef Relay r = self.relay
        cdef object out
        self.last_seq = (seq + npackets - 1) & 0xff
        out = r.results.upstream_packet(seq, payload, n, raw, raw_n, npackets)
        if out is not HOLD_:
            if r.results.ended:
                # the next answer starts where its command's packets left off
                r.results.ended = False
                self.next_seq = (<Cmd>r.results.queue[0]).aseq if r.results.queue else 0
            else:
                self.next_seq = (seq + npackets + r.results.seq_delta) & 0xff
        return out

    def connection_made(self, transport):
        pass

    def data_received(self, data):
        cdef Relay r = self.relay
        r.last_activity = monotonic()
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data) if PyBytes_CheckExact(data) else len(data)
        r.stats.bytes_from_upstream += n
        r.bytes_out += n
        if r.closed:
            return
        try:
            self.feed(data)
        except Exception as e:
            r._upstream_failed(e)
            return
        if not r.closed:
            self.flush()
            if self.holding:
                r.upstream_tr.pause_reading()     # the masker waits: until it resumes us
            r._after_upstream()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef Relay r = self.relay
        if r.close_reason == "client_terminate":
            r._close("client_terminate", None)
        elif r.upstream_said_err:
            r._close("upstream_closed", None)       # it told the client why already
        else:
            r._close("upstream_closed", err_packet(
                2013, "HY000", "Lost connection to the upstream server",
                self.next_seq if r.results.queue else 0))

    def pause_writing(self):
        # the upstream reads slower than the client sends: stop reading the client
        self.relay.upstream_full = True
        self.relay.client_tr.pause_reading()

    def resume_writing(self):
        self.relay.upstream_full = False
        # the client's wait for its next byte starts again now, not at its last read
        self.relay.client.fed_at = monotonic()
        if not self.relay.closed and not self.relay.client.holding:
            self.relay.client_tr.resume_reading()
