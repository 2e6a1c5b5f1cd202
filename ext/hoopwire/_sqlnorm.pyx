# cython: language_level=3
"""hoopwire._sqlnorm: a PostgreSQL-dialect SQL normaliser for pattern guardrails.

Guardrail patterns are matched against a *normalised* statement so that spelling cannot hide a
command: `DROP/**/TABLE`, `dRoP\\n\\tTABLE` and `drop table` all read `drop table`, while
`'drop table'` inside a string and `"drop"` as an identifier do not look like the keywords. The
lexer follows PostgreSQL's own (scan.l) token rules closely enough to agree with the server on
where every literal, quoted identifier and comment starts and ends -- that agreement is the whole
point, because text we think is inside a string but the server thinks is code is a bypass.

What it knows (standard_conforming_strings = on, as on every PostgreSQL since 9.1):

* `--` comments to the end of the line and `/* */` comments, which nest (`/* /* */ */`); each
  comment and each run of whitespace becomes one space; leading/trailing space is dropped.
* string literals: '...' with '' escapes; E'...' with backslash escapes; U&'...' with an optional
  `UESCAPE 'c'` clause; B'...', X'...', N'...'; a literal continued on the next line
  ('a'<newline>'b') is one literal, in the first part's escape mode, as in the server.
* dollar-quoted bodies $$...$$ and $tag$...$tag$ (a `$` right after an identifier character is part
  of the identifier, and `$1` is a parameter, not a tag).
* quoted identifiers "..." with "" escapes, and U&"..." (UESCAPE too).
* numbers as PostgreSQL 14 lexes them (so `1e'x'` is the number 1 then the escape string 'x';
  newer servers reject such text outright) plus the 0x/0o/0b and 1_000 forms of PostgreSQL 16.

Outputs (see hoopwire._sqlnorm.pxd):

* code view (`normalize(sql)`): ASCII lower-cased outside literals; every string literal, of any
  kind, and every dollar body becomes `'?'`. A quoted identifier whose name could be written
  bare (a plain identifier that is not a keyword: `"pg_read_file"`, `U&"pg\\005fread_file"`,
  `"Users"`) is written bare and lower-cased -- case folded, since a guardrail should err
  towards matching -- so a rule naming a table or function sees it however it was quoted. Any other quoted identifier (a keyword such as `"drop"`, or one
  with spaces or punctuation) becomes `"_name"`: lower-cased, every byte other than a-z, 0-9
  and _ replaced by `_`, and one `_` in front, so no `\\bkeyword\\b` can match inside it.
* full view (`normalize(sql, keep_literals=True)`): as above, but literals are kept as `'...'`
  (E'' and U&'' decoded, '' doubled, dollar bodies rewritten the same way; B'' and X'' keep their
  prefix) and non-bare quoted identifiers are shown as `"their lower-cased contents"`.

Both views are idempotent: the output, lexed again, gives the same tokens, so
`normalize(normalize(x)) == normalize(x)`; where two output tokens would otherwise touch and lex
as one (`"a"` then `"b"`, a number then a word) a space is put between them.

Nothing here raises on bad input: unterminated literals, comments and identifiers run to the end
of the text; invalid escapes are kept as written; bytes need not be UTF-8.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp, memchr
from cpython.pycapsule cimport PyCapsule_New

from hoopwire.core.dialect cimport CDIALECT_CAPSULE, CDialect

# lex() is nogil so that the audit thread can mask statement texts without the GIL; split mode
# appends to Python lists and is only ever called with the GIL held. These two C helpers do the
# appending without a `with gil` block (PyGILState_Ensure/Release per statement cost the
# guardrails' normaliser 5-10%); Cython is told they need no GIL, which holds for their callers.
cdef extern from *:
    """
    static int hw_append_bytes(PyObject* list, const char* p, Py_ssize_t n) {
        PyObject* b = PyBytes_FromStringAndSize(p, n);
        int r;
        if (b == NULL) return -1;
        r = PyList_Append(list, b);
        Py_DECREF(b);
        return r;
    }
    static int hw_append_last(PyObject* dst, PyObject* src) {
        return PyList_Append(dst, PyList_GET_ITEM(src, PyList_GET_SIZE(src) - 1));
    }
    """
    int hw_append_bytes(object lst, const char* p, Py_ssize_t n) except -1 nogil
    int hw_append_last(object dst, object src) except -1 nogil

__all__ = ["normalize", "normalize_statements", "statement_views", "statement_shape",
           "split_statements", "mask_literals", "KEYWORDS"]

ctypedef unsigned char uchar

cdef uchar CLS[256]
cdef uchar LOWER[256]


cdef void _init_tables() noexcept:
    cdef int c
    for c in range(256):
        CLS[c] = 0
        LOWER[c] = c + 32 if 65 <= c <= 90 else c
        if c in (32, 9, 10, 13, 12, 11):
            CLS[c] |= C_SPACE
        if 65 <= c <= 90 or 97 <= c <= 122 or c == 95 or c >= 128:
            CLS[c] |= C_IDSTART | C_IDCONT | C_GLUE
        if 48 <= c <= 57:
            CLS[c] |= C_DIGIT | C_IDCONT | C_GLUE | C_HEX
        if 65 <= c <= 70 or 97 <= c <= 102:
            CLS[c] |= C_HEX
    CLS[36] |= C_IDCONT | C_GLUE    # $
    CLS[39] |= C_GLUE               # '
    CLS[34] |= C_GLUE               # "


_init_tables()


# ---------------------------------------------------------------------------------------------
# keywords: every PostgreSQL key word (reserved or not, up to PostgreSQL 17). A quoted identifier
# spelled like one of these is never written bare, so `"where"` cannot pass for WHERE.

KEYWORDS = frozenset(b"""
abort absent absolute access action add admin after aggregate all also alter always analyse
analyze and any array as asc asensitive assertion assignment asymmetric at atomic attach attribute
authorization backward before begin between bigint binary bit boolean both breadth by cache call
called cascade cascaded case cast catalog chain char character characteristics check checkpoint
class close cluster coalesce collate collation column columns comment comments commit committed
compression concurrently conditional configuration conflict connection constraint constraints
content continue conversion copy cost create cross csv cube current current_catalog current_date
current_role current_schema current_time current_timestamp current_user cursor cycle data
database day deallocate dec decimal declare default defaults deferrable deferred definer delete
delimiter delimiters depends depth desc detach dictionary disable discard distinct do document
domain double drop each else empty enable encoding encrypted end enum error escape event except
exclude excluding exclusive execute exists explain expression extension external extract false
family fetch filter finalize first float following for force foreign format forward freeze from
full function functions generated global grant granted greatest group grouping groups handler
having header hold hour identity if ilike immediate immutable implicit import in include
including increment indent index indexes inherit inherits initially inline inner inout input
insensitive insert instead int integer intersect interval into invoker is isnull isolation join
json json_array json_arrayagg json_exists json_object json_objectagg json_query json_scalar
json_serialize json_table json_value keep key keys label language large last lateral leading
leakproof least left level like limit listen load local localtime localtimestamp location lock
locked logged mapping match matched materialized maxvalue merge merge_action method minute
minvalue mode month move name names national natural nchar nested new next nfc nfd nfkc nfkd no
none normalize normalized not nothing notify notnull nowait null nullif nulls numeric object of
off offset oids old omit on only operator option options or order ordinality others out outer
over overlaps overlay overriding owned owner parallel parameter parser partial partition passing
password path placing plan plans policy position preceding precision prepare prepared preserve
primary prior privileges procedural procedure procedures program publication quote quotes range
read real reassign recheck recursive ref references referencing refresh reindex relative release
rename repeatable replace replica reset restart restrict return returning returns revoke right
role rollback rollup routine routines row rows rule savepoint scalar schema schemas scroll search
second security select sequence sequences serializable server session session_user set setof
sets share show similar simple skip smallint snapshot some source sql stable standalone start
statement statistics stdin stdout storage stored strict string strip subscription substring
support symmetric sysid system system_user table tables tablesample tablespace target temp
template temporary text then ties time timestamp to trailing transaction transform treat trigger
trim true truncate trusted type types uescape unbounded uncommitted unconditional unencrypted
union unique unknown unlisten unlogged until update user using vacuum valid validate validator
value values varchar variadic varying verbose version view views volatile when where whitespace
window with within without work wrapper write xml xmlattributes xmlconcat xmlelement xmlexists
xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize xmltable year yes zone
""".split())

# the same words as a sorted C array for a binary search without Python objects
cdef list _kw_sorted = sorted(KEYWORDS)
cdef Py_ssize_t _kw_count = len(_kw_sorted)
cdef const char** _kw_ptr = <const char**>malloc(_kw_count * sizeof(char*))
cdef Py_ssize_t* _kw_len = <Py_ssize_t*>malloc(_kw_count * sizeof(Py_ssize_t))
cdef Py_ssize_t _kw_max = 0


cdef void _init_keywords() noexcept:
    global _kw_max
    cdef Py_ssize_t k
    cdef bytes w
    for k in range(_kw_count):
        w = _kw_sorted[k]
        _kw_ptr[k] = PyBytes_AS_STRING(w)   # the bytes live in the module-level list
        _kw_len[k] = PyBytes_GET_SIZE(w)
        if _kw_len[k] > _kw_max:
            _kw_max = _kw_len[k]


_init_keywords()


cdef bint is_keyword(const uchar* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = _kw_count, mid, m
    cdef int r
    if n < 2 or n > _kw_max:
        return False
    while lo < hi:
        mid = (lo + hi) >> 1
        m = _kw_len[mid]
        r = memcmp(p, _kw_ptr[mid], n if n < m else m)
        if r == 0:
            r = -1 if n < m else (1 if n > m else 0)
        if r == 0:
            return True
        if r < 0:
            hi = mid
        else:
            lo = mid + 1
    return False


# ---------------------------------------------------------------------------------------------
# the output buffer

cdef int out_init(Out* o, Py_ssize_t cap, int mode, bint scs=True) except -1 nogil:
    if cap < 64:
        cap = 64
    o.buf = <uchar*>malloc(cap)
    if o.buf == NULL:
        with gil:
            raise MemoryError()
    o.len = 0
    o.cap = cap
    o.mode = mode
    o.pending_space = False
    o.had_token = False
    o.scs = scs
    o.ambiguous = False
    o.shape = False
    return 0


cdef void out_free(Out* o) noexcept nogil:
    if o.buf != NULL:
        free(o.buf)
        o.buf = NULL


cdef int out_grow(Out* o, Py_ssize_t need) except -1 nogil:
    """Make room for `need` more bytes (o.buf may be NULL: first use)."""
    cdef Py_ssize_t cap = o.cap * 2
    cdef uchar* p
    if cap < o.len + need:
        cap = o.len + need + 64
    p = <uchar*>realloc(o.buf, cap)
    if p == NULL:
        with gil:
            raise MemoryError()
    o.buf = p
    o.cap = cap
    return 0


# Every write leaves at least one byte free behind it, so begin_token can put its separating
# space without a check (and without a way to fail).

cdef inline int out_byte(Out* o, uchar c) except -1 nogil:
    if o.len + 2 > o.cap:
        out_grow(o, 2)
    o.buf[o.len] = c
    o.len += 1
    return 0


cdef int out_bytes(Out* o, const uchar* p, Py_ssize_t n) except -1 nogil:
    if o.len + n + 1 > o.cap:
        out_grow(o, n + 1)
    memcpy(o.buf + o.len, p, n)
    o.len += n
    return 0


cdef inline int out_lower(Out* o, const uchar* p, Py_ssize_t n) except -1 nogil:
    cdef Py_ssize_t k
    if o.len + n + 1 > o.cap:
        out_grow(o, n + 1)
    for k in range(n):
        o.buf[o.len + k] = LOWER[p[k]]
    o.len += n
    return 0


cdef int out_utf8(Out* o, unsigned long cp) except -1 nogil:
    if cp < 0x80:
        out_byte(o, <uchar>cp)
    elif cp < 0x800:
        out_byte(o, <uchar>(0xC0 | (cp >> 6)))
        out_byte(o, <uchar>(0x80 | (cp & 0x3F)))
    elif cp < 0x10000:
        out_byte(o, <uchar>(0xE0 | (cp >> 12)))
        out_byte(o, <uchar>(0x80 | ((cp >> 6) & 0x3F)))
        out_byte(o, <uchar>(0x80 | (cp & 0x3F)))
    else:
        out_byte(o, <uchar>(0xF0 | (cp >> 18)))
        out_byte(o, <uchar>(0x80 | ((cp >> 12) & 0x3F)))
        out_byte(o, <uchar>(0x80 | ((cp >> 6) & 0x3F)))
        out_byte(o, <uchar>(0x80 | (cp & 0x3F)))
    return 0


cdef inline void begin_token(Out* o, uchar first) noexcept nogil:
    """Separate the token about to be written from the previous one where needed: one space for
    skipped whitespace/comments, and one where the two would otherwise glue into one token.
    Writes into the byte every write leaves free (o.len > 0 here: something was written)."""
    cdef uchar last
    if o.len > 0:
        last = o.buf[o.len - 1]
        if o.pending_space or ((CLS[last] & C_GLUE) and (CLS[first] & C_GLUE)) or (
                first == 38 and (last == 117 or last == 85) and (
                    o.len == 1 or not (CLS[o.buf[o.len - 2]] & C_IDCONT))):
            # (the last case: the word u followed by & would read as a U& prefix)
            o.buf[o.len] = 32
            o.len += 1
    o.pending_space = False


cdef int out_quoted(Out* o, uchar quote, const uchar* p, Py_ssize_t n,
                    bint backslashes=False) except -1 nogil:
    """quote + p[0:n] with the quote character (and with `backslashes`, the backslash) doubled +
    quote."""
    cdef Py_ssize_t k
    out_byte(o, quote)
    for k in range(n):
        if p[k] == quote or (backslashes and p[k] == 92):
            out_byte(o, p[k])
        out_byte(o, p[k])
    out_byte(o, quote)
    return 0


# ---------------------------------------------------------------------------------------------
# lexing helpers; each takes the text and a position and returns the position after what it read

cdef inline int hexval(uchar c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    c = c | 0x20
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef Py_ssize_t skip_block_comment(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """s[i:i+2] == '/*'. Comments nest; an unterminated one runs to the end."""
    cdef int depth = 1
    i += 2
    while i < n:
        if s[i] == 47 and i + 1 < n and s[i + 1] == 42:       # /*
            depth += 1
            i += 2
        elif s[i] == 42 and i + 1 < n and s[i + 1] == 47:     # */
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


cdef Py_ssize_t skip_line_comment(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """s[i:i+2] == '--'; stops at (does not consume) the newline."""
    i += 2
    while i < n and s[i] != 10 and s[i] != 13:
        i += 1
    return i


cdef Py_ssize_t skip_space_and_comments(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    while i < n:
        if CLS[s[i]] & C_SPACE:
            i += 1
        elif s[i] == 45 and i + 1 < n and s[i + 1] == 45:
            i = skip_line_comment(s, n, i)
        elif s[i] == 47 and i + 1 < n and s[i + 1] == 42:
            i = skip_block_comment(s, n, i)
        else:
            break
    return i


cdef Py_ssize_t continuation(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """After a closing quote at i-1: if whitespace holding a newline (and -- comments, each ended
    by a newline) leads to another quote, the literal continues there (SQL standard); return
    that quote's index, else -1."""
    cdef bint newline = False
    cdef uchar c
    while i < n:
        c = s[i]
        if c == 10 or c == 13:
            newline = True
            i += 1
        elif CLS[c] & C_SPACE:
            i += 1
        elif c == 45 and i + 1 < n and s[i + 1] == 45:
            i = skip_line_comment(s, n, i)
            if i >= n:
                return -1
        else:
            break
    if newline and i < n and s[i] == 39:
        return i
    return -1


