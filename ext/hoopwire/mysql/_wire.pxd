# Declarations of the hoopwire.mysql._wire extension: MySQL/MariaDB packet framing, the relay
# and result tracking. _wire.pyx includes the implementations (_*.pxi beside it) in the same
# order; the frame reader, the counters and the read cursor are the core's, cimported.
cimport cython
from hoopwire._auditlog cimport StatementLog, TagBuf, tags_push
from hoopwire._mask cimport RowPlan, out_changed, out_value
from hoopwire.mysql._sqllex cimport memo_key
from hoopwire.core._frames cimport ConnStats, FORWARD, INSPECT, FrameReader, monotonic
from hoopwire.core.cursor cimport (Cursor, cursor, cur_cstr, cur_le16, cur_le24, cur_le32,
                                   cur_le64, cur_lenenc, cur_lenenc_str, cur_skip, cur_take,
                                   cur_u8)


# -- rows (_rows.pxi) ----------------------------------------------------------------------------

cdef class MysqlRowPlan(RowPlan):
    # A RowPlan that also walks MySQL rows itself (tests, fuzzing); the relay walks any RowPlan
    # with the module functions text_row_rewrite / binary_row_rewrite.
    pass


# -- framing (_framing.pxi) ----------------------------------------------------------------------
# A packet: 3-byte little-endian payload length, 1-byte sequence id, payload. A payload of
# exactly 0xffffff bytes continues in the next packet; the last one of a run is shorter (maybe
# empty). The frame reader's kind is the sequence id, plus CONT when the packet continues.

cdef enum:
    CONT = 0x100
    MAX_PAYLOAD = 0xffffff


cdef class MysqlFrameReader(FrameReader):
    cdef:
        # a logical packet being joined from continuation packets (INSPECT ones only)
        bytearray cont_raw        # the packets so far, headers included
        int cont_packets
        bint in_run               # a continuation run is under way (FORWARD ones too)
        int run_disp              # ... with the disposition its first packet got
        Py_ssize_t max_logical    # largest logical packet accepted (payload bytes)

    cdef int on_packet_header(self, int seq, bint first, Py_ssize_t size) except -1
    cdef object on_packet(self, int seq, const unsigned char* payload, Py_ssize_t n,
                          const unsigned char* raw, Py_ssize_t raw_n, int npackets)
    cdef bint mid_message(self) noexcept


cdef class MysqlFramer(MysqlFrameReader):
    # Tests, fuzzing: every logical packet handed to Python as (first seq, payload, packets).
    cdef:
        bint inspect_all
        list packets
        int hold_seq              # tests: HOLD the first logical packet with this seq once (-1 never)


# -- the relay (_relay.pxi) ----------------------------------------------------------------------

cdef enum:
    DECISION_NONE = 0
    DECISION_APPROVED = 1
    DECISION_DENIED = 2

cdef enum:
    RTT_RING = 64

cdef class MyResults


cdef class PlanMemo:
    # What the masker planned for a result of one statement, kept where the next execution
    # finds it without a call into Python: a prepared statement's (its Relay.stmts entry) or a
    # statement shape's (Relay.memo). Valid while the masker's plan cache is the one it was
    # kept in and the catalog generation the same (MyResults._plan checks both).
    cdef object info                 # the statement's StatementInfo (compared by identity)
    cdef bint filled
    cdef int index                   # result number
    cdef bint binary
    cdef bytes raw                   # the column definitions (ColumnDefs.raw)
    cdef object plan                 # RowPlan, or None (nothing to do)
    cdef object plans                # SessionMasker._plans when kept
    cdef object gen                  # ... and its catalog generation
    # a prepared statement's: the connection masking and catalog generation `info` was read
    # under (None: not yet; the first execute reads it)
    cdef object info_conn
    cdef object info_gen


cdef class Cmd:
    # One command in flight (or answered by the gateway itself, waiting for its turn).
    cdef public int cmd
    cdef public int state            # the upstream state its answer starts in (U_*)
    cdef public object sql           # the statement text recorded (None: not recorded)
    cdef public object info          # the masker's statement info
    cdef public double t             # wall clock when sent (records)
    cdef public double t_mono        # monotonic when sent (round trip)
    cdef public bytes local          # the gateway's own answer, sent when this is the head
    cdef public bytes rec_error      # ... and the ERR payload its record carries
    cdef public bint binary          # its rows are binary (COM_STMT_EXECUTE)
    cdef public bint may_change      # it may change sql_mode or the character set
    cdef public object verdict       # COM_STMT_PREPARE under an approve rule: (verdict, sql)
    cdef public object arg           # COM_INIT_DB: the schema (str)
    cdef public int aseq             # the sequence id its answer starts with
    cdef PlanMemo memo               # where its result plans are remembered (None: nowhere)



