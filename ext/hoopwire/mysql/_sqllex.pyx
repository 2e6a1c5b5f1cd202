# cython: language_level=3
"""hoopwire.mysql._sqllex: MySQL and MariaDB's lexical rules, for guardrails and logs.

Guardrail patterns are matched against a *normalised* statement so that spelling cannot hide a
command (`DR/**/OP` is two words, `/*!DROP*/ TABLE` is `drop table`). The lexer follows the
server's own (MariaDB 10.11 sql/sql_lex.cc, lex_one_token) closely enough to agree with it on
where every literal, quoted identifier and comment starts and ends: text we take for a string
but the server for code is a bypass. What it knows:

* whitespace: \\t \\n \\v \\f \\r and space (what my_isspace() is for utf8mb4, ascii, binary);
  0xA0 and 0xFF are spaces too for some single-byte client charsets (latin1, cp1250: 0xA0;
  cp852, cp866, keybcs2: 0xFF -- measured against MariaDB 10.11, tests/test_mysql_lexer.py),
  so text holding them is also read that way (see "readings" below).
* comments: `#` to the end of the line; `--` followed by a space or a control character (so
  `--x` and `1--1` are not comments) to the end of the line; `/* */`, not nested, the first
  `*/` ends it. A line comment also ends at a NUL byte, as the server's does.
* executable comments, which the server RUNS: `/*! ... */` and MariaDB's `/*M! ... */`, and the
  versioned `/*!NNNNN ... */` / `/*M!NNNNNN ... */` (5 digits, or 6 on MariaDB). Their body is
  code: scanned like the text around it, never dropped. The comment ends at the first `*/`
  at a token start (a `*/` inside a string in the body does not end it); a `/* */` inside is a
  plain comment. A versioned comment the server does not run is skipped to its `*/` with one
  nested `/* */` allowed (MariaDB's consume_comment(1)).
* strings '...' and "..." (an identifier under ANSI_QUOTES), with doubled quotes and backslash
  escapes unless NO_BACKSLASH_ESCAPES; N'..', X'..', B'..' and `_charset'..'` introducers.
* identifiers: a run of [A-Za-z0-9_$] and bytes >= 0x80 (`1abc` is a name, `1e5` a number),
  backtick-quoted ones with doubled backticks, and under MariaDB's sql_mode MSSQL [name]
  with ]] for a ] (found against the server: `SELECT 1 AS [x'] ; DROP TABLE t; -- ']` drops
  the table there).
* `;` ends a statement (multi-statements). DELIMITER is the client's: the server never sees it.

Outputs (the same as hoopwire._sqlnorm's, so the same kinds of patterns work on both):

* code view: ASCII lower-cased outside literals, every string literal '?', comments one space,
  executable comment bodies as code. A quoted identifier (`x`, or "x" under ANSI_QUOTES) that
  could be written bare (a plain name that is not a keyword: `load_file`, which the server
  calls as LOAD_FILE()) is written bare and lower-cased; any other becomes `_name` in backticks
  (lower-cased, every byte other than a-z 0-9 _ as _, one _ in front), so no \\bkeyword\\b
  matches inside it.
* full view: the same with literals kept, decoded, written back as '...' (quotes doubled, and
  backslashes doubled where they escape) and non-bare names as `their lower-cased text`.

Readings. How a server lexes a text depends on things the text does not say: sql_mode
(NO_BACKSLASH_ESCAPES, ANSI_QUOTES, MSSQL), the server (MariaDB ignores /*!50700../*!99999, MySQL
ignores /*M!) and its version (which versioned comments run), the client charset (0xA0). The
views are the first reading: the session's mode, every executable comment run. `ambiguous`
says the text holds something another reading could lex differently (a backslash in a literal,
a double quote, a [, a versioned or /*M! comment, a 0xA0 / 0xFF byte). The guardrail engine then
asks for the other readings (statement_views(..., standard_conforming_strings=False), its
name for "the other reading"), and gets the statements of every way a MariaDB or MySQL server
the gateway supports (MySQL 5.6 and later, MariaDB 10.0 and later), in every combination of
those sql_mode bits, could read the text: a rule that matches any of them decides. Versions are
tried as thresholds: one reading per distinct version seen, and one with none of those run
(a versioned comment below 50600 runs on every supported server, so mysqldump's
/*!40101 ... */ is plain code). More than MAX_VERSIONS distinct versions give the UNREADABLE
statement, which the dialect's implied rule blocks. Measured here: a short statement's first
reading costs about what hoopwire._sqlnorm's does (4-7 us on this loaded 2-core machine); the
other readings of an ambiguous one 25-100 us, and verdicts are cached by message.

Nothing here raises on bad input: unterminated literals, comments and identifiers run to the end
of the text (the server answers those with a syntax error, so nothing after them runs).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp, memchr
from cpython.pycapsule cimport PyCapsule_New

import re

from hoopwire.core.dialect cimport CDIALECT_CAPSULE, CDialect

# lex() is nogil so that the audit thread can mask statement texts without the GIL; split mode
# appends to Python lists and is only ever called with the GIL held (see hoopwire._sqlnorm).
cdef extern from *:
    """
    static int hwm_append_bytes(PyObject* list, const char* p, Py_ssize_t n) {
        PyObject* b = PyBytes_FromStringAndSize(p, n);
        int r;
        if (b == NULL) return -1;
        r = PyList_Append(list, b);
        Py_DECREF(b);
        return r;
    }
    static int hwm_append_last(PyObject* dst, PyObject* src) {
        return PyList_Append(dst, PyList_GET_ITEM(src, PyList_GET_SIZE(src) - 1));
    }
    """
    int hwm_append_bytes(object lst, const char* p, Py_ssize_t n) except -1 nogil
    int hwm_append_last(object dst, object src) except -1 nogil

__all__ = ["normalize", "normalize_statements", "statement_views", "statement_shape",
           "split_statements",
           "mask_literals", "views_as", "KEYWORDS", "UNREADABLE", "MODE_NO_BACKSLASH_ESCAPES",
           "MODE_ANSI_QUOTES", "MODE_MSSQL"]

ctypedef unsigned char uchar

# the statement the other readings give when there are too many to try: blocked by the rule
# every MySQL connection with guardrails gets (hoopwire/mysql/dialect.py). A NUL in front: no
# normalised SQL the server would run starts with one.
UNREADABLE = b"\x00hoopwire:unreadable"

# the sql_mode bits `mode=` takes
MODE_NO_BACKSLASH_ESCAPES = SQL_NBE
MODE_ANSI_QUOTES = SQL_ANSI
MODE_MSSQL = SQL_MSSQL

cdef enum:
    C_SPACE = 1      # whitespace the server skips: \t \n \v \f \r space
    C_IDSTART = 2    # may start a bare name: A-Z a-z _ $ and every byte >= 0x80
    C_IDCONT = 4     # may continue one (and start a number or a name): the above plus 0-9
    C_DIGIT = 8
    C_HEX = 16
    C_GLUE = 32      # two tokens touching on such bytes would lex as one: C_IDCONT plus ' " `
    C_HISPACE = 64   # a space for some single-byte client charsets: 0xA0, 0xFF

cdef uchar CLS[256]
cdef uchar LOWER[256]


cdef void _init_tables() noexcept:
    cdef int c
    for c in range(256):
        CLS[c] = 0
        LOWER[c] = c + 32 if 65 <= c <= 90 else c
        if c in (32, 9, 10, 11, 12, 13):
            CLS[c] |= C_SPACE
        if 65 <= c <= 90 or 97 <= c <= 122 or c == 95 or c == 36 or c >= 128:
            CLS[c] |= C_IDSTART | C_IDCONT | C_GLUE
        if 48 <= c <= 57:
            CLS[c] |= C_DIGIT | C_IDCONT | C_GLUE | C_HEX
        if 65 <= c <= 70 or 97 <= c <= 102:
            CLS[c] |= C_HEX
    CLS[39] |= C_GLUE               # '
    CLS[34] |= C_GLUE               # "
    CLS[96] |= C_GLUE               # `
    CLS[0xA0] |= C_HISPACE
    CLS[0xFF] |= C_HISPACE


_init_tables()


# ---------------------------------------------------------------------------------------------
# keywords: MariaDB 10.11's information_schema.KEYWORDS (tests/test_mysql_lexer.py checks this
# list holds every one the server reports) plus MySQL 8's that MariaDB lacks. A quoted
# identifier spelled like one of these is never written bare, so `drop` cannot pass for DROP.

KEYWORDS = frozenset(b"""
!= && << <= <=> <> >= >> accessible account action add admin after against aggregate algorithm all
alter always analyze and any as asc ascii asensitive at atomic authors auto auto_increment
autoextend_size avg avg_row_length backup before begin between bigint binary binlog bit blob block
body bool boolean both btree by byte cache call cascade cascaded case catalog_name chain change
changed channel char character charset check checkpoint checksum cipher class_origin client clob
close coalesce code collate collation column column_add column_check column_create column_delete
column_get column_name columns comment commit committed compact completion compressed concurrent
condition connection consistent constraint constraint_catalog constraint_name constraint_schema
contains context continue contributors convert cpu create cross cube current current_date
current_pos current_role current_time current_timestamp current_user cursor cursor_name cycle data
database databases datafile date datetime day day_hour day_microsecond day_minute day_second
deallocate dec decimal declare default definer delay_key_write delayed delete delete_domain_id
des_key_file desc describe deterministic diagnostics directory disable discard disk distinct
distinctrow div do do_domain_ids double drop dual dumpfile duplicate dynamic each else elseif
elsif empty enable enclosed end ends engine engines enum error errors escape escaped event events
every examined except exception exchange exclude execute exists exit expansion expire explain
export extended extent_size false fast faults federated fetch fields file first fixed float float4
float8 flush following follows for force foreign format found from full fulltext function general
generated get get_format global goto grant grants group handler hard hash having help
high_priority history host hosts hour hour_microsecond hour_minute hour_second id identified if
ignore ignore_domain_ids ignore_server_ids ignored immediate import in increment index indexes
infile initial_size inner inout insensitive insert insert_method install int int1 int2 int3 int4
int8 integer intersect interval into invisible invoker io io_thread ipc is isolation isopen issuer
iterate join json json_table key key_block_size keys kill language last last_value lastval leading
leave leaves left less level like limit linear lines list load local localtime localtimestamp lock
locked locks logfile logs long longblob longtext loop low_priority master master_connect_retry
master_delay master_demote_to_replica master_demote_to_slave master_gtid_pos
master_heartbeat_period master_host master_log_file master_log_pos master_password master_port
master_server_id master_ssl master_ssl_ca master_ssl_capath master_ssl_cert master_ssl_cipher
master_ssl_crl master_ssl_crlpath master_ssl_key master_ssl_verify_server_cert master_use_gtid
master_user match max_connections_per_hour max_queries_per_hour max_rows max_size
max_statement_time max_updates_per_hour max_user_connections maxvalue medium mediumblob mediumint
mediumtext memory merge message_text microsecond middleint migrate min_rows minus minute
minute_microsecond minute_second minvalue mod mode modifies modify monitor month mutex mysql
mysql_errno name names national natural nchar nested never next nextval no no_wait
no_write_to_binlog nocache nocycle nodegroup nomaxvalue nominvalue none not notfound nowait null
number numeric nvarchar of offset old_password on one online only open optimize option optionally
options or order ordinality others out outer outfile over overlaps owner pack_keys package page
page_checksum parse_vcol_expr parser partial partition partitioning partitions password path
period persist persist_only persistent phase plugin plugins port portion precedes preceding
precision prepare preserve prev previous primary privileges procedure process processlist profile
profiles proxy purge quarter query quick raise range raw read read_only read_write reads real
rebuild recover recursive redo_buffer_size redofile redundant ref_system_id references regexp
relay relay_log_file relay_log_pos relay_thread relaylog release reload remove rename reorganize
repair repeat repeatable replace replay replica replica_pos replicas replication require reset
resignal restart restore restrict resume return returned_sqlstate returning returns reuse reverse
revoke right rlike role rollback rollup routine row row_count row_format row_number rowcount
rownum rows rowtype rtree savepoint schedule schema schema_name schemas second second_microsecond
security select sensitive separator sequence serial serializable server session set setval share
show shutdown signal signed simple skip slave slave_pos slaves slow smallint snapshot socket soft
some soname sounds source spatial specific sql sql_big_result sql_buffer_result sql_cache
sql_calc_found_rows sql_no_cache sql_small_result sql_thread sql_tsi_day sql_tsi_hour
sql_tsi_minute sql_tsi_month sql_tsi_quarter sql_tsi_second sql_tsi_week sql_tsi_year sqlexception
sqlstate sqlwarning ssl stage start starting starts statement stats_auto_recalc stats_persistent
stats_sample_pages status stop storage stored straight_join string subclass_origin subject
subpartition subpartitions super suspend swaps switches sysdate system system_time table
table_checksum table_name tables tablespace temporary temptable terminated text than then threads
ties time timestamp timestampadd timestampdiff tinyblob tinyint tinytext to trailing transaction
transactional trigger triggers true truncate type unbounded uncommitted undefined undo
undo_buffer_size undofile unicode uninstall union unique unknown unlock unsigned until update
upgrade usage use use_frm user user_resources using utc_date utc_time utc_timestamp value values
varbinary varchar varchar2 varcharacter variables varying versioning via view virtual visible wait
warnings week weight_string when where while window with within without work wrapper write x509 xa
xml xor year year_month zerofill ||
""".split())

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
# the output buffer (every write leaves one byte free for begin_token's separating space)

cdef int out_init(Out* o, Py_ssize_t cap, int mode) except -1 nogil:
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
    o.r.nbe = False
    o.r.ansi = False
    o.r.mssql = False
    o.r.hispace = False
    o.r.server = SV_ANY
    o.r.version = 0
    o.ambiguous = False
    o.dynamic = False
    o.shape = False
    o.nversions = 0
    o.too_many = False
    return 0


cdef void out_free(Out* o) noexcept nogil:
    if o.buf != NULL:
        free(o.buf)
        o.buf = NULL


cdef int out_grow(Out* o, Py_ssize_t need) except -1 nogil:
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


cdef inline void begin_token(Out* o, uchar first) noexcept nogil:
    """One space before the token about to be written where whitespace or a comment was skipped,
    or where the two would otherwise lex as one: two name/number/quote bytes touching, or two
    '-' (`--` then a space would read as a comment)."""
    cdef uchar last
    if o.len > 0:
        last = o.buf[o.len - 1]
        if o.pending_space or ((CLS[last] & C_GLUE) and (CLS[first] & C_GLUE)) or (
                last == 45 and first == 45):
            o.buf[o.len] = 32
            o.len += 1
    o.pending_space = False


cdef int out_quoted(Out* o, uchar quote, const uchar* p, Py_ssize_t n,
                    bint backslashes) except -1 nogil:
    """quote + p[0:n] with the quote (and with `backslashes` the backslash) doubled + quote."""
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

cdef inline bint is_space(uchar c, const Reading* r) noexcept nogil:
    return (CLS[c] & C_SPACE) or (r.hispace and (CLS[c] & C_HISPACE))


cdef Py_ssize_t skip_line_comment(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """From i (after `#` or `-- `) to (not past) the newline or NUL that ends the comment."""
    while i < n and s[i] != 10 and s[i] != 0:
        i += 1
    return i


cdef Py_ssize_t consume_comment(const uchar* s, Py_ssize_t n, Py_ssize_t i,
                                bint nested) noexcept nogil:
    """i is inside a comment: the index after the `*/` that closes it (n if none does). With
    `nested`, one level of /* */ inside is skipped whole (a versioned comment not run)."""
    cdef uchar c
    while i < n:
        c = s[i]
        i += 1
        if nested and c == 47 and i < n and s[i] == 42:
            i = consume_comment(s, n, i + 1, False)
            continue
        if c == 42 and i < n and s[i] == 47:
            return i + 1
    return n


cdef inline bint is_word(const uchar* p, const char* w) noexcept nogil:
    """p[0:len(w)] is the lower-case word w, in any case."""
    cdef Py_ssize_t k = 0
    while w[k] != 0:
        if LOWER[p[k]] != <uchar>w[k]:
            return False
        k += 1
    return True


cdef inline bint digit_at(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    return i < n and (CLS[s[i]] & C_DIGIT) != 0


cdef void remember_version(Out* o, unsigned long v) noexcept nogil:
    cdef int k
    for k in range(o.nversions):
        if o.versions[k] == v:
            return
    if o.nversions < MAX_VERSIONS:
        o.versions[o.nversions] = v
        o.nversions += 1
    else:
        o.too_many = True


cdef Py_ssize_t scan_string(const uchar* s, Py_ssize_t n, Py_ssize_t i, uchar sep, bint esc,
                            Out* c) except -2 nogil:
    """i is just after an opening quote `sep`. Reads to the closing one ('' doubled; with `esc`
    a backslash escapes the next byte) and returns the index after it, n if unterminated. With
    c, the literal's value is appended to it (escapes decoded as the server does)."""
    cdef uchar ch, e
    while i < n:
        ch = s[i]
        if ch == 92 and esc:
            if i + 1 >= n:
                return n
            if c != NULL:
                e = s[i + 1]
                if e == 110:
                    out_byte(c, 10)
                elif e == 116:
                    out_byte(c, 9)
                elif e == 114:
                    out_byte(c, 13)
                elif e == 98:
                    out_byte(c, 8)
                elif e == 48:
                    out_byte(c, 0)
                elif e == 90:
                    out_byte(c, 26)
                elif e == 95 or e == 37:         # \_ and \% keep their backslash (LIKE)
                    out_byte(c, 92)
                    out_byte(c, e)
                else:
                    out_byte(c, e)
            i += 2
            continue
        if ch == sep:
            if i + 1 < n and s[i + 1] == sep:
                if c != NULL:
                    out_byte(c, sep)
                i += 2
                continue
            return i + 1
        if c != NULL:
            out_byte(c, ch)
        i += 1
    return n


