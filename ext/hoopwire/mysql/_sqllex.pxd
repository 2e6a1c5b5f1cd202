# hoopwire.mysql._sqllex: MySQL / MariaDB's SQL lexer for guardrails (ext/hoopwire/mysql/_sqllex.pyx).
#
# One lexer pass over the bytes of a query string serves four outputs, chosen by `mode`:
#   M_CODE   the code view: comments dropped (executable comment bodies kept as code), whitespace
#            folded, ASCII lower-cased, every string literal '?', quoted identifiers bare or `_name`
#   M_FULL   the full view: as M_CODE with literals kept (decoded, written back as '...')
#   M_MASK   for operator logs: original case, literals and numbers replaced by ?
#   M_SPLIT  no output: only the raw byte ranges of the top-level statements

cdef enum:
    M_CODE = 0
    M_FULL = 1
    M_MASK = 2
    M_SPLIT = 3

# the sql_mode bits statement_views takes (`mode=`), as the relay learns them from the server
cdef enum:
    SQL_NBE = 1          # NO_BACKSLASH_ESCAPES
    SQL_ANSI = 2         # ANSI_QUOTES
    SQL_MSSQL = 4        # MSSQL (MariaDB): [name] is a quoted name, ]] a ]

# which server reads the text: how versioned comments /*!NNNNN ... */ and /*M! ... */ are taken
cdef enum:
    SV_ANY = 0       # every executable comment runs (the first reading, the one views show)
    SV_MARIADB = 1   # MariaDB `version`: /*!N runs if N <= version, except 50700 <= N <= 99999
    SV_MYSQL = 2     # MySQL `version`: /*!NNNNN runs if NNNNN <= version; /*M! is a comment

# Versioned comments below this run on every server the gateway supports (MySQL 5.6 and later,
# MariaDB 10.0 and later): /*!40101 SET ... */ in mysqldump output is plain code, not ambiguous.
cdef enum:
    SUPPORTED_MIN = 50600

cdef enum:
    MAX_VERSIONS = 16     # distinct comment versions remembered for the other readings

# One way a server could read the text. The first reading (SV_ANY, the session's mode) is what
# the views show; a message whose reading depends on more (a backslash in a literal, a double
# quote, a versioned comment, a byte some charsets take for a space) is read every other way too.
cdef struct Reading:
    bint nbe             # NO_BACKSLASH_ESCAPES: a backslash in '...' is a plain byte
    bint ansi            # ANSI_QUOTES: "..." is an identifier, not a string
    bint mssql           # MSSQL (MariaDB): [...] is an identifier
    bint hispace         # 0xA0 and 0xFF are whitespace (latin1, cp1250, cp852 ... clients)
    int server           # SV_*
    unsigned long version

# A growable output buffer plus the lexer state that outlives one token.
cdef struct Out:
    unsigned char* buf
    Py_ssize_t len
    Py_ssize_t cap
    int mode             # M_* above
    bint pending_space   # whitespace or a comment was seen since the last token
    bint had_token       # M_SPLIT: the current statement holds more than whitespace
    Reading r
    bint ambiguous       # another Reading could lex this text differently
    bint dynamic         # the word PREPARE or EXECUTE was seen (dynamic SQL, maybe a literal)
    bint shape           # statement_shape: integers written 0, 1, 2 or 00 (emit_number)
    int nversions        # distinct versions of versioned comments seen (up to MAX_VERSIONS)
    bint too_many        # ... and more than that
    unsigned long versions[MAX_VERSIONS]

cdef int out_init(Out* o, Py_ssize_t cap, int mode) except -1 nogil
cdef void out_free(Out* o) noexcept nogil

# The lexer: runs over s[0:n] in o.mode under o.r; when `split` is true, each statement is
# appended to `pieces` (normalised bytes, or raw bytes in M_SPLIT); otherwise the output stays
# in `o`. With `f` (an M_FULL buffer, same reading) it writes the full view there in the same
# pass. nogil: the audit thread masks statement texts with it (split=False).
cdef int lex(const unsigned char* s, Py_ssize_t n, Out* o, bint split, list pieces,
             Out* f=*, list fpieces=*) except -1 nogil

# is the lower-case ASCII word p[0:n] a MariaDB / MySQL keyword?
cdef bint is_keyword(const unsigned char* p, Py_ssize_t n) noexcept nogil

# the relay's statement memo key (see _sqllex.pyx): bytes, or None when the text is not keyed
cdef object memo_key(const unsigned char* s, Py_ssize_t n)
