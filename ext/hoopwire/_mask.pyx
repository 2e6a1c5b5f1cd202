# cython: language_level=3
"""hoopwire._mask: masking values on their way out of the gateway, protocol neutral.

Two classes (declared in hoopwire._mask.pxd):

* Scanner -- every detector of one connection compiled into two Hyperscan databases, scanned
  through libhs's C API with C match callbacks (no Python call per scan or per match), both
  MULTILINE so that `^`/`$` match at the '\\n' separators between joined values (and so at
  line breaks inside a value): `db_find` without start-of-match answers "which values hold a
  hit" at full speed; `db_span` with SOM_LEFTMOST is run only over the values pass 1 flagged,
  to find the exact spans, which the validators then check and the strategies rewrite.
  Start-of-match is what makes Hyperscan slow (see ../shared/STYLE.md), and most values hold
  no hit, so most bytes only ever see db_find.

* RowPlan -- the columns of one result set: for each, PASS, WHOLE (mask the whole value by the
  column rule's strategy) or DETECT (detectors over the value), plus its value kind (K_*: how
  its bytes may be rewritten). It never parses a protocol: a protocol's row walk (PostgreSQL's
  DataRow and COPY walk is ext/hoopwire/pg/_rows.pxi) hands it the row's values as spans
  (offset, length) into the bytes it holds and calls mask_row, which copies every DETECT value
  into one buffer (separated by '\\n'), scans that buffer ONCE, maps hit end offsets back to
  values, re-scans only those values for spans, and says how many values change; the walk
  then frames the row again from out_len / out_write. pre_begin / pre_row / pre_value /
  pre_finish do pass 1 for all the rows of a network read in one scan, and the span pass for
  all the values it flagged in one more (a scan call costs far more than the few bytes of a
  value), so masking those rows scans nothing.

A value the protocol describes wrongly raises MaskRowError (SQLSTATE 08P01 by default); nothing
here reads outside the spans it is given.
"""

import json as _json

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdlib cimport qsort, realloc, free
from libc.string cimport memcpy, memmove, memset

from hoopwire._hs cimport (
    HS_FLAG_CASELESS, HS_FLAG_MULTILINE, HS_FLAG_SOM_LEFTMOST, HS_MODE_BLOCK, HS_SCAN_TERMINATED, HS_SUCCESS,
    hs_alloc_scratch, hs_compile_error_t, hs_compile_multi, hs_database_t, hs_error_t,
    hs_free_compile_error, hs_free_database, hs_free_scratch, hs_scan, hs_valid_platform, hs_version)

__all__ = ["Scanner", "RowPlan", "MaskRowError", "PatternError", "luhn_ok", "compile_error",
           "hyperscan_version", "HS_CASELESS", "ACT_PASS", "ACT_WHOLE", "ACT_DETECT", "K_STR",
           "K_JSON", "K_JSONB_BIN", "K_INPLACE", "K_OTHER", "K_OPAQUE", "MASKED_NULL"]


if hs_valid_platform() != HS_SUCCESS:
    raise ImportError("Hyperscan (libhs) does not run on this CPU: it needs at least SSSE3")

# Detector flag for case-insensitive patterns (the value libhs defines), for detectors.py
HS_CASELESS = HS_FLAG_CASELESS

cdef bytes REDACTED = b"****"
cdef object NULL_VALUE = object()      # a replacement meaning the value leaves as NULL
MASKED_NULL = NULL_VALUE               # ... as mask_spans returns it


class PatternError(ValueError):
    """Hyperscan refused a detector pattern: reason is its message, index the pattern's place
    in the list compiled (or -1)."""

    def __init__(self, message, reason, index=-1):
        super().__init__(message)
        self.reason = reason
        self.index = index


class MaskRowError(ValueError):
    """A row that is not well formed, or does not fit its columns (code: the SQLSTATE the
    protocol's error carries, when it has them)."""

    def __init__(self, message, code="08P01"):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Hyperscan match callbacks: plain C, called by hs_scan with the context the caller passed

cdef int _on_find(unsigned int ident, unsigned long long frm, unsigned long long to,
                  unsigned int flags, void* context) noexcept nogil:
    """A hit of the find database: flag the value it ends in."""
    cdef Marks* m = <Marks*>context
    cdef Py_ssize_t last = <Py_ssize_t>to - 1
    cdef int i = m.cursor
    # Matches mostly come in order of their end: walk on from the last value hit, and only
    # search when a match ends before it.
    if i < m.n and (i == 0 or m.ends[i - 1] <= last):
        while i < m.n - 1 and m.ends[i] <= last:
            i += 1
    else:
        i = _value_holding(m.ends, m.n, <Py_ssize_t>to)
    if i >= 0:
        m.hit[m.cols[i] if m.cols != NULL else i] = 1
        m.cursor = i
    return 0


cdef int _span_push(SpanList* sl, Py_ssize_t frm, Py_ssize_t to, unsigned int ident) noexcept nogil:
    """Append a span; -1 (and failed set) when the list cannot grow."""
    cdef Span* grown
    cdef Py_ssize_t cap
    if sl.n == sl.cap:
        cap = sl.cap * 2 if sl.cap else 16
        grown = <Span*>realloc(sl.items, cap * sizeof(Span))
        if grown == NULL:
            sl.failed = True
            return -1
        sl.items = grown
        sl.cap = cap
    sl.items[sl.n].frm = frm
    sl.items[sl.n].to = to
    sl.items[sl.n].ident = ident
    sl.n += 1
    return 0


cdef inline void _span_trim(SpanList* sl) noexcept nogil:
    """Give back a span list that one huge value grew (it lives as long as the Scanner)."""
    if sl.cap > 4096:
        free(sl.items)
        sl.items = NULL
        sl.cap = 0
        sl.n = 0


cdef int _on_span(unsigned int ident, unsigned long long frm, unsigned long long to,
                  unsigned int flags, void* context) noexcept nogil:
    """A hit of the span database: append (from, to, id); stop the scan if memory runs out."""
    return 1 if _span_push(<SpanList*>context, <Py_ssize_t>frm, <Py_ssize_t>to, ident) < 0 else 0


cdef int _span_order(const void* a, const void* b) noexcept nogil:
    """Leftmost first, then the longest."""
    cdef const Span* x = <const Span*>a
    cdef const Span* y = <const Span*>b
    if x.frm != y.frm:
        return -1 if x.frm < y.frm else 1
    if x.to != y.to:
        return -1 if x.to > y.to else 1
    return -1 if x.ident < y.ident else (1 if x.ident > y.ident else 0)


cdef bint _in_order(const Span* s, Py_ssize_t n) noexcept nogil:
    """Whether the spans are already sorted as _span_order sorts them (Hyperscan reports by
    end offset, which for spans that do not overlap is the same order)."""
    cdef Py_ssize_t k
    for k in range(1, n):
        if _span_order(&s[k - 1], &s[k]) > 0:
            return False
    return True