cdef Py_ssize_t decode_e_escape(const uchar* s, Py_ssize_t n, Py_ssize_t i, Out* c) except -2 nogil:
    """s[i] is a backslash inside E'...': append what it means to c (or nothing if c is NULL)."""
    cdef uchar e
    cdef unsigned long cp, lo
    cdef int k, v, digits
    if i + 1 >= n:
        if c != NULL:
            out_byte(c, 92)
        return n
    e = s[i + 1]
    i += 2
    if e == 98 or e == 102 or e == 110 or e == 114 or e == 116:   # b f n r t
        if c != NULL:
            out_byte(c, 8 if e == 98 else (12 if e == 102 else (10 if e == 110 else (13 if e == 114 else 9))))
        return i
    if 48 <= e <= 55:                                          # \o, \oo, \ooo
        cp = e - 48
        k = 0
        while k < 2 and i < n and 48 <= s[i] <= 55:
            cp = cp * 8 + (s[i] - 48)
            i += 1
            k += 1
        if c != NULL:
            out_byte(c, <uchar>(cp & 0xFF))
        return i
    if e == 120:                                               # \xh, \xhh
        cp = 0
        k = 0
        while k < 2 and i < n and hexval(s[i]) >= 0:
            cp = cp * 16 + hexval(s[i])
            i += 1
            k += 1
        if c != NULL:
            if k == 0:
                out_byte(c, e)
            else:
                out_byte(c, <uchar>cp)
        return i
    if e == 117 or e == 85:                                    # \uXXXX, \UXXXXXXXX
        digits = 4 if e == 117 else 8
        if i + digits <= n:
            cp = 0
            for k in range(digits):
                v = hexval(s[i + k])
                if v < 0:
                    break
                cp = cp * 16 + v
            else:
                i += digits
                if 0xD800 <= cp <= 0xDBFF and i + 6 <= n and s[i] == 92 and s[i + 1] == 117:
                    lo = 0
                    for k in range(4):
                        v = hexval(s[i + 2 + k])
                        if v < 0:
                            break
                        lo = lo * 16 + v
                    else:
                        if 0xDC00 <= lo <= 0xDFFF:
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                            i += 6
                if c != NULL:
                    if 0 < cp <= 0x10FFFF and not (0xD800 <= cp <= 0xDFFF):
                        out_utf8(c, cp)
                    else:
                        out_byte(c, 63)   # the server rejects it; keep a visible mark
                return i
        if c != NULL:
            out_byte(c, e)
        return i
    if c != NULL:
        out_byte(c, e)
    return i


