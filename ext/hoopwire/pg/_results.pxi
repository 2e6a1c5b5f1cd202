from cpython.ref cimport PyObject, Py_XDECREF, Py_XINCREF
from libc.stdlib cimport free as c_free, realloc as c_realloc
from libc.string cimport memcmp, memcpy, memmove
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

from hoopwire._mask import MaskRowError


cdef inline double wallclock() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef bytes DESCRIBE_PORTAL_HEAD = b"D"
cdef Py_ssize_t QTEXT_KEEP = 1 << 20     # bytes of Query texts a session keeps between bursts
cdef object EMPTY_INFO = None            # set by PgResults.__init__: the masker's NO_INFO
cdef object SUSPECT_INFO = None          # statements we know nothing about: assume they mention
cdef tuple SUSPECT = None                # (SUSPECT_INFO, b""): what an unknown name stands for
cdef bytes EMPTY_NAME = b""
cdef tuple DDL_TAGS = (b"CREATE", b"ALTER", b"DROP", b"COMMENT", b"GRANT", b"REVOKE",
                       b"SECURITY", b"IMPORT", b"REFRESH", b"SELECT INTO",
                       b"DEALLOCATE", b"DISCARD")     # (these two: names the masker forgets)


class ResultTrackingError(Exception):
    """The upstream answered something the request FIFO does not expect: masking cannot tell
    which result the next rows belong to, so the session is closed rather than guessed at."""


cdef inline object _obj(PyObject* p):
    return None if p == NULL else <object>p


cdef inline bint _same_cstr(const Cursor* c, bytes s) noexcept:
    """Whether the NUL-terminated string next in c is exactly s (c does not move)."""
    cdef Py_ssize_t k = PyBytes_GET_SIZE(s)
    return k < c.n and c.p[k] == 0 and memcmp(c.p, PyBytes_AS_STRING(s), k) == 0


cdef inline bytes _cstr(Cursor* c):
    """The NUL-terminated string next in c."""
    cdef Py_ssize_t k
    cdef const unsigned char* s = cur_cstr(c, &k)
    if s == NULL:
        raise PgFrameError("malformed message: unterminated string")
    return EMPTY_NAME if k == 0 else s[:k]


cdef inline tuple _named(dict named, tuple unnamed, bytes name):
    """What `name` stands for: the unnamed entry for b"", else the dict's; SUSPECT if none."""
    cdef object known = unnamed if PyBytes_GET_SIZE(name) == 0 else named.get(name)
    return SUSPECT if known is None else <tuple>known


cdef inline tuple _define(dict named, tuple unnamed, bytes name, tuple known):
    """Define `name` as `known` (None: close it); returns the unnamed entry as it now is."""
    if PyBytes_GET_SIZE(name) == 0:
        return known
    if known is None:
        named.pop(name, None)
    else:
        named[name] = known
    return unnamed


cdef inline bint light_reads(char kind) noexcept:
    """Whether a light PgResults reads this upstream message: what ends a statement or a unit
    (C E I s Z), ParseComplete (so that an error is pinned on the right Parse or Execute),
    CopyInResponse (the Syncs sent during a copy-in get no ReadyForQuery), and ParameterStatus
    for the relay."""
    return kind == c'C' or kind == c'E' or kind == c'Z' or kind == c'I' or kind == c's' or \
        kind == c'1' or kind == c'S' or kind == c'G'


