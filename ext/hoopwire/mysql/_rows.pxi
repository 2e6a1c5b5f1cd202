# MySQL rows for the neutral masker (hoopwire._mask): the text-row and binary-row walks. The
# masker sees only (offset, length) spans and value kinds (hoopwire/mysql/kinds.py maps column
# types to kinds); this file is all that knows how MySQL lays out a row.
#
#   text row    every value a length-encoded string, NULL as the single byte 0xfb
#   binary row  0x00, a NULL bitmap of (columns + 7 + 2) / 8 bytes (bit i + 2 for column i),
#               then each non-NULL value in its type's binary form: fixed 1/2/4/8 bytes for
#               integers and floats, a length byte and that many bytes for dates and times,
#               a length-encoded string for everything else
#
# A walk sets plan.off[i] / plan.ln[i] (relative to the payload), calls plan.mask_row, and
# returns None when nothing changed (the packets go as they came) or the new payload.

from hoopwire._mask import MaskRowError


cdef inline int binary_fixed(int t) noexcept:
    """Bytes of a fixed-size binary value of type t; -1 for a length-prefixed date/time
    (one length byte), -2 for a length-encoded string."""
    if t == T_TINY:
        return 1
    if t == T_SHORT or t == T_YEAR:
        return 2
    if t == T_LONG or t == T_INT24 or t == T_FLOAT:
        return 4
    if t == T_LONGLONG or t == T_DOUBLE:
        return 8
    if t == T_NULL:
        return 0
    if t == T_DATE or t == T_DATETIME or t == T_TIMESTAMP or t == T_TIME or t == T_NEWDATE:
        return -1
    return -2       # (the server's internal TIMESTAMP2/DATETIME2/TIME2 never reach the wire)


cdef inline bint temporal_ok(int t, Py_ssize_t ln) noexcept:
    """The lengths a binary date/time value can have: TIME 0, 8, 12 (days, h:m:s, micro-
    seconds); the dates 0, 4, 7, 11 (date, time, microseconds)."""
    if t == T_TIME:
        return ln == 0 or ln == 8 or ln == 12
    return ln == 0 or ln == 4 or ln == 7 or ln == 11


cdef inline Py_ssize_t lenenc_size(unsigned long long v) noexcept:
    if v < 0xfb:
        return 1
    if v <= 0xffff:
        return 3
    if v <= 0xffffff:
        return 4
    return 9


cdef inline Py_ssize_t put_lenenc(unsigned char* d, unsigned long long v) noexcept:
    cdef int i
    if v < 0xfb:
        d[0] = <unsigned char>v
        return 1
    if v <= 0xffff:
        d[0] = 0xfc
        d[1] = v & 0xff
        d[2] = (v >> 8) & 0xff
        return 3
    if v <= 0xffffff:
        d[0] = 0xfd
        d[1] = v & 0xff
        d[2] = (v >> 8) & 0xff
        d[3] = (v >> 16) & 0xff
        return 4
    d[0] = 0xfe
    for i in range(8):
        d[1 + i] = (v >> (8 * i)) & 0xff
    return 9


cdef object text_row_rewrite(RowPlan plan, const unsigned char* p, Py_ssize_t n):
    """A text row's payload -> the new payload, or None when no value changed."""
    cdef Cursor c = cursor(p, n)
    cdef Py_ssize_t i, ln, total, w, olen, ncols = plan.ncols
    cdef const unsigned char* v
    cdef unsigned char* d
    for i in range(ncols):
        v = cur_lenenc_str(&c, &ln)
        if c.bad:
            raise MaskRowError(f"text row ends inside value {i}")
        plan.off[i] = (v - p) if v != NULL else 0
        plan.ln[i] = ln                 # -1: NULL
    if c.n != 0:
        raise MaskRowError(f"text row has {c.n} bytes after its {ncols} values")
    if plan.mask_row(p) == 0:
        return None
    total = 0
    for i in range(ncols):
        olen = plan.out_ln[i]
        total += 1 if olen < 0 else lenenc_size(olen) + olen
    out = PyBytes_FromStringAndSize(NULL, total)
    d = <unsigned char*>PyBytes_AS_STRING(out)
    w = 0
    for i in range(ncols):
        olen = plan.out_ln[i]
        if olen < 0:
            d[w] = 0xfb
            w += 1
        else:
            w += put_lenenc(d + w, olen)
            if olen > 0:
                w += out_value(plan, i, d + w)
    return out


