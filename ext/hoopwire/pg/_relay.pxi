

cdef bytes TERMINATE = b"X\x00\x00\x00\x04"
cdef Py_ssize_t HOLD_READ_LIMIT = 1024 * 1024


class _FastpathVerdict:
    action = "block"
    rule = "fastpath-function-call"
    message = "function calls by OID (the fast-path protocol) are not allowed while guardrails apply"
    matched = ("fastpath-function-call",)


FASTPATH_VERDICT = _FastpathVerdict()


class _RefusedVerdict:
    action = "block"
    rule = "audit-unavailable"
    message = "the audit log cannot be written"
    matched = ("audit-unavailable",)


REFUSED_VERDICT = _RefusedVerdict()
# A refused statement's marker is the prefix, this, then its number (a block's has no letter):
# the server's error names the marker, so its record says exactly which it was
# (hoopwire/audit/recorder.py) -- a guess from when the audit was failing took a denied
# approval right after a refusal for a refusal.
REFUSED_MARK = b"r"


class _EncodingVerdict:
    action = "block"
    rule = "client-encoding-in-flight"
    message = ("a backslash after a non-ASCII byte could be read differently by the server "
               "if a statement still in flight changes the client encoding: send it once "
               "the statements before it have been answered")
    matched = ("client-encoding-in-flight",)


ENCODING_VERDICT = _EncodingVerdict()

from hoopwire.pg.encodings import backslash_may_hide, safe_client_encoding
from hoopwire.pg.prepared import PreparedNames, mentions_prepared, sql_executes, sql_prepares
from hoopwire._sqlnorm import normalize_statements


def error_response(str severity, str code, str message, str detail=None, str hint=None):
    """An ErrorResponse (or, with severity NOTICE/WARNING, still 'E' -- use notice_response)."""
    return _fields_message(b"E", severity, code, message, detail, hint)


def notice_response(str severity, str code, str message, str detail=None, str hint=None):
    return _fields_message(b"N", severity, code, message, detail, hint)


cdef bytes _fields_message(bytes kind, str severity, str code, str message, str detail, str hint):
    cdef list parts = [b"S", severity.encode(), b"\x00", b"V", severity.encode(), b"\x00",
                       b"C", code.encode(), b"\x00", b"M", message.encode(), b"\x00"]
    if detail:
        parts += [b"D", detail.encode(), b"\x00"]
    if hint:
        parts += [b"H", hint.encode(), b"\x00"]
    parts.append(b"\x00")
    cdef bytes body = b"".join(parts)
    return kind + (len(body) + 4).to_bytes(4, "big") + body


