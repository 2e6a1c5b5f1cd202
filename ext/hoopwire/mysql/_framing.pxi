# MySQL framing: a packet is a 3-byte little-endian payload length, a 1-byte sequence id and the
# payload. A payload of exactly 0xffffff bytes (16 MB - 1) continues in the next packet, and the
# run ends with a shorter one (empty when the logical payload is a multiple of 0xffffff). The
# core's FrameReader cuts physical packets; this reader joins a run into one logical packet
# for the protocol when its first packet was INSPECTed (and only then: a FORWARDed run is never
# joined). Every header read goes through the core cursor.

# Commands (the first payload byte of a client packet with sequence id 0)
cdef enum:
    COM_SLEEP = 0x00
    COM_QUIT = 0x01
    COM_INIT_DB = 0x02
    COM_QUERY = 0x03
    COM_FIELD_LIST = 0x04
    COM_CREATE_DB = 0x05
    COM_DROP_DB = 0x06
    COM_REFRESH = 0x07
    COM_SHUTDOWN = 0x08
    COM_STATISTICS = 0x09
    COM_PROCESS_INFO = 0x0a
    COM_CONNECT = 0x0b
    COM_PROCESS_KILL = 0x0c
    COM_DEBUG = 0x0d
    COM_PING = 0x0e
    COM_CHANGE_USER = 0x11
    COM_STMT_PREPARE = 0x16
    COM_STMT_EXECUTE = 0x17
    COM_STMT_SEND_LONG_DATA = 0x18
    COM_STMT_CLOSE = 0x19
    COM_STMT_RESET = 0x1a
    COM_SET_OPTION = 0x1b
    COM_STMT_FETCH = 0x1c
    COM_RESET_CONNECTION = 0x1f

# Capability flags the relay reads (the listener negotiated them)
cdef enum:
    CLIENT_LOCAL_FILES = 0x00000080
    CLIENT_PROTOCOL_41 = 0x00000200
    CLIENT_MULTI_STATEMENTS = 0x00010000
    CLIENT_MULTI_RESULTS = 0x00020000
    CLIENT_PS_MULTI_RESULTS = 0x00040000
    CLIENT_SESSION_TRACK = 0x00800000
    CLIENT_DEPRECATE_EOF = 0x01000000

# Server status flags
cdef enum:
    SERVER_MORE_RESULTS_EXISTS = 0x0008
    SERVER_STATUS_CURSOR_EXISTS = 0x0040
    SERVER_SESSION_STATE_CHANGED = 0x4000

# Session state change types (OK packets with SERVER_SESSION_STATE_CHANGED)
cdef enum:
    SESSION_TRACK_SYSTEM_VARIABLES = 0
    SESSION_TRACK_SCHEMA = 1

# Column types (how a binary row encodes each value)
cdef enum:
    T_DECIMAL = 0
    T_TINY = 1
    T_SHORT = 2
    T_LONG = 3
    T_FLOAT = 4
    T_DOUBLE = 5
    T_NULL = 6
    T_TIMESTAMP = 7
    T_LONGLONG = 8
    T_INT24 = 9
    T_DATE = 10
    T_TIME = 11
    T_DATETIME = 12
    T_YEAR = 13
    T_NEWDATE = 14
    T_VARCHAR = 15
    T_BIT = 16
    T_TIMESTAMP2 = 17
    T_DATETIME2 = 18
    T_TIME2 = 19


cdef bytes _hdr(Py_ssize_t n, int seq):
    """A packet header for an n-byte payload (n <= 0xffffff)."""
    return bytes((n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, seq & 0xff))


cdef object frame_payload(const unsigned char* p, Py_ssize_t n, int seq, int* npackets):
    """A logical payload framed as packets from sequence id `seq` on: split at 0xffffff, an
    empty packet closing a payload that is a multiple of it. *npackets gets their count."""
    cdef Py_ssize_t k = n // MAX_PAYLOAD + 1, i, take, w = 0
    cdef unsigned char* d
    out = PyBytes_FromStringAndSize(NULL, n + 4 * k)
    d = <unsigned char*>PyBytes_AS_STRING(out)
    for i in range(k):
        take = n - i * MAX_PAYLOAD
        if take > MAX_PAYLOAD:
            take = MAX_PAYLOAD
        d[w] = take & 0xff
        d[w + 1] = (take >> 8) & 0xff
        d[w + 2] = (take >> 16) & 0xff
        d[w + 3] = (seq + i) & 0xff
        w += 4
        if take:
            memcpy(d + w, p + i * MAX_PAYLOAD, take)
            w += take
    npackets[0] = <int>k
    return out


