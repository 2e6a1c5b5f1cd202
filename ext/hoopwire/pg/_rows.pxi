# PostgreSQL's rows for the neutral masker (hoopwire._mask): the DataRow walk, the prescan of a
# whole network read, and COPY TO STDOUT rows in text and CSV format. The masker sees only
# (offset, length) spans and value kinds (hoopwire/pg/kinds.py maps type OIDs to kinds); this
# file is all that knows how PostgreSQL frames a row. The relay calls rewrite_ptr on a DataRow
# it holds as a pointer: None means "forward the original bytes".
from cpython.bytes cimport PyBytes_FromStringAndSize

from hoopwire._mask import MaskRowError, MASKED_NULL


cdef inline unsigned int _be32(const unsigned char* p) noexcept nogil:
    """The int32 at p, which the caller has checked is there (a cursor over exactly it)."""
    cdef Cursor c = cursor(p, 4)
    return cur_be32(&c)


cdef inline void _put32(unsigned char* p, unsigned int v) noexcept nogil:
    p[0] = (v >> 24) & 0xff
    p[1] = (v >> 16) & 0xff
    p[2] = (v >> 8) & 0xff
    p[3] = v & 0xff


cdef class DataRowPlan(RowPlan):
    """A RowPlan (hoopwire._mask) that reads and writes PostgreSQL rows: DataRow messages
    ('D', int32 length, int16 count, per value an int32 length (-1: NULL) and its bytes) and
    COPY TO STDOUT data rows. hoopwire.pg.masker builds them (MaskEngine.row_plan(...,
    plan_type=DataRowPlan))."""

    cdef bint counted(self) noexcept:
        """Whether anything was masked since the last take_counts(): the counters are all the
        masker's result_done reads, so a result that masked nothing (pgbench's abalance, every
        result of a read that names no masked column) ends without that Python call and its
        dict (one call per result: bench/pg_call_profile.py)."""
        cdef Py_ssize_t i
        if self.scanner is not None:
            for i in range(self.scanner.ndet):
                if self.det_counts[i]:
                    return True
        for i in range(len(self.rule_names)):
            if self.rule_counts[i]:
                return True
        return False

    # -- DataRow -------------------------------------------------------------------------------

    def rewrite(self, msg):
        """A whole DataRow -> the rewritten message, or None when no value changed. Raises
        MaskRowError on a malformed message."""
        cdef const unsigned char[::1] view
        if isinstance(msg, bytes):
            return self.rewrite_ptr(<const unsigned char*>PyBytes_AS_STRING(msg),
                                    PyBytes_GET_SIZE(msg))
        view = memoryview(msg).cast("B")
        if view.shape[0] == 0:
            raise MaskRowError("empty DataRow")
        return self.rewrite_ptr(&view[0], view.shape[0])

    cdef object rewrite_ptr(self, const unsigned char* msg, Py_ssize_t size):
        cdef Py_ssize_t flen, i, total, w, olen
        cdef unsigned int length
        cdef int nf, ncols = <int>self.ncols
        cdef unsigned char* dst
        cdef Cursor c = cursor(msg, size)
        if size < 7 or cur_u8(&c) != 68:  # 'D'
            raise MaskRowError("not a DataRow")
        length = cur_be32(&c)
        if <Py_ssize_t>length + 1 != size:
            raise MaskRowError(f"DataRow length {length} does not match its {size - 1} bytes")
        nf = cur_be16(&c)
        if nf != ncols:
            raise MaskRowError(f"DataRow has {nf} values, its RowDescription {ncols} columns")
        for i in range(nf):
            flen = cur_be32s(&c)
            if c.bad:
                raise MaskRowError(f"DataRow ends inside the length of value {i}")
            if flen < -1:
                raise MaskRowError(f"DataRow value {i} has length {flen}")
            if flen > c.n:
                raise MaskRowError(f"DataRow value {i} of {flen} bytes overruns the message")
            self.off[i] = c.p - msg
            self.ln[i] = flen
            if flen > 0:
                cur_skip(&c, flen)
        if c.n != 0:
            raise MaskRowError(f"DataRow has {c.n} bytes after its last value")
        if self.mask_row(msg) == 0:
            return None
        # the new message
        total = 7
        for i in range(nf):
            olen = self.out_ln[i]
            total += 4 + (olen if olen > 0 else 0)
        if total - 1 > 0x7fffffff:
            raise MaskRowError("masked DataRow would exceed the protocol's message size", "54000")
        out = PyBytes_FromStringAndSize(NULL, total)
        dst = <unsigned char*>PyBytes_AS_STRING(out)
        dst[0] = 68
        _put32(dst + 1, <unsigned int>(total - 1))
        dst[5] = msg[5]
        dst[6] = msg[6]
        w = 7
        for i in range(nf):
            olen = self.out_ln[i]
            _put32(dst + w, <unsigned int>olen if olen >= 0 else 0xffffffff)
            w += 4
            if olen > 0:
                w += out_value(self, i, dst + w)
        return out

    # -- a whole network read at once ----------------------------------------------------------

    cdef int prescan(self, object chunk, Py_ssize_t start) except -1:
        """Hand the masker every whole DataRow of this result in chunk[start:] before they are
        rewritten one by one (RowPlan.pre_begin: one scan for all of them). Stops at the first
        message that is not a whole, well-formed DataRow of this result."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(chunk), pos = start, size, fpos, flen
        cdef Py_ssize_t total = 0, row_total
        cdef int i, r, nrows = 0, nvals = 0, row_vals
        cdef bint ok
        cdef Cursor c, row
        self.pre_rows = 0
        self.pre_base = NULL
        if self.scanner is None or not self.any_work:
            return 0
        # pass A: count rows and bytes of DETECT values
        c = cursor(p + pos, n - pos)
        while c.n >= 7 and c.p[0] == 68:
            row = cursor(c.p + 1, 6)
            size = <Py_ssize_t>cur_be32(&row) + 1
            if size < 7 or size > c.n or cur_be16(&row) != self.ncols:
                break
            # a row is taken only if it is well formed: pass B walks it without checks, and
            # rewrite_ptr reports a malformed one itself
            row = cursor(c.p + 7, size - 7)
            ok = True
            row_total = 0
            row_vals = 0
            for i in range(<int>self.ncols):
                flen = cur_be32s(&row)
                if row.bad or flen < -1 or (flen > 0 and not cur_skip(&row, flen)):
                    ok = False
                    break
                if flen > 0 and self.action[i] == ACT_DETECT:
                    row_total += flen + 1
                    row_vals += 1
            if not ok or row.n != 0:
                break
            cur_skip(&c, size)
            total += row_total
            nvals += row_vals
            nrows += 1
            pos += size
        if nrows < 2:
            return 0
        if not self.pre_begin(p + start, nrows, nvals, total):
            return 0
        # pass B: the values; a row's key is where its message starts
        pos = start
        for r in range(nrows):
            size = <Py_ssize_t>_be32(p + pos + 1) + 1
            self.pre_row(pos - start)
            fpos = pos + 7
            for i in range(<int>self.ncols):
                flen = <int>_be32(p + fpos)
                fpos += 4
                if flen > 0:
                    if self.action[i] == ACT_DETECT:
                        self.pre_value(i, p + fpos, flen)
                    fpos += flen
            pos += size
        return self.pre_finish()

    def prescan_bytes(self, chunk, Py_ssize_t start=0):
        """prescan for tests: the per-row hit flags it found, [[column, ...], ...]."""
        self.prescan(chunk, start)
        return self.prescan_flags()

    def rewrite_chunk(self, bytes chunk):
        """Tests: prescan a read of whole DataRows, then rewrite each row in place as the relay
        does; [new bytes or None per row]."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t pos = 0, n = PyBytes_GET_SIZE(chunk), size
        out = []
        self.prescan(chunk, 0)
        try:
            while pos + 5 <= n:
                size = <Py_ssize_t>_be32(p + pos + 1) + 1
                if size < 5 or size > n - pos:
                    break           # the relay's framer never hands out such a message
                out.append(self.rewrite_ptr(p + pos, size))
                pos += size
        finally:
            self.prescan_clear()
        return out

    # -- COPY ----------------------------------------------------------------------------------

    def mask_copy_line(self, line, bint csv=False, delimiter=None, null=None, quote=b'"',
                       escape=None):
        """One COPY TO STDOUT data row (a CopyData payload) in text or CSV format -> the
        rewritten row, or the same object when nothing changed. delimiter/null/quote/escape as
        in the COPY statement (defaults: tab and \\N for text; ',' and '' for CSV)."""
        cdef bytes data = bytes(line)
        cdef bytes eol = b""
        cdef list fields
        cdef int i, n
        if data.endswith(b"\r\n"):
            eol = b"\r\n"
        elif data.endswith(b"\n"):
            eol = b"\n"
        body = data[:len(data) - len(eol)]
        if delimiter is None:
            delimiter = b"," if csv else b"\t"
        if null is None:
            null = b"" if csv else b"\\N"
        if escape is None:
            escape = quote
        if len(delimiter) != 1 or (csv and (len(quote) != 1 or len(escape) != 1)):
            raise ValueError("COPY delimiter, quote and escape are single bytes")
        if csv:
            fields = _csv_split(body, delimiter[0], quote[0], escape[0], null)
        else:
            fields = _text_split(body, delimiter[0], null)
        n = len(fields)
        if n != self.ncols:
            raise MaskRowError(f"COPY row has {n} values, the result {self.ncols} columns")
        if not self.any_work:
            return line
        # the decoded values back to back, as spans for the masker
        cdef list parts = []
        cdef Py_ssize_t w = 0
        for i in range(n):
            v = fields[i][0]
            if v is None:
                self.off[i] = 0
                self.ln[i] = -1
            else:
                parts.append(v)
                self.off[i] = w
                self.ln[i] = len(v)
                w += len(v)
        cdef bytes joined = b"".join(parts)
        if self.mask_row(<const unsigned char*>PyBytes_AS_STRING(joined)) == 0:
            return line
        out = []
        cdef Py_ssize_t olen
        for i in range(n):
            raw, quoted = fields[i][1], fields[i][2]
            if self.ln[i] < 0 or not out_changed(self, i):
                out.append(raw)
                continue
            olen = self.out_ln[i]
            if olen < 0:
                out.append(null)
                continue
            r = PyBytes_FromStringAndSize(NULL, olen)
            out_value(self, i, <unsigned char*>PyBytes_AS_STRING(r))
            if csv:
                out.append(_csv_quote(r, delimiter[0], quote[0], escape[0], null, quoted))
            else:
                out.append(_text_escape(r, delimiter[0]))
        return delimiter.join(out) + eol