cdef object binary_row_rewrite(RowPlan plan, const unsigned char* types, const unsigned char* p,
                               Py_ssize_t n):
    """A binary row's payload -> the new payload, or None when no value changed. A value masked
    to NULL sets its NULL-bitmap bit and leaves the row."""
    cdef Py_ssize_t ncols = plan.ncols, nb = (ncols + 9) // 8, i, ln, total, w, olen
    cdef Cursor c = cursor(p, n)
    cdef const unsigned char* bitmap
    cdef const unsigned char* v
    cdef unsigned char* d
    cdef int fx, bit
    if cur_u8(&c) != 0:
        raise MaskRowError("binary row does not start with 0x00")
    bitmap = cur_take(&c, nb)
    if c.bad:
        raise MaskRowError("binary row ends inside its NULL bitmap")
    for i in range(ncols):
        bit = <int>i + 2
        if bitmap[bit >> 3] & (1 << (bit & 7)):
            plan.off[i] = 0
            plan.ln[i] = -1
            continue
        fx = binary_fixed(types[i])
        if fx >= 0:
            v = cur_take(&c, fx)
            ln = fx
        elif fx == -1:
            ln = cur_u8(&c)
            if not c.bad and not temporal_ok(types[i], ln):
                raise MaskRowError(f"binary row value {i}: a date/time of {ln} bytes")
            v = cur_take(&c, ln)
        else:
            v = cur_lenenc_str(&c, &ln)
            if v == NULL and not c.bad:
                raise MaskRowError(f"binary row value {i}: NULL length outside the bitmap")
        if c.bad:
            raise MaskRowError(f"binary row ends inside value {i}")
        plan.off[i] = v - p
        plan.ln[i] = ln
    if c.n != 0:
        raise MaskRowError(f"binary row has {c.n} bytes after its {ncols} values")
    if plan.mask_row(p) == 0:
        return None
    total = 1 + nb
    for i in range(ncols):
        olen = plan.out_ln[i]
        if olen < 0:
            continue
        fx = binary_fixed(types[i])
        if fx >= 0:
            if olen != fx:
                raise MaskRowError(f"binary value {i} of type {types[i]} masked to {olen} bytes")
            total += olen
        elif fx == -1:
            if not temporal_ok(types[i], olen):
                raise MaskRowError(f"binary date/time value {i} masked to {olen} bytes")
            total += 1 + olen
        else:
            total += lenenc_size(olen) + olen
    out = PyBytes_FromStringAndSize(NULL, total)
    d = <unsigned char*>PyBytes_AS_STRING(out)
    d[0] = 0
    memcpy(d + 1, bitmap, nb)
    w = 1 + nb
    for i in range(ncols):
        olen = plan.out_ln[i]
        bit = <int>i + 2
        if olen < 0:
            d[1 + (bit >> 3)] |= (1 << (bit & 7))
            continue
        fx = binary_fixed(types[i])
        if fx == -1:
            d[w] = <unsigned char>olen
            w += 1
        elif fx == -2:
            w += put_lenenc(d + w, olen)
        if olen > 0:
            w += out_value(plan, i, d + w)
    return out


cdef class MysqlRowPlan(RowPlan):
    """A RowPlan with MySQL's row walks callable from Python (tests, the fuzzer)."""

    def rewrite_text(self, payload):
        cdef bytes b = bytes(payload)
        return text_row_rewrite(self, <const unsigned char*>PyBytes_AS_STRING(b),
                                PyBytes_GET_SIZE(b))

    def rewrite_binary(self, types, payload):
        cdef bytes b = bytes(payload)
        cdef bytes t = bytes(types)
        if len(t) != self.ncols:
            raise ValueError("one type per column")
        return binary_row_rewrite(self, <const unsigned char*>PyBytes_AS_STRING(t),
                                  <const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


def text_row_spans(payload, int ncols):
    """Tests, fuzzing: [(offset, length)] of a text row's values (length -1: NULL); raises
    MaskRowError as the relay's walk does."""
    cdef bytes b = bytes(payload)
    cdef Cursor c = cursor(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    cdef const unsigned char* v
    cdef Py_ssize_t ln, i
    out = []
    for i in range(ncols):
        v = cur_lenenc_str(&c, &ln)
        if c.bad:
            raise MaskRowError(f"text row ends inside value {i}")
        out.append((v - <const unsigned char*>PyBytes_AS_STRING(b) if v != NULL else 0, ln))
    if c.n != 0:
        raise MaskRowError(f"text row has {c.n} bytes after its {ncols} values")
    return out


def binary_row_spans(types, payload):
    """Tests, fuzzing: [(offset, length)] of a binary row's values (-1: NULL)."""
    cdef bytes b = bytes(payload)
    cdef bytes t = bytes(types)
    cdef Py_ssize_t ncols = len(t), nb = (ncols + 9) // 8, i, ln
    cdef const unsigned char* base = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Cursor c = cursor(base, PyBytes_GET_SIZE(b))
    cdef const unsigned char* bitmap
    cdef const unsigned char* v
    cdef int fx, bit
    if cur_u8(&c) != 0:
        raise MaskRowError("binary row does not start with 0x00")
    bitmap = cur_take(&c, nb)
    if c.bad:
        raise MaskRowError("binary row ends inside its NULL bitmap")
    out = []
    for i in range(ncols):
        bit = <int>i + 2
        if bitmap[bit >> 3] & (1 << (bit & 7)):
            out.append((0, -1))
            continue
        fx = binary_fixed(t[i])
        if fx >= 0:
            v = cur_take(&c, fx)
            ln = fx
        elif fx == -1:
            ln = cur_u8(&c)
            if not c.bad and not temporal_ok(t[i], ln):
                raise MaskRowError(f"binary row value {i}: a date/time of {ln} bytes")
            v = cur_take(&c, ln)
        else:
            v = cur_lenenc_str(&c, &ln)
            if v == NULL and not c.bad:
                raise MaskRowError(f"binary row value {i}: NULL length outside the bitmap")
        if c.bad:
            raise MaskRowError(f"binary row ends inside value {i}")
        out.append((v - base, ln))
    if c.n != 0:
        raise MaskRowError(f"binary row has {c.n} bytes after its {ncols} values")
    return out