def frame(payload, int seq=0):
    """Tests: a logical payload as the packets that carry it."""
    cdef bytes b = bytes(payload)
    cdef int k
    return frame_payload(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), seq, &k)


cdef object reseq(const unsigned char* raw, Py_ssize_t n, int delta):
    """Packets (whole, back to back) with every sequence id moved by delta."""
    cdef Py_ssize_t pos = 0, ln
    cdef unsigned char* d
    cdef Cursor c
    out = PyBytes_FromStringAndSize(<const char*>raw, n)
    d = <unsigned char*>PyBytes_AS_STRING(out)
    while pos + 4 <= n:
        c = cursor(d + pos, 4)
        ln = cur_le24(&c)
        d[pos + 3] = (d[pos + 3] + delta) & 0xff
        pos += 4 + ln
    return out


def err_packet(int errno, str sqlstate, str message, int seq=0):
    """An ERR packet (CLIENT_PROTOCOL_41 form): 0xff, error number, '#', SQLSTATE, message.
    The message is cut at 512 bytes, MySQL's own limit (MYSQL_ERRMSG_SIZE): clients keep no
    more."""
    cdef bytes msg = message.encode("utf-8", "replace")[:512]
    cdef bytes st = sqlstate.encode("ascii", "replace")[:5].ljust(5, b"0")
    cdef bytes payload = b"\xff" + bytes((errno & 0xff, (errno >> 8) & 0xff)) + b"#" + st + msg
    return _hdr(len(payload), seq) + payload


def err_fields(payload):
    """(errno, sqlstate or None, message bytes) of an ERR payload; None when it is not one."""
    cdef bytes b = bytes(payload)
    cdef Cursor c = cursor(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    cdef unsigned int errno
    if cur_u8(&c) != 0xff:
        return None
    errno = cur_le16(&c)
    if c.bad:
        return None
    if c.n >= 6 and c.p[0] == 35:       # '#': CLIENT_PROTOCOL_41's SQLSTATE marker
        return errno, b[4:9].decode("ascii", "replace"), b[9:]
    return errno, None, b[3:]


cdef int check_packet_size(Py_ssize_t n, Py_ssize_t limit) except -1:
    if n > limit:
        raise MysqlFrameError(f"packet of {n} bytes exceeds the limit of {limit} bytes",
                              ER_NET_PACKET_TOO_LARGE)
    return 0


cdef class MysqlFrameReader(FrameReader):

    def __cinit__(self):
        self.header_size = 4
        self.max_logical = 0x7fffffff

    cdef int parse_header(self, const unsigned char* p) except -1:
        cdef Cursor c = cursor(p, 4)
        cdef Py_ssize_t n = cur_le24(&c)
        cdef int seq = cur_u8(&c)
        self.cur_size = n + 4
        self.cur_kind = seq | (CONT if n == MAX_PAYLOAD else 0)
        return 0

    cdef int too_big(self, Py_ssize_t size) except -1:
        raise MysqlFrameError(f"packet of {size} bytes exceeds the limit of {self.max_size} bytes",
                              ER_NET_PACKET_TOO_LARGE)

    cdef int on_header(self, int kind, Py_ssize_t size) except -1:
        cdef int disp
        if self.in_run:
            # a packet of a run under way: what its first one got
            if not (kind & CONT):
                self.in_run = False
            return self.run_disp
        disp = self.on_packet_header(kind & 0xff, True, size)
        if kind & CONT:
            self.in_run = True
            self.run_disp = disp
        return disp

    cdef object on_message(self, int kind, const unsigned char* msg, Py_ssize_t size):
        cdef bytes raw
        cdef bytearray payload
        cdef Py_ssize_t pos, ln, have
        cdef Cursor c
        cdef object res
        cdef int first_seq
        if kind & CONT:
            if self.cont_raw is None:
                self.cont_raw = bytearray()
                self.cont_packets = 0
            have = PyByteArray_GET_SIZE(self.cont_raw) - 4 * self.cont_packets
            check_packet_size(have + size - 4, self.max_logical)
            if self.cont_packets and msg[3] != ((<unsigned char*>PyByteArray_AS_STRING(
                    self.cont_raw))[4 * (self.cont_packets - 1) + MAX_PAYLOAD * (
                    self.cont_packets - 1) + 3] + 1) & 0xff:
                raise MysqlFrameError("continuation packets out of order",
                                      ER_NET_PACKETS_OUT_OF_ORDER)
            self.cont_raw += msg[:size]
            self.cont_packets += 1
            return b""              # emitted with the run's last packet
        if self.cont_raw is None:
            return self.on_packet(kind & 0xff, msg + 4, size - 4, msg, size, 1)
        # the last packet of a run: join the payloads
        check_packet_size(PyByteArray_GET_SIZE(self.cont_raw) - 4 * self.cont_packets + size - 4,
                          self.max_logical)
        if msg[3] != ((<unsigned char*>PyByteArray_AS_STRING(self.cont_raw))[
                PyByteArray_GET_SIZE(self.cont_raw) - MAX_PAYLOAD - 1] + 1) & 0xff:
            raise MysqlFrameError("continuation packets out of order", ER_NET_PACKETS_OUT_OF_ORDER)
        raw = bytes(self.cont_raw) + msg[:size]
        payload = bytearray()
        pos = 0
        while pos + 4 <= PyBytes_GET_SIZE(raw):
            c = cursor(<const unsigned char*>PyBytes_AS_STRING(raw) + pos, 4)
            ln = cur_le24(&c)
            payload += raw[pos + 4:pos + 4 + ln]
            pos += 4 + ln
        first_seq = raw[3]
        res = self.on_packet(first_seq, <const unsigned char*>PyByteArray_AS_STRING(payload),
                             PyByteArray_GET_SIZE(payload),
                             <const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw),
                             self.cont_packets + 1)
        if res is HOLD_:
            return res              # judged again, whole, on resume: the run's start is kept
        self.cont_raw = None
        return raw if res is None else res

    cdef int on_packet_header(self, int seq, bint first, Py_ssize_t size) except -1:
        return FORWARD

    cdef object on_packet(self, int seq, const unsigned char* payload, Py_ssize_t n,
                          const unsigned char* raw, Py_ssize_t raw_n, int npackets):
        return None

    cdef bint mid_message(self) noexcept:
        # between the packets of a continuation run the logical packet is not whole either
        return FrameReader.mid_message(self) or self.in_run or self.cont_raw is not None