cdef Py_ssize_t scan_bits(const uchar* s, Py_ssize_t n, Py_ssize_t i, Out* c) except -2 nogil:
    """X'..' / B'..': i is after the quote; digits only, to the next quote (no escapes)."""
    cdef const uchar* q = <const uchar*>memchr(s + i, 39, n - i)
    cdef Py_ssize_t j = n if q == NULL else q - s
    if c != NULL:
        out_bytes(c, s + i, j - i)
    return n if q == NULL else j + 1


cdef Py_ssize_t scan_qident(const uchar* s, Py_ssize_t n, Py_ssize_t i, uchar quote,
                            Out* c) except -2 nogil:
    """i is after an opening backtick (or " under ANSI_QUOTES); a doubled one is one. Returns
    the index after the closing one (n if unterminated); the name goes to c."""
    cdef const uchar* q
    cdef Py_ssize_t j
    while i < n:
        q = <const uchar*>memchr(s + i, quote, n - i)
        if q == NULL:
            if c != NULL:
                out_bytes(c, s + i, n - i)
            return n
        j = q - s
        if c != NULL:
            out_bytes(c, s + i, j - i)
        if j + 1 < n and s[j + 1] == quote:
            if c != NULL:
                out_byte(c, quote)
            i = j + 2
            continue
        return j + 1
    return n


