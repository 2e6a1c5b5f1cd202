# Protocol-neutral framing: cut a byte stream into messages as it arrives.
#
# A FrameReader walks each received chunk in place. At every message header it asks the
# protocol (a subclass) whether the body matters:
#   FORWARD -- pass the bytes on unparsed; a message split across reads is just counted down.
#   INSPECT -- the whole message is needed first: handed out as a pointer into the chunk when it
#              sits in one, copied into `held` only when it spans reads.
# Output is collected as a list of pieces -- the received chunk itself when nothing changed --
# so the caller writes once per read.

cdef enum Disposition:
    FORWARD = 0
    INSPECT = 1


cdef class FrameReader:
    cdef:
        int header_size            # bytes of a message header (pg: 5, mysql: 4)
        Py_ssize_t max_size        # largest whole message accepted, header included
        unsigned char hdr[16]      # a header that arrived split across reads
        int hdr_have               # how many of its bytes we have so far
        Py_ssize_t skip            # bytes of a FORWARD message still to come in later reads
        bytearray held             # an INSPECT message spanning reads, header included
        Py_ssize_t held_need       # its whole size
        char held_kind
        list out                   # pieces to write for the current read
        bint failed                # a framing error was raised: the stream is unusable
        bint holding               # on_message returned HOLD: reading stops until resumed
        bytes stalled              # the bytes from the held message on, fed again on resume
        bint replaying             # resuming: the first message's header was seen already

        # Set by parse_header for the message being cut.
        char cur_kind
        Py_ssize_t cur_size        # whole message size, header included

    # The protocol's part: read a header, choose a disposition, judge a whole message.
    # on_message returns None to forward the message as it is, the bytes to send instead
    # (b"" drops it), or HOLD to stop here until resume_feed() (the protocol must then stop
    # reading its transport; the message is judged again on resume).
    cdef int parse_header(self, const unsigned char* p) except -1
    cdef int on_header(self, char kind, Py_ssize_t size) except -1
    cdef object on_message(self, char kind, const unsigned char* msg, Py_ssize_t size)

    cdef int feed(self, object data) except -1
    cdef int resume_feed(self) except -1
    cdef int too_big(self, Py_ssize_t size) except -1       # raises the FrameError for it
    cdef int _begin(self, const unsigned char* p, Py_ssize_t avail) except -1
    cdef int _hold_more(self, const unsigned char* p, Py_ssize_t n) except -1
