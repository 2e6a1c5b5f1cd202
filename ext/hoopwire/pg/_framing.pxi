cdef inline Py_ssize_t pg_message_size(const unsigned char* p) except -1:
    """The whole size (type byte included) of the message whose (whole, 5-byte) header is at p."""
    cdef Cursor c = cursor(p + 1, 4)
    cdef unsigned int length = cur_be32(&c)
    # The length counts itself, so anything below 4 is nonsense; above 2^31 is not a
    # length any server or client produces.
    if length < 4 or length > 0x7ffffffb:
        raise PgFrameError(f"invalid length {length} in message of type {chr(p[0])!r}")
    return <Py_ssize_t>length + 1


cdef class PgFrameReader(FrameReader):

    def __cinit__(self):
        self.header_size = 5

    cdef int parse_header(self, const unsigned char* p) except -1:
        self.cur_size = pg_message_size(p)
        self.cur_kind = p[0]
        return 0

    cdef int too_big(self, Py_ssize_t size) except -1:
        raise PgFrameError(f"message of {size} bytes exceeds the limit of {self.max_size} bytes",
                           "54000")       # program_limit_exceeded


cdef class PgFramer(PgFrameReader):
    """Feed bytes as they arrive; get back the whole messages they complete.

    >>> f = PgFramer(); f.feed_messages(b"Z\\x00\\x00\\x00\\x05I")
    [('Z', b'I')]
    """

    def __init__(self, Py_ssize_t max_size=0x7fffffff, bint inspect_all=True, hold_kind=None):
        if max_size < 5:
            raise ValueError("max_size must be at least 5")
        self.max_size = max_size
        self.inspect_all = inspect_all
        self.hold_kind = ord(hold_kind) if hold_kind else 0
        self.messages = []

    cdef int on_header(self, int kind, Py_ssize_t size) except -1:
        self.count += 1
        return INSPECT if self.inspect_all else FORWARD

    cdef object on_message(self, int kind, const unsigned char* msg, Py_ssize_t size):
        if self.hold_kind and kind == self.hold_kind:
            self.hold_kind = 0
            return HOLD_
        self.messages.append((chr(<unsigned char>kind), msg[5:size]))
        return None

    def feed_messages(self, data):
        """Return [(type, body)] for the messages this chunk completes."""
        self.messages = []
        self.feed(data)
        return self.messages

    def feed_forward(self, data):
        """Walk the chunk as the relay's forward path does; return the pieces it would write."""
        self.feed(data)
        return self.out

    def resume_messages(self):
        """After a HOLD: continue; return the messages that completes."""
        self.messages = []
        self.resume_feed()
        return self.messages

    @property
    def holding_now(self):
        return self.holding

    @property
    def message_count(self):
        return self.count

    @property
    def pending(self):
        """Bytes of an unfinished message buffered or awaited (0 at a message boundary)."""
        if self.held is not None:
            return self.held_need - len(self.held)
        return self.skip + self.hdr_have


cdef class ScriptedFramer(PgFrameReader):
    """Tests: drive every path of the core's frame reader with PostgreSQL messages. What to do
    with each message type comes from a script {type: action}:
      "forward"  FORWARD: the body is never looked at
      "inspect"  INSPECT, forwarded as it is
      "drop"     INSPECT, replaced by nothing
      "replace"  INSPECT, replaced by an 'R' message carrying b"<" + body + b">"
      "hold"     INSPECT, HOLD once, then forwarded when judged again on resume
    Types not in the script are forwarded. `events` records what the core asked (type, size,
    disposition) once per message; `judged` the (type, body) of every message judged to the end.
    """

    def __init__(self, script, Py_ssize_t max_size=0x7fffffff):
        if max_size < 5:
            raise ValueError("max_size must be at least 5")
        self.max_size = max_size
        self.script = {ord(k): v for k, v in script.items()}
        self.events = []
        self.judged = []

    cdef int on_header(self, int kind, Py_ssize_t size) except -1:
        cdef int disp = FORWARD if self.script.get(kind, "forward") == "forward" else INSPECT
        self.events.append((chr(<unsigned char>kind), size, disp))
        return disp

    cdef object on_message(self, int kind, const unsigned char* msg, Py_ssize_t size):
        action = self.script.get(kind)
        body = msg[5:size]
        if action == "hold":
            if not self.rejudge:
                self.rejudge = True
                return HOLD_
            self.rejudge = False
        self.judged.append((chr(<unsigned char>kind), body))
        if action == "drop":
            return b""
        if action == "replace":
            return b"R" + (len(body) + 6).to_bytes(4, "big") + b"<" + body + b">"
        return None

    def feed_bytes(self, data):
        """Feed a chunk; the bytes it would write."""
        self.feed(data)
        return b"".join([bytes(p) for p in self.out])

    def resume_bytes(self):
        """After a HOLD: go on; the bytes that writes."""
        self.resume_feed()
        return b"".join([bytes(p) for p in self.out])

    @property
    def holding_now(self):
        return self.holding

    @property
    def events(self):
        return self.events

    @property
    def judged(self):
        return self.judged

    @property
    def pending(self):
        if self.held is not None:
            return self.held_need - len(self.held)
        return self.skip + self.hdr_have + (len(self.stalled) if self.stalled else 0)