cdef class Relay:
    """One authenticated session: client transport <-> upstream transport."""

    def __init__(self, ConnStats stats, object policy=None, object events=None,
                 Py_ssize_t max_message_size=64 * 1024 * 1024, bytes marker_prefix=b"hoopwire_blocked"):
        self.stats = stats
        self.policy = policy
        self.events = events
        self.client = ClientSide.__new__(ClientSide)
        self.client.relay = self
        self.client.max_size = max_message_size + 1
        self.upstream = UpstreamSide.__new__(UpstreamSide)
        self.upstream.relay = self
        self.rewrites = []
        self.names = PreparedNames() if getattr(policy, "approves", False) else None
        self.marker_prefix = marker_prefix
        self.tx_status = c'I'
        self.last_activity = monotonic()

    def start(self, client_tr, upstream_tr, bytes client_pending=b"", bytes upstream_pending=b""):
        """Take over both transports (after startup); feed bytes the startup phase read ahead.
        A transport is used only through write, writelines, set_protocol, pause_reading,
        resume_reading, close and is_closing (and calls the protocol's pause_writing /
        resume_writing): tests drive a relay in-process with recording objects in their place
        and feed it through relay.client / relay.upstream .data_received (tests/relaywire.py)."""
        self.client_tr = client_tr
        self.upstream_tr = upstream_tr
        self.client.peer_write = upstream_tr.write
        self.client.peer_writelines = upstream_tr.writelines
        self.upstream.peer_write = client_tr.write
        self.upstream.peer_writelines = client_tr.writelines
        client_tr.set_protocol(self.client)
        upstream_tr.set_protocol(self.upstream)
        if upstream_pending:
            self.upstream.data_received(upstream_pending)
        if client_pending:
            self.client.data_received(client_pending)
        if not self.closed:
            client_tr.resume_reading()
            upstream_tr.resume_reading()

    def enable_results(self, masker, empty_info, suspect_info, record=None,
                       Py_ssize_t capture_bytes=0):
        """Follow every request's answer: to mask results through `masker`
        (hoopwire.pg.masker.SessionMasker, or None) and/or to record every statement into
        `record` (a hoopwire._auditlog.StatementLog). Call before start()."""
        self.results = PgResults(self, masker, empty_info, suspect_info, record, capture_bytes)

    def refuse_statements(self, bytes error=None):
        """While `error` is set, every new statement is answered with it (fail-closed audit)."""
        self.refuse_error = error

    def decide(self, bint approved, bytes error=None, bytes notice=None):
        """Release a statement held for approval: approved, it goes upstream; denied, the
        client gets `error` (an ErrorResponse) in its place and the session goes on."""
        if self.closed or not self.client.holding:
            return
        self.decision = DECISION_APPROVED if approved else DECISION_DENIED
        self.deny_error = error
        try:
            self.client.resume_feed()
        except Exception as e:
            self._client_failed(e)
            return
        self.decision = DECISION_NONE
        if not self.closed:
            self.client.flush()
            if not self.client.holding and not self.upstream_full:
                # (the upstream's buffer full: its resume_writing reads the client again)
                self.client_tr.resume_reading()

    def notify_client(self, bytes message):
        """Send the client an asynchronous message (a NoticeResponse) if no upstream message
        is half written to it; False when it could not be sent now."""
        if self.closed or self.upstream.skip or self.upstream.held is not None or \
                self.upstream.hdr_have or self.upstream.holding:
            return False
        self.client_tr.write(message)
        return True

    @property
    def held(self):
        """A statement is held for approval."""
        return self.client.holding

    def resume_upstream(self):
        """Go on after a HOLD (the masker has what it waited for)."""
        if self.closed:
            return
        try:
            self.upstream.resume_feed()
        except Exception as e:
            self._upstream_failed(e)
            return
        if not self.closed:
            self.upstream.flush()
            if not self.upstream.holding and not self.client_full:
                self.upstream_tr.resume_reading()

    cdef int _client_failed(self, object e) except -1:
        """An error while cutting or judging what the client sent: a protocol error is the
        client's (it hears why); anything else is ours, closes the session and is raised on."""
        if isinstance(e, FrameError):
            self._close("client_protocol_error", error_response("FATAL", e.code or "08P01", str(e)))
            return 0
        self._close("internal_error", error_response("FATAL", "XX000", "internal error in the gateway"))
        raise e

    cdef int _upstream_failed(self, object e) except -1:
        """An error while cutting or masking what the upstream sent: close the session; never
        let the bytes through unjudged."""
        if isinstance(e, FrameError):
            self._close("upstream_protocol_error",
                        error_response("FATAL", "08P01", "protocol violation from the upstream server"))
        elif isinstance(e, (MaskRowError, ResultTrackingError)):
            if self.events is not None:
                self.events.masking_failed(self, str(e))
            self._close("mask_error", error_response(
                "FATAL", "XX000", "the gateway could not mask this result; the session is closed"))
        else:
            self._close("internal_error", error_response("FATAL", "XX000", "internal error in the gateway"))
            raise e
        return 0

    def idle_seconds(self):
        return monotonic() - self.last_activity

    def read_stalled(self):
        """Seconds the client has left a message half sent without a new byte: 0 between
        messages, and while the gateway itself does not read it (the upstream's buffer is
        full, or a message waits for an approval). The listener ends a session past
        read_timeout (hoopwire/core/listener.py)."""
        if self.closed or self.upstream_full:
            return 0.0
        return self.client.stalled_for(monotonic())

    def shutdown(self, str reason, bytes notify_client=None):
        """Close the session from outside (idle timeout, gateway stopping)."""
        self._close(reason, notify_client)

    @property
    def is_closed(self):
        return self.closed

    cdef int _close(self, str reason, object notify_client) except -1:
        if self.closed:
            return 0
        self.closed = True
        self.close_reason = reason
        if self.client_tr is not None and not self.client_tr.is_closing():
            # Injected bytes must not land in the middle of a message the client is reading.
            if notify_client is not None and self.upstream.skip == 0 and self.upstream.held is None \
                    and self.upstream.hdr_have == 0:
                self.client_tr.write(notify_client)
            self.client_tr.close()
        if self.upstream_tr is not None and not self.upstream_tr.is_closing():
            if reason != "client_terminate" and self.client.skip == 0 and self.client.held is None \
                    and self.client.hdr_have == 0:
                self.upstream_tr.write(TERMINATE)
            self.upstream_tr.close()
        if self.events is not None:
            self.events.session_closed(self, reason)
        return 0

    cdef int _release(self, unsigned char side) except -1:
        """One transport reported connection_lost (`side`: 1 client, 2 upstream). Once both
        have, no transport calls into this session again, and what ties its objects in cycles
        goes: the sides and the results tracker back to this relay, the event sink (the
        Session, whose .relay is this), the policy and the masker (whose .relay is this), the
        transports' bound writes. Left to the cyclic collector, a closed session's relay,
        masker, plans and buffers waited for a full pass that can be hundreds of sessions
        away (gc.collect() found 31 objects of one closed masked, recorded session before
        this, none after: tests/test_pg_relay_cost.py). What stays readable after: closed,
        close_reason, bytes_in/out, units, held."""
        self.lost |= side
        if self.lost != 3 or not self.closed:
            return 0
        cdef PgResults res = self.results
        if res is not None:
            masker = res.masker
            if masker is not None and getattr(masker, "relay", None) is self:
                masker.relay = None
            res.masker = None
            res.relay = None
            res.plan = None
            res.copy = None
        self.events = None
        self.policy = None
        self.client.relay = None
        self.upstream.relay = None
        self.client.peer_write = self.client.peer_writelines = None
        self.upstream.peer_write = self.upstream.peer_writelines = None
        return 0

    cdef object _judge(self, char kind, const unsigned char* msg, Py_ssize_t size):
        """Policy on a Query, Parse or FunctionCall: None to forward, or bytes to send instead."""
        cdef Cursor c = cursor(msg + 5, size - 5)
        cdef const unsigned char* s
        cdef Py_ssize_t slen
        cdef bytes name = b""
        cdef bytes sql
        if kind == c'F':
            # A call by function OID: no text for policy to read, so under guardrails it is
            # refused (pg_read_file and friends are only an OID away).
            # While the audit cannot be written it is refused like everything else (53100).
            verdict = REFUSED_VERDICT if self.refuse_error is not None else FASTPATH_VERDICT
            sql = b"<fast-path function call>"
        else:
            if kind == c'P':
                s = cur_cstr(&c, &slen)
                if c.bad:
                    raise PgFrameError("malformed Parse message")
                name = s[:slen]
            s = cur_cstr(&c, &slen)
            if c.bad:
                raise PgFrameError("malformed Query or Parse message")
            sql = s[:slen]
            if self.refuse_error is not None:
                # the audit log cannot be written and the policy is fail-closed
                verdict = REFUSED_VERDICT
            elif self.policy is not None and (
                    self.units_sent - (kind == c'Q') > self.units_done or
                    self.unsynced_executes > 0) and backslash_may_hide(sql):
                # (the in-flight test first: two integer compares, false for a client that
                # waits for each answer, as pgbench -M simple does)
                # Something sent before this is still unanswered and may switch the client
                # encoding to one the session will be ended for, but only once the server
                # says so; the server would read this text in that encoding meanwhile.
                verdict = ENCODING_VERDICT
            else:
                verdict = self.policy.check(sql) if self.policy is not None else None
        cdef object held = None
        if self.names is not None and verdict is not REFUSED_VERDICT and \
                (verdict is None or verdict.action != "block"):
            if kind == c'P':
                if verdict is not None and verdict.action == "approve":
                    # Parsing runs nothing: each Execute of this statement is what waits for a
                    # human (approving once must not approve every later run of it)
                    self.names.parse(self.units_sent + 1, name, (verdict, sql))
                    return None
                self.names.parse(self.units_sent + 1, name, None)
            elif kind == c'Q' and mentions_prepared(sql):
                held = self._sql_prepared(sql, verdict)
                if held is not None:
                    verdict, sql = held
        if verdict is None:
            return None
        err = None
        if verdict is REFUSED_VERDICT:
            err = self.refuse_error
        if verdict.action == "approve":
            res = self._approval(verdict, sql)
            if res is None or res is HOLD_:
                return res
            err = res                   # denied: the deny error stands in for the statement
        elif verdict.action != "block":
            if self.events is not None:
                self.events.statement_matched(self, verdict, sql)
            return None
        # Replace the statement by one the upstream must reject: the upstream then fails the
        # transaction, skips to Sync and reports ReadyForQuery exactly as if the blocked
        # statement had failed, so ordering and transaction state stay the server's own.
        self.marker_seq += 1
        marker = self.marker_prefix + (REFUSED_MARK if verdict is REFUSED_VERDICT else b"") \
            + str(self.marker_seq).encode()
        if kind != c'P':
            # A Query (or a FunctionCall, replaced by a Query): its own ReadyForQuery ends it.
            unit = self.units_sent
            body_out = marker + b"\x00"
            kind = c'Q'
        else:
            unit = self.units_sent + 1      # the next Sync's ReadyForQuery
            body_out = name + b"\x00" + marker + b"\x00\x00\x00"
        if err is None:
            err = error_response("ERROR", "42501",
                                 f"statement blocked by hoopwire rule \"{verdict.rule}\""
                                 + (f": {verdict.message}" if verdict.message else ""))
            if self.events is not None:
                self.events.statement_blocked(self, verdict, sql)
        self.rewrites.append((unit, marker, err))
        return bytes((kind,)) + (len(body_out) + 4).to_bytes(4, "big") + body_out

    cdef object _sql_prepared(self, bytes sql, object verdict):
        """SQL PREPARE and EXECUTE in a Query, judged like Parse and Execute: (verdict, the
        text to approve) where that changes what happens, else None."""
        pieces = normalize_statements(sql, True)
        prepares = sql_prepares(pieces)
        if prepares and verdict is not None and verdict.action == "approve":
            self.names.prepared_in_sql(prepares, (verdict, sql))
            if len(prepares) == len(pieces):
                return (None, sql)      # defining runs nothing: each EXECUTE of it waits
        if verdict is not None and verdict.action == "approve":
            return None                 # the Query waits for a person as it is
        held = self.names.executed_in_sql(sql_executes(pieces))
        if held is None:
            return None
        return held

    cdef object _refuse_execute(self, bytes err=None):
        """An Execute that must not run (statements refused, or its approval denied): in its
        place a Parse of a marker statement (named, so the client's unnamed statement is
        untouched), whose error stands for the Execute's and makes the server skip to Sync."""
        self.marker_seq += 1
        marker = self.marker_prefix + (REFUSED_MARK if err is None else b"") \
            + str(self.marker_seq).encode()
        body = b"hoopwire_refused\x00" + marker + b"\x00\x00\x00"
        self.rewrites.append((self.units_sent + 1, marker,
                              err if err is not None else self.refuse_error))
        return b"P" + (len(body) + 4).to_bytes(4, "big") + body

    cdef object _track_approvals(self, char kind, const unsigned char* msg, Py_ssize_t size):
        """Bind, Execute and Close while approve rules apply (hoopwire/pg/prepared.py): None
        to forward, HOLD, or the bytes to send instead of a denied Execute."""
        cdef Cursor c = cursor(msg + 5, size - 5)
        cdef const unsigned char* s
        cdef Py_ssize_t slen
        cdef bytes name, stmt
        cdef unsigned long long unit = self.units_sent + 1     # the next Sync's
        if kind == c'C':
            if size - 5 >= 2:
                self.names.close(unit, msg[5], msg[6:size - 1])
            return None
        s = cur_cstr(&c, &slen)
        if c.bad:
            raise PgFrameError("malformed extended-protocol message")
        name = s[:slen]
        if kind == c'B':
            s = cur_cstr(&c, &slen)
            if c.bad:
                raise PgFrameError("malformed Bind message")
            stmt = s[:slen]
            self.names.bind(unit, name, stmt)
            return None
        held = self.names.portal(unit, name)       # Execute
        if held is None:
            return None
        res = self._approval(held[0], held[1])
        if res is None or res is HOLD_:
            return res
        return self._refuse_execute(res)

    cdef object _approval(self, object verdict, bytes sql):
        """A message an approve rule covers: None to let it through (approved on its replay,
        or a standing grant), HOLD to wait for a decision, or the deny error (bytes)."""
        cdef object err
        if self.decision == DECISION_APPROVED:
            self.decision = DECISION_NONE
            return None
        if self.decision == DECISION_DENIED:
            self.decision = DECISION_NONE
            err = self.deny_error
            self.deny_error = None
            return err
        if self.events is None or self.events.statement_held(self, verdict, sql) is None:
            return None
        return HOLD_

    cdef int _copy_in(self) except -1:
        """CopyInResponse: the server reads CopyData until CopyDone or CopyFail and ignores
        Sync meanwhile (protocol docs, "COPY Operations"), so the Syncs the client sent after
        this COPY and before its CopyDone get no ReadyForQuery. pg8000 sends Execute, Sync and
        only then the data: counted, that Sync kept units_sent one ahead for the rest of the
        session (the in-flight test always true: every statement with a backslash after a
        non-ASCII byte refused; prepared names a unit late). Those already sent are counted
        done now; those still to come are not counted (in_copy_in, see ClientSide.on_header).
        The same rule as PgResults._copy_in, kept here because no results object follows a
        session with masking and audit off."""
        cdef unsigned long long n = self.units_done + 1     # the unit this COPY is in
        cdef unsigned long long last = self.units_sent      # last unit sent before its end
        cdef unsigned long long u, e, dropped = 0
        cdef bint ended = False
        while self.copy_ends:
            e = self.copy_ends.pop(0)
            # e + 1 is the unit the end was sent in: an earlier one, or one sent before this
            # unit's Query, belongs to a COPY that failed (the server dropped it)
            if e + 1 > n or e + 1 == n and not (self.query_units >> (n & 63)) & 1:
                last = e
                ended = True
                break
        if last - n >= 63:
            # more units in flight than query_units remembers (64 bits): which of them were
            # Syncs is no longer known (a Sync at n + 64 cleared the COPY's own Query bit, and
            # it was counted dropped: units_done ran one ahead for the session and the
            # in-flight test came out false, tests/test_redteam_session5.py). None is counted
            # dropped and the copy is taken as ended: units_sent can then only run ahead of
            # the answers, which keeps that test true (a guarded statement refused, never
            # misjudged)
            self.in_copy_in = False
            return 0
        u = n
        while u <= last:
            if not (self.query_units >> (u & 63)) & 1:     # (a Query's own Z still comes)
                dropped += 1
            u += 1
        self.units_done += dropped
        while dropped and self.sent_head < self.sent_tail:
            self.sent_head += 1         # (their send times: no answer will time them)
            dropped -= 1
        self.in_copy_in = not ended
        return 0

    cdef int _copy_end_sent(self) except -1:
        """The client's CopyDone/CopyFail: ends the copy-in the server is in, or, with
        something unanswered, marks where one not yet reported ends (see _copy_in)."""
        if self.in_copy_in:
            self.in_copy_in = False
        elif self.units_sent > self.units_done or self.unsynced_executes:
            if self.copy_ends is None:
                self.copy_ends = []
            self.copy_ends.append(self.units_sent)
        return 0

    cdef object _rewrite_error(self, const unsigned char* msg, Py_ssize_t size):
        """An upstream ErrorResponse while a blocked statement is pending: ours, or genuine?"""
        cdef bytes raw = msg[:size]
        for i, (unit, marker, err) in enumerate(self.rewrites):
            if marker in raw:
                del self.rewrites[i]
                return err
        return None


