# cython: language_level=3
"""The audit log's per-record work, kept off the interpreter.

Recording every statement of a busy gateway costs what the interpreter does per record. The
Python path built a dict per statement, copied it, encoded it with orjson, hashed it with
hashlib and wrapped it in a line object, all under the GIL and half of it in a second thread
competing with the event loop for that GIL: about 11 us per statement. Here the event loop
only copies the common statement record (no error, no captured rows) as it stands -- times,
counts, the text's bytes and hash, the tags -- into the session's buffer (a RawStatement).
The audit thread, without the GIL, writes its canonical bytes (masking the text's literals
with sqlnorm's lexer, through a cache of texts seen twice) and chains the batch -- numbering,
SHA-256, joining (OpenSSL, which uses the CPU's SHA extensions where it has them). The event
loop is where every statement waits; the audit thread runs beside it on another core.

The bytes are exactly what `orjson.dumps(record, option=OPT_SORT_KEYS)` gives for the same
record, because verify.py re-encodes each parsed line with orjson and hashes that: the escaping
and float formatting below follow orjson's, and tests compare the two over generated records.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free
from libc.math cimport NAN, isnan, llround
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset
from cpython.pythread cimport PyThread_acquire_lock, PyThread_allocate_lock, PyThread_free_lock, \
    PyThread_release_lock

import orjson

from cpython.pycapsule cimport PyCapsule_GetPointer

from hoopwire.core.dialect cimport CDIALECT_CAPSULE

cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int* ptype) except NULL
    int Py_DTSF_ADD_DOT_0

# The one-shot SHA-256 calls (OpenSSL 3 marks them deprecated in favour of EVP). With them and
# one exactly sized output buffer, chaining went from 1.0 to 0.34 us per 430-byte record.
cdef extern from *:
    """
    #define OPENSSL_SUPPRESS_DEPRECATED 1
    #include <openssl/sha.h>
    """
    ctypedef struct SHA256_CTX:
        pass
    int SHA256_Init(SHA256_CTX* c) nogil
    int SHA256_Update(SHA256_CTX* c, const void* data, size_t len) nogil
    int SHA256_Final(unsigned char* md, SHA256_CTX* c) nogil


__all__ = ["Pending", "PendingBatch", "Chained", "StatementEncoder", "StatementLog", "chain",
           "record_times", "json_float", "json_ascii", "json_text", "keep_literals"]

cdef const char* HEX = b"0123456789abcdef"


cdef class Pending:
    """A record encoded but not yet chained (see the .pxd for the layout)."""

    def __init__(self, bytes body, Py_ssize_t cut_prev, Py_ssize_t cut_seq, double ts=NAN):
        if not (1 <= cut_prev <= cut_seq < PyBytes_GET_SIZE(body)):
            raise ValueError("cut points outside the record")
        self.body = body
        self.cut_prev = cut_prev
        self.cut_seq = cut_seq
        self.ts = ts


# ---- small writers into a growable C buffer ----------------------------------------------------

cdef int out_grow(Out* o, Py_ssize_t more) except -1 nogil:
    cdef Py_ssize_t want = o.n + more
    cdef char* q
    want = max(want, o.cap * 2, 256)
    q = <char*>realloc(o.p, want)
    if q == NULL:
        with gil:
            raise MemoryError()
    o.p = q
    o.cap = want
    return 0


cdef inline int out_reserve(Out* o, Py_ssize_t more) except -1 nogil:
    if o.n + more <= o.cap:
        return 0
    return out_grow(o, more)


cdef inline int out_put(Out* o, const char* s, Py_ssize_t n) except -1 nogil:
    out_reserve(o, n)
    memcpy(o.p + o.n, s, n)
    o.n += n
    return 0


cdef inline int out_bytes(Out* o, bytes b) except -1:
    return out_put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


# two decimal digits at a time: a record holds some 40 digits (times, counters), and one
# division per digit was the encoder's largest cost
cdef const char* DIGITS2 = (b"00010203040506070809101112131415161718192021222324252627282930313233"
                            b"34353637383940414243444546474849505152535455565758596061626364656667"
                            b"6869707172737475767778798081828384858687888990919293949596979899")


cdef inline int out_int(Out* o, long long v) except -1 nogil:
    cdef char tmp[24]
    cdef int i = 24
    cdef unsigned int r
    cdef unsigned long long u = <unsigned long long>(-v) if v < 0 else <unsigned long long>v
    while u >= 100:
        r = <unsigned int>(u % 100)
        u //= 100
        i -= 2
        tmp[i] = DIGITS2[2 * r]
        tmp[i + 1] = DIGITS2[2 * r + 1]
    if u >= 10:
        i -= 2
        tmp[i] = DIGITS2[2 * u]
        tmp[i + 1] = DIGITS2[2 * u + 1]
    else:
        i -= 1
        tmp[i] = <char>(48 + u)
    if v < 0:
        i -= 1
        tmp[i] = b'-'
    return out_put(o, &tmp[i], 24 - i)


cdef int out_float(Out* o, double v) except -1:
    """A float as orjson writes it; returns 1 (writing nothing) where the two notations part
    (exponents, NaN, infinities), so the caller falls back to orjson itself."""
    cdef char* s = PyOS_double_to_string(v, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    cdef Py_ssize_t i = 0
    try:
        while s[i]:
            if s[i] == b'e' or s[i] == b'n' or s[i] == b'i':
                return 1
            i += 1
        out_put(o, s, i)
    finally:
        PyMem_Free(s)
    return 0


cdef enum:
    STR_ASCII = 0       # decline any byte >= 0x80
    STR_UTF8 = 1        # write valid UTF-8 as it is (orjson does); decline invalid UTF-8
    STR_REPLACE = 2     # each byte >= 0x80 as U+FFFD: bytes.decode("ascii", "replace")


cdef bint utf8_valid(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """1 when s[0:n] is UTF-8 that Python's strict decoder accepts (no overlong forms, no
    surrogates, nothing above U+10FFFF), else 0."""
    cdef Py_ssize_t i = 0
    cdef unsigned char c, lo, hi
    cdef int k, j
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        lo, hi = 0x80, 0xBF
        if 0xC2 <= c <= 0xDF:
            k = 1
        elif 0xE0 <= c <= 0xEF:
            k = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F
        elif 0xF0 <= c <= 0xF4:
            k = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            return 0
        if i + k >= n:
            return 0
        if not (lo <= s[i + 1] <= hi):
            return 0
        for j in range(2, k + 1):
            if not (0x80 <= s[i + j] <= 0xBF):
                return 0
        i += k + 1
    return 1


# what out_json_string does with each byte: 0 copy, 1 escape, 2 not ASCII
cdef unsigned char JSON_CLASS[256]


cdef void _init_json_class() noexcept:
    cdef int c
    for c in range(256):
        JSON_CLASS[c] = 1 if c < 0x20 or c == 34 or c == 92 else (2 if c >= 0x80 else 0)


_init_json_class()


cdef int out_json_string(Out* o, const unsigned char* s, Py_ssize_t n, int how) except -1 nogil:
    """A JSON string of the bytes s[0:n], escaped as orjson escapes the str they decode to (see
    STR_*); returns 1 (writing nothing) where `how` declines them. Runs of bytes that need no
    escape are copied whole; UTF-8 is validated from its first byte >= 0x80 on, once."""
    cdef Py_ssize_t i = 0, j, start = o.n
    cdef unsigned char c, k
    cdef bint checked = False
    out_reserve(o, n * 6 + 2 + (2 * n if how == STR_REPLACE else 0))
    o.p[o.n] = b'"'
    o.n += 1
    while i < n:
        j = i
        while j < n and JSON_CLASS[s[j]] == 0:
            j += 1
        if j > i:
            memcpy(o.p + o.n, s + i, j - i)
            o.n += j - i
            i = j
            if i == n:
                break
        c = s[i]
        k = JSON_CLASS[c]
        if k == 2:
            if how == STR_ASCII or (how == STR_UTF8 and not checked and
                                    not utf8_valid(s + i, n - i)):
                o.n = start
                return 1
            if how == STR_REPLACE:
                memcpy(o.p + o.n, b"\xef\xbf\xbd", 3)
                o.n += 3
            else:
                checked = True      # valid from here to the end: copied as it is
                o.p[o.n] = c
                o.n += 1
        elif c == b'"' or c == b'\\':
            o.p[o.n] = b'\\'
            o.p[o.n + 1] = c
            o.n += 2
        elif c == b'\n':
            o.p[o.n] = b'\\'
            o.p[o.n + 1] = b'n'
            o.n += 2
        elif c == b'\t':
            o.p[o.n] = b'\\'
            o.p[o.n + 1] = b't'
            o.n += 2
        elif c == b'\r':
            o.p[o.n] = b'\\'
            o.p[o.n + 1] = b'r'
            o.n += 2
        elif c == 0x08:
            o.p[o.n] = b'\\'
            o.p[o.n + 1] = b'b'
            o.n += 2
        elif c == 0x0c:
            o.p[o.n] = b'\\'
            o.p[o.n + 1] = b'f'
            o.n += 2
        else:
            memcpy(o.p + o.n, b"\\u00", 4)
            o.p[o.n + 4] = HEX[c >> 4]
            o.p[o.n + 5] = HEX[c & 15]
            o.n += 6
        i += 1
    o.p[o.n] = b'"'
    o.n += 1
    return 0


# Times are recorded to the microsecond and written from integers: dtoa's shortest-repr search
# was the largest part of encoding a record. A decimal with at most 6 (3 for milliseconds)
# places is exactly what orjson writes for the double nearest to it as long as that double's
# ulp is finer than the last place -- below 2**32 s (and 2**42 ms) -- and it is not small
# enough for orjson to write an exponent, so only such values take this path.
cdef double MAX_EPOCH = 4294967296.0


cdef inline int out_fixed(Out* o, long long v, int places, long long scale) except -1 nogil:
    """v / scale with `places` decimals, trailing zeros cut but one kept (orjson's 12.0)."""
    cdef char tmp[8]
    cdef long long frac
    cdef int k = places, i
    if v < 0:
        out_put(o, b"-", 1)
        v = -v
    out_int(o, v // scale)
    frac = v % scale
    while k > 1 and frac % 10 == 0:
        frac //= 10
        k -= 1
    i = k
    while i > 0:
        i -= 1
        tmp[i] = <char>(48 + frac % 10)
        frac //= 10
    out_put(o, b".", 1)
    return out_put(o, tmp, k)


cdef inline bint times_fixed(double started, double ended) noexcept nogil:
    # Both are written (ended as the statement's ts). Below 1e-4 orjson switches to
    # exponents; a real epoch is far above 1.
    return 1.0 <= started < MAX_EPOCH and 1.0 <= ended < MAX_EPOCH


def record_times(double started, double ended):
    """(started, duration_ms, ts) as a statement record holds them -- ts is when it ended -- to
    the microsecond where the encoder writes them from integers, else as they are (duration
    rounded to 3 places)."""
    if times_fixed(started, ended):
        return (llround(started * 1e6) / 1e6, llround((ended - started) * 1e6) / 1e3,
                llround(ended * 1e6) / 1e6)
    return started, round((ended - started) * 1000.0, 3), ended


def json_float(double v):
    """The encoding out_float gives (None where it defers to orjson) -- for the tests."""
    cdef Out o = Out(NULL, 0, 0)
    try:
        if out_float(&o, v):
            return None
        return PyBytes_FromStringAndSize(o.p, o.n)
    finally:
        free(o.p)


def json_ascii(bytes s):
    """The encoding out_json_string gives for ASCII (None where it declines) -- for the tests."""
    return json_text(s, STR_ASCII)


def json_text(bytes s, int how):
    """out_json_string(s, how) (None where it declines) -- for the tests; how: 0 ASCII only,
    1 valid UTF-8, 2 bytes >= 0x80 as U+FFFD."""
    cdef Out o = Out(NULL, 0, 0)
    try:
        if out_json_string(&o, <const unsigned char*>PyBytes_AS_STRING(s), len(s), how):
            return None
        return PyBytes_FromStringAndSize(o.p, o.n)
    finally:
        free(o.p)


def keep_literals(sql):
    """The recorded text with `statement_literals = "keep"`: the statement as sent (invalid
    UTF-8 shown as U+FFFD). StatementEncoder recognises it and writes it in C."""
    return bytes(sql).decode("utf-8", "replace")


# ---- statement records -------------------------------------------------------------------------

cdef inline const char* raw_text(const char* entry) noexcept nogil:
    return entry + sizeof(RawStatement)


cdef inline const char* raw_tags(const char* entry, const RawStatement* r) noexcept nogil:
    return entry + sizeof(RawStatement) + (r.sql_len if r.sql_len > 0 else 0)


cdef int rows_of(const char* tags, Py_ssize_t ntags, long long* rows) noexcept nogil:
    """rows_from_tags in C over packed tags: the sum of every tag's last word that is all
    digits. Returns 0 when no tag has one (rows null), 1 with a sum, -2 when a number is too
    long to add here."""
    cdef const char* p
    cdef int n
    cdef Py_ssize_t t, i, start
    cdef long long total = 0, v
    cdef bint found = False, digits
    for t in range(ntags):
        memcpy(&n, tags, sizeof(int))
        p = tags + sizeof(int)
        tags = p + n
        start = n
        while start > 0 and p[start - 1] != b' ':
            start -= 1
        if start == n:
            continue
        if n - start > 18:
            return -2
        v = 0
        digits = True
        for i in range(start, n):
            if p[i] < b'0' or p[i] > b'9':
                digits = False
                break
            v = v * 10 + (p[i] - 48)
        if digits:
            total += v
            found = True
    rows[0] = total
    return 1 if found else 0


cdef inline unsigned long long text_hash(const char* p, Py_ssize_t n) noexcept nogil:
    """The text cache's key: eight bytes per multiply. Computed in the audit thread (hashing
    each new simple-protocol text on the event loop was a quarter of recording's cost there);
    a collision only costs a miss, the key's bytes are compared."""
    cdef unsigned long long h = 0x9E3779B97F4A7C15ULL ^ <unsigned long long>n, w
    while n >= 8:
        memcpy(&w, p, 8)
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL
        h ^= h >> 29
        p += 8
        n -= 8
    w = 0
    memcpy(&w, p, n)
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL
    return h ^ (h >> 32)


cdef list tag_list(const char* tags, Py_ssize_t ntags):
    """Packed tags as the list of bytes the dict path takes."""
    cdef list out = []
    cdef int tl
    cdef Py_ssize_t j
    for j in range(ntags):
        memcpy(&tl, tags, sizeof(int))
        out.append(PyBytes_FromStringAndSize(tags + sizeof(int), tl))
        tags += sizeof(int) + tl
    return out


cdef class StatementEncoder:
    """What the statement records of all sessions share: the gateway id and the recorded text
    of each statement (literals masked), cached because most statements repeat.

    The text cache and the lexer run in the audit thread without the GIL (chain() encodes a
    batch's raw statements); a lock keeps the cache to one thread at a time. It is taken only
    with the GIL released, so a thread holding it may still ask for the GIL (a Python masker)."""

    def __cinit__(self):
        self.scratch = Out(NULL, 0, 0)
        memset(self.slots, 0, sizeof(self.slots))
        memset(self.seen, 0, sizeof(self.seen))
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()

    def __init__(self, str gateway_id, mask_statement, Py_ssize_t limit=4096):
        self.gw = orjson.dumps(gateway_id)
        self.gwp = PyBytes_AS_STRING(self.gw)
        self.gwlen = PyBytes_GET_SIZE(self.gw)
        self.mask_statement = mask_statement
        self.limit = limit
        # a dialect's masker that says how to run it in C (its `c_dialect` capsule) runs in
        # the audit thread without the GIL; any other masker is called with it
        self.dialect_capsule = getattr(mask_statement, "c_dialect", None)
        self.dialect = NULL
        if self.dialect_capsule is not None:
            self.dialect = <const CDialect*>PyCapsule_GetPointer(self.dialect_capsule,
                                                                 CDIALECT_CAPSULE)
        self.mode = TEXT_LEXER if self.dialect != NULL else \
            TEXT_KEEP if mask_statement is keep_literals else TEXT_PYTHON

    @property
    def c_dialect(self):
        """The dialect whose lexer masks statement texts in C (None: Python or none does)."""
        return self.dialect.name.decode() if self.dialect != NULL else None

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(TEXT_SLOTS):
            free(self.slots[i].key)
            free(self.slots[i].val)
        free(self.scratch.p)
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    # A direct-mapped cache, filled only with texts seen twice: a statement with its literals
    # inline (the simple protocol) is new almost every time, and storing each one would cost an
    # eviction (cold memory, a free) per statement. The hash is compared before the key.

    cdef int _put_text(self, Out* o, const char* sql, Py_ssize_t n) except -1 nogil:
        """The recorded text of sql[0:n] as a JSON string onto o; 1 (writing nothing) when only
        Python can make it (a Python masker, or a text that is not valid UTF-8 once masked)."""
        cdef unsigned long long h = text_hash(sql, n)
        cdef Py_ssize_t i = <Py_ssize_t>(h % TEXT_SLOTS), start = o.n, cut
        cdef TextSlot* slot = &self.slots[i]
        cdef unsigned char* mbuf = NULL
        cdef Py_ssize_t mlen = 0
        cdef int r
        cdef char* key
        cdef char* val
        if slot.key != NULL and slot.h == h and slot.klen == n and memcmp(slot.key, sql, n) == 0:
            out_put(o, slot.val, slot.vlen)
            return 0
        if self.mode == TEXT_PYTHON:
            return 1
        cut = n if n <= self.limit else self.limit
        if self.mode == TEXT_KEEP:
            r = out_json_string(o, <const unsigned char*>sql, cut, STR_UTF8)
        else:
            try:
                self.dialect.mask_literals(<const unsigned char*>sql, cut, &mbuf, &mlen)
                r = out_json_string(o, mbuf, mlen, STR_UTF8)
            finally:
                free(mbuf)
        if r:
            return 1
        if self.seen[i] != h or n > self.limit:
            self.seen[i] = h
            return 0
        # seen twice, and short enough to keep (a slot holds at most limit + 6 * limit bytes)
        key = <char*>malloc(n if n > 0 else 1)
        val = <char*>malloc(o.n - start)
        if key == NULL or val == NULL:
            free(key)
            free(val)
            return 0
        free(slot.key)
        free(slot.val)
        memcpy(key, sql, n)
        memcpy(val, o.p + start, o.n - start)
        slot.h, slot.key, slot.klen, slot.val, slot.vlen = h, key, n, val, o.n - start
        return 0

    cdef int _statement(self, Out* o, const char* entry, const char* sid, Py_ssize_t sidlen,
                        Py_ssize_t* cut_prev, Py_ssize_t* cut_seq) except -1 nogil:
        """Write a raw statement's record; 1 (with o.n back where it was) when it must take the
        dict path, 2 when only its text needs Python (o holds the record up to the text)."""
        # {"duration_ms":..,"gw":..,"masked":..,"n":..,  | "rows":..,  | ,"session":..,"started":..,
        #  "statement":..,"tags":[..],"ts":..,"type":"statement","verdict":"allow"}
        cdef RawStatement r
        cdef long long rows = 0
        cdef int have_rows
        cdef Py_ssize_t start = o.n
        cdef const char* tags
        memcpy(&r, entry, sizeof(RawStatement))
        tags = raw_tags(entry, &r)
        have_rows = rows_of(tags, r.ntags, &rows)
        if have_rows < 0 or not times_fixed(r.started, r.ended):
            return 1
        out_put(o, b'{"duration_ms":', 15)
        out_fixed(o, llround((r.ended - r.started) * 1e6), 3, 1000)
        out_put(o, b',"gw":', 6)
        out_put(o, self.gwp, self.gwlen)
        out_put(o, b',"masked":', 10)
        out_int(o, r.masked)
        out_put(o, b',"n":', 5)
        out_int(o, r.n)
        out_put(o, b',', 1)
        cut_prev[0] = o.n - start
        out_put(o, b'"rows":', 7)
        if have_rows:
            out_int(o, rows)
        else:
            out_put(o, b'null', 4)
        out_put(o, b',', 1)
        cut_seq[0] = o.n - start
        out_put(o, b',"session":', 11)
        out_put(o, sid, sidlen)
        out_put(o, b',"started":', 11)
        out_fixed(o, llround(r.started * 1e6), 6, 1000000)
        out_put(o, b',"statement":', 13)
        if self._put_text(o, raw_text(entry), r.sql_len if r.sql_len > 0 else 0):
            return 2
        return self._statement_end(o, &r, tags)

    cdef int _statement_end(self, Out* o, const RawStatement* r, const char* tags) except -1 nogil:
        """The record's keys after "statement"."""
        cdef int tl
        cdef Py_ssize_t t
        out_put(o, b',"tags":[', 9)
        for t in range(r.ntags):
            if t:
                out_put(o, b',', 1)
            memcpy(&tl, tags, sizeof(int))
            out_json_string(o, <const unsigned char*>tags + sizeof(int), tl, STR_REPLACE)
            tags += sizeof(int) + tl
        out_put(o, b'],"ts":', 7)
        out_fixed(o, llround(r.ended * 1e6), 6, 1000000)
        out_put(o, b',"type":"statement","verdict":"allow"}', 38)
        return 0

    def text(self, sql):
        """The statement as recorded (literals masked): the dict path's."""
        sql = sql or b""
        return self.mask_statement(sql if len(sql) <= self.limit else sql[:self.limit])


cdef class StatementLog:
    """One session's statement records as the relay hands them over, taken by the recorder as
    one PendingBatch per flush: no Python object per statement.

    The common record (no error, no captured rows) is only copied here (a RawStatement); the
    audit thread writes its JSON. A record with an error or captured rows goes to
    `slow(raw, n)` -- raw = (started, ended, sql, tags, error fields, masked, kept rows) -- which
    returns the record as a dict; so does every record when `all_slow` (the recorder then also
    indexes each one), and any raw record the C encoder cannot write exactly like orjson."""

    def __init__(self, StatementEncoder encoder, str session, slow, encode_dict,
                 bint all_slow=False):
        self.enc = encoder
        self.sid = orjson.dumps(session)
        self.slow = slow
        self.encode_dict = encode_dict
        self.all_slow = all_slow
        self.n = 0
        self.lost = 0
        self.buf = Out(NULL, 0, 0)
        self.meta = NULL
        self.tss = NULL
        self.count = 0
        self.cap = 0

    def __dealloc__(self):
        free(self.buf.p)
        free(self.meta)
        free(self.tss)

    def __len__(self):
        return self.count

    @property
    def statements(self):
        """Statements numbered so far (taken or not)."""
        return self.n

    cdef int _room(self) except -1:
        cdef Py_ssize_t cap
        cdef Py_ssize_t* meta
        cdef double* tss
        if self.count < self.cap:
            return 0
        cap = self.cap * 2 if self.cap else 64
        meta = <Py_ssize_t*>realloc(self.meta, sizeof(Py_ssize_t) * 3 * cap)
        if meta == NULL:
            raise MemoryError()
        self.meta = meta
        tss = <double*>realloc(self.tss, sizeof(double) * cap)
        if tss == NULL:
            raise MemoryError()
        self.tss = tss
        self.cap = cap
        return 0

    cdef int add(self, double started, double ended, const char* sql, Py_ssize_t sql_len,
                 const TagBuf* tags, object error, long long masked, object kept) except -1:
        """One finished statement; its text is sql[:sql_len] (sql_len < 0: none), copied."""
        cdef Py_ssize_t start = self.buf.n, cut_prev = -1, cut_seq = -1
        cdef Pending p
        cdef RawStatement r
        cdef bint slow = self.all_slow or error is not None or (kept is not None and bool(kept))
        if sql_len > self.enc.limit:
            # both encoders record at most `limit` bytes of a statement; one more says "longer"
            sql_len = self.enc.limit + 1
        self._room()
        self.n += 1
        if not slow:
            r.started = started
            r.ended = ended
            r.n = self.n
            r.masked = masked
            r.sql_len = sql_len if sql_len >= 0 else -1
            r.tags_len = tags.n
            r.ntags = tags.count
            out_reserve(&self.buf, sizeof(RawStatement) + max(r.sql_len, 0) + tags.n)
            memcpy(self.buf.p + self.buf.n, &r, sizeof(RawStatement))
            self.buf.n += sizeof(RawStatement)
            if sql_len > 0:
                memcpy(self.buf.p + self.buf.n, sql, sql_len)
                self.buf.n += sql_len
            if tags.n:
                memcpy(self.buf.p + self.buf.n, tags.p, tags.n)
                self.buf.n += tags.n
        else:
            try:
                p = <Pending?>self.encode_dict(
                    self.slow((started, ended,
                               PyBytes_FromStringAndSize(sql, sql_len) if sql_len >= 0 else None,
                               tag_list(tags.p, tags.count), error, masked, kept), self.n))
            except Exception:
                # never the data path's problem: counted, and the recorder reports it
                self.lost += 1
                return 0
            out_bytes(&self.buf, p.body)
            cut_prev = p.cut_prev
            cut_seq = p.cut_seq
        self.meta[3 * self.count] = start
        self.meta[3 * self.count + 1] = cut_prev
        self.meta[3 * self.count + 2] = cut_seq
        self.tss[self.count] = llround(ended * 1e6) / 1e6 if times_fixed(started, ended) \
            else ended
        self.count += 1
        return 0

    def add_raw(self, tuple raw):
        """add() from Python (the tests): raw as the slow path receives it."""
        cdef TagBuf t = TagBuf(NULL, 0, 0, 0)
        cdef bytes sql = raw[2]
        try:
            for tag in raw[3]:
                tags_push(&t, PyBytes_AS_STRING(tag), <int>PyBytes_GET_SIZE(tag))
            self.add(raw[0], raw[1], PyBytes_AS_STRING(sql) if sql is not None else NULL,
                     PyBytes_GET_SIZE(sql) if sql is not None else -1, &t, raw[4], raw[5], raw[6])
        finally:
            free(t.p)

    def take(self):
        """The records added since the last take, as one PendingBatch (None when there are none);
        the buffers shrink back when a burst has passed."""
        cdef PendingBatch b
        cdef Py_ssize_t i
        cdef bint raw = False
        if self.count == 0:
            return None
        b = PendingBatch._make(self.count)
        b.data = PyBytes_FromStringAndSize(self.buf.p, self.buf.n)
        for i in range(self.count):
            b.offs[i] = self.meta[3 * i]
            b.cuts[2 * i] = self.meta[3 * i + 1]
            b.cuts[2 * i + 1] = self.meta[3 * i + 2]
            b.tss[i] = self.tss[i]
            raw = raw or b.cuts[2 * i] < 0
        b.offs[self.count] = self.buf.n
        b.owner = self if raw else None
        self.count = 0
        self.buf.n = 0
        if self.buf.cap > (16 << 20):     # a burst has passed: give the memory back
            free(self.buf.p)
            self.buf = Out(NULL, 0, 0)
        return b


cdef class PendingBatch:
    """Records back to back in one bytes object (a session's statements since the last flush):
    offs[i]..offs[i+1] is record i, its cuts relative to its own start. Raw statements in it
    are written as JSON by encode(), which chain() calls."""

    def __dealloc__(self):
        free(self.offs)
        free(self.cuts)
        free(self.tss)

    @staticmethod
    cdef PendingBatch _make(Py_ssize_t n):
        cdef PendingBatch b = PendingBatch.__new__(PendingBatch)
        b.n = n
        b.offs = <Py_ssize_t*>malloc(sizeof(Py_ssize_t) * (n + 1))
        b.cuts = <Py_ssize_t*>malloc(sizeof(Py_ssize_t) * (2 * n + 1))
        b.tss = <double*>malloc(sizeof(double) * (n + 1))
        if b.offs == NULL or b.cuts == NULL or b.tss == NULL:
            raise MemoryError()
        return b

    def __len__(self):
        return self.n

    def encode(self):
        """Write the raw statements as JSON (once; chain() does it, without the GIL)."""
        self._encode()

    cdef int _encode(self) except -1:
        cdef StatementLog log = self.owner
        cdef StatementEncoder enc
        cdef Out* o
        cdef Py_ssize_t i, k = 0, start, c1 = 0, c2 = 0, sidlen, size
        cdef const char* data
        cdef const char* entry
        cdef const char* sid
        cdef int r
        cdef RawStatement head
        cdef char* dst
        if log is None:
            return 0
        enc = log.enc
        data = PyBytes_AS_STRING(self.data)
        size = PyBytes_GET_SIZE(self.data)
        sid = PyBytes_AS_STRING(log.sid)
        sidlen = PyBytes_GET_SIZE(log.sid)
        o = &enc.scratch            # the encoder's, reused: a fresh buffer per batch was page
        with nogil:                 # faults for every page of it
            PyThread_acquire_lock(enc.lock, 1)
            try:
                o.n = 0
                out_reserve(o, size * 2 + 64)
                for i in range(self.n):
                    start = o.n
                    entry = data + self.offs[i]
                    if self.cuts[2 * i] >= 0:       # already a record: as it is
                        out_put(o, entry, self.offs[i + 1] - self.offs[i])
                        c1 = self.cuts[2 * i]
                        c2 = self.cuts[2 * i + 1]
                        r = 0
                    else:
                        r = enc._statement(o, entry, sid, sidlen, &c1, &c2)
                    if r == 2:          # the text needs Python (the GIL): the rest in C
                        with gil:
                            r = self._text_by_python(o, entry)
                        if r == 0:
                            memcpy(&head, entry, sizeof(RawStatement))
                            enc._statement_end(o, &head, raw_tags(entry, &head))
                    if r != 0:          # the dict path, as on the event loop
                        o.n = start
                        with gil:
                            r = self._fallback(o, entry, &c1, &c2)
                        if r != 0:      # lost (counted): the record is left out
                            continue
                    self.offs[k] = start
                    self.cuts[2 * k] = c1
                    self.cuts[2 * k + 1] = c2
                    self.tss[k] = self.tss[i]
                    k += 1
                self.offs[k] = o.n
                self.n = k
                with gil:           # only the allocation holds the GIL, not the copy: a batch
                    out = PyBytes_FromStringAndSize(NULL, o.n)  # is megabytes, and the event
                    self.data = out                              # loop waits while we hold it
                    dst = PyBytes_AS_STRING(out)
                memcpy(dst, o.p, o.n)
                if o.cap > (16 << 20):  # a burst has passed: give the memory back
                    free(o.p)
                    o.p = NULL
                    o.n = o.cap = 0
            finally:
                PyThread_release_lock(enc.lock)
        self.owner = None
        return 0

    cdef int _text_by_python(self, Out* o, const char* entry) except -1:
        """The statement's text from the encoder's Python masker; 1 when it fails."""
        cdef RawStatement r
        cdef StatementEncoder enc = self.owner.enc
        memcpy(&r, entry, sizeof(RawStatement))
        sql = PyBytes_FromStringAndSize(raw_text(entry), max(r.sql_len, 0))
        try:
            text = orjson.dumps(enc.text(sql))
        except Exception:
            return 1
        out_bytes(o, text)
        return 0

    cdef int _fallback(self, Out* o, const char* entry, Py_ssize_t* cut_prev,
                       Py_ssize_t* cut_seq) except -1:
        """A raw statement the C encoder cannot write: its dict from the log's slow path,
        encoded as any record. 1 when that fails too (counted as lost)."""
        cdef RawStatement r
        cdef Pending p
        cdef list tags
        memcpy(&r, entry, sizeof(RawStatement))
        sql = None if r.sql_len < 0 else PyBytes_FromStringAndSize(raw_text(entry), r.sql_len)
        tags = tag_list(raw_tags(entry, &r), r.ntags)
        try:
            p = <Pending?>self.owner.encode_dict(
                self.owner.slow((r.started, r.ended, sql, tags, None, r.masked, None), r.n))
        except Exception:
            self.owner.lost += 1
            return 1
        out_bytes(o, p.body)
        cut_prev[0] = p.cut_prev
        cut_seq[0] = p.cut_seq
        return 0

    def tail(self, Py_ssize_t k):
        """The records from k on (sharing the bytes)."""
        cdef PendingBatch b
        cdef Py_ssize_t i
        self._encode()
        if not 0 <= k <= self.n:
            raise IndexError(k)
        b = PendingBatch._make(self.n - k)
        b.data = self.data
        for i in range(self.n - k + 1):
            b.offs[i] = self.offs[k + i]
        for i in range(2 * (self.n - k)):
            b.cuts[i] = self.cuts[2 * k + i]
        for i in range(self.n - k):
            b.tss[i] = self.tss[k + i]
        return b

    def __getitem__(self, Py_ssize_t i):
        """Record i as a Pending (for the tests and the odd caller; chain() reads in place)."""
        self._encode()
        if not 0 <= i < self.n:
            raise IndexError(i)
        return Pending(self.data[self.offs[i]:self.offs[i + 1]], self.cuts[2 * i],
                       self.cuts[2 * i + 1], self.tss[i])


# ---- the chain -----------------------------------------------------------------------------------

cdef class Chained:
    """A batch after chain(): its lines, where each ends, their hashes and ts values."""

    def __cinit__(self):
        self.ends = NULL
        self.hashes = NULL
        self.tss = NULL

    def __dealloc__(self):
        free(self.ends)
        free(self.hashes)
        free(self.tss)

    def __len__(self):
        return self.n

    def start(self, Py_ssize_t i):
        """Offset in `data` where line i starts (i == n: the end of the data)."""
        self._check(i, True)
        return 0 if i == 0 else self.ends[i - 1]

    def seq(self, Py_ssize_t i):
        self._check(i, False)
        return self.first_seq + i

    def hash(self, Py_ssize_t i):
        self._check(i, False)
        return (self.hashes + 64 * i)[:64].decode("ascii")

    def prev(self, Py_ssize_t i):
        self._check(i, False)
        return self.first_prev.decode("ascii") if i == 0 else self.hash(i - 1)

    def last_ts(self, Py_ssize_t i, Py_ssize_t j):
        """The ts of the last line in i..j-1 that has one, else None."""
        cdef Py_ssize_t k = j
        self._check(j, True)
        while k > i:
            k -= 1
            if not isnan(self.tss[k]):
                return self.tss[k]
        return None

    def fit(self, Py_ssize_t i, Py_ssize_t room):
        """The end index j > i of the longest run of lines from i whose bytes fit in `room` (at
        least one line, even when it alone does not fit)."""
        cdef Py_ssize_t base, j
        self._check(i, False)
        base = 0 if i == 0 else self.ends[i - 1]
        j = i + 1
        while j < self.n and self.ends[j] - base <= room:
            j += 1
        return j

    def complete(self, Py_ssize_t i, Py_ssize_t done):
        """How far the lines from i got when `done` bytes of them were written: the index past
        the last complete one."""
        cdef Py_ssize_t base, j
        self._check(i, True)
        base = 0 if i == 0 else self.ends[i - 1]
        j = i
        while j < self.n and self.ends[j] - base <= done:
            j += 1
        return j

    cdef int _check(self, Py_ssize_t i, bint end_ok) except -1:
        if i < 0 or i > self.n or (i == self.n and not end_ok):
            raise IndexError(i)
        return 0


cdef inline void put_hex(char* dst, const unsigned char* md) noexcept nogil:
    cdef int k
    for k in range(32):
        dst[2 * k] = HEX[md[k] >> 4]
        dst[2 * k + 1] = HEX[md[k] & 15]


cdef inline int n_digits(unsigned long long u) noexcept nogil:
    cdef int d = 1
    while u >= 10:
        u //= 10
        d += 1
    return d


def chain(list pending, unsigned long long seq, str prev):
    """Number the records of `pending` (Pending and PendingBatch items, in order) seq + 1,
    seq + 2, ... after a chain head `prev` and make their lines: body with "prev" and "seq" in
    place, then "hash" = sha256(prev + body) as the last key. Runs without the GIL once the
    inputs are gathered."""
    cdef Py_ssize_t n = 0, i, j, k = 0, total = 0, pos = 0, blen, c1, c2
    cdef const char** bodies = NULL
    cdef Py_ssize_t* lens = NULL
    cdef Py_ssize_t* cuts = NULL
    cdef char* buf
    cdef char* p
    cdef char* line
    cdef const char* b
    cdef const char* prevp
    cdef bytes prev_b = prev.encode("ascii")
    cdef unsigned char md[32]
    cdef int ok = 1, sl
    cdef Pending rec
    cdef PendingBatch batch
    cdef Chained res = Chained.__new__(Chained)
    cdef SHA256_CTX ctx
    cdef unsigned long long u

    if len(prev_b) != 64:
        raise ValueError("the chain head is not a sha256 hex digest")
    for item in pending:
        if type(item) is not PendingBatch and type(item) is not Pending:
            raise TypeError(f"not a pending record: {type(item).__name__}")
    for item in pending:        # raw statements become JSON (here: the GIL released)
        if type(item) is PendingBatch:
            (<PendingBatch>item)._encode()
            n += (<PendingBatch>item).n
        else:
            n += 1
    res.n = n
    res.first_seq = seq + 1
    res.first_prev = prev_b
    res.ends = <Py_ssize_t*>malloc(sizeof(Py_ssize_t) * (n + 1))
    res.hashes = <char*>malloc(64 * n + 1)
    res.tss = <double*>malloc(sizeof(double) * (n + 1))
    bodies = <const char**>malloc(sizeof(char*) * (n + 1))
    lens = <Py_ssize_t*>malloc(sizeof(Py_ssize_t) * (n + 1))
    cuts = <Py_ssize_t*>malloc(sizeof(Py_ssize_t) * 2 * (n + 1))
    try:
        if not (res.ends and res.hashes and res.tss and bodies and lens and cuts):
            raise MemoryError()
        for item in pending:
            if type(item) is Pending:
                rec = <Pending>item
                bodies[k] = PyBytes_AS_STRING(rec.body)
                lens[k] = PyBytes_GET_SIZE(rec.body)
                cuts[2 * k] = rec.cut_prev
                cuts[2 * k + 1] = rec.cut_seq
                res.tss[k] = rec.ts
                k += 1
                continue
            batch = <PendingBatch>item
            for j in range(batch.n):
                bodies[k] = PyBytes_AS_STRING(batch.data) + batch.offs[j]
                lens[k] = batch.offs[j + 1] - batch.offs[j]
                cuts[2 * k] = batch.cuts[2 * j]
                cuts[2 * k + 1] = batch.cuts[2 * j + 1]
                res.tss[k] = batch.tss[j]
                k += 1
        for i in range(n):
            # "prev":"<64>", + "seq":<digits> + ,"hash":"<64>"}\n in place of the brace
            total += lens[i] + 74 + 6 + n_digits(seq + 1 + i) + 75
        # the lines are written straight into the bytes object handed out (sized exactly)
        res.data = PyBytes_FromStringAndSize(NULL, total)
        buf = PyBytes_AS_STRING(res.data)
        prevp = PyBytes_AS_STRING(prev_b)
        with nogil:
            for i in range(n):
                b = bodies[i]
                blen = lens[i]
                c1 = cuts[2 * i]
                c2 = cuts[2 * i + 1]
                line = buf + pos
                p = line
                memcpy(p, b, c1)
                p += c1
                memcpy(p, b'"prev":"', 8)
                memcpy(p + 8, prevp, 64)
                memcpy(p + 72, b'",', 2)
                p += 74
                memcpy(p, b + c1, c2 - c1)
                p += c2 - c1
                memcpy(p, b'"seq":', 6)
                p += 6
                u = seq + 1 + i
                sl = n_digits(u)
                p += sl
                while True:
                    p -= 1
                    p[0] = <char>(48 + u % 10)
                    u //= 10
                    if u == 0:
                        break
                p += sl
                memcpy(p, b + c2, blen - c2)
                p += blen - c2
                # the body ends at p (its closing brace at p - 1): hash prev + body
                if (SHA256_Init(&ctx) != 1 or SHA256_Update(&ctx, prevp, 64) != 1
                        or SHA256_Update(&ctx, line, p - line) != 1
                        or SHA256_Final(md, &ctx) != 1):
                    ok = 0
                    break
                put_hex(res.hashes + 64 * i, md)
                p -= 1
                memcpy(p, b',"hash":"', 9)
                memcpy(p + 9, res.hashes + 64 * i, 64)
                memcpy(p + 73, b'"}\n', 3)
                p += 76
                pos = p - buf
                res.ends[i] = pos
                prevp = res.hashes + 64 * i
        if not ok:
            raise RuntimeError("OpenSSL SHA-256 failed")
        if pos != total:
            raise AssertionError("audit chain: line sizes miscounted")
    finally:
        free(bodies)
        free(lens)
        free(cuts)
    return res
