# Declarations of hoopwire.core._frames: the protocol-neutral half of every relay. Protocol
# extensions cimport it (ext/hoopwire/pg/_wire.pxd) and subclass FrameReader across modules; the
# cdef methods below are their vtable, so a call stays a C call.
#
# FrameReader -- cut a byte stream into messages as it arrives. A FrameReader walks each
# received chunk in place. At every message header it asks the protocol (a subclass) whether
# the body matters:
#   FORWARD -- pass the bytes on unparsed; a message split across reads is just counted down.
#   INSPECT -- the whole message is needed first: handed out as a pointer into the chunk when it
#              sits in one, copied into `held` only when it spans reads.
# Output is collected as a list of pieces -- the received chunk itself when nothing changed --
# so the caller writes once per read. The core knows nothing of a header's layout: the
# protocol's parse_header reads one (header_size bytes) and says the message's kind and size.
#
# ConnStats -- the relay counters of one configured connection, read at scrape time.

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC


cdef enum Disposition:
    FORWARD = 0
    INSPECT = 1

cdef enum:
    MAX_HEADER = 16            # the largest fixed header a protocol may declare
    RTT_BUCKETS = 15           # len(RTT_BOUNDS) + the +Inf bucket


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class FrameReader:
    cdef:
        int header_size            # bytes of a message header, set by the protocol (pg: 5, mysql: 4)
        Py_ssize_t max_size        # largest whole message accepted, header included
        unsigned char hdr[MAX_HEADER]  # a header that arrived split across reads
        int hdr_have               # how many of its bytes we have so far
        Py_ssize_t skip            # bytes of a FORWARD message still to come in later reads
        bytearray held             # an INSPECT message spanning reads, header included
        Py_ssize_t held_need       # its whole size
        int held_kind
        list out                   # pieces to write for the current read
        bint failed                # a framing error was raised: the stream is unusable
        bint holding               # on_message returned HOLD: reading stops until resumed
        bytes stalled              # the bytes from the held message on, fed again on resume
        bint replaying             # resuming: the first message's header was seen already
        double fed_at              # monotonic time of the last feed(): how long a message
                                   # begun has waited for its next byte (stalled_for)

        # Set by parse_header for the message being cut.
        int cur_kind               # the protocol's own code for it (pg: the type byte)
        Py_ssize_t cur_size        # whole message size, header included

    # The protocol's part: read a header, choose a disposition, judge a whole message.
    # on_message returns None to forward the message as it is, the bytes to send instead
    # (b"" drops it), or HOLD to stop here until resume_feed() (the protocol must then stop
    # reading its transport; the message is judged again on resume).
    cdef int parse_header(self, const unsigned char* p) except -1
    cdef int on_header(self, int kind, Py_ssize_t size) except -1
    cdef object on_message(self, int kind, const unsigned char* msg, Py_ssize_t size)
    cdef int too_big(self, Py_ssize_t size) except -1       # raises the FrameError for it

    cdef int feed(self, object data) except -1
    # a message begun and not whole; the protocol adds its own (mysql: a continuation run)
    cdef bint mid_message(self) noexcept
    cdef double stalled_for(self, double now) noexcept
    cdef int resume_feed(self) except -1
    cdef int _begin(self, const unsigned char* p, Py_ssize_t avail) except -1
    cdef int _hold_more(self, const unsigned char* p, Py_ssize_t n) except -1


cdef class ConnStats:
    # Counters for one configured connection, summed over its sessions; read at scrape time.
    cdef public unsigned long long bytes_from_client
    cdef public unsigned long long bytes_from_upstream
    cdef public unsigned long long queries         # statements sent as one message (pg: Query)
    cdef public unsigned long long executes        # runs of a prepared statement (pg: Execute)
    cdef public unsigned long long rtt_count       # units timed (request -> the server ready again)
    cdef public double rtt_sum
    cdef unsigned long long rtt_buckets[RTT_BUCKETS]

    cdef void observe_rtt(self, double seconds) noexcept