def mask_copy_line(line, DataRowPlan plan, bint csv=False, **options):
    """plan.mask_copy_line(line, csv, **options)."""
    return plan.mask_copy_line(line, csv, **options)


# ---------------------------------------------------------------------------------------------
# COPY text format: backslash escapes (PostgreSQL's CopyReadAttributesText / CopyAttributeOutText)

cdef list _text_split(bytes body, unsigned char delim, bytes null):
    """[(decoded value or None, raw bytes, False)] per field."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body), i = 0, start = 0
    cdef list out = []
    cdef bint esc = False
    while True:
        if i >= n or p[i] == delim:
            raw = body[start:i]
            if raw == null:
                out.append((None, raw, False))
            elif esc:
                out.append((_text_unescape(raw), raw, False))
            else:
                out.append((raw, raw, False))
            if i >= n:
                break
            i += 1
            start = i
            esc = False
            continue
        if p[i] == 92:  # backslash: it and the next byte belong to this field
            esc = True
            i += 2
            if i > n:
                i = n
            continue
        i += 1
    return out


cdef bytes _text_unescape(bytes raw):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i = 0, j
    cdef int c, v
    cdef bytearray out = bytearray()
    while i < n:
        c = p[i]
        if c != 92 or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        c = p[i + 1]
        i += 2
        if 48 <= c <= 55:              # \ooo octal
            v = c - 48
            j = 0
            while j < 2 and i < n and 48 <= p[i] <= 55:
                v = v * 8 + p[i] - 48
                i += 1
                j += 1
            out.append(v & 0xff)
        elif c == 120 and i < n and _hexval(p[i]) >= 0:   # \xh or \xhh
            v = _hexval(p[i])
            i += 1
            if i < n and _hexval(p[i]) >= 0:
                v = v * 16 + _hexval(p[i])
                i += 1
            out.append(v)
        elif c == 98:
            out.append(8)
        elif c == 102:
            out.append(12)
        elif c == 110:
            out.append(10)
        elif c == 114:
            out.append(13)
        elif c == 116:
            out.append(9)
        elif c == 118:
            out.append(11)
        else:
            out.append(c)
    return bytes(out)


cdef inline int _hexval(unsigned char c) noexcept:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef bytes _text_escape(bytes value, unsigned char delim):
    cdef bytearray out = bytearray()
    cdef unsigned char c
    for c in value:
        if c == 92:
            out += b"\\\\"
        elif c == 10:
            out += b"\\n"
        elif c == 13:
            out += b"\\r"
        elif c == 9:
            out += b"\\t"
        elif c == 8:
            out += b"\\b"
        elif c == 12:
            out += b"\\f"
        elif c == 11:
            out += b"\\v"
        elif c == delim:
            out.append(92)
            out.append(c)
        else:
            out.append(c)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# COPY CSV format

cdef list _csv_split(bytes body, unsigned char delim, unsigned char quote, unsigned char escape,
                     bytes null):
    """[(decoded value or None, raw bytes, was quoted)] per field."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body), i = 0, start
    cdef list out = []
    cdef bytearray val
    cdef unsigned char c
    cdef bint quoted, inq
    while True:
        start = i
        val = bytearray()
        quoted = False
        inq = False
        while i < n:
            c = p[i]
            if inq:
                if c == escape and i + 1 < n and (p[i + 1] == quote or p[i + 1] == escape) and \
                        (escape != quote or p[i + 1] == quote):
                    val.append(p[i + 1])
                    i += 2
                    continue
                if c == quote:
                    inq = False
                    i += 1
                    continue
                val.append(c)
                i += 1
                continue
            if c == delim:
                break
            if c == quote:
                inq = True
                quoted = True
                i += 1
                continue
            val.append(c)
            i += 1
        raw = body[start:i]
        if not quoted and raw == null:
            out.append((None, raw, False))
        else:
            out.append((bytes(val), raw, quoted))
        if i >= n:
            break
        i += 1      # the delimiter
    return out


cdef bytes _csv_quote(bytes value, unsigned char delim, unsigned char quote, unsigned char escape,
                      bytes null, bint was_quoted):
    cdef bint need = was_quoted or value == null or value == b"\\."
    cdef unsigned char c
    if not need:
        for c in value:
            if c == delim or c == quote or c == escape or c == 10 or c == 13:
                need = True
                break
    if not need:
        return value
    cdef bytearray out = bytearray()
    out.append(quote)
    for c in value:
        if c == quote or c == escape:
            out.append(escape)
        out.append(c)
    out.append(quote)
    return bytes(out)
