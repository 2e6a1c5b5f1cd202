# The command phase as a state machine: which command each upstream packet answers, and where
# in that answer it is. MySQL answers commands strictly in order and one at a time, so a FIFO
# of the commands in flight (Cmd) and one state for the head's answer say what every packet
# is. Nothing here needs a socket: tests drive it through a Relay over recording transports.
#
#   COM_QUERY / COM_STMT_EXECUTE   OK | ERR | LOCAL INFILE request (0xfb, COM_QUERY only)
#                                  | column count, definitions, [EOF], rows, EOF-or-OK;
#                                  again while the status says SERVER_MORE_RESULTS_EXISTS
#   COM_STMT_PREPARE               ERR | OK(stmt id, columns, params), params [EOF], cols [EOF]
#   COM_FIELD_LIST                 ERR | definitions, EOF
#   COM_STATISTICS                 one string packet
#   the rest that answer           OK | EOF | ERR
#
# A 0xfe packet ends rows and definitions only when shorter than 0xffffff bytes: a text row
# can start with 0xfe (an 8-byte length) but is then at least that long.

cdef Py_ssize_t TYPES_MIN = 64


cdef inline bint is_terminator(const unsigned char* p, Py_ssize_t n) noexcept:
    return n > 0 and p[0] == 0xfe and n < MAX_PAYLOAD


cdef str _lenenc_text(Cursor* c):
    cdef Py_ssize_t ln
    cdef const unsigned char* s = cur_lenenc_str(c, &ln)
    if s == NULL:
        return None if not c.bad else ""
    return s[:ln].decode("utf-8", "replace")


cdef tuple decode_coldef(const unsigned char* p, Py_ssize_t n):
    """A column definition (Protocol::ColumnDefinition41) as the masker's tuple: (schema, table,
    org_table, name, org_name, charset, length, type, flags, decimals)."""
    cdef Cursor c = cursor(p, n)
    cdef Py_ssize_t ln
    cdef bint is_null
    cur_lenenc_str(&c, &ln)                 # catalog: always "def"
    schema = _lenenc_text(&c)
    table = _lenenc_text(&c)
    org_table = _lenenc_text(&c)
    name = _lenenc_text(&c)
    org_name = _lenenc_text(&c)
    cur_lenenc(&c, &is_null)                # length of the fixed fields (0x0c)
    charset = cur_le16(&c)
    length = cur_le32(&c)
    ctype = cur_u8(&c)
    flags = cur_le16(&c)
    decimals = cur_u8(&c)
    if c.bad:
        raise MysqlFrameError("malformed column definition from the upstream", ER_MALFORMED_PACKET)
    return (schema or "", table or "", org_table or "", name or "", org_name or "", charset,
            length, ctype, flags, decimals)


cdef int coldef_fixed(const unsigned char* p, Py_ssize_t n, unsigned char* ctype,
                      unsigned int* flags) except -1:
    """A column definition's type and flags, read past its six names without making them
    strings; raises on a malformed one as decode_coldef does."""
    cdef Cursor c = cursor(p, n)
    cdef Py_ssize_t ln
    cdef bint is_null
    cdef int k
    for k in range(6):                      # catalog, schema, table, org_table, name, org_name
        cur_lenenc_str(&c, &ln)
    cur_lenenc(&c, &is_null)
    cur_le16(&c)
    cur_le32(&c)
    ctype[0] = cur_u8(&c)
    flags[0] = cur_le16(&c)
    cur_u8(&c)
    if c.bad:
        raise MysqlFrameError("malformed column definition from the upstream", ER_MALFORMED_PACKET)
    return 0


cdef int coldef_append(bytearray buf, const unsigned char* p, Py_ssize_t n) except -1:
    """buf += n as 3 bytes, little-endian, then the n bytes at p. The length keeps the joined
    definitions unambiguous: a definition's parse ignores trailing bytes, so without it two
    different splits of the same bytes could decode to different columns."""
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(buf)
    cdef unsigned char* d
    PyByteArray_Resize(buf, at + 3 + n)
    d = <unsigned char*>PyByteArray_AS_STRING(buf) + at
    d[0] = n & 0xff
    d[1] = (n >> 8) & 0xff
    d[2] = (n >> 16) & 0xff
    memcpy(d + 3, p, n)
    return 0