cdef inline bint plain_reads(char kind) noexcept:
    """Whether the relay reads this upstream message when nothing follows results: Ready-
    ForQuery (six bytes; its status ends a unit), ParameterStatus (rare; the client encoding
    is remembered) and CopyInResponse (rare; the Syncs sent during a copy-in are no units)."""
    return kind == c'Z' or kind == c'S' or kind == c'G'


cdef class RelaySide(PgFrameReader):

    cdef int flush(self) except -1:
        """Write the pieces the last read produced: one call, one system call where it can.
        Then let them go: they pin the whole received chunk (memoryviews into it) and the
        rewritten rows, and once the session ends its objects wait for the cyclic collector
        (about 175 KiB per masked 50,000-row read kept until then: masking_e2e.py --soak)."""
        cdef list out = self.out
        if len(out) == 1:
            self.peer_write(out[0])
        elif out:
            self.peer_writelines(out)
        if out:
            self.out = []
        return 0


cdef class ClientSide(RelaySide):
    """The client's socket: messages towards the upstream."""

    cdef int on_header(self, int kind, Py_ssize_t size) except -1:
        cdef Relay r = self.relay
        cdef int disp = FORWARD
        if r.results is not None:
            disp = r.results.client_header(kind)
        if kind == c'Q' or kind == c'S' or kind == c'F':
            if kind == c'S' and r.in_copy_in:
                return disp         # the server ignores it: no unit (see Relay._copy_in)
            # each of these ends in exactly one ReadyForQuery
            r.units_sent += 1
            if kind == c'S':
                r.unsynced_executes = 0
                r.query_units &= ~(1ULL << (r.units_sent & 63))
            else:
                r.query_units |= 1ULL << (r.units_sent & 63)
            if r.sent_tail - r.sent_head < RTT_RING:
                r.sent_at[r.sent_tail % RTT_RING] = r.last_activity
                r.sent_tail += 1
            if kind == c'Q':
                r.stats.queries += 1
            if kind != c'S' and r.policy is not None:
                return INSPECT
        elif kind == c'E':
            r.unsynced_executes += 1
            r.stats.executes += 1
            if r.names is not None:
                return INSPECT
        elif kind == c'B' or kind == c'C':
            if r.names is not None:
                return INSPECT
        elif kind == c'P':
            if r.policy is not None:
                return INSPECT
        elif kind == c'c' or kind == c'f':
            r._copy_end_sent()
        elif kind == c'X':
            r.close_reason = "client_terminate"
        return disp

    cdef object on_message(self, int kind, const unsigned char* msg, Py_ssize_t size):
        cdef Relay r = self.relay
        cdef object out = None
        if (r.policy is not None or r.refuse_error is not None) and \
                (kind == c'Q' or kind == c'P' or kind == c'F'):
            out = r._judge(kind, msg, size)
            if out is HOLD_:
                return out          # judged again, whole, when the approval is decided
        elif kind == c'E' and r.refuse_error is not None:
            out = r._refuse_execute()
        elif r.names is not None and (kind == c'B' or kind == c'E' or kind == c'C'):
            out = r._track_approvals(kind, msg, size)
            if out is HOLD_:
                return out
        if r.results is not None:
            out = r.results.client_message(kind, msg, size, out)
        return out

    # asyncio protocol

    def connection_made(self, transport):
        pass

    def data_received(self, data):
        cdef Relay r = self.relay
        if r is None:
            return          # released (Relay._release): the session is over
        r.last_activity = monotonic()
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data) if PyBytes_CheckExact(data) else len(data)
        r.stats.bytes_from_client += n
        r.bytes_in += n
        try:
            self.feed(data)
        except Exception as e:
            r._client_failed(e)
            return
        if not r.closed:
            self.flush()
            if self.holding and self.stalled is not None and \
                    PyBytes_GET_SIZE(self.stalled) > HOLD_READ_LIMIT:
                # held for approval: what the client pipelines meanwhile waits in `stalled`;
                # reading goes on (a client that leaves is noticed) up to this bound
                r.client_tr.pause_reading()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef Relay r = self.relay
        if r is None:
            return
        r._close(r.close_reason or ("client_closed" if exc is None else "client_error"), None)
        r._release(1)

    def pause_writing(self):
        if self.relay is None:
            return
        # The client reads slower than the upstream produces: stop reading the upstream.
        self.relay.client_full = True
        self.relay.upstream_tr.pause_reading()

    def resume_writing(self):
        if self.relay is None:
            return
        self.relay.client_full = False
        if not self.relay.closed and not self.relay.upstream.holding:
            self.relay.upstream_tr.resume_reading()


