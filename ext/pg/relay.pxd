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
    RTT_BUCKETS = 15


cdef class ConnStats:
    # Counters for one configured connection, summed over its sessions; read at scrape time.
    cdef public unsigned long long bytes_from_client
    cdef public unsigned long long bytes_from_upstream
    cdef public unsigned long long queries         # simple-protocol Query messages
    cdef public unsigned long long executes        # extended-protocol Execute messages
    cdef public unsigned long long rtt_count       # units timed (Query/Sync -> ReadyForQuery)
    cdef public double rtt_sum
    cdef unsigned long long rtt_buckets[RTT_BUCKETS]

    cdef void observe_rtt(self, double seconds) noexcept


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
        readonly bint in_copy_in        # client is streaming COPY data

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

        # Masking: the request/response tracking that ties rows to their RowPlan (None: off).
        readonly PgResults results

    cdef int _close(self, str reason, object notify_client) except -1
    cdef int _client_failed(self, object e) except -1
    cdef int _upstream_failed(self, object e) except -1
    cdef object _judge(self, char kind, const unsigned char* msg, Py_ssize_t size)
    cdef object _rewrite_error(self, const unsigned char* msg, Py_ssize_t size)
    cdef object _refuse_execute(self, bytes err=*)
    cdef object _sql_prepared(self, bytes sql, object verdict)
    cdef object _track_approvals(self, char kind, const unsigned char* msg, Py_ssize_t size)
    cdef object _approval(self, object verdict, bytes sql)


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