cdef hs_database_t* _compile(list patterns, list flags, str what) except NULL:
    """One block-mode database of patterns (bytes) with ids 0..n-1; ValueError naming the
    pattern Hyperscan refuses."""
    cdef Py_ssize_t n = len(patterns), i
    cdef const char** exprs = <const char**>PyMem_Malloc(n * sizeof(char*))
    cdef unsigned int* fl = <unsigned int*>PyMem_Malloc(n * sizeof(unsigned int))
    cdef unsigned int* ids = <unsigned int*>PyMem_Malloc(n * sizeof(unsigned int))
    cdef hs_database_t* db = NULL
    cdef hs_compile_error_t* err = NULL
    cdef hs_error_t rc
    try:
        if exprs == NULL or fl == NULL or ids == NULL:
            raise MemoryError()
        for i in range(n):
            if b"\0" in patterns[i]:
                # libhs reads a C string: the rest of the pattern would be silently dropped
                raise PatternError(f"{what}: pattern {i} ({patterns[i]!r}) holds a NUL byte",
                                   "a NUL byte in the pattern", i)
            exprs[i] = PyBytes_AS_STRING(patterns[i])
            fl[i] = flags[i]
            ids[i] = <unsigned int>i
        rc = hs_compile_multi(exprs, fl, ids, <unsigned int>n, HS_MODE_BLOCK, NULL, &db, &err)
        if rc != HS_SUCCESS:
            if err == NULL:
                raise PatternError(f"{what}: Hyperscan error {rc}", f"Hyperscan error {rc}")
            msg = err.message.decode("utf-8", "replace")
            i = err.expression
            hs_free_compile_error(err)
            if 0 <= i < n:
                raise PatternError(f"{what}: pattern {i} ({patterns[i]!r}): {msg}", msg, i)
            raise PatternError(f"{what}: {msg}", msg)
        return db
    finally:
        PyMem_Free(exprs)
        PyMem_Free(fl)
        PyMem_Free(ids)


def compile_error(pattern, unsigned int flags=0):
    """None when Hyperscan compiles the pattern (bytes) for masking, with and without
    start-of-match, else Hyperscan's reason."""
    cdef hs_database_t* db
    for extra in (HS_FLAG_MULTILINE, HS_FLAG_SOM_LEFTMOST):
        try:
            db = _compile([bytes(pattern)], [flags | extra], "pattern")
        except PatternError as e:
            return e.reason
        hs_free_database(db)
    return None


def hyperscan_version():
    """The version string of the libhs this module is linked against."""
    return hs_version().decode("ascii", "replace")


cdef bint _luhn(const unsigned char* p, Py_ssize_t start, Py_ssize_t end,
               int* count) noexcept nogil:
    """The Luhn checksum over the ASCII digits of p[start:end] (other bytes skipped); count =
    how many digits there were."""
    cdef Py_ssize_t j = end
    cdef int total = 0, d, k = 0
    while j > start:
        j -= 1
        if not 48 <= p[j] <= 57:
            continue
        d = p[j] - 48
        if k & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        k += 1
    count[0] = k
    return total % 10 == 0


def luhn_ok(bytes digits):
    """The Luhn checksum over the ASCII digits of `digits` (other bytes are skipped)."""
    cdef int count
    return _luhn(<const unsigned char*>PyBytes_AS_STRING(digits), 0, PyBytes_GET_SIZE(digits),
                 &count)


# ---------------------------------------------------------------------------------------------
# Validators of the built-in detectors. Each looks at data[s:e] (a span Hyperscan reported, with
# its leftmost start) and its context, and either refuses the span or narrows it to what is
# masked. They are C because one runs for nearly every hit; hoopwire.masking.detectors uses the
# Python-callable wrappers below, and Scanner calls the C functions directly.

cdef enum:
    V_NONE = 0            # no validator
    V_PY = 1              # a Python callable (user validators, the regex-based ones)
    V_CARD = 2
    V_SSN = 3
    V_PHONE = 4
    V_IPV4 = 5
    V_AWS_SECRET = 6
    V_BOUNDED = 7


cdef inline bint _is_word(unsigned char c) noexcept nogil:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95


cdef inline bint _is_digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57


cdef bint _v_card(const unsigned char* p, Py_ssize_t n, Py_ssize_t* s, Py_ssize_t* e) noexcept nogil:
    """13-19 digits from a group start that is not glued to a word on its left, Luhn-valid.
    The leftmost start may hold a leading number ("5 4111 1111 1111 1111"): each later group
    start is tried too."""
    cdef Py_ssize_t st = s[0], end = e[0], j
    cdef int count
    cdef bint ok
    while st < end:
        if 50 <= p[st] <= 54 and not (st > 0 and _is_word(p[st - 1])):
            ok = _luhn(p, st, end, &count)
            if ok and 13 <= count <= 19:
                s[0] = st
                return True
        # the next group start: just past the next space or dash
        j = st
        while j < end and p[j] != 32 and p[j] != 45:
            j += 1
        st = j + 1
    return False


cdef bint _v_ssn(const unsigned char* p, Py_ssize_t n, Py_ssize_t* s, Py_ssize_t* e) noexcept nogil:
    """AAA-GG-SSSS with the same separator twice; area not 000, 666 or 9xx, group not 00,
    serial not 0000; not part of a longer dashed run (123-45-6789-1, 1-123-45-6789)."""
    cdef const unsigned char* v = p + s[0]
    if e[0] - s[0] != 11 or v[3] != v[6]:
        return False
    if (v[0] == 48 and v[1] == 48 and v[2] == 48) or (v[0] == 54 and v[1] == 54 and v[2] == 54) \
            or v[0] == 57 or (v[4] == 48 and v[5] == 48) \
            or (v[7] == 48 and v[8] == 48 and v[9] == 48 and v[10] == 48):
        return False
    if s[0] >= 1 and (p[s[0] - 1] == 45 or p[s[0] - 1] == 46):
        return False
    if e[0] + 1 < n and p[e[0]] == 45 and _is_digit(p[e[0] + 1]):
        return False
    return True


cdef bint _v_phone(const unsigned char* p, Py_ssize_t n, Py_ssize_t* s, Py_ssize_t* e) noexcept nogil:
    """8-15 digits; not glued to a word or to + - . / on its left, nor followed by -N or /N."""
    cdef Py_ssize_t j, digits = 0
    cdef unsigned char c
    for j in range(s[0], e[0]):
        if _is_digit(p[j]):
            digits += 1
    if digits < 8 or digits > 15:
        return False
    if s[0] > 0:
        c = p[s[0] - 1]
        if _is_word(c) or c == 43 or c == 45 or c == 46 or c == 47:
            return False
    if e[0] + 1 < n and (p[e[0]] == 45 or p[e[0]] == 47) and _is_digit(p[e[0] + 1]):
        return False
    return True


cdef bint _v_ipv4(const unsigned char* p, Py_ssize_t n, Py_ssize_t* s, Py_ssize_t* e) noexcept nogil:
    """Refuse version strings: a quad after a word character, after `word.`, or followed by
    `.word` (1.2.3.4.5, v1.2.3.4)."""
    cdef unsigned char c
    if s[0] > 0:
        c = p[s[0] - 1]
        if _is_word(c) or (c == 46 and s[0] > 1 and _is_word(p[s[0] - 2])):
            return False
    if e[0] + 1 < n and p[e[0]] == 46 and _is_word(p[e[0] + 1]):
        return False
    return True