cdef class ColumnDefs:
    """A result's column definitions as the upstream sent them (`raw`: each after its 3-byte
    length), decoded to decode_coldef's tuples only when read as a sequence. The masker keys
    its result plans by `raw`: equal bytes decode to equal tuples, so it tells results apart
    at least as finely as the tuples did, without making 10 objects a column per result (perf:
    libpython was 19% of a guarded point select's samples, mostly those tuples and their
    hash)."""
    cdef readonly bytes raw
    cdef list _cols

    def __init__(self, bytes raw):
        self.raw = raw

    cdef list _decoded(self):
        cdef const unsigned char* p
        cdef Py_ssize_t n, at, ln
        cdef list cols
        if self._cols is None:
            cols = []
            p = <const unsigned char*>PyBytes_AS_STRING(self.raw)
            n = PyBytes_GET_SIZE(self.raw)
            at = 0
            while at < n:
                if n - at < 3:
                    raise MysqlFrameError("malformed column definitions", ER_MALFORMED_PACKET)
                ln = p[at] | (p[at + 1] << 8) | (p[at + 2] << 16)
                if n - at - 3 < ln:
                    raise MysqlFrameError("malformed column definitions", ER_MALFORMED_PACKET)
                cols.append(decode_coldef(p + at + 3, ln))
                at += 3 + ln
            self._cols = cols
        return self._cols

    def __len__(self):
        return len(self._decoded())

    def __getitem__(self, i):
        return self._decoded()[i]

    def __iter__(self):
        return iter(self._decoded())


