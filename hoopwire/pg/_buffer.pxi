from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize, PyBytes_CheckExact
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.string cimport memcpy


# on_message: stop here, this message is judged again on resume. A C-level name for the
# extension (a module global would be a dict lookup at every comparison), the same object
# exported as HOLD for the Python side (the masker returns it).
cdef object HOLD_ = object()
HOLD = HOLD_


class FrameError(Exception):
    """The peer sent bytes that are not a valid message stream (bad length, oversized...)."""

    def __init__(self, message, code="08P01"):
        super().__init__(message)
        self.code = code


cdef class FrameReader:

    def __cinit__(self):
        self.header_size = 5
        self.max_size = 0x7fffffff
        self.out = []

    cdef int parse_header(self, const unsigned char* p) except -1:
        raise NotImplementedError

    cdef int on_header(self, char kind, Py_ssize_t size) except -1:
        return FORWARD

    cdef object on_message(self, char kind, const unsigned char* msg, Py_ssize_t size):
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
        raise FrameError(f"message of {size} bytes exceeds the limit of {self.max_size} bytes",
                         "54000")

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
        if not PyBytes_CheckExact(data):
            data = bytes(data)
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