cdef class Relay:
    cdef:
        readonly ClientSide client
        readonly UpstreamSide upstream
        object client_tr
        object upstream_tr
        ConnStats stats
        public object policy
        public object events
        object dialect
        object kill_target
        readonly str close_reason
        bint closed
        readonly double last_activity
        readonly unsigned long long bytes_in
        readonly unsigned long long bytes_out
        readonly bint upstream_full
        readonly bint client_full
        readonly unsigned long long units_sent    # commands that get an answer, sent upstream
        readonly unsigned long long units_done    # ... answered completely
        readonly unsigned int capabilities
        readonly unsigned int thread_id
        readonly bint load_data_local
        bint deprecate_eof
        bint session_track                # the upstream's OK packets carry session state
        bint client_session_track         # ... and the client expects them to
        # the session as the server last reported it (OK packets' session-state info)
        readonly int charset              # collation id (character_set_client's default one)
        public str character_set_client
        public str sql_mode
        readonly int mode                 # sql_mode as the dialect's bits (1 NBE, 2 ANSI_QUOTES)
        public str schema
        tuple initial                     # (charset, character_set_client, sql_mode, mode, schema) at login
        bytes marker_prefix
        unsigned long long marker_seq
        int decision
        bytes deny_error
        bytes refuse_error
        bint waiting                      # the client is held until the answers in flight end
        dict stmts                        # statement id -> (verdict or None, sql) as prepared
        readonly MyResults results
        list notices                      # notify_client messages kept (MySQL has no async message)

        readonly bint upstream_said_err   # the server sent an ERR unasked: its last word
        Py_ssize_t max_row                # largest row payload the relay writes
        long long last_stmt               # the last statement id prepared (-1: none)
        object pending_verdict            # a prepare's approve verdict, for its Cmd
        readonly bint infile_client       # the client is sending a LOCAL INFILE's contents
        bint resume_wanted                # an answer ended while the client waits for it
        int cur_aseq                      # the answer's first sequence id, for the command being read
        object kill_wait                  # a KILL's target still being asked for (a future)
        object catalog_wait               # the catalog read after this session's DDL (a future)
        bint catalog_due                  # a DDL was answered since the last statement: ask
                                          # the masker for the read it calls for (_catalog_hold)
        tuple kill_known                  # (gid, upstream thread or 0) for the KILL being read
        # Statement shapes judged before (_sqllex.memo_key -> PlanMemo, its info): a new
        # literal of one is sent with no call into Python. Valid for one policy object and,
        # while masking, one connection masking, catalog generation and schema (memo_*):
        # _memo_ready clears it when any moved.
        dict memo
        object memo_policy
        object memo_conn
        object memo_gen
        object memo_schema
        object memo_cat                   # memo_conn's catalog
        double memo_until                 # its TTL runs out: the masker's path asks for a read
        bint judged_none                  # _judge_text found no verdict at all

    cdef int _close(self, str reason, object notify_client) except -1
    cdef int _client_failed(self, object e) except -1
    cdef int _upstream_failed(self, object e) except -1
    cdef int _resume_client(self) except -1
    cdef object _command(self, int seq, const unsigned char* p, Py_ssize_t n, int npackets)
    cdef int _send(self, Cmd c) except -1
    cdef bint _changes_in_flight(self)
    cdef bint _prepare_in_flight(self)
    cdef bint _kill_hold(self, long long gid) except -1
    cdef bint _catalog_hold(self) except -1
    cdef unsigned int _kill_target(self, unsigned int gid)
    cdef object _kill(self, bytes sql, int aseq)
    cdef object _judge_text(self, int cmd, bytes sql, bytes judged, int aseq)
    cdef bint _memo_ready(self) except -1
    cdef PlanMemo _memo_put(self, bytes key, bytes sql, object info)
    cdef int _prepared_info(self, Cmd c, bytes sql) except -1
    cdef object _approval(self, object verdict, bytes sql)
    cdef object _local(self, bytes err, int aseq, object sql, object mark)
    cdef int _answered(self, object cmd) except -1
    cdef int _after_upstream(self) except -1
    cdef int _statement_prepared(self, object cmd, unsigned int stmt_id) except -1
    cdef int _simple_ok(self, object cmd) except -1
    cdef object _infile(self, int useq, int cseq)
    cdef int _session_state(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef int _status(self, unsigned int status) except -1


cdef class RelaySide(MysqlFrameReader):
    cdef Relay relay
    cdef object peer_write
    cdef object peer_writelines

    cdef int flush(self) except -1


cdef class ClientSide(RelaySide):
    pass


cdef class UpstreamSide(RelaySide):
    cdef int last_seq             # sequence id of the last packet read
    cdef readonly int next_seq    # the sequence id the client expects next in this answer


# -- the command / answer state machine (_results.pxi) -------------------------------------------

cdef enum:
    # what the next upstream packet can be
    U_IDLE = 0             # nothing asked: any packet is a protocol violation
    U_FIRST = 1            # first packet of a result: OK / ERR / LOCAL INFILE / column count
    U_COLDEF = 2           # column definitions (coldefs_left of them)
    U_COLEOF = 3           # the EOF after the definitions (no CLIENT_DEPRECATE_EOF)
    U_ROWS = 4             # rows until EOF / OK (0xfe) or ERR
    U_SIMPLE = 5           # one OK / EOF / ERR
    U_PREPARE = 6          # COM_STMT_PREPARE's first packet
    U_PREP_PARAMS = 7      # its parameter definitions, then EOF
    U_PREP_PEOF = 8
    U_PREP_COLS = 9        # its column definitions, then EOF
    U_PREP_CEOF = 10
    U_FIELDS = 11          # COM_FIELD_LIST: definitions until EOF / ERR
    U_STRING = 12          # COM_STATISTICS: one packet, a string
    U_INFILE = 13          # the client sends a LOCAL INFILE's data; then OK / ERR
    U_LOCAL = 14           # an answer of the gateway's own, sent when it is the head


cdef class MyResults:
    # The commands in flight, oldest first, and where the upstream's answer to the head is.
    cdef:
        Relay relay
        list queue                 # [Cmd]
        readonly int state
        Py_ssize_t coldefs_left
        Py_ssize_t params_left
        bytearray coldef_raw       # the result's column definitions, each after its 3-byte
                                   # length: the masker's plan key (ColumnDefs)
        Py_ssize_t coldef_n        # how many coldef_raw holds
        unsigned char* types       # per column: its MYSQL_TYPE, for binary rows
        unsigned char* unsig       # ... and whether it is UNSIGNED (not needed for lengths)
        Py_ssize_t types_cap
        Py_ssize_t ncols
        bint binary                # rows of the current result are binary (COM_STMT_EXECUTE)
        int result_index           # results of the head command so far
        int seq_delta              # added to the upstream's sequence ids of this answer
        bint skipping              # a refused result: drop packets to the end of the answer
        object masker
        bint mask_on
        bint memo_on               # the masker keeps plans the relay may remember (PlanMemo):
                                   # hoopwire.mysql.masker's SessionMasker, or no masker
        RowPlan plan
        bint plan_work
        bint record_on
        StatementLog stmt_log
        TagBuf cur_tags
        bytes cur_error
        long long cur_masked
        long long cur_rows_n
        list cur_rows
        Py_ssize_t capture_left
        bint in_result             # a result set is open (its end counts its rows)
        bint ended                 # the last packet ended an answer (the head changed)
        object ok_rewrite          # _ok: the OK's payload in the client's format, or None
        object refused_type        # the masker's refusal exception (hoopwire.mysql.masker.MaskRefused)
        list held_head             # masking: the result's count and definitions, held until
                                   # the masker has planned it (a refusal replaces them all)

    cdef int push(self, object cmd) except -1
    cdef object upstream_packet(self, int seq, const unsigned char* p, Py_ssize_t n,
                                const unsigned char* raw, Py_ssize_t raw_n, int npackets)
    cdef int upstream_header(self, int seq, bint first, Py_ssize_t size) except -1
    cdef object _row(self, Cmd head, int seq, const unsigned char* p, Py_ssize_t n,
                     const unsigned char* raw, Py_ssize_t raw_n, int npackets)
    cdef object _end_answer(self, Cmd head, bint more)
    cdef object _plan(self, Cmd head, const unsigned char* raw, Py_ssize_t raw_n)
    cdef object _prepared(self, Cmd head, const unsigned char* p, Py_ssize_t n)
    cdef object _err(self, Cmd head, int seq, const unsigned char* p, Py_ssize_t n)
    cdef object _ok_out(self, int seq)
    cdef int _types(self, Py_ssize_t ncols) except -1
    cdef int _keep(self, object payload, const unsigned char* p, Py_ssize_t n) except -1
    cdef int _tag_ok(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef int _end_result(self) except -1
    cdef int _ok(self, Cmd head, const unsigned char* p, Py_ssize_t n, bint eof,
                 bint* more) except -1
    cdef int _record(self, Cmd head) except -1
    cdef object _reseq(self, const unsigned char* raw, Py_ssize_t raw_n)
    cdef object flush_local(self)