cdef Py_ssize_t scan_number_or_name(const uchar* s, Py_ssize_t n, Py_ssize_t i,
                                    bint* number) noexcept nogil:
    """A token starting with a digit (or '.' before one): a number, or a name such as 1abc or
    0xZZ (digits followed by name bytes are a name in MySQL). Sets *number."""
    cdef Py_ssize_t j = i
    number[0] = True
    while j < n and CLS[s[j]] & C_DIGIT:
        j += 1
    if j < n and (CLS[s[j]] & C_IDCONT) and s[j] != 46:
        if (s[j] | 0x20) == 101 and (digit_at(s, n, j + 1) or (
                j + 1 < n and (s[j + 1] == 43 or s[j + 1] == 45) and digit_at(s, n, j + 2))):
            j += 2                                   # 1e5, 1e+5, 1E-5: stops after the digits
            while j < n and CLS[s[j]] & C_DIGIT:
                j += 1
            return j
        number[0] = False                            # 1abc, 0x1g, 12345_6: one name
        while j < n and CLS[s[j]] & C_IDCONT:
            j += 1
        return j
    if j < n and s[j] == 46 and not (j + 1 < n and s[j + 1] == 46):
        j += 1                                       # 1.5, .5, 1.
        while j < n and CLS[s[j]] & C_DIGIT:
            j += 1
        if j < n and (s[j] | 0x20) == 101:
            if digit_at(s, n, j + 1):
                j += 1
            elif j + 1 < n and (s[j + 1] == 43 or s[j + 1] == 45) and digit_at(s, n, j + 2):
                j += 2
            else:
                return j
            while j < n and CLS[s[j]] & C_DIGIT:
                j += 1
    return j