cdef class MysqlFramer(MysqlFrameReader):
    """Feed bytes as they arrive; get back the logical packets they complete, as
    (sequence id of the first packet, payload, number of packets). The reference the relay's
    framing is tested and fuzzed against; the relay does not use it.

    >>> MysqlFramer().feed_packets(b"\\x01\\x00\\x00\\x00\\x0e")
    [(0, b'\\x0e', 1)]
    """

    def __init__(self, Py_ssize_t max_size=MAX_PAYLOAD + 4, Py_ssize_t max_logical=0x7fffffff,
                 bint inspect_all=True, int hold_seq=-1):
        self.max_size = max_size
        self.max_logical = max_logical
        self.inspect_all = inspect_all
        self.hold_seq = hold_seq
        self.packets = []

    cdef int on_packet_header(self, int seq, bint first, Py_ssize_t size) except -1:
        return INSPECT if self.inspect_all else FORWARD

    cdef object on_packet(self, int seq, const unsigned char* payload, Py_ssize_t n,
                          const unsigned char* raw, Py_ssize_t raw_n, int npackets):
        if seq == self.hold_seq:
            self.hold_seq = -1
            return HOLD_
        self.packets.append((seq, payload[:n], npackets))
        return None

    def feed_packets(self, data):
        """The logical packets this chunk completes."""
        self.packets = []
        self.feed(data)
        return self.packets

    def feed_forward(self, data):
        """The bytes the chunk's walk would write (every piece joined)."""
        self.packets = []
        self.feed(data)
        return b"".join([bytes(p) for p in self.out])

    def resume_packets(self):
        self.packets = []
        self.resume_feed()
        return self.packets

    @property
    def holding_now(self):
        return self.holding

    @property
    def written(self):
        return b"".join([bytes(p) for p in self.out])

    def stalled_seconds(self, double now):
        """Tests: FrameReader.stalled_for at monotonic time `now`."""
        return self.stalled_for(now)

    @property
    def fed_at(self):
        return self.fed_at

    @property
    def pending(self):
        """Bytes of an unfinished packet buffered or awaited, plus a continuation run's start:
        0 at a logical packet boundary."""
        cdef Py_ssize_t n = self.skip + self.hdr_have
        if self.held is not None:
            n += self.held_need - PyByteArray_GET_SIZE(self.held)
        if self.cont_raw is not None:
            n += PyByteArray_GET_SIZE(self.cont_raw)
        return n + (1 if self.in_run else 0)
