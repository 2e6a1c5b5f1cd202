# hoopwire.core._frames: the protocol-neutral frame reader and relay counters (see _frames.pxd).
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize, PyBytes_CheckExact
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.string cimport memcpy

from hoopwire.core.cursor cimport (Cursor, cursor, cur_be16, cur_be32, cur_be32s, cur_cstr,
                                   cur_le16, cur_le24, cur_le32, cur_le64, cur_lenenc,
                                   cur_lenenc_str, cur_take, cur_u8)


# on_message: stop here, this message is judged again on resume. A C-level name for the
# extension (a module global would be a dict lookup at every comparison), the same object
# exported as HOLD for the Python side (the masker returns it).
cdef object HOLD_ = object()
HOLD = HOLD_


class FrameError(Exception):
    """The peer sent bytes that are not a valid message stream (bad length, oversized...).
    `code` is the protocol's code for it (PostgreSQL: a SQLSTATE), None when the core raised it
    and the protocol did not say (FrameReader.too_big is the protocol's to override)."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


cdef class FrameReader:

    def __cinit__(self):
        self.header_size = 0            # the protocol's __cinit__ sets it
        self.max_size = 0x7fffffff
        self.out = []

    cdef int parse_header(self, const unsigned char* p) except -1:
        raise NotImplementedError

    cdef int on_header(self, int kind, Py_ssize_t size) except -1:
        return FORWARD

    cdef object on_message(self, int kind, const unsigned char* msg, Py_ssize_t size):
        return None

    cdef int _hold_more(self, const unsigned char* p, Py_ssize_t n) except -1:
        """Append n bytes to the held message; when it is whole, judge and emit it."""
        cdef Py_ssize_t have = PyByteArray_GET_SIZE(self.held)
        cdef object result
        cdef bytearray msg
        PyByteArray_Resize(self.held, have + n)
        memcpy(PyByteArray_AS_STRING(self.held) + have, p, <size_t>n)
        if have + n < self.held_need:
            return 0
        msg = self.held
        self.held = None
        result = self.on_message(self.held_kind, <const unsigned char*>PyByteArray_AS_STRING(msg),
                                 self.held_need)
        if result is HOLD_:
            self.holding = True
            self.stalled = bytes(msg)
        elif result is None:
            self.out.append(msg)
        elif len(result):
            self.out.append(result)
        return 0

    cdef int too_big(self, Py_ssize_t size) except -1:
        raise FrameError(f"message of {size} bytes exceeds the limit of {self.max_size} bytes")

    cdef int _begin(self, const unsigned char* p, Py_ssize_t avail) except -1:
        """A header is complete at p: validate it and pick the message's disposition."""
        self.parse_header(p)
        if self.cur_size > self.max_size:
            self.too_big(self.cur_size)
        if self.replaying:
            # the held message again: on_header already counted it and chose INSPECT
            self.replaying = False
            return INSPECT
        return self.on_header(self.cur_kind, self.cur_size)

    cdef int feed(self, object data) except -1:
        """Cut one received chunk; self.out receives the pieces to write, in order."""
        if self.failed:
            return 0
        if self.header_size <= 0 or self.header_size > MAX_HEADER:
            raise ValueError(f"header_size {self.header_size}: the protocol must set 1..{MAX_HEADER}")
        if not PyBytes_CheckExact(data):
            data = bytes(data)
        self.fed_at = monotonic()
        if self.holding:
            # read before the protocol could pause its transport: keep it for the resume
            self.stalled = self.stalled + data
            self.out = []
            return 0
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos = 0      # next byte to look at
        cdef Py_ssize_t start = 0    # first byte of the pass-through span not yet emitted
        cdef Py_ssize_t take, avail, size
        cdef int disp
        cdef object result
        cdef object view = None
        self.out = []
        try:
            # Carry-over from the previous read: a forwarded body, a held message, or a header.
            if self.skip:
                take = self.skip if self.skip < n else n
                self.skip -= take
                pos = take
            elif self.held is not None:
                take = self.held_need - PyByteArray_GET_SIZE(self.held)
                if take > n:
                    take = n
                self._hold_more(p, take)
                pos = start = take
                if self.holding:
                    self.stalled = self.stalled + data[take:]
                    return 0
            elif self.hdr_have:
                take = self.header_size - self.hdr_have
                if take > n:
                    take = n
                memcpy(self.hdr + self.hdr_have, p, <size_t>take)
                self.hdr_have += <int>take
                pos = start = take
                if self.hdr_have == self.header_size:
                    self.hdr_have = 0
                    disp = self._begin(self.hdr, self.header_size)
                    size = self.cur_size - self.header_size   # body still to come
                    take = size if size < n - pos else n - pos
                    if disp == FORWARD:
                        self.out.append(PyBytes_FromStringAndSize(<char*>self.hdr, self.header_size))
                        self.skip = size - take
                        pos += take
                    else:
                        self.held = bytearray(PyBytes_FromStringAndSize(<char*>self.hdr, self.header_size))
                        self.held_need = self.cur_size
                        self.held_kind = self.cur_kind
                        self._hold_more(p + pos, take)
                        pos += take
                        start = pos
                        if self.holding:
                            self.stalled = self.stalled + data[pos:]
                            return 0

            # Whole messages in this chunk.
            while pos < n:
                avail = n - pos
                if avail < self.header_size:
                    if start < pos:
                        if view is None:
                            view = memoryview(data)
                        self.out.append(view[start:pos])
                    memcpy(self.hdr, p + pos, <size_t>avail)
                    self.hdr_have = <int>avail
                    start = pos = n
                    break
                disp = self._begin(p + pos, avail)
                size = self.cur_size
                if disp == FORWARD:
                    if avail >= size:
                        pos += size
                    else:
                        self.skip = size - avail
                        pos = n
                elif avail >= size:
                    result = self.on_message(self.cur_kind, p + pos, size)
                    if result is HOLD_:
                        if start < pos:
                            if view is None:
                                view = memoryview(data)
                            self.out.append(view[start:pos])
                        self.holding = True
                        self.stalled = data[pos:]
                        return 0
                    if result is not None:
                        if start < pos:
                            if view is None:
                                view = memoryview(data)
                            self.out.append(view[start:pos])
                        if len(result):
                            self.out.append(result)
                        start = pos + size
                    pos += size
                else:
                    if start < pos:
                        if view is None:
                            view = memoryview(data)
                        self.out.append(view[start:pos])
                    self.held = bytearray(PyBytes_FromStringAndSize(<char*>(p + pos), avail))
                    self.held_need = size
                    self.held_kind = self.cur_kind
                    start = pos = n

            if start < n:
                if start == 0:
                    self.out.append(data)
                else:
                    if view is None:
                        view = memoryview(data)
                    self.out.append(view[start:n])
        except BaseException:
            self.failed = True
            raise
        return 0

    cdef bint mid_message(self) noexcept:
        return self.skip != 0 or self.held is not None or self.hdr_have != 0

    cdef double stalled_for(self, double now) noexcept:
        """Seconds a message begun has waited for its next byte: 0 at a message boundary,
        and while a whole message is held for a decision (an approval has its own bound).
        A peer that sends a header and stops holds its session and the upstream's
        connection until the relay's owner acts on this (hoopwire/core/listener.py)."""
        if self.holding or self.failed or self.fed_at == 0.0 or not self.mid_message():
            return 0.0
        return now - self.fed_at

    cdef int resume_feed(self) except -1:
        """Feed again what arrived from the held message on; self.out gets the pieces."""
        cdef bytes data = self.stalled
        self.holding = False
        self.stalled = None
        if data:
            self.replaying = True
            self.feed(data)
        else:
            self.out = []
        return 0