# ---------------------------------------------------------------------------------------------
# emitting tokens

cdef int emit_word(Out* o, const uchar* p, Py_ssize_t n) except -1 nogil:
    """A name, keyword or single byte: lower-cased, or as written in M_MASK."""
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


cdef int emit_number(Out* o, const uchar* p, Py_ssize_t n) except -1 nogil:
    if o == NULL or o.mode == M_SPLIT:
        return 0
    if o.mode == M_MASK:
        begin_token(o, 63)
        out_byte(o, 63)
        return 0
    if o.shape and _all_digits(p, n):
        # statement_shape: an integer as one of four, the classes the packs tell apart --
        # unbounded-write reads `where 0` apart from `where not 0`, `where [1-9][0-9]*` and
        # `where 1 = 1`, and a leading zero (`where 01`, true on the server) fails all three;
        # every other pattern reads a digit only as a name byte
        if n == 1 and (p[0] == 48 or p[0] == 49):
            return emit_word(o, p, 1)                               # 0, 1
        if p[0] == 48:
            return emit_word(o, <const uchar*>b"00", 2)             # 00, 01, 007
        return emit_word(o, <const uchar*>b"2", 1)                  # 2-9, 10, 48213
    return emit_word(o, p, n)


cdef int emit_literal(Out* o, const uchar* value, Py_ssize_t vn, uchar prefix) except -1 nogil:
    """A string constant: '?' in the code view, its value in the full view, ? in the mask."""
    if o == NULL or o.mode == M_SPLIT:
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
        # where backslashes escape, the value's own backslashes are written doubled
        out_quoted(o, 39, value, vn, not o.r.nbe and not prefix)
    return 0


cdef int emit_name(Out* o, const uchar* raw, Py_ssize_t rn, uchar* name,
                   Py_ssize_t nn) except -1 nogil:
    """A quoted identifier: raw[0:rn] as written, name[0:nn] its name (lower-cased in place)."""
    cdef Py_ssize_t k
    cdef uchar c
    cdef bint plain
    if o == NULL or o.mode == M_SPLIT:
        return 0
    if o.mode == M_MASK:
        begin_token(o, raw[0])
        out_bytes(o, raw, rn)
        return 0
    plain = nn > 0 and (CLS[name[0]] & C_IDSTART)
    for k in range(nn):
        name[k] = LOWER[name[k]]
        if not (CLS[name[k]] & C_IDCONT):
            plain = False
    if plain and not is_keyword(name, nn) and (o.mode == M_FULL or name[0] != 95):
        begin_token(o, name[0])
        out_bytes(o, name, nn)
        return 0
    begin_token(o, 96)
    if o.mode == M_FULL:
        out_quoted(o, 96, name, nn, False)
        return 0
    # code view: `_name` with only [a-z0-9_] inside, so no regex word boundary (which Hyperscan
    # also sees next to $ and non-ASCII bytes) can fall before a letter
    out_byte(o, 96)
    if nn == 0 or name[0] != 95:
        out_byte(o, 95)
    for k in range(nn):
        c = name[k]
        out_byte(o, c if (97 <= c <= 122 or 48 <= c <= 57) else 95)
    out_byte(o, 96)
    return 0


cdef int end_piece(Out* o, const uchar* s, Py_ssize_t start, Py_ssize_t end,
                   list pieces) except -1 nogil:
    if o.mode == M_SPLIT:
        if o.had_token:
            hwm_append_bytes(pieces, <const char*>s + start, end - start)
    elif o.len > 0:
        hwm_append_bytes(pieces, <const char*>o.buf, o.len)
    o.len = 0
    o.pending_space = False
    o.had_token = False
    return 0


cdef int end_pieces(Out* o, Out* f, const uchar* s, Py_ssize_t start, Py_ssize_t end,
                    list pieces, list fpieces) except -1 nogil:
    """end_piece for both views; when the full view of the statement is byte for byte its code
    view, fpieces gets the very same object (the engine then scans it once)."""
    if f.len > 0 and f.len == o.len and memcmp(f.buf, o.buf, o.len) == 0:
        end_piece(o, s, start, end, pieces)
        hwm_append_last(fpieces, pieces)
        f.len = 0
        f.pending_space = False
        f.had_token = False
        return 0
    end_piece(o, s, start, end, pieces)
    end_piece(f, s, start, end, fpieces)
    return 0


cdef inline void mark(Out* o, Out* f, bint space) noexcept nogil:
    o.had_token = True
    if space:
        o.pending_space = True
    if f != NULL:
        f.had_token = True
        if space:
            f.pending_space = True


