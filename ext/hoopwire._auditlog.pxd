# Declarations of the hoopwire._auditlog extension: the audit log's hot path. ext/auditlog.pyx
# holds the implementation; hoopwire/audit/log.py and recorder.py are its only users.
#
# A record is encoded once, on the event loop, into a Pending: its canonical JSON body cut at
# the two places the chain fills in later ("prev" and "seq" sort into the middle of the keys).
# chain() then joins, numbers and hashes a batch of them in the audit thread without the GIL.

cdef struct Out:                  # a growable byte buffer (malloc'd; the owner frees p)
    char* p
    Py_ssize_t n
    Py_ssize_t cap


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


cdef class PendingBatch:
    # Records encoded back to back: record i is data[offs[i]:offs[i + 1]], its cut points
    # cuts[2i], cuts[2i + 1] relative to its own start.
    cdef readonly bytes data
    cdef readonly Py_ssize_t n
    cdef Py_ssize_t* offs
    cdef Py_ssize_t* cuts
    cdef double* tss

    @staticmethod
    cdef PendingBatch _make(Py_ssize_t n)


cdef enum:
    TEXT_SLOTS = 1024             # statement texts the encoder remembers

cdef class StatementEncoder:
    cdef bytes gw                 # the gateway id, JSON-encoded
    cdef object mask_statement    # sql bytes -> recorded text (str)
    cdef Py_ssize_t limit         # bytes of a statement it is given
    cdef list keys                # statement bytes ... (a direct-mapped cache: most repeat)
    cdef list vals                # ... and their recorded text, JSON-encoded
    cdef Py_hash_t khash[TEXT_SLOTS]  # hash of keys[i]: compared before the (cold) key itself
    cdef Py_hash_t seen[TEXT_SLOTS]   # hash of the last text that missed in each slot
    cdef bint lexer_mask          # mask_statement is sqlnorm's mask_literals: run its lexer here

    cdef object _cached(self, object sql, Py_hash_t h, Py_ssize_t i)
    cdef int _remember(self, object sql, Py_hash_t h, Py_ssize_t i, bytes text) except -1
    cdef bytes _text(self, object sql)
    cdef int _put_text(self, Out* o, object sql) except -1
    cdef int _statement(self, Out* o, long long n, double started, double ended, object sql,
                        list tags, long long masked, bytes sid, Py_ssize_t* cut_prev,
                        Py_ssize_t* cut_seq) except -1


cdef class StatementLog:
    # One session's statement records since the last take(); the relay calls add().
    cdef StatementEncoder enc
    cdef bytes sid                # the session id, JSON-encoded
    cdef object slow              # (raw tuple, n) -> the record as a dict
    cdef object encode_dict       # dict -> Pending (hoopwire.audit.log.pending_from)
    cdef bint all_slow
    cdef long long n              # statements numbered so far
    cdef readonly long long lost  # records the slow path failed to produce
    cdef Out buf                  # bodies back to back
    cdef Py_ssize_t* meta         # per record: start, cut_prev, cut_seq
    cdef double* tss
    cdef Py_ssize_t count
    cdef Py_ssize_t cap

    cdef int _room(self) except -1
    cdef int add(self, double started, double ended, object sql, list tags, object error,
                 long long masked, object kept) except -1