cdef class PgResults:

    def __init__(self, Relay relay, masker, empty_info, suspect_info, StatementLog record=None,
                 Py_ssize_t capture_bytes=0):
        global EMPTY_INFO, SUSPECT_INFO, SUSPECT
        EMPTY_INFO = empty_info
        SUSPECT_INFO = suspect_info
        SUSPECT = (suspect_info, b"")
        self.relay = relay
        self.masker = masker
        self.mask_on = masker is not None
        self.record_on = record is not None
        self.stmt_log = record
        self.cur_tags = TagBuf(NULL, 0, 0, 0)
        self.capture_left = capture_bytes if self.record_on else 0
        self.light = not self.mask_on and self.capture_left == 0
        self.reqs = NULL
        self.rq_head = self.rq_len = self.rq_cap = 0
        self.stmts = {}
        self.portals = {}
        self.last_desc_name = b""
        self.state = S_NONE

    # -- client -> upstream -----------------------------------------------------------------------

    cdef int client_header(self, char kind) except -1:
        """INSPECT for messages whose body we need; Sync only counts."""
        if kind == c'S':
            if self.state != S_COPY_IN:     # (in copy-in the server ignores it: no answer)
                self._push(R_SYNC, None, None, 0.0)
            self.last_client = kind
            return FORWARD
        if kind == c'c' or kind == c'f':
            # CopyDone / CopyFail: where a copy-in ends, for a CopyInResponse still to come
            # (see _copy_in); with nothing outstanding it can end no copy, and is not kept
            if self.state == S_COPY_IN:
                self.state = S_NONE
            elif self.rq_len:
                self._push(R_COPY_END, None, None, 0.0)
            self.last_client = kind
            return FORWARD
        if kind == c'H':
            return FORWARD      # Flush: no answer of its own, and it keeps last_client
        if self.light and kind == c'D':
            # Recording without masking needs to know which statement each Execute runs and
            # where each ends, not what Describe, Bind or Close are answered with: those
            # requests get no queue entry, and their answers (2 3 n t T) are not read.
            self.last_client = kind
            return FORWARD
        if kind == c'P' or kind == c'B' or kind == c'D' or kind == c'E' or \
                kind == c'C' or kind == c'Q' or kind == c'F':
            return INSPECT
        self.last_client = kind
        return FORWARD

    cdef object client_message(self, char kind, const unsigned char* msg, Py_ssize_t size,
                               object replaced):
        cdef Cursor c = cursor(msg + 5, size - 5)
        cdef unsigned int what
        cdef bytes name, other
        cdef bytes closing = None
        cdef object info
        cdef object out = replaced
        cdef bytes sql
        cdef tuple known
        if kind == c'Q':
            if self.light:
                self._push_text(msg + 5, size - 5, wallclock())
            else:
                sql = _cstr(&c)
                info = self.masker.statement(sql) if self.mask_on else None
                self._push(R_QUERY, info, sql, wallclock())
        elif kind == c'F':
            # a call by function OID returns a value no description names: refused while
            # masking applies (the relay replaces it by a failing Query, answered E + Z)
            if out is None and self.mask_on:
                out = self.relay._judge(kind, msg, size)
            self._push(R_QUERY, EMPTY_INFO, b"<fast-path function call>", wallclock())
        elif kind == c'P':
            name = _cstr(&c)
            known = self._stmt(name)
            if not self.mask_on and known is not SUSPECT and _same_cstr(&c, <bytes>known[1]):
                # a driver parsing the same text again (pgbench -M extended, unnamed
                # statements): keep what we have rather than copying and hashing it anew
                sql = <bytes>known[1]
            else:
                sql = _cstr(&c)
                self._set_stmt(name, (self.masker.statement(sql) if self.mask_on else None, sql))
            # a named statement's name rides in `info` (unused for a Parse) to its ParseComplete,
            # where the masker learns what SQL EXECUTE of it returns: one call per named Parse
            self._push(R_PARSE, name if self.mask_on and PyBytes_GET_SIZE(name) else None,
                       sql, 0.0)
        elif kind == c'B':
            name = _cstr(&c)
            other = _cstr(&c)
            self._set_portal(name, self._stmt(other))
            if not self.light:
                self._push(R_BIND, None, None, 0.0)
        elif kind == c'D':
            if size - 5 < 2:
                raise PgFrameError("malformed Describe message")
            what = cur_u8(&c)
            name = _cstr(&c)
            if what == c'S':
                known = self._stmt(name)
                self._push(R_DESC_S, known[0], None, 0.0)
                self.last_desc_portal = False
            else:
                known = self._portal(name)
                self._push(R_DESC_P, known[0], None, 0.0)
                self.last_desc_portal = True
                self.last_desc_name = name
        elif kind == c'E':
            name = _cstr(&c)
            known = self._portal(name)
            if self.mask_on and out is None and not (
                    self.last_client == c'D' and self.last_desc_portal and
                    self.last_desc_name == name):
                # Rows must follow a description we saw: ask for one, answer swallowed. Not
                # for a refused Execute (`out` stands in for it): what we would send is the
                # Execute itself, and no rows come from a refusal.
                self._push(R_DESC_OURS, known[0], None, 0.0)
                self.injected += 1
                out = (DESCRIBE_PORTAL_HEAD + (len(name) + 6).to_bytes(4, "big") + b"P" + name +
                       b"\x00" + msg[:size])
            self._push(R_EXEC, known[0], known[1], wallclock())
        elif kind == c'C':
            if size - 5 >= 2:
                what = cur_u8(&c)
                name = _cstr(&c)
                if what == c'S':
                    self._set_stmt(name, None)
                    if self.mask_on and PyBytes_GET_SIZE(name):
                        closing = name
                else:
                    self._set_portal(name, None)
            if not self.light:
                # a statement's name waits for CloseComplete, as a Parse's for ParseComplete
                self._push(R_CLOSE, closing, None, 0.0)
        self.last_client = kind
        return out

    # -- upstream -> client -----------------------------------------------------------------------

    cdef int upstream_header(self, char kind) except -1:
        if self.light:
            return INSPECT if light_reads(kind) else FORWARD
        if self.capture_left > 0 and (kind == c'D' and self.state == S_ROWS or
                                      kind == c'd' and self.state == S_COPY):
            return INSPECT      # kept for replay, as the client sees it
        if not self.mask_on and (kind == c'D' or kind == c'd' or kind == c'N' or
                                 kind == c'A'):
            return FORWARD      # recording only: rows and async messages are not ours to read
        if kind == c'D':
            return FORWARD if self.state == S_ROWS and not self.plan_work else INSPECT
        if kind == c'd':
            return FORWARD if self.state == S_COPY and self.copy is None else INSPECT
        return INSPECT

    def __dealloc__(self):
        while self.rq_len:
            self._pop()
        c_free(self.reqs)
        c_free(self.cur_tags.p)
        c_free(self.qtext)

    # Prepared statements and portals by name: (StatementInfo, sql), SUSPECT when unknown.
    # The unnamed ones live in fields; the named in dicts (see _named / _define).

    cdef tuple _stmt(self, bytes name):
        return _named(self.stmts, self.stmt0, name)

    cdef tuple _portal(self, bytes name):
        return _named(self.portals, self.portal0, name)

    cdef int _set_stmt(self, bytes name, tuple known) except -1:
        """Define (known None: close) a prepared statement."""
        self.stmt0 = _define(self.stmts, self.stmt0, name, known)
        return 0

    cdef int _set_portal(self, bytes name, tuple known) except -1:
        self.portal0 = _define(self.portals, self.portal0, name, known)
        return 0

    cdef int _push(self, int kind, object info, object sql, double t) except -1:
        cdef Py_ssize_t cap, i, n
        cdef Req* grown
        cdef Req* r
        if self.rq_len == self.rq_cap:
            # grow and unwrap the ring so it starts at 0 again
            cap = self.rq_cap * 2 if self.rq_cap else 16
            grown = <Req*>c_realloc(self.reqs, cap * sizeof(Req))
            if grown == NULL:
                raise MemoryError()
            n = self.rq_cap - self.rq_head         # entries from head to the old end
            if self.rq_head:
                for i in range(self.rq_len - n):     # the wrapped part moves past the old end
                    grown[self.rq_cap + i] = grown[i]
            self.reqs = grown
            self.rq_cap = cap
        r = &self.reqs[(self.rq_head + self.rq_len) & (self.rq_cap - 1)]    # cap: a power of 2
        r.kind = kind
        r.info = NULL if info is None else <PyObject*>info
        r.sql = NULL if sql is None else <PyObject*>sql
        Py_XINCREF(r.info)
        Py_XINCREF(r.sql)
        r.toff = r.tlen = -1
        r.t = t
        self.rq_len += 1
        return 0

    cdef int _push_text(self, const unsigned char* p, Py_ssize_t n, double t) except -1:
        """A Query while light: its text (the NUL-terminated string at p, within n bytes) is
        copied into qtext rather than made a bytes object."""
        cdef Py_ssize_t k, cap, i
        cdef Cursor c = cursor(p, n)
        cdef char* grown
        cdef Req* r
        if cur_cstr(&c, &k) == NULL:
            raise PgFrameError("malformed message: unterminated string")
        if self.qt_n + k > self.qt_cap and self.qt_head > 0:
            # Queries kept in flight without a pause never empty the queue: drop the texts of
            # the answered ones (they are the front of the buffer) before growing it
            memmove(self.qtext, self.qtext + self.qt_head, self.qt_n - self.qt_head)
            for i in range(self.rq_len):
                r = &self.reqs[(self.rq_head + i) & (self.rq_cap - 1)]
                if r.tlen >= 0:
                    r.toff -= self.qt_head
            self.qt_n -= self.qt_head
            self.qt_head = 0
        if self.qt_n + k > self.qt_cap:
            cap = max(self.qt_n + k, 2 * self.qt_cap, 256)
            grown = <char*>c_realloc(self.qtext, cap)
            if grown == NULL:
                raise MemoryError()
            self.qtext = grown
            self.qt_cap = cap
        memcpy(self.qtext + self.qt_n, p, k)
        self._push(R_QUERY, None, None, t)
        r = &self.reqs[(self.rq_head + self.rq_len - 1) & (self.rq_cap - 1)]
        r.toff = self.qt_n
        r.tlen = k
        self.qt_n += k
        self.qt_live += 1
        return 0

    cdef Req* _head(self) except NULL:
        if not self.rq_len:
            raise ResultTrackingError("a response arrived with no request outstanding")
        return &self.reqs[self.rq_head]

    cdef void _pop(self) noexcept:
        cdef Req* r
        if not self.rq_len:
            return
        r = &self.reqs[self.rq_head]
        Py_XDECREF(r.info)
        Py_XDECREF(r.sql)
        r.info = r.sql = NULL
        if r.tlen >= 0:
            # answered in order: the texts still wanted start after this one's
            self.qt_live -= 1
            if self.qt_live:
                self.qt_head = r.toff + r.tlen
            else:
                self.qt_n = self.qt_head = 0
                if self.qt_cap > QTEXT_KEEP:        # a burst has passed: give the memory back
                    c_free(self.qtext)
                    self.qtext = NULL
                    self.qt_cap = 0
        self.rq_head = (self.rq_head + 1) & (self.rq_cap - 1)
        self.rq_len -= 1
        while self.rq_len and self.reqs[self.rq_head].kind == R_COPY_END:
            # a CopyDone/CopyFail no CopyInResponse claimed (its COPY failed first, or the
            # client sent it outside a copy): the server drops it, nothing answers it
            self.rq_head = (self.rq_head + 1) & (self.rq_cap - 1)
            self.rq_len -= 1

    cdef int _expect(self, int kind) except -1:
        cdef Req* head = self._head()
        if head.kind != kind:
            raise ResultTrackingError(f"response out of step (expected request {kind}, "
                                      f"queue head {head.kind})")
        self._pop()
        return 0

    cdef int _error_skip(self) except -1:
        """After an error in the extended protocol the server skips to Sync: so do we. The
        error is recorded against the request it answers (an Execute, or a Parse)."""
        cdef int k
        cdef Req* head
        cdef bint recorded = False
        while self.rq_len:
            head = &self.reqs[self.rq_head]
            k = head.kind
            if k == R_SYNC or k == R_QUERY:
                break
            if self.record_on and not recorded and (k == R_EXEC or k == R_PARSE):
                self._record(head, head.t or wallclock())
                recorded = True
            self._pop()
        return 0

    cdef int _ready(self) except -1:
        cdef int k
        cdef Req* e
        while self.rq_len:
            e = &self.reqs[self.rq_head]
            k = e.kind
            if k == R_QUERY and self.record_on:
                self._record(e, e.t)
            self._pop()
            if k == R_SYNC or k == R_QUERY:
                break
        self.copy_idx = 0
        return 0

    cdef int _record(self, const Req* r, double started) except -1:
        """The statement `r` stands for is done: copied into the session's StatementLog at once
        (which keeps nothing of cur_tags or qtext, so the buffers are reused)."""
        cdef const char* sql = NULL
        cdef Py_ssize_t n = -1
        if r.tlen >= 0:
            sql = self.qtext + r.toff
            n = r.tlen
        elif r.sql != NULL:
            sql = PyBytes_AS_STRING(<object>r.sql)
            n = PyBytes_GET_SIZE(<object>r.sql)
        self.stmt_log.add(started, wallclock(), sql, n, &self.cur_tags, self.cur_error,
                          self.cur_masked, self.cur_rows)
        self.cur_rows = None
        self.cur_tags.n = self.cur_tags.count = 0
        self.cur_error = None
        self.cur_masked = 0
        return 0

    cdef int _end_result(self) except -1:
        if self.state == S_ROWS and self.plan_work and self.plan.counted():
            self.cur_masked += self.masker.result_done(self.plan) or 0
        elif self.state == S_COPY and self.copy is not None:
            self.cur_masked += self.copy.done() or 0
        self.state = S_NONE
        self.plan = None
        self.plan_work = False
        self.copy = None
        return 0

    cdef object _row_description(self, const unsigned char* msg, Py_ssize_t size):
        """T: set up the rows that follow. Nothing changes before the masker answers, so a
        HOLD leaves the state as it was for the replay."""
        cdef Req* head = self._head()
        cdef int hk = head.kind
        if hk == R_DESC_S:
            self._pop()
            return None             # a statement's description: no rows follow from it
        if hk != R_QUERY and hk != R_DESC_P and hk != R_DESC_OURS:
            raise ResultTrackingError(f"RowDescription answering request {hk}")
        if not self.mask_on:
            self._end_result()
            if hk != R_QUERY:
                self._pop()
            self.state = S_ROWS
            return None
        res = self.masker.row_description(msg[:size], _obj(head.info))
        if res is HOLD_:
            return HOLD_
        self._end_result()
        if hk != R_QUERY:
            self._pop()
        if isinstance(res, bytes):
            self.state = S_SKIP
            return res
        self.plan = <DataRowPlan?>res
        self.plan_work = not self.plan.passthrough
        self.state = S_ROWS
        return b"" if hk == R_DESC_OURS else None

    cdef int _keep(self, bytes kept) except -1:
        """A DataRow or CopyData message as the client got it, for replay (record_results).
        A row that does not fit in what is left of the cap ends the keeping: no row is kept
        in part, and none after it (a 64 KiB row went in whole under a 4 KiB cap)."""
        if len(kept) > self.capture_left:
            self.capture_left = 0
            return 0
        self.capture_left -= len(kept)
        if self.cur_rows is None:
            self.cur_rows = []
        self.cur_rows.append(kept)
        return 0

    cdef object upstream_message(self, char kind, const unsigned char* msg, Py_ssize_t size):
        cdef int hk
        cdef Req* head
        if self.light:
            self._light_upstream(kind, msg, size)
            return None
        if kind == c'D':
            if self.state == S_ROWS:
                out = self.plan.rewrite_ptr(msg, size) if self.plan_work else None
                if self.capture_left > 0:
                    self._keep(out if out is not None else msg[:size])
                return out
            if self.state == S_SKIP:
                return b""
            raise ResultTrackingError("a data row arrived outside any result the gateway follows")
        if kind == c'd':
            if self.state == S_SKIP:
                return b""
            out = None              # CopyBoth (not offered) or an unmasked COPY
            if self.state == S_COPY:
                if self.copy is not None:
                    out = self.copy.data(msg[:size])
                if self.capture_left > 0:
                    self._keep(out if out is not None else msg[:size])
            return out
        if kind == c'N':
            return self.masker.fields(msg[:size], self._head_sql()) if self.mask_on else None
        if kind == c'A':
            return self.masker.notification(msg[:size]) if self.mask_on else None
        if kind == c'S':
            return None
        if self.state == S_SKIP:
            if kind == c'Z':
                self.state = S_NONE
                self._ready()
                return None
            if kind == c'E':
                if self.rq_len and self.reqs[self.rq_head].kind != R_QUERY and \
                        self.reqs[self.rq_head].kind != R_SYNC:
                    self._error_skip()
                return b""
            # what the refused result and the statements after it answered: withheld, but
            # still followed so the queue stays in step
        if kind == c'T':
            if self.state == S_SKIP:
                if self._head().kind != R_QUERY:
                    self._pop()
                return b""
            return self._row_description(msg, size)
        if kind == c'C' or kind == c'I' or kind == c's':
            if kind == c'C':
                if self.mask_on:
                    tag = msg[5:size - 1 if size - 1 < 64 else 64]
                    if tag.startswith(DDL_TAGS):
                        self.masker.command_complete(tag, self._head_sql())
                self._tag(msg, size)
            if self.state != S_SKIP:
                self._end_result()
            self._completed()
            return b"" if self.state == S_SKIP else None
        if kind == c'Z':
            self._end_result()
            self._ready()
            return None
        if kind == c'E':
            if self.state != S_SKIP:
                self._end_result()
            out = self.masker.fields(msg[:size], self._head_sql()) if self.mask_on else None
            if out is not None and self.record_on and self.cur_error is None and \
                    self.relay.marker_prefix not in msg[:size]:
                # the audit gets what the client gets, never the value an error quoted; a
                # blocked statement's marker error is the recorder's to read (no data in it)
                self.cur_error = out[5:]
            self._error(msg, size)
            return out
        if kind == c'n':
            hk = self._head().kind
            if hk == R_DESC_S or hk == R_DESC_P or hk == R_DESC_OURS:
                self._pop()
                if hk != R_DESC_S:
                    self._end_result()
                return b"" if hk == R_DESC_OURS or self.state == S_SKIP else None
            raise ResultTrackingError(f"NoData answering request {hk}")
        if kind == c'1':
            head = self._head()
            if head.kind == R_PARSE and head.info != NULL:
                # the server took the name: a Parse it refused (42P05, the name exists) gets
                # no ParseComplete and changes nothing (the gateway follows the server)
                self.masker.parsed(<object>head.info, <object>head.sql)
            self._expect(R_PARSE)
        elif kind == c'2':
            self._expect(R_BIND)
        elif kind == c'3':
            head = self._head()
            if head.kind == R_CLOSE and head.info != NULL:
                self.masker.closed(<object>head.info)
            self._expect(R_CLOSE)
        elif kind == c'H':
            if self.state == S_SKIP:
                return b""
            if not self.mask_on:
                self.state = S_COPY
                self.copy = None
                return None
            return self._copy_out(msg, size)
        elif kind == c'c':
            if self.state != S_SKIP:
                self._end_result()
        elif kind == c'G':
            if self.state != S_SKIP:
                self._copy_in()
        if self.state == S_SKIP:
            return b""
        return None

    cdef object _head_sql(self):
        """The text of the statement the next answer belongs to (bytes), or None: what an
        error may echo because the client wrote it (hoopwire/pg/errortext.py)."""
        if not self.rq_len:
            return None
        return _obj(self.reqs[self.rq_head].sql)

    cdef int _light_upstream(self, char kind, const unsigned char* msg, Py_ssize_t size) except -1:
        """upstream_message while light (nothing is replaced then), also called straight from
        UpstreamSide._follow: only the kinds upstream_header inspects, and no result is ever
        open (rows, descriptions and COPY are not read): each is a few steps. What the
        general path does for the same kinds, less the result state."""
        if kind == c'C' or kind == c'I' or kind == c's':
            if kind == c'C':
                self._tag(msg, size)
                self.state = S_NONE     # (a copy-in, the only state kept here, is done)
            self._completed()
        elif kind == c'Z':
            self.state = S_NONE
            self._ready()
        elif kind == c'1':
            self._expect(R_PARSE)
        elif kind == c'E':
            self.state = S_NONE
            self._error(msg, size)
        elif kind == c'G':
            self._copy_in()
        return 0                    # ParameterStatus: the relay's (nothing else is inspected)

    cdef int _tag(self, const unsigned char* msg, Py_ssize_t size) except -1:
        """A CommandComplete's tag for the statement's record, as the masker would see it (at
        most 59 bytes)."""
        if self.record_on:
            tags_push(&self.cur_tags, <const char*>msg + 5,
                      <int>(59 if size > 64 else (size - 6 if size > 6 else 0)))
        return 0

    cdef int _completed(self) except -1:
        """CommandComplete, EmptyQueryResponse or PortalSuspended: an Execute is done (a
        Query's statements are recorded at its ReadyForQuery)."""
        cdef Req* head = self._head()
        cdef int hk = head.kind
        if hk == R_EXEC:
            if self.record_on:
                self._record(head, head.t)
            self._pop()
        elif hk != R_QUERY:
            raise ResultTrackingError(f"command completion answering request {hk}")
        return 0

    cdef int _error(self, const unsigned char* msg, Py_ssize_t size) except -1:
        """An ErrorResponse: the statement's error; in the extended protocol the server now
        skips to Sync, and so does the queue."""
        cdef int hk
        if self.record_on and self.cur_error is None:
            self.cur_error = msg[5:size]
        if self.rq_len:
            hk = self.reqs[self.rq_head].kind
            if hk != R_QUERY and hk != R_SYNC:
                self._error_skip()
        return 0

    cdef int _copy_in(self) except -1:
        """CopyInResponse: the server now reads CopyData until CopyDone or CopyFail and ignores
        Sync and Flush meanwhile (protocol docs, "COPY Operations"). So the Syncs the client
        sent after this statement and before its CopyDone/CopyFail get no ReadyForQuery: they
        leave the queue (pg8000 sends Execute, Sync, then the data; counted, that one Sync
        left every later answer one request out of step). Syncs still to come before the
        CopyDone are not queued (S_COPY_IN, see client_header)."""
        cdef int hk = self._head().kind
        cdef Py_ssize_t i, j = 1, mask = self.rq_cap - 1
        cdef Req* r
        cdef bint ended = False
        if hk != R_EXEC and hk != R_QUERY:
            raise ResultTrackingError(f"CopyInResponse answering request {hk}")
        self._end_result()
        for i in range(1, self.rq_len):
            r = &self.reqs[(self.rq_head + i) & mask]
            if not ended and (r.kind == R_SYNC or r.kind == R_COPY_END):
                ended = r.kind == R_COPY_END    # (neither holds a reference)
                continue
            if i != j:
                self.reqs[(self.rq_head + j) & mask] = r[0]
            j += 1
        self.rq_len = j
        if not ended:
            self.state = S_COPY_IN
        return 0

    cdef object _copy_out(self, const unsigned char* msg, Py_ssize_t size):
        cdef Req* head = self._head()
        cdef int hk = head.kind
        info = _obj(head.info)
        spec = None
        copies = info.copies if info is not None else ()
        if hk == R_QUERY:
            if self.copy_idx < len(copies):
                spec = copies[self.copy_idx]
        elif hk == R_EXEC:
            if copies:
                spec = copies[0]
        else:
            raise ResultTrackingError(f"CopyOutResponse answering request {hk}")
        res = self.masker.copy_out(msg[:size], spec, info if info is not None else EMPTY_INFO)
        if res is HOLD_:
            return HOLD_
        self._end_result()
        if hk == R_QUERY:
            self.copy_idx += 1
        if isinstance(res, bytes):
            self.state = S_SKIP
            return res
        self.copy = res
        self.state = S_COPY
        return None
