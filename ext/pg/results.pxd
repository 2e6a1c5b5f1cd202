# Result tracking for masking: which request each upstream message answers, and which RowPlan
# the rows in flight belong to.
#
# PostgreSQL answers requests strictly in order, so a FIFO of what the client asked (Parse,
# Bind, Describe, Execute, Close, Sync, Query) says what every response is. Rows carry no
# description of their own: a Query's rows follow its RowDescription, but an Execute's rows
# follow nothing (a driver that prepared with Describe-statement -- asyncpg -- or one that never
# describes, which would otherwise be a way around masking). So before every Execute that the
# client did not itself describe, the relay sends a Describe of that portal and swallows the
# answer: every row then follows a RowDescription the server produced for exactly that portal.

cdef enum:
    R_PARSE = 1
    R_BIND = 2
    R_DESC_S = 3           # client's Describe statement: ParameterDescription, then T or n
    R_DESC_P = 4           # client's Describe portal: T or n, forwarded
    R_DESC_OURS = 5        # our Describe portal before an Execute: T or n, swallowed
    R_EXEC = 6
    R_CLOSE = 7
    R_SYNC = 8
    R_QUERY = 9            # simple Query (or a refused FunctionCall, replaced by one)

cdef enum:
    S_NONE = 0             # no result open: a DataRow now is a tracking failure
    S_ROWS = 1             # rows of `plan`
    S_COPY = 2             # CopyData of `copy` (None: forwarded as they are)
    S_SKIP = 3             # a refused result: drop everything up to ReadyForQuery


# One outstanding request. A C ring of these rather than a deque of tuples: the queue sees every
# message of every statement, and tuple churn plus deque method calls were most of what result
# tracking cost a recording-only session.
cdef struct Req:
    int kind               # R_*
    PyObject* info         # StatementInfo (a reference we own), NULL for None
    PyObject* sql          # statement text bytes (owned), NULL for None
    Py_ssize_t toff        # ... or, for a Query while `light`, its text in `qtext` (tlen >= 0):
    Py_ssize_t tlen        #     no bytes object per statement
    double t               # when the client sent it (Query, Execute), else 0


@cython.final          # nothing derives from it: its methods are called directly, not via a vtable
cdef class PgResults:
    cdef:
        Relay relay
        object masker              # hoopwire.pg.masker.SessionMasker
        Req* reqs                  # ring of outstanding requests, oldest at rq_head
        Py_ssize_t rq_head
        Py_ssize_t rq_len
        Py_ssize_t rq_cap
        dict stmts                 # prepared statement name -> (StatementInfo, sql)
        dict portals               # portal name -> (StatementInfo, sql)
        tuple stmt0                # ... the unnamed ones (most drivers' only ones), outside
        tuple portal0              #     the dicts: no hashing and lookup per message
        char last_client           # kind of the client's last message (Flush not counted)
        bint last_desc_portal      # ... and when it was a Describe, whether of a portal
        bytes last_desc_name
        int state
        RowPlan plan
        bint plan_work             # the plan rewrites something: rows are inspected
        object copy                # _TextCopy / _BinaryCopy, or None
        int copy_idx               # COPY statements of the current Query answered so far
        readonly unsigned long long injected   # Describe messages we added
        bint mask_on               # masking results (masker is a SessionMasker)
        bint record_on             # keeping statement records for the audit log
        bint light                 # recording only, no rows kept: follow only what ends a
                                   # statement (Execute, Query, Sync; C, E, Z...), see client_header
        StatementLog stmt_log      # where finished statements are recorded (record_on)
        TagBuf cur_tags            # CommandComplete tags of the statement in flight
        bytes cur_error            # its first ErrorResponse body
        long long cur_masked       # values masked in its results
        list cur_rows              # its DataRow / CopyData messages as the client got them
                                   # (record_results)
        Py_ssize_t capture_left    # bytes of rows the session may still keep for replay
        char* qtext                # texts of the Queries in flight (light), back to back;
        Py_ssize_t qt_n            # emptied whenever none is left in the queue
        Py_ssize_t qt_head         # where the texts not yet answered start (the rest: spent)
        Py_ssize_t qt_cap
        Py_ssize_t qt_live         # queue entries whose text is in qtext

    cdef int client_header(self, char kind) except -1
    cdef object client_message(self, char kind, const unsigned char* msg, Py_ssize_t size,
                               object replaced)
    cdef int upstream_header(self, char kind) except -1
    cdef object upstream_message(self, char kind, const unsigned char* msg, Py_ssize_t size)
    cdef int _light_upstream(self, char kind, const unsigned char* msg, Py_ssize_t size) except -1
    cdef int _tag(self, const unsigned char* msg, Py_ssize_t size) except -1
    cdef int _completed(self) except -1
    cdef int _error(self, const unsigned char* msg, Py_ssize_t size) except -1
    cdef object _head_sql(self)
    cdef tuple _stmt(self, bytes name)
    cdef tuple _portal(self, bytes name)
    cdef int _set_stmt(self, bytes name, tuple known) except -1
    cdef int _set_portal(self, bytes name, tuple known) except -1
    cdef int _push(self, int kind, object info, object sql, double t) except -1
    cdef int _push_text(self, const unsigned char* p, Py_ssize_t n, double t) except -1
    cdef Req* _head(self) except NULL
    cdef void _pop(self) noexcept
    cdef int _expect(self, int kind) except -1
    cdef int _error_skip(self) except -1
    cdef int _ready(self) except -1
    cdef int _end_result(self) except -1
    cdef int _record(self, const Req* r, double started) except -1
    cdef int _keep(self, bytes kept) except -1
    cdef object _row_description(self, const unsigned char* msg, Py_ssize_t size)
    cdef object _copy_out(self, const unsigned char* msg, Py_ssize_t size)
