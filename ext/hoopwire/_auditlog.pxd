# Declarations of the hoopwire._auditlog extension: the audit log's hot path. _auditlog.pyx
# holds the implementation; hoopwire/audit/log.py and recorder.py are its only users.
#
# A record becomes a Pending: its canonical JSON body cut at the two places the chain fills in
# later ("prev" and "seq" sort into the middle of the keys). The common statement record is
# only copied on the event loop (a RawStatement); chain(), in the audit thread and without the
# GIL, writes it as JSON, then joins, numbers and hashes the batch.

from libc.stdlib cimport realloc

from hoopwire.core.dialect cimport CDialect
from libc.string cimport memcpy


cdef struct Out:                  # a growable byte buffer (malloc'd; the owner frees p)
    char* p
    Py_ssize_t n
    Py_ssize_t cap


# A statement's CommandComplete tags, packed as a RawStatement holds them (an int length, then
# the bytes, for each): the relay collects them here and StatementLog.add copies them whole.
cdef struct TagBuf:
    char* p                       # malloc'd; the owner frees it
    Py_ssize_t n
    Py_ssize_t cap
    Py_ssize_t count


cdef inline int tags_push(TagBuf* t, const char* s, int n) except -1:
    cdef Py_ssize_t want = t.n + <Py_ssize_t>sizeof(int) + n
    cdef char* q
    if want > t.cap:
        want = max(want, 2 * t.cap, 64)
        q = <char*>realloc(t.p, want)
        if q == NULL:
            raise MemoryError()
        t.p = q
        t.cap = want
    memcpy(t.p + t.n, &n, sizeof(int))
    memcpy(t.p + t.n + sizeof(int), s, n)
    t.n += sizeof(int) + n
    t.count += 1
    return 0


cdef class Pending:
    # body = head + mid + tail, where head is b"{" and every key sorting before "prev" (each
    # with its comma), mid the keys between "prev" and "seq" (each with its comma), and tail
    # b"}" or b"," followed by the keys after "seq" and b"}".
    cdef readonly bytes body
    cdef readonly Py_ssize_t cut_prev     # len(head)
    cdef readonly Py_ssize_t cut_seq      # len(head) + len(mid)
    cdef readonly double ts               # its "ts" (NaN when it has none): what retention reads


cdef class Chained:
    # A chained batch: the lines (each ending in b"\n") back to back in `data`.
    cdef readonly bytes data
    cdef readonly Py_ssize_t n
    cdef readonly unsigned long long first_seq
    cdef bytes first_prev
    cdef Py_ssize_t* ends         # ends[i]: offset just past line i
    cdef char* hashes             # 64 hex digits per line
    cdef double* tss

    cdef int _check(self, Py_ssize_t i, bint end_ok) except -1


cdef class StatementLog


cdef class PendingBatch:
    # Records back to back: record i is data[offs[i]:offs[i + 1]], its cut points cuts[2i],
    # cuts[2i + 1] relative to its own start. A batch taken from a StatementLog may still hold
    # raw statements (cuts[2i] < 0: a RawStatement and its text and tags, not yet JSON): encode()
    # writes them, in the audit thread without the GIL when chain() calls it.
    cdef readonly bytes data
    cdef readonly Py_ssize_t n
    cdef Py_ssize_t* offs
    cdef Py_ssize_t* cuts
    cdef double* tss
    cdef StatementLog owner       # where raw records come from (None once encoded)

    @staticmethod
    cdef PendingBatch _make(Py_ssize_t n)
    cdef int _encode(self) except -1
    cdef int _text_by_python(self, Out* o, const char* entry) except -1
    cdef int _fallback(self, Out* o, const char* entry, Py_ssize_t* cut_prev,
                       Py_ssize_t* cut_seq) except -1


# A statement as the relay hands it over, before it is JSON: this header, then the text's bytes
# (sql_len of them; -1: no text), then each tag as an int length and its bytes.
cdef struct RawStatement:
    double started
    double ended
    long long n
    long long masked
    Py_ssize_t sql_len
    Py_ssize_t tags_len           # bytes of packed tags after the text
    Py_ssize_t ntags


cdef enum:
    TEXT_SLOTS = 1024             # statement texts the encoder remembers
    TEXT_LEXER = 0                # literals masked by a dialect's lexer in C (its CDialect)
    TEXT_KEEP = 1                 # as sent (keep_literals)
    TEXT_PYTHON = 2               # any other masker: called with the GIL


cdef struct TextSlot:             # one cached text: the statement and its recorded JSON string
    unsigned long long h
    char* key
    Py_ssize_t klen
    char* val
    Py_ssize_t vlen


cdef class StatementEncoder:
    cdef bytes gw                 # the gateway id, JSON-encoded
    cdef const char* gwp          # ... its bytes, for the encoder without the GIL
    cdef Py_ssize_t gwlen
    cdef object mask_statement    # sql bytes -> recorded text (str)
    cdef int mode                 # TEXT_*
    cdef const CDialect* dialect  # TEXT_LEXER: whose lexer (static in the dialect's module)
    cdef object dialect_capsule   # ... and the capsule it came from
    cdef Py_ssize_t limit         # bytes of a statement it is given
    cdef TextSlot slots[TEXT_SLOTS]   # direct-mapped; filled with texts seen twice
    cdef unsigned long long seen[TEXT_SLOTS]   # hash of the last text that missed in each slot
    cdef void* lock               # the cache is the audit thread's; the lock keeps it so
    cdef Out scratch              # where a batch is encoded (under the lock)

    cdef int _put_text(self, Out* o, const char* sql, Py_ssize_t n) except -1 nogil
    cdef int _statement(self, Out* o, const char* entry, const char* sid, Py_ssize_t sidlen,
                        Py_ssize_t* cut_prev, Py_ssize_t* cut_seq) except -1 nogil
    cdef int _statement_end(self, Out* o, const RawStatement* r, const char* tags) except -1 nogil


cdef class StatementLog:
    # One session's statement records since the last take(); the relay calls add().
    cdef StatementEncoder enc
    cdef bytes sid                # the session id, JSON-encoded
    cdef object slow              # (raw tuple, n) -> the record as a dict
    cdef object encode_dict       # dict -> Pending (hoopwire.audit.log.pending_from)
    cdef bint all_slow
    cdef long long n              # statements numbered so far
    cdef readonly long long lost  # records the slow path failed to produce
    cdef Out buf                  # records (raw or encoded) back to back
    cdef Py_ssize_t* meta         # per record: start, cut_prev (-1: raw), cut_seq
    cdef double* tss
    cdef Py_ssize_t count
    cdef Py_ssize_t cap

    cdef int _room(self) except -1
    cdef int add(self, double started, double ended, const char* sql, Py_ssize_t sql_len,
                 const TagBuf* tags, object error, long long masked, object kept) except -1