# Upper bounds of the statement round-trip histogram, in seconds (+Inf is the last bucket).
RTT_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
cdef double _rtt_bounds[RTT_BUCKETS - 1]
for _i, _b in enumerate(RTT_BOUNDS):
    _rtt_bounds[_i] = _b


cdef class ConnStats:
    """Counters of one configured connection, summed over its sessions (C ints, no locks:
    each worker process is one thread)."""

    cdef void observe_rtt(self, double seconds) noexcept:
        cdef int i
        self.rtt_count += 1
        self.rtt_sum += seconds
        for i in range(RTT_BUCKETS - 1):
            if seconds <= _rtt_bounds[i]:
                self.rtt_buckets[i] += 1
                return
        self.rtt_buckets[RTT_BUCKETS - 1] += 1

    def observe(self, double seconds):
        """observe_rtt for a relay written in Python (http): one statement's or request's
        round trip into hoopwire_statement_seconds."""
        self.observe_rtt(seconds)

    def rtt_histogram(self):
        """Cumulative bucket counts [(upper bound, count)], +Inf last, and the sum."""
        cdef unsigned long long acc = 0
        out = []
        for i in range(RTT_BUCKETS):
            acc += self.rtt_buckets[i]
            out.append((RTT_BOUNDS[i] if i < RTT_BUCKETS - 1 else float("inf"), acc))
        return out, self.rtt_sum


def cursor_reads(data, str ops):
    """Tests: read `data` with the cursor, one read per letter of `ops` -- 'b' u8, 'h' be16,
    'i' be32, 's' signed be32, 'w' le16, 't' le24, 'l' le32, 'q' le64, 'n' lenenc integer,
    'e' lenenc string, 'z' C string, a digit k: k bytes -- and return [(value, bad)] per read
    (bytes values as bytes, a NULL as None) and the bytes left."""
    cdef bytes b = bytes(data)
    cdef Cursor c = cursor(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    cdef const unsigned char* q
    cdef Py_ssize_t k
    cdef bint is_null
    cdef unsigned long long v
    out = []
    for op in ops:
        if op == "b":
            val = cur_u8(&c)
        elif op == "h":
            val = cur_be16(&c)
        elif op == "i":
            val = cur_be32(&c)
        elif op == "s":
            val = cur_be32s(&c)
        elif op == "w":
            val = cur_le16(&c)
        elif op == "t":
            val = cur_le24(&c)
        elif op == "l":
            val = cur_le32(&c)
        elif op == "q":
            val = cur_le64(&c)
        elif op == "n":
            v = cur_lenenc(&c, &is_null)
            val = None if is_null else v
        elif op == "e":
            q = cur_lenenc_str(&c, &k)
            val = None if q == NULL else q[:k]
        elif op == "z":
            q = cur_cstr(&c, &k)
            val = None if q == NULL else q[:k]
        elif op.isdigit():
            q = cur_take(&c, int(op))
            val = None if q == NULL else q[:int(op)]
        else:
            raise ValueError(op)
        out.append((val, bool(c.bad)))
    return out, c.n