# scan_string's modes: '' is a quote (standard); backslash escapes too (E'', and '' with
# standard_conforming_strings off); no escape at all (B'', X'': scan.l's xb/xh states have no
# xqdouble rule, so B'1''2' is B'1' then '2' -- a plain literal, in which a backslash may be an
# escape: reading '' as a quote there hid `B'1''\'' ; DROP TABLE t; --'`'s DROP with
# standard_conforming_strings off; found by fuzz/fuzz_sqlnorm_vs_pglast.py)
cdef enum:
    S_STD = 0
    S_ESC = 1
    S_BITS = 2


cdef Py_ssize_t scan_string(const uchar* s, Py_ssize_t n, Py_ssize_t i, int esc, Out* c) except -2 nogil:
    """i is just after an opening single quote. Reads to the closing quote (following line
    continuations in the same escape mode) and returns the index after it, or n if the literal is
    unterminated. With c, the literal's value is appended to it. `esc` is S_STD, S_ESC or
    S_BITS."""
    cdef const uchar* q
    cdef Py_ssize_t j
    while True:
        while i < n:
            if esc != S_ESC:
                q = <const uchar*>memchr(s + i, 39, n - i)
                if q == NULL:
                    if c != NULL:
                        out_bytes(c, s + i, n - i)
                    return n
                j = q - s
                if c != NULL:
                    out_bytes(c, s + i, j - i)
                i = j
            if s[i] == 39:
                if i + 1 < n and s[i + 1] == 39 and esc != S_BITS:
                    if c != NULL:
                        out_byte(c, 39)
                    i += 2
                    continue
                break
            if s[i] == 92:          # only reached with esc
                i = decode_e_escape(s, n, i, c)
                continue
            if c != NULL:
                out_byte(c, s[i])
            i += 1
        if i >= n:
            return n
        j = continuation(s, n, i + 1)
        if j < 0:
            return i + 1
        i = j + 1