def column_definition(payload):
    """Tests: decode_coldef over a payload."""
    cdef bytes b = bytes(payload)
    return decode_coldef(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef class PlanMemo:
    """One statement's last result plan (see _wire.pxd); made by the relay."""

    def __repr__(self):
        return f"PlanMemo(filled={self.filled}, index={self.index}, binary={self.binary})"


cdef class Cmd:
    def __cinit__(self):
        self.state = U_SIMPLE

    def __repr__(self):
        return f"Cmd(0x{self.cmd:02x}, state={self.state}, local={self.local is not None})"


cdef class MyResults:

    def __cinit__(self):
        self.queue = []
        self.state = U_IDLE
        self.cur_tags = TagBuf(NULL, 0, 0, 0)
        self.types = NULL
        self.unsig = NULL

    def __init__(self, Relay relay, masker=None, StatementLog record=None,
                 Py_ssize_t capture_bytes=0):
        self.relay = relay
        self.masker = masker
        self.mask_on = masker is not None
        self.memo_on = masker is None or getattr(masker, "plan_memo", False) is True
        self.stmt_log = record
        self.record_on = record is not None
        self.capture_left = capture_bytes if self.record_on else 0
        self.refused_type = None
        if masker is not None:
            try:
                from hoopwire.mysql.masker import MaskRefused
                self.refused_type = MaskRefused
            except ImportError:
                pass

    def __dealloc__(self):
        free(self.cur_tags.p)
        free(self.types)
        free(self.unsig)

    @property
    def in_flight(self):
        return len(self.queue)

    @property
    def seq_shift(self):
        return self.seq_delta

    cdef int push(self, object cmd) except -1:
        cdef Cmd c = <Cmd>cmd
        self.queue.append(c)
        if len(self.queue) == 1:
            self.relay.upstream.next_seq = c.aseq
            self.state = c.state
            self.result_index = 0
            self.seq_delta = 0
            self.skipping = False
        return 0

    cdef object flush_local(self):
        """Answers of the gateway's own that are now at the head: their bytes, in order."""
        cdef Cmd c
        cdef list out = None
        while self.queue and (<Cmd>self.queue[0]).local is not None:
            c = <Cmd>self.queue.pop(0)
            if out is None:
                out = []
            out.append(c.local)
            if c.sql is not None and self.record_on:
                self.cur_error = c.rec_error
                self._record(c)
        if self.queue:
            self.state = (<Cmd>self.queue[0]).state
        else:
            self.state = U_IDLE
        self.result_index = 0
        self.seq_delta = 0
        self.skipping = False
        return None if out is None else b"".join(out)

    cdef int upstream_header(self, int seq, bint first, Py_ssize_t size) except -1:
        if self.skipping or self.seq_delta:
            return INSPECT
        if self.state == U_ROWS and size == MAX_PAYLOAD + 4 and not self.plan_work and \
                self.capture_left <= 0:
            # a row of 16 MB or more (a terminator is shorter): it goes as it is
            self.cur_rows_n += 1
            return FORWARD
        return INSPECT

    cdef object _reseq(self, const unsigned char* raw, Py_ssize_t raw_n):
        if self.seq_delta:
            return reseq(raw, raw_n, self.seq_delta)
        return None

    cdef object upstream_packet(self, int seq, const unsigned char* p, Py_ssize_t n,
                                const unsigned char* raw, Py_ssize_t raw_n, int npackets):
        cdef Cmd head
        cdef int st = self.state
        cdef object out = None
        cdef object tail = None
        cdef bint more = False
        cdef Cursor c
        cdef bint is_null
        cdef unsigned long long count
        cdef unsigned char ctype
        cdef unsigned int cflags
        if not self.queue:
            if n > 0 and p[0] == 0xff:
                # the server's last word (a KILL, its shutdown, wait_timeout): passed on as it
                # is; it closes the connection next
                self.relay.upstream_said_err = True
                return None
            raise MysqlFrameError("the upstream sent a packet with no command in flight",
                                  ER_NET_PACKETS_OUT_OF_ORDER)
        head = <Cmd>self.queue[0]
        cdef bint skipping = self.skipping       # (the answer's end resets them)
        cdef int delta = self.seq_delta
        if n == 0 and st != U_STRING:       # (no row, OK, ERR or definition is empty)
            raise MysqlFrameError("empty packet from the upstream", ER_MALFORMED_PACKET)
        if st == U_FIRST or st == U_INFILE:
            if p[0] == 0x00:
                self._ok(head, p, n, False, &more)
                out = self._ok_out(seq)
                if head.cmd == COM_QUERY or head.cmd == COM_STMT_EXECUTE:
                    self._tag_ok(p, n)
                tail = self._end_answer(head, more)
            elif p[0] == 0xff:
                out = self._err(head, seq, p, n)
                tail = self._end_answer(head, False)
            elif p[0] == 0xfb and st == U_FIRST and head.cmd == COM_QUERY:
                out = self.relay._infile(seq, seq + self.seq_delta)
                self.state = U_INFILE
            else:
                c = cursor(p, n)
                count = cur_lenenc(&c, &is_null)
                if c.bad or is_null or c.n != 0 or count == 0 or count > 4096:
                    raise MysqlFrameError("malformed column count from the upstream",
                                          ER_MALFORMED_PACKET)
                self.ncols = <Py_ssize_t>count
                self.in_result = True
                self.coldefs_left = self.ncols
                self.binary = head.binary
                self.cur_rows_n = 0
                if self.mask_on:
                    if self.coldef_raw is None:
                        self.coldef_raw = bytearray()
                    PyByteArray_Resize(self.coldef_raw, 0)
                    self.coldef_n = 0
                self.held_head = [] if self.mask_on else None
                if self.mask_on:
                    self.held_head.append(self._reseq(raw, raw_n) or raw[:raw_n])
                    out = b""
                self.state = U_COLDEF
                if self.binary:
                    self._types(self.ncols)
        elif st == U_COLDEF:
            if self.mask_on or self.binary:
                coldef_fixed(p, n, &ctype, &cflags)
                if self.binary:
                    self.types[self.ncols - self.coldefs_left] = ctype
                    self.unsig[self.ncols - self.coldefs_left] = 1 if cflags & 0x20 else 0
                if self.mask_on:
                    if self.coldef_n < self.ncols:
                        coldef_append(self.coldef_raw, p, n)
                        self.coldef_n += 1
            if self.coldefs_left == 1 and self.relay.deprecate_eof:
                out = self._plan(head, raw, raw_n)
                if out is HOLD_:
                    return out
                self.coldefs_left = 0
                self.state = U_ROWS
            else:
                self.coldefs_left -= 1
                if self.coldefs_left == 0:
                    self.state = U_COLEOF
                if self.mask_on:
                    self.held_head.append(self._reseq(raw, raw_n) or raw[:raw_n])
                    out = b""
        elif st == U_COLEOF:
            if not is_terminator(p, n):
                raise MysqlFrameError("expected EOF after the column definitions",
                                      ER_MALFORMED_PACKET)
            out = self._plan(head, raw, raw_n)
            if out is HOLD_:
                return out
            self.state = U_ROWS
        elif st == U_ROWS:
            if is_terminator(p, n):
                self._ok(head, p, n, True, &more)
                out = self._ok_out(seq)
                self._end_result()
                tail = self._end_answer(head, more)
            elif p[0] == 0xff:
                self._end_result()
                out = self._err(head, seq, p, n)
                tail = self._end_answer(head, False)
            else:
                out = self._row(head, seq, p, n, raw, raw_n, npackets)
        elif st == U_SIMPLE:
            if p[0] == 0xff:
                out = self._err(head, seq, p, n)
            elif p[0] == 0x00 or p[0] == 0xfe:
                self._ok(head, p, n, p[0] == 0xfe, &more)
                out = self._ok_out(seq)
                self.relay._simple_ok(head)
            else:
                raise MysqlFrameError("expected OK or ERR from the upstream", ER_MALFORMED_PACKET)
            tail = self._end_answer(head, False)
        elif st == U_PREPARE:
            if p[0] == 0xff:
                out = self._err(head, seq, p, n)
                tail = self._end_answer(head, False)
            else:
                out = self._prepared(head, p, n)
                if self.coldefs_left == 0 and self.params_left == 0:
                    tail = self._end_answer(head, False)
        elif st == U_PREP_PARAMS:
            self.params_left -= 1
            if self.params_left == 0:
                if not self.relay.deprecate_eof:
                    self.state = U_PREP_PEOF
                elif self.coldefs_left:
                    self.state = U_PREP_COLS
                else:
                    tail = self._end_answer(head, False)
        elif st == U_PREP_COLS:
            self.coldefs_left -= 1
            if self.coldefs_left == 0:
                if not self.relay.deprecate_eof:
                    self.state = U_PREP_CEOF
                else:
                    tail = self._end_answer(head, False)
        elif st == U_PREP_PEOF or st == U_PREP_CEOF:
            if not is_terminator(p, n):
                raise MysqlFrameError("expected EOF in a prepare's answer", ER_MALFORMED_PACKET)
            if st == U_PREP_PEOF and self.coldefs_left > 0:
                self.state = U_PREP_COLS
            else:
                tail = self._end_answer(head, False)
        elif st == U_FIELDS:
            if p[0] == 0xff:
                out = self._err(head, seq, p, n)
                tail = self._end_answer(head, False)
            elif is_terminator(p, n):
                tail = self._end_answer(head, False)
        elif st == U_STRING:
            tail = self._end_answer(head, False)
        else:
            raise MysqlFrameError(f"unexpected packet from the upstream (state {st})",
                                  ER_NET_PACKETS_OUT_OF_ORDER)
        if out is None:
            if skipping or self.skipping:
                out = b""
            elif delta:
                out = reseq(raw, raw_n, delta)
        if tail is not None:
            if out is None:
                out = raw[:raw_n] + tail
            else:
                out = out + tail
        return out

    cdef object _ok_out(self, int seq):
        """The OK as the client reads it when _ok rewrote it, else None (as it came)."""
        if self.ok_rewrite is None or self.skipping:
            return None
        payload = self.ok_rewrite
        self.ok_rewrite = None
        return _hdr(len(payload), seq + self.seq_delta) + payload

    cdef int _types(self, Py_ssize_t ncols) except -1:
        cdef unsigned char* grown
        if ncols > self.types_cap:
            grown = <unsigned char*>realloc(self.types, ncols if ncols > TYPES_MIN else TYPES_MIN)
            if grown == NULL:
                raise MemoryError()
            self.types = grown
            grown = <unsigned char*>realloc(self.unsig, ncols if ncols > TYPES_MIN else TYPES_MIN)
            if grown == NULL:
                raise MemoryError()
            self.unsig = grown
            self.types_cap = ncols if ncols > TYPES_MIN else TYPES_MIN
        memset(self.types, T_VARCHAR, ncols)
        memset(self.unsig, 0, ncols)
        return 0

    cdef object _prepared(self, Cmd head, const unsigned char* p, Py_ssize_t n):
        """COM_STMT_PREPARE's OK: the server's statement id; what follows is counted."""
        cdef Cursor c = cursor(p, n)
        cdef unsigned int stmt_id, ncols, nparams
        cur_u8(&c)
        stmt_id = cur_le32(&c)
        ncols = cur_le16(&c)
        nparams = cur_le16(&c)
        if c.bad:
            raise MysqlFrameError("malformed COM_STMT_PREPARE answer", ER_MALFORMED_PACKET)
        self.relay._statement_prepared(head, stmt_id)
        self.coldefs_left = ncols
        self.params_left = nparams
        if nparams:
            self.state = U_PREP_PARAMS
        elif ncols:
            self.state = U_PREP_COLS
        return None

    cdef object _plan(self, Cmd head, const unsigned char* raw, Py_ssize_t raw_n):
        """The column definitions are all here: ask the masker for the result's plan. Until it
        answers nothing of the result has gone to the client, so a refusal replaces the whole
        result by an ERR. Returns what to write now (None: the packet as it is)."""
        cdef object res
        cdef object me
        if not self.mask_on or self.skipping:
            self.plan = None
            self.plan_work = False
            self.held_head = None
            return None
        cdef PlanMemo memo = head.memo
        cdef object masker = self.masker
        cdef Py_ssize_t k = PyByteArray_GET_SIZE(self.coldef_raw)
        if not self.memo_on:
            memo = None
        if memo is not None and memo.filled and memo.info is head.info and \
                memo.index == self.result_index and memo.binary == self.binary and \
                PyBytes_GET_SIZE(memo.raw) == k and \
                memcmp(PyBytes_AS_STRING(memo.raw), PyByteArray_AS_STRING(self.coldef_raw),
                       k) == 0 and \
                masker._plans is memo.plans and masker.conn.generation == memo.gen:
            # the plan the masker's cache holds for these definitions, without asking it:
            # its cache is the one the plan was kept in (every change that could alter a plan
            # -- schema, masking reloaded, a full cache -- starts a new one) and the catalog
            # generation the same (a read lands: the masker starts a new cache on its next
            # call). A prepared point select's execute asked the masker every time.
            res = memo.plan
        else:
            defs = bytes(self.coldef_raw)
            try:
                res = masker.result_plan(head.info, self.result_index, ColumnDefs(defs),
                                         self.binary)
            except Exception as e:
                if self.refused_type is None or not isinstance(e, self.refused_type):
                    raise
                res = bytes(e.packet)
            if res is HOLD_:
                return HOLD_
            if memo is not None and memo.info is head.info and \
                    not isinstance(res, (bytes, bytearray)) and masker.plan_kept:
                memo.filled = True
                memo.index = self.result_index
                memo.binary = self.binary
                memo.raw = defs
                memo.plan = res
                memo.plans = masker._plans
                memo.gen = masker._plans_gen
        me = self._reseq(raw, raw_n) or raw[:raw_n]
        if res is None:
            self.plan = None
            self.plan_work = False
        elif isinstance(res, (bytes, bytearray)):
            # refused: an ERR in place of the result's first packet; the rest of the answer
            # is not the client's to read (an ERR ends a multi-result answer for it)
            seq = self.held_head[0][3]
            self.held_head = None
            self.skipping = True
            if self.record_on and self.cur_error is None:
                self.cur_error = bytes(res[4:])
            return set_seq(bytes(res), seq)
        else:
            self.plan = <RowPlan?>res
            self.plan_work = self.plan.any_work
        self.held_head.append(me)
        out = b"".join(self.held_head)
        self.held_head = None
        return out

    cdef object _row(self, Cmd head, int seq, const unsigned char* p, Py_ssize_t n,
                     const unsigned char* raw, Py_ssize_t raw_n, int npackets):
        cdef object payload = None
        cdef int k
        self.cur_rows_n += 1
        if self.skipping:
            return b""
        if self.plan_work:
            if self.binary:
                payload = binary_row_rewrite(self.plan, self.types, p, n)
            else:
                payload = text_row_rewrite(self.plan, p, n)
        if self.capture_left > 0:
            self._keep(payload, p, n)
        if payload is None:
            return None
        if PyBytes_GET_SIZE(payload) > self.relay.max_row:
            raise MaskRowError(f"masked row of {PyBytes_GET_SIZE(payload)} bytes exceeds the "
                               f"limit of {self.relay.max_row}")
        out = frame_payload(<const unsigned char*>PyBytes_AS_STRING(payload),
                            PyBytes_GET_SIZE(payload), seq + self.seq_delta, &k)
        # a row that now takes more (or fewer) packets moves every later sequence id
        self.seq_delta += k - npackets
        return out

    cdef int _keep(self, object payload, const unsigned char* p, Py_ssize_t n) except -1:
        """A row as the client got it, for replay (record_results): b"T" + a text row's payload,
        b"B" + the column types + a binary row's payload (the adapter decodes both)."""
        cdef bytes row = payload if payload is not None else p[:n]
        if self.binary:
            row = b"B" + bytes((self.ncols & 0xff, self.ncols >> 8)) + \
                self.types[:self.ncols] + self.unsig[:self.ncols] + row
        else:
            row = b"T" + row
        if PyBytes_GET_SIZE(row) > self.capture_left:
            self.capture_left = 0
            return 0
        self.capture_left -= PyBytes_GET_SIZE(row)
        if self.cur_rows is None:
            self.cur_rows = []
        self.cur_rows.append(row)
        return 0

    cdef object _err(self, Cmd head, int seq, const unsigned char* p, Py_ssize_t n):
        """An ERR from the upstream: its message through the masker (values an error quotes),
        recorded as the client gets it."""
        cdef object out = None
        cdef object msg
        cdef bytes payload = p[:n]
        if self.skipping:
            return b""
        if self.mask_on and n > 3:
            start = 9 if n >= 9 and p[3] == 35 else 3
            msg = self.masker.error_message(payload[start:], errno=p[1] | (p[2] << 8),
                                            sql=head.sql)
            if msg is not None:
                payload = payload[:start] + bytes(msg)
                out = _hdr(len(payload), seq + self.seq_delta) + payload
        if self.record_on and self.cur_error is None:
            self.cur_error = payload
        return out

    cdef int _tag_ok(self, const unsigned char* p, Py_ssize_t n) except -1:
        """An OK ending a statement: its affected rows as the record's tag ("OK <n>")."""
        cdef Cursor c
        cdef bint is_null
        cdef unsigned long long affected
        cdef bytes tag
        if not self.record_on:
            return 0
        c = cursor(p + 1, n - 1)
        affected = cur_lenenc(&c, &is_null)
        tag = b"OK %d" % affected
        tags_push(&self.cur_tags, PyBytes_AS_STRING(tag), <int>PyBytes_GET_SIZE(tag))
        return 0

    cdef int _ok(self, Cmd head, const unsigned char* p, Py_ssize_t n, bint eof,
                 bint* more) except -1:
        """An OK or EOF packet: the status flags (more results?) and, in an OK with
        SERVER_SESSION_STATE_CHANGED, the session's new sql_mode, character set and schema.
        When the upstream tracks session state for a client that did not ask for it, the OK
        is rewritten in the client's format (self.ok_rewrite: the new payload)."""
        cdef Cursor c = cursor(p, n)
        cdef bint is_null
        cdef unsigned int status
        cdef Py_ssize_t ln, at_status
        cdef const unsigned char* s
        cdef const unsigned char* info
        cdef Relay r = self.relay
        self.ok_rewrite = None
        cur_u8(&c)
        if eof and not r.deprecate_eof:
            # EOF_Packet: warnings, status
            cur_le16(&c)
            status = cur_le16(&c)
            if not c.bad:
                more[0] = (status & SERVER_MORE_RESULTS_EXISTS) != 0
                r._status(status)
            return 0
        cur_lenenc(&c, &is_null)        # affected rows
        cur_lenenc(&c, &is_null)        # last insert id
        at_status = c.p - p
        status = cur_le16(&c)
        cur_le16(&c)                    # warnings
        if c.bad:
            raise MysqlFrameError("malformed OK packet from the upstream", ER_MALFORMED_PACKET)
        more[0] = (status & SERVER_MORE_RESULTS_EXISTS) != 0
        r._status(status)
        if r.session_track and c.n > 0:
            info = cur_lenenc_str(&c, &ln)
            if c.bad:
                raise MysqlFrameError("malformed OK packet info from the upstream",
                                      ER_MALFORMED_PACKET)
            if status & SERVER_SESSION_STATE_CHANGED:
                s = cur_lenenc_str(&c, &ln)
                if c.bad:
                    raise MysqlFrameError("malformed session state in an OK packet",
                                          ER_MALFORMED_PACKET)
                if s != NULL:
                    r._session_state(s, ln)
            if not r.client_session_track:
                # the client reads info as the rest of the packet and knows no state changes
                status &= ~SERVER_SESSION_STATE_CHANGED
                c = cursor(p + at_status + 4, n - at_status - 4)
                info = cur_lenenc_str(&c, &ln)
                self.ok_rewrite = p[:at_status] + bytes((status & 0xff, (status >> 8) & 0xff)) + \
                    p[at_status + 2:at_status + 4] + (info[:ln] if info != NULL else b"")
        return 0

    cdef object _end_answer(self, Cmd head, bint more):
        """A result or the whole answer ended; with `more` the next result follows. Returns
        the bytes of the gateway's own answers that now come in turn (None: none)."""
        if more:
            self.result_index += 1
            self.state = U_FIRST
            return None
        self._end_result()
        if self.record_on and head.sql is not None:
            self._record(head)
        self.queue.pop(0)
        self.ended = True
        self.relay._answered(head)
        return self.flush_local()

    cdef int _end_result(self) except -1:
        cdef bytes tag
        if not self.in_result:
            return 0
        self.in_result = False
        if True:
            if self.record_on:
                tag = b"ROWS %d" % self.cur_rows_n
                tags_push(&self.cur_tags, PyBytes_AS_STRING(tag), <int>PyBytes_GET_SIZE(tag))
        if self.plan is not None:
            if self.plan_work:
                self.cur_masked += self.masker.result_done(self.plan) or 0
            self.plan = None
        self.plan_work = False
        self.cur_rows_n = 0
        return 0

    cdef int _record(self, Cmd head) except -1:
        cdef bytes sql = head.sql
        self.stmt_log.add(head.t, wallclock(), PyBytes_AS_STRING(sql), PyBytes_GET_SIZE(sql),
                          &self.cur_tags, self.cur_error, self.cur_masked, self.cur_rows)
        self.cur_rows = None
        self.cur_tags.n = self.cur_tags.count = 0
        self.cur_error = None
        self.cur_masked = 0
        return 0