cdef bint _v_aws_secret(const unsigned char* p, Py_ssize_t n, Py_ssize_t* s, Py_ssize_t* e) noexcept nogil:
    """Exactly the 40 characters at the end of the span: refuse a longer base64 run."""
    cdef unsigned char c
    if e[0] < n:
        c = p[e[0]]
        if _is_word(c) or c == 47 or c == 43 or c == 61:
            return False
    if e[0] - 40 < s[0]:
        return False
    s[0] = e[0] - 40
    return True


cdef bint _v_bounded(const unsigned char* p, Py_ssize_t n, Py_ssize_t* s, Py_ssize_t* e) noexcept nogil:
    """Refuse a span glued to more word characters on its left (the pattern's \\b covers the
    right)."""
    return not (s[0] > 0 and _is_word(p[s[0] - 1]))


ctypedef bint (*c_validator)(const unsigned char* p, Py_ssize_t n, Py_ssize_t* s,
                             Py_ssize_t* e) noexcept nogil


cdef c_validator _C_VALIDATORS[8]
_C_VALIDATORS[V_NONE] = NULL
_C_VALIDATORS[V_PY] = NULL
_C_VALIDATORS[V_CARD] = _v_card
_C_VALIDATORS[V_SSN] = _v_ssn
_C_VALIDATORS[V_PHONE] = _v_phone
_C_VALIDATORS[V_IPV4] = _v_ipv4
_C_VALIDATORS[V_AWS_SECRET] = _v_aws_secret
_C_VALIDATORS[V_BOUNDED] = _v_bounded


cdef class CValidator:
    """The Python face of a built-in C validator: v(data, s, e) -> (start, end) to mask, or
    None. Scanner recognises these and calls the C function itself."""

    cdef readonly int code
    cdef readonly str name

    def __init__(self, int code, str name):
        self.code = code
        self.name = name

    def __call__(self, bytes data, Py_ssize_t s, Py_ssize_t e):
        if not 0 <= s < e <= PyBytes_GET_SIZE(data):
            return None
        if not _C_VALIDATORS[self.code](<const unsigned char*>PyBytes_AS_STRING(data),
                                        PyBytes_GET_SIZE(data), &s, &e):
            return None
        return s, e

    def __repr__(self):
        return f"<C validator {self.name}>"


validate_card = CValidator(V_CARD, "card")
validate_ssn = CValidator(V_SSN, "ssn")
validate_phone = CValidator(V_PHONE, "phone")
validate_ipv4 = CValidator(V_IPV4, "ipv4")
validate_aws_secret = CValidator(V_AWS_SECRET, "aws_secret")
validate_bounded = CValidator(V_BOUNDED, "bounded")


cdef int _validator_code(object v):
    if v is None:
        return V_NONE
    if isinstance(v, CValidator):
        return (<CValidator>v).code
    return V_PY


# ---------------------------------------------------------------------------------------------
# Strategies on the hot path: redact and ASCII partial without a Python call; the rest (hash,
# format, multibyte partial) through hoopwire.masking.strategies.Strategy.

cdef enum:
    F_PY = 0
    F_REDACT = 1
    F_PARTIAL = 2
    F_CONST = 3           # a whole text value that becomes REDACTED: the value is never read


cdef inline int _fast_code(object strategy):
    name = strategy.name
    if name == "redact" or name == "null":
        return F_REDACT
    if name == "partial":
        return F_PARTIAL
    return F_PY