cdef Py_ssize_t scan_qident(const uchar* s, Py_ssize_t n, Py_ssize_t i, Out* c) except -2 nogil:
    """i is just after an opening double quote; "" is a quote. Returns the index after the
    closing quote (n if unterminated); the name goes to c."""
    cdef const uchar* q
    cdef Py_ssize_t j
    while i < n:
        q = <const uchar*>memchr(s + i, 34, n - i)
        if q == NULL:
            if c != NULL:
                out_bytes(c, s + i, n - i)
            return n
        j = q - s
        if c != NULL:
            out_bytes(c, s + i, j - i)
        if j + 1 < n and s[j + 1] == 34:
            if c != NULL:
                out_byte(c, 34)
            i = j + 2
            continue
        return j + 1
    return n


cdef Py_ssize_t uescape_clause(const uchar* s, Py_ssize_t n, Py_ssize_t i, uchar* esc) except -2 nogil:
    """After a U& literal or identifier: an optional `UESCAPE 'c'`. Returns the index after the
    clause and sets *esc, or -1 when there is none."""
    cdef Py_ssize_t j = skip_space_and_comments(s, n, i)
    cdef Py_ssize_t k
    cdef Out tmp
    cdef bint e = False
    cdef const char* word = b"uescape"
    if j + 7 > n:
        return -1
    for k in range(7):
        if LOWER[s[j + k]] != <uchar>word[k]:
            return -1
    if j + 7 < n and (CLS[s[j + 7]] & C_IDCONT):
        return -1
    j = skip_space_and_comments(s, n, j + 7)
    if j < n and s[j] == 39:
        j += 1
    elif j + 1 < n and (s[j] | 0x20) == 101 and s[j + 1] == 39:
        e = True
        j += 2
    else:
        return -1
    out_init(&tmp, 16, M_FULL)
    try:
        j = scan_string(s, n, j, S_ESC if e else S_STD, &tmp)
        if tmp.len != 1:
            return -1
        esc[0] = tmp.buf[0]
        return j
    finally:
        out_free(&tmp)


cdef int decode_uescapes(const uchar* p, Py_ssize_t n, uchar esc, Out* c) except -1 nogil:
    """Append p[0:n] to c with U& escapes (esc esc, esc XXXX, esc +XXXXXX) decoded to UTF-8.
    Invalid escapes are copied as written."""
    cdef Py_ssize_t k = 0, m, d
    cdef unsigned long cp, lo
    cdef int v
    cdef bint ok
    while k < n:
        if p[k] != esc:
            out_byte(c, p[k])
            k += 1
            continue
        if k + 1 < n and p[k + 1] == esc:
            out_byte(c, esc)
            k += 2
            continue
        if k + 1 < n and p[k + 1] == 43:        # esc + XXXXXX
            d = 6
            m = k + 2
        else:
            d = 4
            m = k + 1
        ok = m + d <= n
        cp = 0
        if ok:
            for v in range(d):
                if hexval(p[m + v]) < 0:
                    ok = False
                    break
                cp = cp * 16 + hexval(p[m + v])
        if not ok:
            out_byte(c, p[k])
            k += 1
            continue
        m += d
        if 0xD800 <= cp <= 0xDBFF and m + 5 <= n and p[m] == esc and p[m + 1] != 43:
            lo = 0
            for v in range(4):
                if hexval(p[m + 1 + v]) < 0:
                    lo = 0
                    break
                lo = lo * 16 + hexval(p[m + 1 + v])
            if 0xDC00 <= lo <= 0xDFFF:
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                m += 5
        if 0 < cp <= 0x10FFFF and not (0xD800 <= cp <= 0xDFFF):
            out_utf8(c, cp)
        else:
            out_bytes(c, p + k, m - k)
        k = m
    return 0


