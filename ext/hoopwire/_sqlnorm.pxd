# hoopwire._sqlnorm: the PostgreSQL-dialect SQL normaliser (ext/hoopwire/_sqlnorm.pyx).
#
# One lexer pass over the bytes of a query string serves four outputs, chosen by `mode`:
#   M_CODE   the "code view": comments dropped, whitespace folded, ASCII lower-cased, every string
#            literal / dollar body replaced by '?', quoted identifiers that could be mistaken for
#            keywords wrapped as "_name" (see the module docstring)
#   M_FULL   the "full view": as M_CODE, but literals kept (E'' and U&'' decoded, dollar bodies
#            rewritten as '...') and quoted identifiers shown by their lower-cased contents
#   M_MASK   for operator logs: original case, literals and numbers replaced by ?
#   M_SPLIT  no output: only the raw byte ranges of the top-level statements

cdef enum:
    M_CODE = 0
    M_FULL = 1
    M_MASK = 2
    M_SPLIT = 3

# character classes, one byte of flags per input byte (CLS[] in sqlnorm.pyx)
cdef enum:
    C_SPACE = 1      # whitespace PostgreSQL folds: space \t \n \r \f \v
    C_IDSTART = 2    # may start an identifier: A-Z a-z _ and every byte >= 0x80
    C_IDCONT = 4     # may continue one: the above plus 0-9 and $
    C_DIGIT = 8
    C_HEX = 16
    C_GLUE = 32      # two tokens touching on such bytes would lex as one: C_IDCONT plus ' " $

# A growable output buffer plus the lexer state that outlives one token.
cdef struct Out:
    unsigned char* buf
    Py_ssize_t len
    Py_ssize_t cap
    int mode             # M_* above
    bint pending_space   # whitespace or a comment was seen since the last token
    bint had_token       # M_SPLIT: the current statement holds more than whitespace
    bint scs             # standard_conforming_strings: '...' has no backslash escapes
    bint ambiguous       # a '...' literal held a backslash: scs would change its reading
    bint shape           # statement_shape: integers written 1 (the integer 1) or 0 (any other)

cdef int out_init(Out* o, Py_ssize_t cap, int mode, bint scs=*) except -1 nogil
cdef void out_free(Out* o) noexcept nogil
cdef int out_grow(Out* o, Py_ssize_t need) except -1 nogil
cdef int out_bytes(Out* o, const unsigned char* p, Py_ssize_t n) except -1 nogil

# The lexer: runs over s[0:n] in o.mode; when `split` is true, each top-level statement is appended
# to `pieces` (normalised bytes, or raw bytes in M_SPLIT); otherwise the output stays in `o`.
# With `f` (an M_FULL buffer) it writes the full view there in the same pass (into fpieces).
# nogil: the audit thread masks statement texts with it, the GIL released. `split` appends to
# the pieces lists and needs the GIL held by the caller; a failed allocation takes the GIL.
cdef int lex(const unsigned char* s, Py_ssize_t n, Out* o, bint split, list pieces,
             Out* f=*, list fpieces=*) except -1 nogil

# is the lower-case ASCII word p[0:n] a PostgreSQL keyword (any category)?
cdef bint is_keyword(const unsigned char* p, Py_ssize_t n) noexcept nogil