cdef object _partial_ascii(object value, Py_ssize_t keep):
    """`*` for all but the last `keep` bytes of an ASCII value; None if it is not ASCII."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i
    cdef bytes out
    cdef unsigned char* d
    for i in range(n):
        if p[i] >= 128:
            return None
    out = PyBytes_FromStringAndSize(NULL, n)
    d = <unsigned char*>PyBytes_AS_STRING(out)
    if n <= keep:
        memset(d, 42, n)
    else:
        memset(d, 42, n - keep)
        memcpy(d + n - keep, p + n - keep, keep)
    return out


# What pass 2 decided for a column of the row being rewritten (RowPlan.rep): the R_* enum in
# hoopwire/_mask.pxd (out_value there writes R_KEEP and R_CONST values inline)


cdef inline Py_ssize_t _write_partial(unsigned char* dst, const unsigned char* src, Py_ssize_t n,
                                      Py_ssize_t keep) noexcept nogil:
    """`*` for all but the last `keep` bytes of src[:n] (ASCII), into dst; returns n."""
    if n <= keep:
        memset(dst, 42, n)
    else:
        memset(dst, 42, n - keep)
        memcpy(dst + n - keep, src + n - keep, keep)
    return n


cdef inline object _inline_fast(int code, object strategy, object value):
    cdef object r
    if code == F_REDACT:
        return REDACTED
    if code == F_PARTIAL:
        r = _partial_ascii(value, strategy.keep)
        if r is not None:
            return r
    return strategy.inline(value)


# ---------------------------------------------------------------------------------------------

cdef inline bint _is_ascii(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] >= 128:
            return False
    return True


cdef inline int _value_holding(const Py_ssize_t* ends, int n, Py_ssize_t end) noexcept nogil:
    """Index of the value (ends[i]: offset just past value i, ascending) holding byte end - 1,
    where a match reported by its end offset finished; -1 when there are no values."""
    cdef int lo = 0, hi = n - 1, mid
    cdef Py_ssize_t last = end - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if ends[mid] <= last:
            lo = mid + 1
        else:
            hi = mid
    return lo if 0 <= lo < n else -1


cdef class Scanner:
    """Scanner(detectors, strategies): detectors is a list of
    hoopwire.masking.detectors.Detector, strategies the Strategy each one's hits get. Compiling
    takes milliseconds: build it off the event loop. One thread at a time per Scanner (each
    database has one scratch)."""

    def __cinit__(self):
        self.db_find = NULL
        self.db_span = NULL
        self.scratch_find = NULL
        self.scratch_span = NULL
        self.spans = SpanList(NULL, 0, 0, False)
        self.accepted = SpanList(NULL, 0, 0, False)
        self.vcode = NULL
        self.sfast = NULL
        self.skeep = NULL

    def __init__(self, list detectors, list strategies):
        if len(detectors) != len(strategies) or not detectors:
            raise ValueError("a Scanner needs one strategy per detector, and a detector")
        self.ndet = len(detectors)
        self.names = tuple(d.name for d in detectors)
        self.validators = tuple(d.validator for d in detectors)
        self.strategies = tuple(strategies)
        self.vcode = <int*>PyMem_Malloc(self.ndet * sizeof(int))
        self.sfast = <int*>PyMem_Malloc(self.ndet * sizeof(int))
        self.skeep = <Py_ssize_t*>PyMem_Malloc(self.ndet * sizeof(Py_ssize_t))
        if self.vcode == NULL or self.sfast == NULL or self.skeep == NULL:
            raise MemoryError()
        for i in range(self.ndet):
            self.vcode[i] = _validator_code(self.validators[i])
            self.sfast[i] = _fast_code(self.strategies[i])
            self.skeep[i] = self.strategies[i].keep
        pats = [bytes(d.pattern) for d in detectors]
        self.db_find = _compile(pats, [d.flags | HS_FLAG_MULTILINE for d in detectors],
                                "detectors")
        self.db_span = _compile(
            pats, [d.flags | HS_FLAG_MULTILINE | HS_FLAG_SOM_LEFTMOST for d in detectors],
            "detectors")
        if (hs_alloc_scratch(self.db_find, &self.scratch_find) != HS_SUCCESS or
                hs_alloc_scratch(self.db_span, &self.scratch_span) != HS_SUCCESS):
            raise MemoryError("Hyperscan scratch")

    def __dealloc__(self):
        if self.scratch_find != NULL:
            hs_free_scratch(self.scratch_find)
        if self.scratch_span != NULL:
            hs_free_scratch(self.scratch_span)
        if self.db_find != NULL:
            hs_free_database(self.db_find)
        if self.db_span != NULL:
            hs_free_database(self.db_span)
        free(self.spans.items)
        free(self.accepted.items)
        PyMem_Free(self.vcode)
        PyMem_Free(self.sfast)
        PyMem_Free(self.skeep)

    cdef int find(self, const unsigned char* p, Py_ssize_t n, Marks* marks) except -1:
        """Pass 1 over p[:n]: set the hit flag of every value in marks that a detector's match
        ends in."""
        cdef hs_error_t rc
        if n > 0xffffffff:
            raise MaskRowError("scan buffer over 4 GiB", "54000")
        with nogil:
            rc = hs_scan(self.db_find, <const char*>p, <unsigned int>n, 0, self.scratch_find,
                         _on_find, marks)
        if rc != HS_SUCCESS:
            raise MaskRowError(f"detector scan failed (Hyperscan error {rc})", "XX000")
        return 0

    cdef int scan_spans(self, const unsigned char* p, Py_ssize_t n, SpanList* out) except -1:
        """out = every detector match in p[:n] with its leftmost start, sorted."""
        cdef hs_error_t rc
        if n > 0xffffffff:
            raise MaskRowError("scan buffer over 4 GiB", "54000")
        out.n = 0
        out.failed = False
        rc = hs_scan(self.db_span, <const char*>p, <unsigned int>n, 0, self.scratch_span,
                     _on_span, out)
        if out.failed:
            out.n = 0
            raise MemoryError()
        if rc != HS_SUCCESS:
            out.n = 0
            raise MaskRowError(f"detector scan failed (Hyperscan error {rc})", "XX000")
        if out.n > 1 and not _in_order(out.items, out.n):
            qsort(out.items, out.n, sizeof(Span), _span_order)
        return 0

    cdef object mask_value(self, object data, unsigned long long* counts):
        """data (bytes) with every validated detector span rewritten, or None when nothing
        matched."""
        self.scan_spans(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                        &self.spans)
        if self.spans.n == 0:
            _span_trim(&self.spans)
            return None
        try:
            return self.apply_spans(data, self.spans.items, self.spans.n, counts)
        finally:
            _span_trim(&self.spans)

    cdef int accept(self, const unsigned char* p, Py_ssize_t n, object data, const Span* spans,
                    Py_ssize_t nspans, SpanList* out) except -1:
        """The spans (sorted, offsets into the value p[:n]) that survive their validators,
        appended to out as they are to be rewritten. Overlapping spans are masked as their
        union, by the leftmost's strategy: dropping the later one left its tail in clear (a
        PEM body without its END line runs into the next line, and an e-mail address there
        came out as '****.doe@example.com'). `data` is the value as bytes, or None: made only
        if a Python validator wants it."""
        cdef Py_ssize_t last_end = 0, s, e, k
        cdef object hit
        cdef unsigned int ident
        cdef int code
        for k in range(nspans):
            s = spans[k].frm
            e = spans[k].to
            ident = spans[k].ident
            if e <= last_end or e > n or s >= e:
                continue            # inside what is masked already, or malformed
            code = self.vcode[ident]
            if code > V_PY:
                if not _C_VALIDATORS[code](p, n, &s, &e):
                    continue
            elif code == V_PY:
                if data is None:
                    data = PyBytes_FromStringAndSize(<const char*>p, n)
                hit = self.validators[ident](data, s, e)
                if hit is None:
                    continue
                s, e = hit
                if s >= e or e > n:
                    continue
            if e <= last_end:
                continue
            if s < last_end and out.n > 0:
                # the union, under the earlier span's strategy
                if s < out.items[out.n - 1].frm:
                    out.items[out.n - 1].frm = s
                out.items[out.n - 1].to = e
            elif _span_push(out, s, e, ident) < 0:
                raise MemoryError()
            last_end = e
        return 0

    cdef object apply_spans(self, object data, const Span* spans, Py_ssize_t nspans,
                            unsigned long long* counts):
        """data with the validated spans (see accept) rewritten, or None."""
        cdef Py_ssize_t last_end = 0, k
        cdef list out
        cdef Span* sp
        self.accepted.n = 0
        self.accept(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), data,
                    spans, nspans, &self.accepted)
        if self.accepted.n == 0:
            return None
        out = []
        for k in range(self.accepted.n):
            sp = &self.accepted.items[k]
            out.append(data[last_end:sp.frm])
            out.append(_inline_fast(self.sfast[sp.ident], self.strategies[sp.ident],
                                    data[sp.frm:sp.to]))
            last_end = sp.to
            if counts != NULL:
                counts[sp.ident] += 1
        out.append(data[last_end:])
        _span_trim(&self.accepted)
        return b"".join(out)

    def mask(self, data):
        """(masked bytes, {detector: count}) for free text; the same object when unchanged."""
        cdef unsigned long long* counts = <unsigned long long*>PyMem_Malloc(
            self.ndet * sizeof(unsigned long long))
        if counts == NULL:
            raise MemoryError()
        memset(counts, 0, self.ndet * sizeof(unsigned long long))
        try:
            res = self.mask_value(bytes(data) if not isinstance(data, bytes) else data, counts)
            found = {self.names[i]: counts[i] for i in range(self.ndet) if counts[i]}
        finally:
            PyMem_Free(counts)
        return (data if res is None else res), found


# ---------------------------------------------------------------------------------------------

cdef class RowPlan:
    """RowPlan(columns, scanner=None, rule_names=()): columns is a sequence, one per column of
    the result, of (action, kind, strategy, rule) where action is ACT_PASS / ACT_WHOLE /
    ACT_DETECT, kind the K_* the protocol mapped the column's type to, strategy the Strategy
    of a WHOLE column (else None) and rule the index of its column rule in rule_names (else
    -1). hoopwire.masking.engine.MaskEngine.row_plan builds one from neutral Columns. A protocol
    may subclass it (cimport hoopwire._mask) to add its row walk: hoopwire.pg._wire.DataRowPlan."""

    def __cinit__(self):
        self.action = NULL
        self.kind = NULL
        self.rule = NULL
        self.off = NULL
        self.ln = NULL
        self.scan_end = NULL
        self.scan_col = NULL
        self.hit = NULL
        self.det_counts = NULL
        self.rule_counts = NULL
        self.col_fast = NULL
        self.sbuf = NULL
        self.sbuf_cap = 0
        self.pre_spans = SpanList(NULL, 0, 0, False)
        self.pre_span_first = NULL
        self.pre_span_n = NULL
        self.som_end = NULL
        self.som_val = NULL
        self.col_span_first = NULL
        self.col_span_n = NULL
        self.rep = NULL
        self.rep_len = NULL
        self.rep_first = NULL
        self.rep_n = NULL
        self.col_keep = NULL
        self.row_spans = SpanList(NULL, 0, 0, False)
        self.cur_base = NULL
        self.out_ln = NULL

    def __init__(self, columns, Scanner scanner=None, rule_names=()):
        cdef Py_ssize_t n = len(columns), i
        cdef Py_ssize_t m = n if n > 0 else 1
        self.ncols = n
        self.rule_names = tuple(rule_names)
        self.action = <unsigned char*>PyMem_Malloc(m)
        self.kind = <unsigned char*>PyMem_Malloc(m)
        self.hit = <unsigned char*>PyMem_Malloc(m)
        self.rule = <int*>PyMem_Malloc(m * sizeof(int))
        self.scan_col = <int*>PyMem_Malloc(m * sizeof(int))
        self.off = <Py_ssize_t*>PyMem_Malloc(m * sizeof(Py_ssize_t))
        self.ln = <Py_ssize_t*>PyMem_Malloc(m * sizeof(Py_ssize_t))
        self.scan_end = <Py_ssize_t*>PyMem_Malloc(m * sizeof(Py_ssize_t))
        self.col_fast = <int*>PyMem_Malloc(m * sizeof(int))
        self.col_span_first = <int*>PyMem_Malloc(m * sizeof(int))
        self.col_span_n = <int*>PyMem_Malloc(m * sizeof(int))
        self.rep = <unsigned char*>PyMem_Malloc(m)
        self.rep_len = <Py_ssize_t*>PyMem_Malloc(m * sizeof(Py_ssize_t))
        self.rep_first = <int*>PyMem_Malloc(m * sizeof(int))
        self.rep_n = <int*>PyMem_Malloc(m * sizeof(int))
        self.col_keep = <Py_ssize_t*>PyMem_Malloc(m * sizeof(Py_ssize_t))
        self.out_ln = <Py_ssize_t*>PyMem_Malloc(m * sizeof(Py_ssize_t))
        self.rule_counts = <unsigned long long*>PyMem_Malloc(
            (len(self.rule_names) + 1) * sizeof(unsigned long long))
        self.det_counts = <unsigned long long*>PyMem_Malloc(
            ((scanner.ndet if scanner is not None else 0) + 1) * sizeof(unsigned long long))
        if (self.action == NULL or self.kind == NULL or self.hit == NULL or self.rule == NULL or
                self.scan_col == NULL or self.off == NULL or self.ln == NULL or
                self.scan_end == NULL or self.rule_counts == NULL or self.det_counts == NULL or
                self.col_fast == NULL or self.col_span_first == NULL or self.col_span_n == NULL or
                self.rep == NULL or self.rep_len == NULL or self.rep_first == NULL or
                self.rep_n == NULL or self.col_keep == NULL or self.out_ln == NULL):
            raise MemoryError()
        memset(self.rule_counts, 0, (len(self.rule_names) + 1) * sizeof(unsigned long long))
        memset(self.col_span_n, 0xff, m * sizeof(int))          # -1: no spans from a prescan
        memset(self.det_counts, 0,
               ((scanner.ndet if scanner is not None else 0) + 1) * sizeof(unsigned long long))
        self.col_strategy = []
        self.any_work = False
        self.any_whole = False
        cdef bint detect = False
        for i in range(n):
            action, kind, strategy, rule = columns[i]
            if action not in (ACT_PASS, ACT_WHOLE, ACT_DETECT) or not 0 <= kind <= K_OPAQUE:
                raise ValueError(f"column {i}: bad action/kind {action!r}/{kind!r}")
            if action == ACT_WHOLE and strategy is None:
                raise ValueError(f"column {i}: a WHOLE column needs a strategy")
            if rule is not None and rule >= len(self.rule_names):
                raise ValueError(f"column {i}: rule {rule} out of range")
            if action == ACT_DETECT and kind == K_OPAQUE:
                action = ACT_PASS          # hex text: detectors cannot see into it
            if action == ACT_DETECT and scanner is None:
                action = ACT_PASS
            self.action[i] = action
            self.kind[i] = kind
            self.rule[i] = -1 if rule is None or rule < 0 else rule
            self.col_strategy.append(strategy if action == ACT_WHOLE else None)
            self.col_fast[i] = _fast_code(strategy) if action == ACT_WHOLE else F_PY
            self.col_keep[i] = strategy.keep if action == ACT_WHOLE else 0
            if action == ACT_WHOLE and kind == K_STR and strategy.name == "redact":
                self.col_fast[i] = F_CONST
            if action != ACT_PASS:
                self.any_work = True
            if action == ACT_WHOLE:
                self.any_whole = True
            if action == ACT_DETECT:
                detect = True
        self.scanner = scanner if detect else None

    def __dealloc__(self):
        PyMem_Free(self.action)
        PyMem_Free(self.kind)
        PyMem_Free(self.hit)
        PyMem_Free(self.rule)
        PyMem_Free(self.scan_col)
        PyMem_Free(self.off)
        PyMem_Free(self.ln)
        PyMem_Free(self.scan_end)
        PyMem_Free(self.rule_counts)
        PyMem_Free(self.det_counts)
        PyMem_Free(self.col_fast)
        PyMem_Free(self.pre_row_off)
        PyMem_Free(self.pre_row_first)
        PyMem_Free(self.pre_end)
        PyMem_Free(self.pre_col)
        PyMem_Free(self.pre_hit)
        free(self.sbuf)
        free(self.pre_spans.items)
        PyMem_Free(self.pre_span_first)
        PyMem_Free(self.pre_span_n)
        PyMem_Free(self.som_end)
        PyMem_Free(self.som_val)
        PyMem_Free(self.col_span_first)
        PyMem_Free(self.col_span_n)
        PyMem_Free(self.rep)
        PyMem_Free(self.rep_len)
        PyMem_Free(self.rep_first)
        PyMem_Free(self.rep_n)
        PyMem_Free(self.col_keep)
        PyMem_Free(self.out_ln)
        free(self.row_spans.items)

    @property
    def passthrough(self):
        """True when no column needs anything: the relay need not hand rows to this plan."""
        return not self.any_work

    def actions(self):
        return [(self.action[i], self.kind[i]) for i in range(self.ncols)]

    def take_counts(self):
        """{detector name or "column:<rule>": masked values} since the last call; then reset.
        Counts, never values."""
        out = {}
        cdef Py_ssize_t i
        if self.scanner is not None:
            for i in range(self.scanner.ndet):
                if self.det_counts[i]:
                    out[self.scanner.names[i]] = out.get(self.scanner.names[i], 0) + \
                        self.det_counts[i]
                    self.det_counts[i] = 0
        for i in range(len(self.rule_names)):
            if self.rule_counts[i]:
                key = "column:" + self.rule_names[i]
                out[key] = out.get(key, 0) + self.rule_counts[i]
                self.rule_counts[i] = 0
        return out

    # -- a whole network read at once ----------------------------------------------------------
    # A protocol's row walk hands the plan every row of a read before it rewrites them: a scan
    # call costs far more than the few bytes of a value, so pass 1 for all the read's rows is
    # ONE scan, and the span pass for all the values it flagged one more. The walk calls
    # pre_begin(base, rows, values, bytes), then per row pre_row(its offset from base) and per
    # DETECT value of it pre_value(column, bytes), then pre_finish(); mask_row then takes the
    # prescan's verdict for a row whose values start at base + that offset.

    cdef bint pre_begin(self, const unsigned char* base, int nrows, int nvals,
                        Py_ssize_t total) except -1:
        """Room for nrows rows holding nvals DETECT values of total bytes (each counted with
        one separator); False (no prescan: each row then scans on its own) when the plan has
        no detectors, or memory runs short."""
        self.pre_rows = 0
        self.pre_next = 0
        self.pre_base = NULL
        self.pre_nvals = 0
        self.pre_fill = 0
        self.pre_total = total
        if self.scanner is None or not self.any_work or nrows < 1:
            return False
        if not self._pre_reserve(nrows, nvals):
            return False
        if self._scan_buffer(total if total > 0 else 1) == NULL:
            return False
        self.pre_base = base
        return True

    cdef void pre_row(self, Py_ssize_t off) noexcept:
        self.pre_row_off[self.pre_rows] = off
        self.pre_row_first[self.pre_rows] = self.pre_nvals
        self.pre_rows += 1

    cdef void pre_value(self, int col, const unsigned char* p, Py_ssize_t n) noexcept:
        """A DETECT value (n > 0) of the row last given to pre_row."""
        cdef Py_ssize_t w = self.pre_fill
        memcpy(self.sbuf + w, p, n)
        w += n
        self.sbuf[w] = 10
        self.pre_end[self.pre_nvals] = w
        self.pre_col[self.pre_nvals] = col
        self.pre_hit[self.pre_nvals] = 0
        self.pre_nvals += 1
        self.pre_fill = w + 1

    cdef int pre_finish(self) except -1:
        """Pass 1 over every value given, then the span pass over the flagged ones."""
        cdef Marks marks
        if self.pre_base == NULL:
            return 0
        self.pre_row_first[self.pre_rows] = self.pre_nvals
        if self.pre_fill > 0:
            marks.ends = self.pre_end
            marks.n = self.pre_nvals
            marks.hit = self.pre_hit
            marks.cols = NULL
            marks.cursor = 0
            try:
                self.scanner.find(self.sbuf, self.pre_fill, &marks)
                self._prescan_spans(self.sbuf)
            except BaseException:
                self.pre_rows = 0
                self.pre_base = NULL
                raise
        return 0

    def prescan_flags(self):
        """Tests: the columns the last prescan flagged, per row: [[column, ...], ...]."""
        return [[self.pre_col[k] for k in range(self.pre_row_first[r], self.pre_row_first[r + 1])
                 if self.pre_hit[k]] for r in range(self.pre_rows)]

    cdef int _prescan_spans(self, unsigned char* buf) except -1:
        """After the find pass over the read's values (joined in buf): move the flagged ones
        to the front of buf, run ONE start-of-match scan over them, and hand each value its
        spans (the scan call, not the bytes, is what a per-value scan mostly pays for). A value
        that must be scanned on its own keeps pre_span_n = -1: binary jsonb (offsets differ),
        a match that crosses into a neighbour (a pattern that can match a newline)."""
        cdef int k, j, jend, nsom = 0, keep = 0
        cdef Py_ssize_t start, end, w = 0, vstart, frm, to, r
        cdef Span* sp
        for k in range(self.pre_nvals):
            self.pre_span_n[k] = -1
            if not self.pre_hit[k] or self.kind[self.pre_col[k]] == K_JSONB_BIN:
                continue
            start = self.pre_end[k - 1] + 1 if k > 0 else 0
            end = self.pre_end[k]
            memmove(buf + w, buf + start, end - start)   # only ever towards the front
            w += end - start
            buf[w] = 10
            self.som_end[nsom] = w
            self.som_val[nsom] = k
            self.pre_span_n[k] = 0
            self.pre_span_first[k] = 0
            nsom += 1
            w += 1
        self.pre_spans.n = 0
        if nsom == 0:
            return 0
        self.scanner.scan_spans(buf, w, &self.pre_spans)
        # sorted by start, so each value's spans come together; kept ones are compacted in place
        for r in range(self.pre_spans.n):
            sp = &self.pre_spans.items[r]
            frm = sp.frm
            to = sp.to
            j = _value_holding(self.som_end, nsom, frm + 1)
            vstart = self.som_end[j - 1] + 1 if j > 0 else 0
            if frm < vstart or to > self.som_end[j]:
                jend = _value_holding(self.som_end, nsom, to)
                if frm < vstart and j > 0:
                    j -= 1
                while j <= jend:
                    self.pre_span_n[self.som_val[j]] = -1
                    j += 1
                continue
            k = self.som_val[j]
            if self.pre_span_n[k] < 0:
                continue
            if self.pre_span_n[k] == 0:
                self.pre_span_first[k] = keep
            self.pre_span_n[k] += 1
            self.pre_spans.items[keep].frm = frm - vstart
            self.pre_spans.items[keep].to = to - vstart
            self.pre_spans.items[keep].ident = sp.ident
            keep += 1
        self.pre_spans.n = keep
        return 0

    def prescan_clear(self):
        self.pre_rows = 0
        self.pre_base = NULL
        self.repl = None                  # the last rewritten row's Python values
        _span_trim(&self.pre_spans)       # a plan may outlive a read that was full of hits
        _span_trim(&self.row_spans)

    cdef bint _pre_reserve(self, int nrows, int nvals) except -1:
        cdef int rows_cap = nrows + 1, vals_cap = nvals if nvals > 0 else 1
        if rows_cap > self.pre_rows_cap:
            PyMem_Free(self.pre_row_off)
            PyMem_Free(self.pre_row_first)
            self.pre_row_off = <Py_ssize_t*>PyMem_Malloc(rows_cap * sizeof(Py_ssize_t))
            self.pre_row_first = <int*>PyMem_Malloc(rows_cap * sizeof(int))
            self.pre_rows_cap = rows_cap if self.pre_row_off != NULL and self.pre_row_first != NULL else 0
            if self.pre_rows_cap == 0:
                return False
        if vals_cap > self.pre_vals_cap:
            PyMem_Free(self.pre_end)
            PyMem_Free(self.pre_col)
            PyMem_Free(self.pre_hit)
            PyMem_Free(self.pre_span_first)
            PyMem_Free(self.pre_span_n)
            PyMem_Free(self.som_end)
            PyMem_Free(self.som_val)
            self.pre_end = <Py_ssize_t*>PyMem_Malloc(vals_cap * sizeof(Py_ssize_t))
            self.pre_col = <int*>PyMem_Malloc(vals_cap * sizeof(int))
            self.pre_hit = <unsigned char*>PyMem_Malloc(vals_cap)
            self.pre_span_first = <int*>PyMem_Malloc(vals_cap * sizeof(int))
            self.pre_span_n = <int*>PyMem_Malloc(vals_cap * sizeof(int))
            self.som_end = <Py_ssize_t*>PyMem_Malloc(vals_cap * sizeof(Py_ssize_t))
            self.som_val = <int*>PyMem_Malloc(vals_cap * sizeof(int))
            self.pre_vals_cap = vals_cap if (
                self.pre_end != NULL and self.pre_col != NULL and self.pre_hit != NULL and
                self.pre_span_first != NULL and self.pre_span_n != NULL and
                self.som_end != NULL and self.som_val != NULL) else 0
            if self.pre_vals_cap == 0:
                return False
        return True

    cdef unsigned char* _scan_buffer(self, Py_ssize_t size) noexcept:
        """The plan's pass-1 buffer, at least size bytes (kept between rows and reads);
        NULL when it cannot grow."""
        cdef unsigned char* grown
        cdef Py_ssize_t cap
        if size > self.sbuf_cap:
            cap = size if size > 2 * self.sbuf_cap else 2 * self.sbuf_cap
            if cap < 4096:
                cap = 4096
            grown = <unsigned char*>realloc(self.sbuf, cap)
            if grown == NULL:
                return NULL
            self.sbuf = grown
            self.sbuf_cap = cap
        return self.sbuf

    cdef int _find(self, const unsigned char* buf, Py_ssize_t n) except -1:
        """Pass 1 over the row's DETECT values (scan_end/scan_col): sets hit[column]."""
        cdef Marks marks
        marks.ends = self.scan_end
        marks.n = self.nscan
        marks.hit = self.hit
        marks.cols = self.scan_col
        marks.cursor = 0
        return self.scanner.find(buf, n, &marks)

    # -- per value ---------------------------------------------------------------------------

    cdef int _spans_c(self, int col, const unsigned char* p, Py_ssize_t n) except -1:
        """Pass 2 of a flagged text value without Python objects: its validated spans go to
        row_spans and rep[col] becomes R_SPANS (R_KEEP when no span survives). Returns 0,
        having changed nothing, when a span's strategy needs Python -- hash, format, partial
        over non-ASCII text: the caller then takes _detect_one."""
        cdef Scanner sc = self.scanner
        cdef Py_ssize_t k, newlen = n
        cdef Py_ssize_t first = self.row_spans.n
        cdef Span* sp
        cdef int fast
        if self.col_span_n[col] > 0:
            sc.accept(p, n, None, self.pre_spans.items + self.col_span_first[col],
                      self.col_span_n[col], &self.row_spans)
        else:
            sc.scan_spans(p, n, &sc.spans)
            try:
                sc.accept(p, n, None, sc.spans.items, sc.spans.n, &self.row_spans)
            finally:
                _span_trim(&sc.spans)
        for k in range(first, self.row_spans.n):
            sp = &self.row_spans.items[k]
            fast = sc.sfast[sp.ident]
            if fast == F_REDACT:
                newlen += 4 - (sp.to - sp.frm)
            elif fast != F_PARTIAL or not _is_ascii(p + sp.frm, sp.to - sp.frm):
                self.row_spans.n = first        # hash, format, partial over non-ASCII
                return 0
        if self.row_spans.n == first:
            self.rep[col] = R_KEEP
            return 1
        self.rep[col] = R_SPANS
        self.rep_first[col] = <int>first
        self.rep_n[col] = <int>(self.row_spans.n - first)
        self.rep_len[col] = newlen
        for k in range(first, self.row_spans.n):
            self.det_counts[self.row_spans.items[k].ident] += 1
        return 1

    cdef object _detect_one(self, int col, object value):
        """The replacement of a DETECT value that pass 1 flagged: bytes, NULL_VALUE, or None
        (no validated hit after all). Uses the prescan's spans for it when it has some."""
        cdef int kind = self.kind[col]
        cdef object res
        if self.col_span_n[col] > 0:
            res = self.scanner.apply_spans(value, self.pre_spans.items + self.col_span_first[col],
                                           self.col_span_n[col], self.det_counts)
            if res is None:
                return None
            if kind == K_OTHER:
                return NULL_VALUE
            if kind == K_JSON:
                return _json_safe(value, res)
            return res
        if kind == K_JSONB_BIN:
            if len(value) < 1:
                return None
            res = self.scanner.mask_value(value[1:], self.det_counts)
            if res is None:
                return None
            return value[:1] + _json_safe(value[1:], res)
        res = self.scanner.mask_value(value, self.det_counts)
        if res is None:
            return None
        if kind == K_OTHER:
            return NULL_VALUE
        if kind == K_JSON:
            return _json_safe(value, res)
        return res

    cdef object _whole_one(self, int col, object value):
        cdef int kind = self.kind[col]
        cdef object strategy = self.col_strategy[col]
        cdef object res
        if self.rule[col] >= 0:
            self.rule_counts[self.rule[col]] += 1
        if strategy.whole_is_null or kind == K_OTHER or kind == K_INPLACE:
            return NULL_VALUE
        if kind == K_OPAQUE:
            if strategy.name == "format":
                return REDACTED
            return strategy.whole(value)
        if kind == K_JSONB_BIN:
            return b"\x01" + _json_string(strategy.whole(value[1:]))
        if kind == K_JSON:
            return _json_string(strategy.whole(value))
        return _inline_fast(self.col_fast[col], strategy, value)

    # -- one row, as spans ----------------------------------------------------------------------
    # The protocol's row walk sets off[i] / ln[i] (ln -1: NULL) for every column of a row whose
    # bytes start at `base`, calls mask_row(base), and when it returns non-zero writes the row
    # again in its own framing: out_ln[i] bytes for value i (-1: NULL), written by
    # out_value(plan, i, dst) (inline, in the .pxd: an unchanged value is one memcpy, no call).
    # The plan never reads a byte outside base + off[i] .. + ln[i].

    cdef int mask_row(self, const unsigned char* base) except -1:
        """Pass 1 and pass 2 over the row's values: how many of them change (0: forward the
        row as it is)."""
        cdef Py_ssize_t flen, i, w = 0
        cdef int k, prow, changed, kind, fast
        cdef int ncols = <int>self.ncols
        cdef bint whole = False
        cdef unsigned char* dst
        cdef object r
        self.rows_seen += 1
        if not self.any_work:
            return 0
        # (repl keeps the last R_PY row's objects: entries are read only where rep says R_PY,
        # which this row sets afresh; resetting it per row cost the column-rule case ~2%)
        memset(self.hit, 0, ncols)
        memset(self.col_span_n, 0xff, ncols * sizeof(int))     # -1: no spans from a prescan
        if self.pre_rows and self.pre_next < self.pre_rows and \
                base == self.pre_base + self.pre_row_off[self.pre_next]:
            # a row the prescan of the whole read already looked at: its flags stand for pass 1
            prow = self.pre_next
            self.pre_next += 1
            for k in range(self.pre_row_first[prow], self.pre_row_first[prow + 1]):
                if self.pre_hit[k]:
                    i = self.pre_col[k]
                    self.hit[i] = 1
                    self.col_span_first[i] = self.pre_span_first[k]
                    self.col_span_n[i] = self.pre_span_n[k]
        elif self.scanner is None:
            whole = self.any_whole     # a row whose WHOLE values are all NULL finds no change
            if not whole:
                return 0
        else:
            # pass 1: every DETECT value copied into one buffer, '\n' after each, ONE scan.
            # (One loop both decides and copies: a separate sizing loop cost the 0%-hits
            # microbenchmark 2%.)
            dst = self.sbuf
            self.nscan = 0
            for i in range(ncols):
                flen = self.ln[i]
                if flen < 0:
                    continue
                if self.action[i] == ACT_WHOLE:
                    whole = True
                elif flen > 0 and self.action[i] == ACT_DETECT:
                    if w + flen + 1 > self.sbuf_cap:
                        dst = self._scan_buffer(w + flen + 1)
                        if dst == NULL:
                            raise MemoryError()
                    memcpy(dst + w, base + self.off[i], flen)
                    w += flen
                    dst[w] = 10
                    self.scan_end[self.nscan] = w   # the separator belongs to the value before it
                    self.scan_col[self.nscan] = <int>i
                    self.nscan += 1
                    w += 1
            if w:
                self._find(dst, w)
            elif not whole:
                return 0

        # pass 2: flagged values and whole-masked values. Redact and ASCII partial are written
        # from C arrays; anything else (hash, format, JSON, NULL for other kinds, Python
        # validators) becomes a Python object in repl.
        changed = 0
        self.row_spans.n = 0
        for i in range(ncols):
            self.rep[i] = R_KEEP
            flen = self.ln[i]
            self.out_ln[i] = flen
            if flen < 0:
                continue
            kind = self.kind[i]
            if self.action[i] == ACT_WHOLE:
                fast = self.col_fast[i]
                if fast == F_CONST or (fast == F_PARTIAL and kind == K_STR and
                                       _is_ascii(base + self.off[i], flen)):
                    if self.rule[i] >= 0:
                        self.rule_counts[self.rule[i]] += 1
                    if fast == F_CONST:
                        self.rep[i] = R_CONST
                        self.out_ln[i] = 4
                    else:
                        self.rep[i] = R_PARTIAL
                    changed += 1
                    continue
                r = self._whole_one(<int>i, PyBytes_FromStringAndSize(
                    <const char*>base + self.off[i], flen))
            elif self.hit[i]:
                if (kind == K_STR or kind == K_INPLACE) and \
                        self._spans_c(<int>i, base + self.off[i], flen):
                    if self.rep[i] == R_SPANS:
                        self.out_ln[i] = self.rep_len[i]
                        changed += 1
                    continue
                r = self._detect_one(<int>i, PyBytes_FromStringAndSize(
                    <const char*>base + self.off[i], flen))
            else:
                continue
            if r is None:
                continue
            if self.repl is None:
                self.repl = [None] * ncols
            self.repl[i] = r
            self.rep[i] = R_PY
            self.out_ln[i] = -1 if r is NULL_VALUE else PyBytes_GET_SIZE(r)
            changed += 1
        if changed:
            self.rows_rewritten += 1
        self.cur_base = base
        return changed

    cdef Py_ssize_t out_write(self, Py_ssize_t i, unsigned char* dst) noexcept:
        """After mask_row: write value i as it leaves (out_ln[i] bytes) at dst; that count.
        A protocol calls out_value (hoopwire/_mask.pxd), which copies an unchanged value
        itself."""
        cdef unsigned char rp = self.rep[i]
        cdef Py_ssize_t flen = self.ln[i], w = 0, last = 0, k
        cdef const unsigned char* src = self.cur_base + self.off[i]
        cdef const Span* sp
        cdef object r
        if rp == R_KEEP:
            if flen > 0:
                memcpy(dst, src, flen)
                return flen
            return 0
        if rp == R_CONST:
            memcpy(dst, <const char*>b"****", 4)
            return 4
        if rp == R_PARTIAL:
            return _write_partial(dst, src, flen, self.col_keep[i])
        if rp == R_SPANS:
            for k in range(self.rep_first[i], self.rep_first[i] + self.rep_n[i]):
                sp = &self.row_spans.items[k]
                memcpy(dst + w, src + last, sp.frm - last)
                w += sp.frm - last
                if self.scanner.sfast[sp.ident] == F_REDACT:
                    memcpy(dst + w, <const char*>b"****", 4)
                    w += 4
                else:
                    w += _write_partial(dst + w, src + sp.frm, sp.to - sp.frm,
                                        self.scanner.skeep[sp.ident])
                last = sp.to
            memcpy(dst + w, src + last, flen - last)
            return w + flen - last
        r = self.repl[i]
        if r is NULL_VALUE:
            return 0
        flen = PyBytes_GET_SIZE(r)
        memcpy(dst, PyBytes_AS_STRING(r), flen)
        return flen

    def mask_spans(self, data, spans):
        """The span API from Python (a protocol's tests, slow paths): data is a row's bytes in
        any framing, spans one (offset, length) per column (length -1: NULL). Returns None when
        nothing changes, else one entry per column: None (unchanged), the new bytes, or
        MASKED_NULL (the value must leave as NULL)."""
        cdef bytes buf = bytes(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf), i, off, ln, size
        cdef const unsigned char* base = <const unsigned char*>PyBytes_AS_STRING(buf)
        if len(spans) != self.ncols:
            raise MaskRowError(f"row has {len(spans)} values, the plan {self.ncols} columns")
        for i in range(self.ncols):
            off, ln = spans[i]
            if ln < -1 or off < 0 or (ln > 0 and (off > n or ln > n - off)):
                raise MaskRowError(f"value {i} ({off}, {ln}) is outside the row's {n} bytes")
            self.off[i] = off
            self.ln[i] = ln
        if not self.any_work or self.mask_row(base) == 0:
            return None
        out = []
        for i in range(self.ncols):
            if not out_changed(self, i):
                out.append(None)
                continue
            size = self.out_ln[i]
            if size < 0:
                out.append(MASKED_NULL)
                continue
            v = PyBytes_FromStringAndSize(NULL, size)
            out_value(self, i, <unsigned char*>PyBytes_AS_STRING(v))
            out.append(v)
        return out


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# JSON containers

cdef bytes _json_string(object masked):
    if masked is None:
        return b"null"
    return _json.dumps(masked.decode("utf-8", "replace"), ensure_ascii=False).encode("utf-8")


cdef bytes _json_safe(bytes original, bytes masked):
    """masked if it is still JSON (or the original was not), else the whole value as the JSON
    string "****": in-place masking must never hand a client a json value it cannot parse."""
    try:
        _json.loads(masked)
        return masked
    except ValueError:
        pass
    try:
        _json.loads(original)
    except ValueError:
        return masked
    return b'"****"'
