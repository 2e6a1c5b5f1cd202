# Declarations of the hoopwire.pg._wire extension: PostgreSQL framing, the relay and result
# tracking. _wire.pyx includes the implementations (_*.pxi beside it) in the same order; the
# frame reader and the counters are the core's (ext/hoopwire/core/_frames.pxd), cimported.
cimport cython
from cpython.ref cimport PyObject
from hoopwire._auditlog cimport StatementLog, TagBuf, tags_push
from hoopwire._mask cimport RowPlan
from hoopwire.core._frames cimport (ConnStats, FORWARD, INSPECT, FrameReader,
                                    monotonic)
from hoopwire.core.cursor cimport (Cursor, cursor, cur_be16, cur_be32, cur_be32s, cur_cstr,
                                   cur_skip, cur_u8)
from hoopwire._mask cimport ACT_DETECT, out_changed, out_value


# PostgreSQL rows for the neutral masker (_rows.pxi): the DataRow walk and COPY rows.

cdef class DataRowPlan(RowPlan):
    cdef object rewrite_ptr(self, const unsigned char* msg, Py_ssize_t size)
    cdef bint counted(self) noexcept
    cdef int prescan(self, object chunk, Py_ssize_t start) except -1


# PostgreSQL v3 framing: a message is a type byte and a big-endian int32 length that counts
# itself but not the type byte.

cdef class PgFrameReader(FrameReader):
    pass


cdef class PgFramer(PgFrameReader):
    # A reader that hands every whole message to Python: the reference used by tests, the
    # fuzzer and the microbenchmarks. The relay does not use it.
    cdef:
        bint inspect_all          # False: walk headers only (the relay's forward path)
        list messages             # (kind, bytes) collected by the last feed
        Py_ssize_t count          # messages seen in all
        char hold_kind            # tests: HOLD the first message of this type once (0: never)


cdef class ScriptedFramer(PgFrameReader):
    # Tests: every path of the core's frame reader, chosen per message type (see _framing.pxi).
    cdef:
        dict script               # type -> action
        list events               # (type, size, disposition) per header
        list judged               # (type, body) per message judged to the end
        bint rejudge              # the held message comes back: let it pass this time

# The relay: a session after authentication. Two protocol objects (one per socket) share a
# Relay; bytes are framed in place and written to the other side, usually as the very chunk
# that arrived. Python is entered only for a statement that policy must judge and for events
# (close, block).

cdef enum:
    DECISION_NONE = 0
    DECISION_APPROVED = 1
    DECISION_DENIED = 2

cdef enum:
    RTT_RING = 64          # pipelined units (Query or Sync) whose send time we remember


cdef class PgResults


cdef class Relay:
    cdef:
        readonly ClientSide client
        readonly UpstreamSide upstream
        object client_tr
        object upstream_tr
        ConnStats stats
        public object policy           # None, or .check(bytes) -> verdict or None
        public object events           # Python object told about blocks, logs and the close
        readonly str close_reason
        bint closed
        readonly double last_activity   # monotonic seconds
        readonly unsigned long long bytes_in    # from the client, this session
        readonly unsigned long long bytes_out   # from the upstream, this session
        readonly bint in_copy_in        # CopyInResponse seen, the client's CopyDone/CopyFail not yet
        # Backpressure: the transport that said pause_writing (its buffer is past its high
        # water mark) until it says resume_writing. The other side is not read meanwhile,
        # whatever else wants it read (an approval decided, a masker's hold released).
        readonly bint upstream_full     # upstream's write buffer full: client not read
        readonly bint client_full       # client's write buffer full: upstream not read

        # Round-trip timing: send time of each unit in flight, oldest first.
        double sent_at[RTT_RING]
        unsigned int sent_head          # next to pop
        unsigned int sent_tail          # next to push
        readonly unsigned long long units_sent   # Query + Sync messages forwarded
        readonly unsigned long long units_done   # ReadyForQuery messages received
        readonly char tx_status
        char last_upstream_kind         # a server's FATAL is its last word: add nothing after it
        public str client_encoding      # as the server last reported it (ParameterStatus)
        unsigned long long unsynced_executes    # Executes forwarded since the last Sync (each may run a SET)
        # COPY FROM STDIN: the server ignores Syncs until CopyDone/CopyFail, so those are no
        # units (see Relay._copy_in). Bit (unit & 63): that unit is a Query/FunctionCall, not a Sync.
        unsigned long long query_units
        list copy_ends                  # units_sent at each CopyDone/CopyFail no CopyInResponse took yet

        # Blocked statements replaced by a marker statement that makes the upstream fail
        # exactly where the blocked one would have; its error is rewritten on the way back.
        list rewrites                   # [(unit, marker bytes, error message bytes)]
        bytes marker_prefix
        unsigned long long marker_seq

        # Approvals: the decision for the held message, read when it is judged again.
        int decision
        bytes deny_error
        # prepared statements and portals an approve rule holds each run of, as the server
        # has them (hoopwire.pg.prepared.PreparedNames); None while no approve rule applies
        public object names

        # fail-closed audit: every new statement is answered with this error while it is set
        bytes refuse_error

        # connection_lost heard from the client (1) and the upstream (2): with both, nothing
        # calls into the session again and _release breaks its reference cycles
        unsigned char lost

        # Masking: the request/response tracking that ties rows to their RowPlan (None: off).
        readonly PgResults results

    cdef int _close(self, str reason, object notify_client) except -1
    cdef int _release(self, unsigned char side) except -1
    cdef int _client_failed(self, object e) except -1
    cdef int _upstream_failed(self, object e) except -1
    cdef object _judge(self, char kind, const unsigned char* msg, Py_ssize_t size)
    cdef object _rewrite_error(self, const unsigned char* msg, Py_ssize_t size)
    cdef object _refuse_execute(self, bytes err=*)
    cdef object _sql_prepared(self, bytes sql, object verdict)
    cdef object _track_approvals(self, char kind, const unsigned char* msg, Py_ssize_t size)
    cdef object _approval(self, object verdict, bytes sql)
    cdef int _copy_in(self) except -1
    cdef int _copy_end_sent(self) except -1


cdef class RelaySide(PgFrameReader):
    # One socket of a relayed session; writes what it framed to the other socket.
    cdef Relay relay
    cdef object peer_write        # the other transport's write / writelines, bound once
    cdef object peer_writelines

    cdef int flush(self) except -1


cdef class ClientSide(RelaySide):
    pass


cdef class UpstreamSide(RelaySide):
    cdef int _ready_for_query(self, const unsigned char* msg, Py_ssize_t size) except -1
    cdef int _parameter_status(self, const unsigned char* msg, Py_ssize_t size) except -1
    cdef int _answered(self, char kind) except -1
    cdef int _follow(self, bytes data) except -1

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
    R_COPY_END = 10        # client's CopyDone/CopyFail: no answer, marks where a copy-in ends

cdef enum:
    S_NONE = 0             # no result open: a DataRow now is a tracking failure
    S_ROWS = 1             # rows of `plan`
    S_COPY = 2             # CopyData of `copy` (None: forwarded as they are)
    S_SKIP = 3             # a refused result: drop everything up to ReadyForQuery
    S_COPY_IN = 4          # the server reads CopyData: the client's Syncs get no answer


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
        DataRowPlan plan
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
    cdef int _copy_in(self) except -1
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