cdef inline void gap(Out* o, Out* f) noexcept nogil:
    """Whitespace, a comment, or an executable comment's marker: one space in the views."""
    o.pending_space = True
    if f != NULL:
        f.pending_space = True


# ---------------------------------------------------------------------------------------------
# the lexer

cdef int lex(const uchar* s, Py_ssize_t n, Out* o, bint split, list pieces,
             Out* f=NULL, list fpieces=None) except -1 nogil:
    cdef Py_ssize_t i = 0, j, k, start = 0, length
    cdef uchar c, lc
    cdef bint in_exec = False     # inside an executable comment the server runs: `*/` ends it
    cdef bint maria, run, number
    cdef unsigned long version
    cdef const Reading* r = &o.r
    cdef bint want = o.mode == M_FULL or f != NULL          # literal values needed
    cdef bint names = o.mode <= M_FULL or f != NULL         # quoted names needed
    cdef Out tmp                  # scratch for literal values and names, allocated on first use
    tmp.buf = NULL
    tmp.len = tmp.cap = 0
    try:
        while i < n:
            c = s[i]
            if CLS[c] & C_SPACE:
                gap(o, f)
                i += 1
                continue
            if CLS[c] & C_HISPACE:
                o.ambiguous = True
                if r.hispace:
                    gap(o, f)
                    i += 1
                    continue
                # else a name byte in this reading: lexed below
            if c == 35:                                                    # # comment
                i = skip_line_comment(s, n, i + 1)
                mark(o, f, True)
                continue
            if c == 45 and i + 1 < n and s[i + 1] == 45 and (
                    i + 2 >= n or s[i + 2] <= 32 or s[i + 2] == 127
                    or (CLS[s[i + 2]] & C_HISPACE)):                      # -- comment
                if i + 2 < n and CLS[s[i + 2]] & C_HISPACE:
                    o.ambiguous = True
                    if not r.hispace:
                        emit_word(o, s + i, 1)           # '-': `--\xa0` is two minus signs
                        emit_word(f, s + i, 1)
                        mark(o, f, False)
                        i += 1
                        continue
                i = skip_line_comment(s, n, i + 2)
                mark(o, f, True)
                continue
            if c == 47 and i + 1 < n and s[i + 1] == 42:                   # /* ...
                maria = i + 3 < n and s[i + 2] == 77 and s[i + 3] == 33
                if (i + 2 < n and s[i + 2] == 33) or maria:
                    k = i + (4 if maria else 3)
                    if maria:
                        o.ambiguous = True                  # MySQL takes it for a comment
                    if maria and r.server == SV_MYSQL:
                        i = consume_comment(s, n, i + 2, False)
                        mark(o, f, True)
                        continue
                    if (digit_at(s, n, k) and digit_at(s, n, k + 1) and digit_at(s, n, k + 2)
                            and digit_at(s, n, k + 3) and digit_at(s, n, k + 4)):
                        length = 5
                        if digit_at(s, n, k + 5) and r.server != SV_MYSQL:
                            length = 6                      # MariaDB: 100000 is 10.0.0; MySQL
                                                            # reads 5 digits, the 6th is code
                            # ... so MySQL reads other code: `WHERE /*!000001*/` is WHERE
                            # there and WHERE 1 on MySQL, whatever the version
                            o.ambiguous = True
                        version = 0
                        for j in range(length):
                            version = version * 10 + (s[k + j] - 48)
                        if version >= SUPPORTED_MIN or maria:
                            remember_version(o, version)
                            o.ambiguous = True
                        if r.server == SV_ANY or (version < SUPPORTED_MIN and not maria):
                            run = True
                        elif r.server == SV_MARIADB:
                            run = version <= r.version and (
                                version < 50700 or version > 99999 or maria)
                        else:
                            run = version <= r.version
                        if not run:
                            i = consume_comment(s, n, k, True)
                            mark(o, f, True)
                            continue
                        k += length
                    in_exec = True                  # the body is code
                    i = k
                    mark(o, f, True)
                    continue
                i = consume_comment(s, n, i + 2, False)
                mark(o, f, True)
                continue
            if c == 42 and in_exec and i + 1 < n and s[i + 1] == 47:      # */ ends /*! ... */
                in_exec = False
                i += 2
                mark(o, f, True)
                continue
            if c == 59 and split:                                          # ; between statements
                if f != NULL:
                    end_pieces(o, f, s, start, i, pieces, fpieces)
                else:
                    end_piece(o, s, start, i, pieces)
                i += 1
                start = i
                in_exec = False     # the server lexes each statement afresh (Lex_input_stream::reset)
                continue
            mark(o, f, False)

            if c == 39 or (c == 34 and not r.ansi):                        # '...' "..."
                if c == 34:
                    o.ambiguous = True                       # an identifier under ANSI_QUOTES
                tmp.len = 0
                j = scan_string(s, n, i + 1, c, not r.nbe, &tmp if want else NULL)
                if memchr(s + i, 92, j - i) != NULL:
                    o.ambiguous = True               # NO_BACKSLASH_ESCAPES would read it otherwise
                emit_literal(o, tmp.buf, tmp.len, 0)
                emit_literal(f, tmp.buf, tmp.len, 0)
                i = j
                continue

            if c == 91:
                o.ambiguous = True                  # a name under MariaDB's sql_mode MSSQL
            if c == 96 or c == 34 or (c == 91 and r.mssql):                # `name`, "name", [name]
                if c == 34:
                    o.ambiguous = True
                tmp.len = 0
                j = scan_qident(s, n, i + 1, 93 if c == 91 else c, &tmp if names else NULL)
                if c == 34 and memchr(s + i, 92, j - i) != NULL:
                    o.ambiguous = True
                emit_name(o, s + i, j - i, tmp.buf, tmp.len)
                emit_name(f, s + i, j - i, tmp.buf, tmp.len)
                i = j
                continue

            if CLS[c] & C_IDSTART:
                if i + 1 < n and s[i + 1] == 39:
                    lc = c | 0x20
                    if lc == 110:                                          # N'...'
                        tmp.len = 0
                        j = scan_string(s, n, i + 2, 39, not r.nbe, &tmp if want else NULL)
                        if memchr(s + i, 92, j - i) != NULL:
                            o.ambiguous = True
                        emit_literal(o, tmp.buf, tmp.len, 0)
                        emit_literal(f, tmp.buf, tmp.len, 0)
                        i = j
                        continue
                    if lc == 120 or lc == 98:                              # X'..', B'..'
                        tmp.len = 0
                        j = scan_bits(s, n, i + 2, &tmp if want else NULL)
                        emit_literal(o, tmp.buf, tmp.len, lc)
                        emit_literal(f, tmp.buf, tmp.len, lc)
                        i = j
                        continue
                j = i + 1                                                  # a name or keyword
                while j < n and CLS[s[j]] & C_IDCONT:
                    if CLS[s[j]] & C_HISPACE:
                        o.ambiguous = True
                        if r.hispace:
                            break
                    j += 1
                if j - i == 7 and (LOWER[c] == 112 or LOWER[c] == 101):
                    if is_word(s + i, b"prepare") or is_word(s + i, b"execute"):
                        o.dynamic = True
                emit_word(o, s + i, j - i)
                emit_word(f, s + i, j - i)
                i = j
                continue

            if CLS[c] & C_DIGIT or (c == 46 and i + 1 < n and CLS[s[i + 1]] & C_DIGIT):
                j = scan_number_or_name(s, n, i, &number)
                if not number:
                    # a name such as 7\xa0as: it ends at a byte some charsets take for a space
                    k = i
                    while k < j and not (CLS[s[k]] & C_HISPACE):
                        k += 1
                    if k < j:
                        o.ambiguous = True
                        if r.hispace:
                            j = k
                if number:
                    emit_number(o, s + i, j - i)
                    emit_number(f, s + i, j - i)
                else:
                    emit_word(o, s + i, j - i)
                    emit_word(f, s + i, j - i)
                i = j
                continue

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
    return 0