cdef class UpstreamSide(RelaySide):
    """The upstream's socket: messages towards the client."""

    cdef int on_header(self, int kind, Py_ssize_t size) except -1:
        self.relay.last_upstream_kind = kind
        if self.relay.names is not None and (kind == c'1' or kind == c'2' or kind == c'3'):
            return INSPECT
        if self.relay.results is not None:
            return self.relay.results.upstream_header(kind)
        if plain_reads(kind) or kind == c'E' and self.relay.rewrites:
            return INSPECT
        return FORWARD

    cdef object on_message(self, int kind, const unsigned char* msg, Py_ssize_t size):
        cdef Relay r = self.relay
        cdef unsigned long long done
        cdef object out = None
        if r.results is not None:
            out = r.results.upstream_message(kind, msg, size)
            if out is HOLD_:
                return out
        if r.names is not None and (kind == c'1' or kind == c'2' or kind == c'3'):
            self._answered(kind)
            return out
        if kind == c'G':
            r._copy_in()
            return out
        if r.in_copy_in and (kind == c'C' or kind == c'E'):
            r.in_copy_in = False        # the copy ended (an error: the server left copy-in)
        if kind == c'Z':
            self._ready_for_query(msg, size)
            if r.rewrites:
                done = r.units_done
                r.rewrites = [w for w in r.rewrites if w[0] > done]
            return out
        if kind == c'E':
            if r.rewrites:
                err = r._rewrite_error(msg, size)
                if err is not None:
                    return err if out is None or len(out) else out
            return out
        if kind == c'S':
            self._parameter_status(msg, size)
        return out

    cdef int _ready_for_query(self, const unsigned char* msg, Py_ssize_t size) except -1:
        """ReadyForQuery: a unit (Query or Sync) is done; its round trip is timed."""
        cdef Relay r = self.relay
        if size >= 6:
            r.tx_status = msg[5]
        r.in_copy_in = False
        if r.units_done < r.units_sent:     # (a Sync in a copy-in the server left by an error)
            r.units_done += 1
        if r.copy_ends:
            r.copy_ends = [e for e in r.copy_ends if e >= r.units_done]    # unit e + 1 not done
        if r.sent_head < r.sent_tail:
            r.stats.observe_rtt(monotonic() - r.sent_at[r.sent_head % RTT_RING])
            r.sent_head += 1
        if r.names is not None:
            r.names.ready(r.units_done, r.tx_status == c'I')
        return 0

    cdef int _answered(self, char kind) except -1:
        """ParseComplete, BindComplete, CloseComplete: the server took a definition."""
        if kind == c'1':
            self.relay.names.parse_complete()
        elif kind == c'2':
            self.relay.names.bind_complete()
        else:
            self.relay.names.close_complete()
        return 0

    cdef int _parameter_status(self, const unsigned char* msg, Py_ssize_t size) except -1:
        name, _, rest = msg[5:size].partition(b"\x00")
        cdef Relay r = self.relay
        if name == b"client_encoding":
            r.client_encoding = rest.partition(b"\x00")[0].decode("ascii", "replace")
            if r.policy is not None and not safe_client_encoding(r.client_encoding):
                # the server now reads what the client sends in an encoding the guardrails
                # cannot read as it does (hoopwire/pg/encodings.py): nothing more is judged
                r._close("unsafe_client_encoding", error_response(
                    "FATAL", "42501", f"client encoding \"{r.client_encoding}\" is not allowed "
                    "through the gateway while guardrails apply; the session is closed"))
        return 0

    cdef int _follow(self, bytes data) except -1:
        """No masking and no error to rewrite (see data_received): walk a read that is already
        on its way to the client for what the relay and the statement records need (what
        ends each statement and unit, ParameterStatus). One loop over the read's whole
        messages, without the framer's per-message calls: it sees every row of every result.
        A read that starts inside a message, and the tail of one that ends inside a message
        this walk must read whole, go through the framer (feed), which keeps what spans reads."""
        cdef Relay r = self.relay
        cdef PgResults res = r.results
        cdef const unsigned char* p
        cdef Py_ssize_t n, pos = 0, avail, size
        cdef char kind
        if self.skip or self.held is not None or self.hdr_have or \
                (res is not None and not res.light):
            return self.feed(data)          # (not light: rows are kept for replay)
        p = <const unsigned char*>PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
        try:
            while True:
                avail = n - pos
                if avail < 5:
                    break
                size = pg_message_size(p + pos)
                if size > self.max_size:
                    self.too_big(size)
                kind = <char>p[pos]
                r.last_upstream_kind = kind
                # what on_header inspects in this state (E only while rewriting: not here)
                if r.names is not None and (kind == c'1' or kind == c'2' or kind == c'3'):
                    self._answered(kind)        # (5 bytes: whole; the results follow it too)
                if r.in_copy_in and (kind == c'C' or kind == c'E'):
                    r.in_copy_in = False        # the copy ended (an error: it left copy-in)
                if light_reads(kind) if res is not None else plain_reads(kind):
                    if avail < size:
                        break
                    if res is not None:
                        res._light_upstream(kind, p + pos, size)
                    if kind == c'Z':
                        self._ready_for_query(p + pos, size)
                    elif kind == c'S':
                        self._parameter_status(p + pos, size)
                    elif kind == c'G':
                        r._copy_in()
                elif avail < size:
                    self.skip = size - avail        # the rest of a row (say) in later reads
                    return 0
                pos += size
        except BaseException:
            self.failed = True
            raise
        if pos < n:
            self.feed(data[pos:] if pos else data)
        return 0

    def connection_made(self, transport):
        pass

    def data_received(self, data):
        cdef Relay r = self.relay
        if r is None:
            return          # released (Relay._release): the session is over
        r.last_activity = monotonic()
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data) if PyBytes_CheckExact(data) else len(data)
        r.stats.bytes_from_upstream += n
        r.bytes_out += n
        cdef DataRowPlan pre = None
        cdef Py_ssize_t start = 0
        if (r.results is None or not r.results.mask_on) and not r.rewrites and \
                not self.holding and not self.failed and not r.closed:
            # No masking, no error to rewrite: nothing in this direction changes, so the bytes
            # go to the client before the gateway reads them, and following them (units done,
            # command tags, errors, statement records) is off the client's critical path.
            # A malformed server message then reaches the client before the session closes.
            self.peer_write(data)
            try:
                self._follow(data if PyBytes_CheckExact(data) else bytes(data))
            except Exception as e:
                r._upstream_failed(e)
                return
            self.out = []
            return
        if r.results is not None and r.results.plan_work and r.results.state == S_ROWS and \
                PyBytes_CheckExact(data) and not self.holding and self.hdr_have == 0:
            # a big result being masked: look for detector hits in every whole row of this
            # read with one scan (see DataRowPlan.prescan)
            if self.held is not None:
                start = self.held_need - PyByteArray_GET_SIZE(self.held)
            else:
                start = self.skip
            if start < n:
                pre = r.results.plan
                try:
                    pre.prescan(data, start)
                except Exception:
                    pre = None
        try:
            self.feed(data)
        except Exception as e:
            if pre is not None:
                pre.prescan_clear()
            r._upstream_failed(e)
            return
        if pre is not None:
            pre.prescan_clear()     # its pointers are into `data`, which goes now
        if not r.closed:
            self.flush()
            if self.holding:
                # the masker waits for the catalog: nothing more until it resumes us
                r.upstream_tr.pause_reading()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef Relay r = self.relay
        if r is None:
            return
        if r.close_reason == "client_terminate":
            r._close("client_terminate", None)      # the server closing after our Terminate
        elif r.last_upstream_kind == c'E':
            r._close("upstream_closed", None)       # it told the client why (FATAL) already
        else:
            r._close("upstream_closed", error_response(
                "FATAL", "08006", "the upstream server closed the connection"))
        r._release(2)

    def pause_writing(self):
        if self.relay is None:
            return
        # The upstream reads slower than the client sends (a backend busy, in a lock wait, or
        # skipping a failed pipeline): stop reading the client. What the gateway holds for it
        # is then the transport's high-water mark plus one read, not whatever the client sends
        # (tests/test_pg_backpressure.py: 200 MB of COPY into a stalled backend).
        self.relay.upstream_full = True
        self.relay.client_tr.pause_reading()

    def resume_writing(self):
        if self.relay is None:
            return
        self.relay.upstream_full = False
        # the client's wait for its next byte starts again now, not at its last read
        self.relay.client.fed_at = monotonic()
        if not self.relay.closed and not self.relay.client.holding:
            self.relay.client_tr.resume_reading()