cdef inline bint radix_digit(uchar r, uchar ch) noexcept nogil:
    if r == 120:
        return hexval(ch) >= 0
    if r == 111:
        return 48 <= ch <= 55
    return ch == 48 or ch == 49


cdef Py_ssize_t scan_number(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """A numeric constant starting at i (a digit, or '.' before a digit)."""
    cdef Py_ssize_t j = i, k
    cdef uchar r
    if s[i] == 48 and i + 2 < n:
        r = s[i + 1] | 0x20
        if r == 120 or r == 111 or r == 98:   # 0x.. 0o.. 0b.. (PostgreSQL 16)
            k = i + 2
            if s[k] == 95 and k + 1 < n:
                k += 1
            if radix_digit(r, s[k]):
                j = k + 1
                while j < n:
                    if radix_digit(r, s[j]):
                        j += 1
                    elif s[j] == 95 and j + 1 < n and radix_digit(r, s[j + 1]):
                        j += 2
                    else:
                        break
                return j
    while j < n and (CLS[s[j]] & C_DIGIT or (
            s[j] == 95 and j > i and j + 1 < n and CLS[s[j + 1]] & C_DIGIT)):
        j += 1
    if j < n and s[j] == 46:
        if j + 1 < n and s[j + 1] == 46:        # 1..10: the integer, then ..
            return j
        j += 1
        while j < n and (CLS[s[j]] & C_DIGIT or (
                s[j] == 95 and CLS[s[j - 1]] & C_DIGIT and j + 1 < n and CLS[s[j + 1]] & C_DIGIT)):
            j += 1
    if j < n and (s[j] | 0x20) == 101:
        k = j + 1
        if k < n and (s[k] == 43 or s[k] == 45):
            k += 1
        if k < n and CLS[s[k]] & C_DIGIT:
            j = k
            while j < n and CLS[s[j]] & C_DIGIT:
                j += 1
    return j


cdef Py_ssize_t dollar_tag(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """s[i] == '$' at a token start: the end of an opening $tag$ delimiter, or -1."""
    cdef Py_ssize_t j = i + 1
    if j < n and s[j] == 36:
        return j + 1
    if j < n and CLS[s[j]] & C_IDSTART:
        j += 1
        while j < n and CLS[s[j]] & C_IDCONT and s[j] != 36:
            j += 1
        if j < n and s[j] == 36:
            return j + 1
    return -1


cdef Py_ssize_t find_tag(const uchar* s, Py_ssize_t n, Py_ssize_t i, const uchar* tag,
                         Py_ssize_t tl) noexcept nogil:
    """The first index >= i where tag[0:tl] occurs, or -1."""
    cdef const uchar* q
    while i + tl <= n:
        q = <const uchar*>memchr(s + i, 36, n - i)
        if q == NULL:
            return -1
        i = q - s
        if i + tl <= n and memcmp(s + i, tag, tl) == 0:
            return i
        i += 1
    return -1


# ---------------------------------------------------------------------------------------------
# emitting the tokens that need more than a copy

cdef int emit_literal(Out* o, const uchar* value, Py_ssize_t vn, uchar prefix) except -1 nogil:
    """A string constant: '?' in the code view, its value in the full view, ? in the mask."""
    if o.mode == M_SPLIT:
        return 0
    if o.mode == M_MASK:
        begin_token(o, 63)
        out_byte(o, 63)
    elif o.mode == M_CODE:
        begin_token(o, 39)
        out_bytes(o, <const uchar*>b"'?'", 3)
    else:
        if prefix:
            begin_token(o, prefix)
            out_byte(o, prefix)
        else:
            begin_token(o, 39)
        # with standard_conforming_strings off, '...' reads backslashes as escapes: double them
        out_quoted(o, 39, value, vn, not o.scs and not prefix)
    return 0


cdef int emit_qident(Out* o, uchar* name, Py_ssize_t nn) except -1 nogil:
    """A quoted identifier's (decoded) name, code or full view. Lower-cases name in place."""
    cdef Py_ssize_t k
    cdef uchar c
    cdef bint plain = nn > 0 and (CLS[name[0]] & C_IDSTART)
    for k in range(nn):
        name[k] = LOWER[name[k]]
        if not (CLS[name[k]] & C_IDCONT):
            plain = False
    if plain and not is_keyword(name, nn) and (o.mode == M_FULL or name[0] != 95):
        begin_token(o, name[0])
        out_bytes(o, name, nn)
        return 0
    begin_token(o, 34)
    if o.mode == M_FULL:
        out_quoted(o, 34, name, nn)
        return 0
    # code view: "_name" with only [a-z0-9_] inside, so that no regex word boundary (which
    # Hyperscan also sees next to $ and non-ASCII bytes) can fall before a letter
    out_byte(o, 34)
    if nn == 0 or name[0] != 95:
        out_byte(o, 95)
    for k in range(nn):
        c = name[k]
        out_byte(o, c if (97 <= c <= 122 or 48 <= c <= 57) else 95)
    out_byte(o, 34)
    return 0


cdef int end_piece(Out* o, const uchar* s, Py_ssize_t start, Py_ssize_t end, list pieces) except -1 nogil:
    if o.mode == M_SPLIT:
        if o.had_token:
            hw_append_bytes(pieces, <const char*>s + start, end - start)
    elif o.len > 0:
        hw_append_bytes(pieces, <const char*>o.buf, o.len)
    o.len = 0
    o.pending_space = False
    o.had_token = False
    return 0


cdef int end_pieces(Out* o, Out* f, const uchar* s, Py_ssize_t start, Py_ssize_t end,
                    list pieces, list fpieces) except -1 nogil:
    """end_piece for both outputs; when the full view of the statement is byte for byte its code
    view (no literals, no quoted keywords), fpieces gets the very same object, so a caller can
    tell with `is` that one scan covers both."""
    if f.len > 0 and f.len == o.len and memcmp(f.buf, o.buf, o.len) == 0:
        end_piece(o, s, start, end, pieces)
        hw_append_last(fpieces, pieces)
        f.len = 0
        f.pending_space = False
        f.had_token = False
        return 0
    end_piece(o, s, start, end, pieces)
    end_piece(f, s, start, end, fpieces)
    return 0


# ---------------------------------------------------------------------------------------------
# the lexer

cdef inline int emit_word(Out* o, const uchar* p, Py_ssize_t n) except -1 nogil:
    """An identifier, keyword, parameter or single byte: lower-cased, or as written in M_MASK."""
    cdef Py_ssize_t k
    cdef uchar* w
    if o == NULL or o.mode == M_SPLIT:
        return 0
    begin_token(o, LOWER[p[0]])
    if o.len + n + 1 > o.cap:
        out_grow(o, n + 1)
    w = o.buf + o.len
    if o.mode == M_MASK:
        memcpy(w, p, n)
    else:
        for k in range(n):
            w[k] = LOWER[p[k]]
    o.len += n
    return 0


cdef inline bint _all_digits(const uchar* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        if not (CLS[p[k]] & C_DIGIT):
            return False
    return True


cdef inline int emit_number(Out* o, const uchar* p, Py_ssize_t n) except -1 nogil:
    if o == NULL or o.mode == M_SPLIT:
        return 0
    if o.mode == M_MASK:
        begin_token(o, 63)
        out_byte(o, 63)
    elif o.shape and _all_digits(p, n):
        # statement_shape: a run of digits, whatever its value and length, is one digit -- the
        # packs read digits only as name bytes, and one integer, the 1 of `WHERE 1 = 1`
        begin_token(o, 48)
        out_byte(o, 49 if n == 1 and p[0] == 49 else 48)
    else:
        begin_token(o, p[0])
        out_lower(o, p, n)
    return 0


cdef inline int emit_string(Out* o, const uchar* value, Py_ssize_t vn, uchar prefix) except -1 nogil:
    if o != NULL:
        emit_literal(o, value, vn, prefix)
    return 0


cdef inline int emit_name(Out* o, const uchar* raw, Py_ssize_t rn, uchar* name,
                          Py_ssize_t nn) except -1 nogil:
    """A quoted identifier: raw[0:rn] is how it was written, name[0:nn] its decoded name."""
    if o == NULL or o.mode == M_SPLIT:
        return 0
    if o.mode == M_MASK:
        begin_token(o, raw[0])
        out_bytes(o, raw, rn)
    else:
        emit_qident(o, name, nn)
    return 0


cdef inline void mark(Out* o, Out* f, bint space) noexcept nogil:
    o.had_token = True
    if space:
        o.pending_space = True
    if f != NULL:
        f.had_token = True
        if space:
            f.pending_space = True


cdef int lex(const uchar* s, Py_ssize_t n, Out* o, bint split, list pieces,
             Out* f=NULL, list fpieces=None) except -1 nogil:
    """Lex s[0:n] once, writing the view o.mode to o and, when f is given, the full view to f
    (split into fpieces) in the same pass. Sets o.ambiguous when a '...' literal holds a
    backslash, i.e. when standard_conforming_strings would change how it reads."""
    cdef Py_ssize_t i = 0, j, k, start = 0
    cdef Py_ssize_t depth = 0
    cdef uchar c, c1, lc, esc
    cdef uchar* w
    cdef bint want = o.mode == M_FULL or f != NULL          # literal values needed
    cdef bint names = o.mode <= M_FULL or f != NULL         # quoted names needed
    cdef Out tmp, dec        # scratch for literal values and decoded names, allocated on first use
    tmp.buf = dec.buf = NULL
    tmp.len = dec.len = tmp.cap = dec.cap = 0
    try:
        while i < n:
            c = s[i]
            if CLS[c] & C_SPACE:
                o.pending_space = True
                if f != NULL:
                    f.pending_space = True
                i += 1
                continue
            if c == 45 and i + 1 < n and s[i + 1] == 45:                   # -- comment
                i = skip_line_comment(s, n, i)
                mark(o, f, True)
                continue
            if c == 47 and i + 1 < n and s[i + 1] == 42:                   # /* comment */
                i = skip_block_comment(s, n, i)
                mark(o, f, True)
                continue
            if c == 59 and split and depth == 0:                           # ; between statements
                if f != NULL:
                    end_pieces(o, f, s, start, i, pieces, fpieces)
                else:
                    end_piece(o, s, start, i, pieces)
                i += 1
                start = i
                continue
            mark(o, f, False)

            if c == 39:                                                    # '...'
                tmp.len = 0
                j = scan_string(s, n, i + 1, S_STD if o.scs else S_ESC, &tmp if want else NULL)
                if o.scs and memchr(s + i, 92, j - i) != NULL:
                    o.ambiguous = True
                emit_string(o, tmp.buf, tmp.len, 0)
                emit_string(f, tmp.buf, tmp.len, 0)
                i = j
                continue

            if c == 34:                                                    # "..."
                tmp.len = 0
                j = scan_qident(s, n, i + 1, &tmp if names else NULL)
                emit_name(o, s + i, j - i, tmp.buf, tmp.len)
                emit_name(f, s + i, j - i, tmp.buf, tmp.len)
                i = j
                continue

            if CLS[c] & C_IDSTART:
                if i + 1 < n:
                    c1 = s[i + 1]
                    lc = c | 0x20
                    if c1 == 39 and (lc == 101 or lc == 98 or lc == 120 or lc == 110):
                        # E'..' (backslash escapes), B'..', X'..', N'..'
                        tmp.len = 0
                        j = scan_string(s, n, i + 2,
                                        S_ESC if lc == 101 or (lc == 110 and not o.scs)
                                        else S_BITS if lc == 98 or lc == 120 else S_STD,
                                        &tmp if want else NULL)
                        if lc == 110 and o.scs and memchr(s + i, 92, j - i) != NULL:
                            o.ambiguous = True
                        lc = lc if (lc == 98 or lc == 120) else 0
                        emit_string(o, tmp.buf, tmp.len, lc)
                        emit_string(f, tmp.buf, tmp.len, lc)
                        i = j
                        continue
                    if lc == 117 and c1 == 38 and i + 2 < n and (s[i + 2] == 39 or s[i + 2] == 34):
                        # U&'..' / U&".." with an optional UESCAPE 'c' after it
                        tmp.len = 0
                        if s[i + 2] == 39:
                            j = scan_string(s, n, i + 3, S_STD, &tmp if want else NULL)
                        else:
                            j = scan_qident(s, n, i + 3, &tmp if names else NULL)
                        esc = 92
                        k = uescape_clause(s, n, j, &esc)
                        if k < 0:
                            k = j
                        dec.len = 0
                        if tmp.len:
                            decode_uescapes(tmp.buf, tmp.len, esc, &dec)
                        if s[i + 2] == 39:
                            emit_string(o, dec.buf, dec.len, 0)
                            emit_string(f, dec.buf, dec.len, 0)
                        else:
                            emit_name(o, s + i, k - i, dec.buf, dec.len)
                            emit_name(f, s + i, k - i, dec.buf, dec.len)
                        i = k
                        continue
                j = i + 1                                                  # identifier / keyword
                if o.mode == M_CODE or o.mode == M_FULL:
                    # the hot path: find the end and lower-case in one pass
                    begin_token(o, LOWER[c])
                    if o.len + (n - i) + 1 > o.cap:
                        out_grow(o, n - i + 1)
                    w = o.buf + o.len
                    w[0] = LOWER[c]
                    while j < n and CLS[s[j]] & C_IDCONT:
                        w[j - i] = LOWER[s[j]]
                        j += 1
                    o.len += j - i
                    if f != NULL:
                        begin_token(f, w[0])
                        out_bytes(f, w, j - i)
                else:
                    while j < n and CLS[s[j]] & C_IDCONT:
                        j += 1
                    emit_word(o, s + i, j - i)
                    emit_word(f, s + i, j - i)
                i = j
                continue

            if CLS[c] & C_DIGIT or (c == 46 and i + 1 < n and CLS[s[i + 1]] & C_DIGIT):
                j = scan_number(s, n, i)                                   # numeric constant
                emit_number(o, s + i, j - i)
                emit_number(f, s + i, j - i)
                i = j
                continue

            if c == 36:                                                    # $
                if i + 1 < n and CLS[s[i + 1]] & C_DIGIT:                  # $1: a parameter
                    j = i + 1
                    while j < n and CLS[s[j]] & C_DIGIT:
                        j += 1
                    emit_word(o, s + i, j - i)
                    emit_word(f, s + i, j - i)
                    i = j
                    continue
                j = dollar_tag(s, n, i)
                if j > 0:                                                  # $tag$ ... $tag$
                    k = find_tag(s, n, j, s + i, j - i)
                    if k < 0:
                        emit_string(o, s + j, n - j, 0)
                        emit_string(f, s + j, n - j, 0)
                        i = n
                    else:
                        emit_string(o, s + j, k - j, 0)
                        emit_string(f, s + j, k - j, 0)
                        i = k + (j - i)
                    continue

            if c == 40:
                depth += 1
            elif c == 41 and depth > 0:
                depth -= 1
            emit_word(o, s + i, 1)                                         # any other byte
            emit_word(f, s + i, 1)
            i += 1
        if split:
            if f != NULL:
                end_pieces(o, f, s, start, n, pieces, fpieces)
            else:
                end_piece(o, s, start, n, pieces)
    finally:
        out_free(&tmp)
        out_free(&dec)
    return 0


# ---------------------------------------------------------------------------------------------
# the Python interface

cdef inline bytes _as_bytes(object sql):
    if type(sql) is bytes:
        return <bytes>sql
    if isinstance(sql, str):
        raise TypeError("expected bytes (the statement as it arrived), got str")
    return bytes(sql)


def normalize(sql, bint keep_literals=False, *, bint standard_conforming_strings=True) -> bytes:
    """The code view of `sql` (or with keep_literals=True the full view), one bytes string.
    Semicolons stay in the text; see normalize_statements for one string per statement.
    standard_conforming_strings=False lexes '...' as the server does with that setting off
    (backslash escapes, like E'...')."""
    cdef bytes b = _as_bytes(sql)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef Out o
    out_init(&o, n + (n >> 2) + 16, M_FULL if keep_literals else M_CODE, standard_conforming_strings)
    try:
        lex(<const uchar*>PyBytes_AS_STRING(b), n, &o, False, None)
        return PyBytes_FromStringAndSize(<const char*>o.buf, o.len)
    finally:
        out_free(&o)


def normalize_statements(sql, bint keep_literals=False, *,
                         bint standard_conforming_strings=True) -> list:
    """Split `sql` on top-level semicolons and normalise each statement in the same pass.
    Statements that normalise to nothing (blank, or only comments) are left out."""
    cdef bytes b = _as_bytes(sql)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef list pieces = []
    cdef Out o
    out_init(&o, n + (n >> 2) + 16, M_FULL if keep_literals else M_CODE, standard_conforming_strings)
    try:
        lex(<const uchar*>PyBytes_AS_STRING(b), n, &o, True, pieces)
        return pieces
    finally:
        out_free(&o)


def statement_views(sql, bint full=False, *, bint standard_conforming_strings=True) -> tuple:
    """One lexer pass for a guardrail: `(code, full_view, ambiguous)` where `code` is
    normalize_statements(sql), `full_view` is normalize_statements(sql, keep_literals=True)
    when `full` is true (else None), and `ambiguous` tells whether a '...' literal holds a
    backslash -- whether the text would read differently with standard_conforming_strings off.
    The two lists pair up statement by statement; where a statement's two views are equal the
    full list holds the same object as the code list."""
    cdef bytes b = _as_bytes(sql)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef list code = [], fpieces = None
    cdef Out o, fo
    out_init(&o, n + (n >> 2) + 16, M_CODE, standard_conforming_strings)
    fo.buf = NULL
    try:
        if full:
            fpieces = []
            out_init(&fo, n + (n >> 2) + 16, M_FULL, standard_conforming_strings)
            lex(<const uchar*>PyBytes_AS_STRING(b), n, &o, True, code, &fo, fpieces)
        else:
            lex(<const uchar*>PyBytes_AS_STRING(b), n, &o, True, code)
        return code, fpieces, bool(o.ambiguous)
    finally:
        out_free(&o)
        out_free(&fo)


def statement_shape(sql, bint full=False):
    """What a verdict on `sql` can depend on, once literals and integers are set aside:
    `(key, code, full_view)`, or None when no such key is safe -- a '...' literal holds a
    backslash (the text reads two ways), or the text holds a 0x00 / 0x01 byte (the key's
    separators).

    `code` and `full_view` are statement_views(sql, full)'s two lists with every integer (a
    run of digits) written `0`, or `1` where it is the integer 1; decimals, exponents, 0x..
    and 1_000 are kept as written. `key` is one bytes object naming both lists: the code
    pieces joined by 0x00, then, when some statement's full view differs from its code view,
    0x01 and the full pieces joined by 0x00. Two texts with the same key have the same pieces,
    so whatever is judged from the pieces can be cached by the key: pgbench's
    `... WHERE aid = 48213` and `... WHERE aid = 7` share one, `WHERE 1 = 1` and `WHERE 2 = 2`
    do not."""
    cdef bytes b = _as_bytes(sql)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef const uchar* s = <const uchar*>PyBytes_AS_STRING(b)
    cdef list code = [], fpieces = None
    cdef Py_ssize_t k, m
    cdef bint differs = False
    cdef Out o, fo
    if memchr(s, 0, n) != NULL or memchr(s, 1, n) != NULL:
        return None
    out_init(&o, n + (n >> 2) + 16, M_CODE)
    o.shape = True
    fo.buf = NULL
    try:
        if full:
            fpieces = []
            out_init(&fo, n + (n >> 2) + 16, M_FULL)
            fo.shape = True
            lex(s, n, &o, True, code, &fo, fpieces)
        else:
            lex(s, n, &o, True, code)
        if o.ambiguous:
            return None
        m = len(code)
        if m == 1 and fpieces is None:
            return code[0], code, fpieces
        if fpieces is not None:
            for k in range(m):
                if fpieces[k] is not code[k]:
                    differs = True
                    break
        if not differs:
            return (code[0] if m == 1 else b"\0".join(code)), code, fpieces
        return b"\0".join(code) + b"\1" + b"\0".join(fpieces), code, fpieces
    finally:
        out_free(&o)
        out_free(&fo)


def split_statements(sql, *, bint standard_conforming_strings=True) -> list:
    """The raw bytes of each statement in `sql`, split on semicolons that are outside literals,
    quoted identifiers, comments, dollar bodies and parentheses; the semicolons themselves are
    dropped, and so are pieces holding only whitespace. (The server splits the same way; a
    semicolon inside parentheses is a syntax error there. `CREATE FUNCTION ... BEGIN ATOMIC ...
    END` bodies are split at their inner semicolons too, which only ever makes a guardrail see
    the body's statements one by one.)"""
    cdef bytes b = _as_bytes(sql)
    cdef list pieces = []
    cdef Out o
    out_init(&o, 16, M_SPLIT, standard_conforming_strings)
    try:
        lex(<const uchar*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), &o, True, pieces)
        return pieces
    finally:
        out_free(&o)


cdef int _mask_text(const uchar* sql, Py_ssize_t n, uchar** out, Py_ssize_t* out_len) \
        except -1 nogil:
    """PostgreSQL's CDialect.mask_literals: mask_literals' lexer pass (standard_conforming_strings
    on), the output left in *out for the caller to free, also when the lexer fails."""
    cdef Out o
    out_init(&o, n + 16, M_MASK, True)
    try:
        lex(sql, n, &o, False, None)
    finally:
        out[0] = o.buf
        out_len[0] = o.len
    return 0


cdef CDialect _C_DIALECT
_C_DIALECT.name = "postgres"
_C_DIALECT.mask_literals = _mask_text


def mask_literals(sql, *, bint standard_conforming_strings=True) -> str:
    """`sql` for an operator log: comments dropped, whitespace folded, every literal, dollar body
    and number replaced by ?, everything else as written (invalid UTF-8 shown as U+FFFD)."""
    cdef bytes b = _as_bytes(sql)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef Out o
    out_init(&o, n + 16, M_MASK, standard_conforming_strings)
    try:
        lex(<const uchar*>PyBytes_AS_STRING(b), n, &o, False, None)
        return PyUnicode_DecodeUTF8(<const char*>o.buf, o.len, "replace")
    finally:
        out_free(&o)


# what the audit's encoder runs without the GIL for this function (ext/hoopwire/core/dialect.pxd)
mask_literals.c_dialect = PyCapsule_New(<void*>&_C_DIALECT, CDIALECT_CAPSULE, NULL)