# ---------------------------------------------------------------------------------------------
# the Python interface

cdef inline bytes _as_bytes(object sql):
    if type(sql) is bytes:
        return <bytes>sql
    if isinstance(sql, str):
        raise TypeError("expected bytes (the statement as it arrived), got str")
    return bytes(sql)


cdef inline void _set_mode(Out* o, int mode) noexcept:
    o.r.nbe = (mode & SQL_NBE) != 0
    o.r.ansi = (mode & SQL_ANSI) != 0
    o.r.mssql = (mode & SQL_MSSQL) != 0


def normalize(sql, bint keep_literals=False, *, int mode=0) -> bytes:
    """The code view of `sql` (keep_literals=True: the full view), one bytes string; `;` stays
    in the text. `mode`: the sql_mode bits (MODE_NO_BACKSLASH_ESCAPES, MODE_ANSI_QUOTES)."""
    cdef bytes b = _as_bytes(sql)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef Out o
    out_init(&o, n + (n >> 2) + 16, M_FULL if keep_literals else M_CODE)
    _set_mode(&o, mode)
    try:
        lex(<const uchar*>PyBytes_AS_STRING(b), n, &o, False, None)
        return PyBytes_FromStringAndSize(<const char*>o.buf, o.len)
    finally:
        out_free(&o)


def normalize_statements(sql, bint keep_literals=False, *, int mode=0) -> list:
    """Split `sql` on `;` outside literals, names and comments and normalise each statement in
    the same pass. Statements that normalise to nothing are left out."""
    cdef bytes b = _as_bytes(sql)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef list pieces = []
    cdef Out o
    out_init(&o, n + (n >> 2) + 16, M_FULL if keep_literals else M_CODE)
    _set_mode(&o, mode)
    try:
        lex(<const uchar*>PyBytes_AS_STRING(b), n, &o, True, pieces)
        return pieces
    finally:
        out_free(&o)


# Dynamic SQL whose text is a literal: PREPARE name FROM '...' and EXECUTE IMMEDIATE '...'
# (MariaDB), at the start of a statement or inside one (BEGIN NOT ATOMIC ... ). The literal's
# text is lexed too, and its statements follow the message's, so the packs judge
# `PREPARE s FROM 'DROP TABLE t'` as they judge DROP TABLE t. Texts built at run time
# (FROM @var, CONCAT(...)) cannot be read: procedural-code refuses those.
_DYNAMIC_TEXT = re.compile(rb"(?<![a-z0-9_$\x80-\xff])(?:prepare\s+(?:`(?:[^`]|``)*`|[^\s`]+)"
                           rb"\s+from|execute\s+immediate)\s+(?:_[a-z0-9]+\s+)?'")
_MAX_DEPTH = 4      # a PREPARE whose text is a PREPARE ...: nested this deep at most


cdef list _dynamic_texts(bytes stmt, bint nbe):
    """The texts of the literals a full-view statement's PREPARE / EXECUTE IMMEDIATE run,
    decoded from how the full view writes literals (quotes doubled, and backslashes where they
    escape)."""
    cdef Out tmp
    cdef list texts = []
    out_init(&tmp, 64, M_FULL)
    try:
        for m in _DYNAMIC_TEXT.finditer(stmt):
            tmp.len = 0
            scan_string(<const uchar*>PyBytes_AS_STRING(stmt), PyBytes_GET_SIZE(stmt), m.end(),
                        39, not nbe, &tmp)
            texts.append(PyBytes_FromStringAndSize(<const char*>tmp.buf, tmp.len))
        return texts
    finally:
        out_free(&tmp)


cdef tuple _views(bytes b, bint full, Reading r, list versions, int depth=0):
    """(code, full or None, ambiguous) under one reading; the versions of the versioned comments
    seen are added to `versions` (None when more than MAX_VERSIONS)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef list code = [], fpieces = None, fl
    cdef Out o, fo
    cdef int k
    cdef bint ambiguous
    out_init(&o, n + (n >> 2) + 16, M_CODE)
    o.r = r
    fo.buf = NULL
    try:
        if full:
            fpieces = []
            out_init(&fo, n + (n >> 2) + 16, M_FULL)
            fo.r = r
            lex(<const uchar*>PyBytes_AS_STRING(b), n, &o, True, code, &fo, fpieces)
        else:
            lex(<const uchar*>PyBytes_AS_STRING(b), n, &o, True, code)
        if versions is not None:
            if o.too_many:
                versions.append(None)
            for k in range(o.nversions):
                if o.versions[k] not in versions:
                    versions.append(o.versions[k])
        ambiguous = o.ambiguous
        if not o.dynamic:
            return code, fpieces, ambiguous
    finally:
        out_free(&o)
        out_free(&fo)
    # a PREPARE or EXECUTE IMMEDIATE: its literal's statements, under the same reading
    fl = fpieces if full else _views(b, True, r, None, _MAX_DEPTH)[1]
    for k in range(len(code)):
        for text in _dynamic_texts(fl[k], r.nbe):
            if depth >= _MAX_DEPTH:
                code.append(UNREADABLE)
                if full:
                    fpieces.append(UNREADABLE)
                break
            sub = _views(text, full, r, versions, depth + 1)
            code.extend(sub[0])
            if full:
                fpieces.extend(sub[1])
            ambiguous = ambiguous or sub[2]
    return code, fpieces, ambiguous


# Readings are tried only along what the text holds: with no backslash the backslash mode
# cannot matter, with no double quote ANSI_QUOTES cannot, with no [ MSSQL cannot, and so on.
# At most this many readings are lexed for one message (8 modes x 2 charset readings, times
# 2 servers x (MAX_VERSIONS + 1) thresholds plus the every-comment-runs one, when every
# feature is there at once).
_MAX_READINGS = 16 * (2 * (MAX_VERSIONS + 1) + 1)


cdef tuple _other_readings(bytes b, bint full, int mode):
    """Every statement of every other reading of `b` (see the module docstring), the two lists
    pairing up, with UNREADABLE added when the readings cannot all be tried."""
    cdef Reading r
    cdef list code = [], fviews = [] if full else None
    cdef list versions = []
    cdef set seen = set(), done = set()
    cdef tuple got
    cdef Py_ssize_t before
    cdef int m, bit
    mode &= SQL_NBE | SQL_ANSI | SQL_MSSQL
    has_ver = b"/*" in b and b"!" in b
    # the sql_mode bits that can matter for this text, and the charset readings
    modes = [mode]
    for bit, present in ((SQL_NBE, b"\\" in b), (SQL_ANSI, b'"' in b), (SQL_MSSQL, b"[" in b)):
        if present:
            modes += [m ^ bit for m in modes]
    spaces = [0, 1] if (b"\xa0" in b or b"\xff" in b) else [0]
    # every mode with every executable comment run first: they find the versions, each a
    # threshold some server version sits at, read then on either server
    pending = [(m, z, SV_ANY, 0) for m in modes for z in spaces]
    # what the first reading gave is already scanned: a reading giving the same is skipped
    first = (mode, 0, SV_ANY, 0)
    got = _views(b, full, _reading(r, first), None)
    seen.add((tuple(got[0]), tuple(got[1]) if full else None))
    while pending:
        reading = pending.pop()
        if reading in done:
            continue
        done.add(reading)
        if len(done) > _MAX_READINGS or None in versions:
            code.append(UNREADABLE)
            if full:
                fviews.append(UNREADABLE)
            break
        before = len(versions)
        got = _views(b, full, _reading(r, reading), versions)
        if reading != first:
            key = (tuple(got[0]), tuple(got[1]) if full else None)
            if key not in seen:
                seen.add(key)
                code.extend(got[0])
                if full:
                    fviews.extend(got[1])
        if has_ver and (len(versions) > before or reading[2] == SV_ANY):
            for m in modes:
                for z in spaces:
                    for server in (SV_MARIADB, SV_MYSQL):
                        for v in [SUPPORTED_MIN - 1] + [v for v in versions if v is not None]:
                            if (m, z, server, v) not in done:
                                pending.append((m, z, server, v))
    return code, fviews, False


cdef Reading _reading(Reading r, tuple t):
    """The Reading of a (mode bits, hispace, server, version) tuple."""
    r.nbe = (t[0] & SQL_NBE) != 0
    r.ansi = (t[0] & SQL_ANSI) != 0
    r.mssql = (t[0] & SQL_MSSQL) != 0
    r.hispace = t[1]
    r.server = t[2]
    r.version = t[3]
    return r


def statement_views(sql, bint full=False, *, int mode=0, bint standard_conforming_strings=True,
                    bint alternate=False) -> tuple:
    """One lexer pass for a guardrail: `(code, full_view, ambiguous)` where `code` is
    normalize_statements(sql, mode=mode), `full_view` the same with literals kept when `full`
    (else None), and `ambiguous` whether another reading could lex the text differently (see
    the module docstring). The two lists pair up statement by statement; where a statement's
    two views are equal the full list holds the same object.

    alternate=True (or standard_conforming_strings=False, the name the guardrail engine asks
    with, from PostgreSQL) gives instead the statements of every *other* reading, and
    ambiguous False."""
    cdef bytes b = _as_bytes(sql)
    cdef Reading r
    if alternate or not standard_conforming_strings:
        return _other_readings(b, full, mode)
    r.nbe = (mode & SQL_NBE) != 0
    r.ansi = (mode & SQL_ANSI) != 0
    r.mssql = (mode & SQL_MSSQL) != 0
    r.hispace = False
    r.server = SV_ANY
    r.version = 0
    return _views(b, full, r, None)


def statement_shape(sql, bint full=False):
    """What a guardrail verdict on `sql` can depend on, integers set aside: `(key, code,
    full_view)` as statement_views(sql, full) gives the two lists, with every integer (a run of
    digits) written 0 or 1 where it is that integer, 00 where it has a leading zero, else 2
    (decimals, 1e5, 0x1f and names such as 1abc as written). `key` is one bytes object naming
    both lists: the code pieces joined by 0x00, then, where some statement's two views differ,
    0x01 and the full pieces joined by 0x00. sysbench's `... WHERE id=4812` and `WHERE id=7`
    share one; `WHERE 1`, `WHERE 0`, `WHERE 01` and `WHERE 2` do not.

    None -- the caller reads the text itself -- for whatever the first reading alone does not
    decide: a text another sql_mode, server or version could read differently (a backslash in
    a literal, a double quote, a [, a versioned comment such as /*!50700, whose number decides
    whether the body runs, 0xA0 / 0xFF), dynamic SQL (PREPARE / EXECUTE: its literal is lexed
    again), a byte >= 0x80 (what is a digit or a quote then depends on the client charset), and
    a 0x00 or 0x01 byte (the key's separators)."""
    cdef bytes b = _as_bytes(sql)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef const uchar* s = <const uchar*>PyBytes_AS_STRING(b)
    cdef list code = [], fpieces = None
    cdef Py_ssize_t k, m
    cdef bint differs = False
    cdef Out o, fo
    for k in range(n):
        if s[k] < 2 or s[k] >= 128:
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
        if o.ambiguous or o.dynamic:
            return None
        m = len(code)
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


# -- the relay's statement memo key ------------------------------------------------------------
# The relay (ext/hoopwire/mysql/_relay.pxi) remembers, per session, what a statement text's
# shape was judged to be -- no guardrail verdict, masking's StatementInfo -- and serves a new
# literal of a known shape without a call into Python (sysbench's text point select: ~15
# Python calls and three lexer passes a statement before; mysql_call_profile.py). Its key must
# tell texts apart at least as finely as every cache it stands in for:
#   * the guardrail engine's shape, statement_shape(sql, full)[0]: the code view split into
#     statements, integers as their class, plus the full view where a statement's differs;
#   * masking's text_key(sql): ("s", mask_literals(sql)), where the text is not ambiguous and
#     names none of prepare / execute / call / by / having / qualify.
# One lexer pass gives both: the code view with integer classes (not split: the `;` stays in
# it, so it is finer than the joined pieces) and mask_literals' output beside it. Texts where
# the two readings could part are not keyed (None): a quote of any kind (the full view would
# differ from the code view, so the engine's key would need it), an executable comment (`;`
# ends one's code in the split reading and not in the whole-text one), bytes < 2 or >= 0x80
# (statement_shape's own refusals), and whatever statement_shape or text_key refuse.

cdef enum:
    MEMO_TEXT_MAX = 4096      # longer texts are not keyed (agents' point reads are far shorter)


cdef inline bint _has_ci(const uchar* p, Py_ssize_t n, const char* w) noexcept nogil:
    """Whether p[0:n] holds the lower-case ASCII word w anywhere, in any ASCII case (a
    substring test, as text_key's on its lower-cased shape)."""
    cdef Py_ssize_t i, k, wn = 0
    while w[wn] != 0:
        wn += 1
    for i in range(n - wn + 1):
        k = 0
        while k < wn and LOWER[p[i + k]] == <uchar>w[k]:
            k += 1
        if k == wn:
            return True
    return False


cdef object memo_key(const uchar* s, Py_ssize_t n):
    """The relay's memo key of a statement text (see above), or None when the text is not
    keyed."""
    cdef Py_ssize_t k
    cdef uchar c
    cdef Out o, f
    cdef object key
    cdef char* d
    if n == 0 or n > MEMO_TEXT_MAX:
        return None
    for k in range(n):
        c = s[k]
        if c < 2 or c >= 128 or c == 39 or c == 34 or c == 96:
            return None
        if c == 47 and k + 2 < n and s[k + 1] == 42 and (s[k + 2] == 33 or s[k + 2] == 77):
            return None                     # /*! or /*M
    out_init(&o, n + (n >> 2) + 16, M_CODE)
    o.shape = True
    f.buf = NULL
    try:
        out_init(&f, n + 16, M_MASK)
        lex(s, n, &o, False, None, &f, None)
        if o.ambiguous or o.dynamic:
            return None
        if _has_ci(f.buf, f.len, "by") or _has_ci(f.buf, f.len, "having") or \
                _has_ci(f.buf, f.len, "qualify") or _has_ci(f.buf, f.len, "prepare") or \
                _has_ci(f.buf, f.len, "execute") or _has_ci(f.buf, f.len, "call"):
            return None
        key = PyBytes_FromStringAndSize(NULL, o.len + 1 + f.len)
        d = PyBytes_AS_STRING(key)
        memcpy(d, o.buf, o.len)
        d[o.len] = 0
        memcpy(d + o.len + 1, f.buf, f.len)
        return key
    finally:
        out_free(&o)
        out_free(&f)


def statement_memo_key(sql):
    """Tests: memo_key over bytes (the relay calls it in C)."""
    cdef bytes b = _as_bytes(sql)
    return memo_key(<const uchar*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


_SERVERS = {"any": SV_ANY, "mariadb": SV_MARIADB, "mysql": SV_MYSQL}


def views_as(sql, bint full=False, *, int mode=0, str server="any", unsigned long version=0,
             bint hispace=False) -> tuple:
    """(code, full or None) as one given server would lex `sql`: "mariadb" or "mysql" at
    `version` (e.g. 101119 for 10.11.19), or "any" (every executable comment run: the first
    reading); `hispace`: 0xA0 and 0xFF are spaces (a latin1 client). For tests and tools: the
    guardrails use statement_views, which covers every reading."""
    cdef Reading r
    if server not in _SERVERS:
        raise ValueError(f"server must be one of {', '.join(_SERVERS)}")
    r.nbe = (mode & SQL_NBE) != 0
    r.ansi = (mode & SQL_ANSI) != 0
    r.mssql = (mode & SQL_MSSQL) != 0
    r.hispace = hispace
    r.server = _SERVERS[server]
    r.version = version
    return _views(_as_bytes(sql), full, r, None)[:2]


def split_statements(sql, *, int mode=0) -> list:
    """The raw bytes of each statement in `sql`, split on `;` outside literals, quoted names
    and comments (the `;` dropped, pieces of only whitespace left out)."""
    cdef bytes b = _as_bytes(sql)
    cdef list pieces = []
    cdef Out o
    out_init(&o, 16, M_SPLIT)
    _set_mode(&o, mode)
    try:
        lex(<const uchar*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), &o, True, pieces)
        return pieces
    finally:
        out_free(&o)


cdef int _mask_text(const uchar* sql, Py_ssize_t n, uchar** out, Py_ssize_t* out_len) \
        except -1 nogil:
    """MySQL's CDialect.mask_literals (backslash escapes on, as the default sql_mode): the
    output left in *out for the caller to free, also when the lexer fails."""
    cdef Out o
    out_init(&o, n + 16, M_MASK)
    try:
        lex(sql, n, &o, False, None)
    finally:
        out[0] = o.buf
        out_len[0] = o.len
    return 0


cdef CDialect _C_DIALECT
_C_DIALECT.name = "mysql"
_C_DIALECT.mask_literals = _mask_text


def mask_literals(sql, *, int mode=0) -> str:
    """`sql` for an operator log: comments dropped (executable comment bodies kept), whitespace
    folded, every literal and number replaced by ?, everything else as written (invalid UTF-8
    shown as U+FFFD)."""
    cdef bytes b = _as_bytes(sql)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef Out o
    out_init(&o, n + 16, M_MASK)
    _set_mode(&o, mode)
    try:
        lex(<const uchar*>PyBytes_AS_STRING(b), n, &o, False, None)
        return PyUnicode_DecodeUTF8(<const char*>o.buf, o.len, "replace")
    finally:
        out_free(&o)


# what the audit's encoder runs without the GIL for this function (ext/hoopwire/core/dialect.pxd)
mask_literals.c_dialect = PyCapsule_New(<void*>&_C_DIALECT, CDIALECT_CAPSULE, NULL)
