# Declarations of hoopwire.http._parse: the strict HTTP/1.1 request and response parser (RFC 9112),
# one state machine over a byte buffer shared by both directions. The API is the one in issue 21's
# contract: feed() -> events (HEAD, BODY, END, ERROR), feed_eof(), pending, failed.

# events
cdef enum:
    EV_HEAD = 1
    EV_BODY = 2
    EV_END = 3
    EV_ERROR = 4

# body kinds (B_CLOSE for responses only)
cdef enum:
    BK_NONE = 0
    BK_LENGTH = 1
    BK_CHUNKED = 2
    BK_CLOSE = 3

# parser states; the first four read whole lines (the only ones that keep bytes between feeds)
cdef enum:
    S_START = 0         # the start line
    S_HEADERS = 1       # header field lines up to the empty line
    S_CHUNK_SIZE = 2    # a chunk-size line: 1*HEXDIG [ chunk-ext ] CRLF
    S_TRAILERS = 3      # trailer field lines after the last chunk
    S_BODY_LENGTH = 4   # Content-Length bytes left in `remaining`
    S_CHUNK_DATA = 5    # chunk data bytes left in `remaining`
    S_CHUNK_CR = 6      # the CR after chunk data
    S_CHUNK_LF = 7      # the LF after it
    S_BODY_CLOSE = 8    # a response body delimited by the connection's close
    S_DEAD = 9          # an ERROR was reported: nothing more is parsed


cdef class _Head:
    cdef readonly int version               # 10 or 11
    cdef readonly list headers              # [(name as received, value OWS-stripped)]
    cdef readonly int body                  # B_NONE / B_LENGTH / B_CHUNKED / B_CLOSE
    cdef readonly long long content_length  # -1 unless body is B_LENGTH
    cdef readonly bint keep_alive
    cdef readonly frozenset connection_tokens   # lower-cased tokens of every Connection field
    cdef readonly Py_ssize_t head_bytes     # the head's size on the wire (start line to CRLFCRLF)


cdef class RequestHead(_Head):
    cdef readonly bytes method
    cdef readonly bytes target
    cdef readonly bint expect_continue      # Expect: 100-continue on HTTP/1.1
    cdef readonly bint upgrade              # an Upgrade field or the `upgrade` connection token


cdef class ResponseHead(_Head):
    cdef readonly int status
    cdef readonly bytes reason


cdef class _Parser:
    cdef:
        Py_ssize_t max_line             # start line bytes (CRLF excluded) before 414
        Py_ssize_t max_header_bytes     # head bytes (start line to the empty line) before 431
        Py_ssize_t max_headers          # field lines before 431
        int state
        bint is_response                # every ERROR is 502 (a bad upstream), not the 4xx/5xx
        readonly bint failed
        bytearray buf                   # an incomplete line kept between feeds (never body bytes)
        list events                     # the events of the feed under way
        # the message under way
        Py_ssize_t head_size            # head bytes consumed so far
        list fields                     # field lines of the head or the trailer section so far
        _Head head                      # the head reported, while its body is read
        unsigned long long remaining    # body or chunk-data bytes still to come
        # chunked raw bytes not yet reported, as offsets into the feed's current source
        Py_ssize_t raw_from             # -1: none
        list pieces                     # [(start, end)] of chunk data inside them

    cdef int fail(self, int status, str reason) except -1
    cdef int line_limits(self, Py_ssize_t avail, Py_ssize_t lf) except -1
    cdef int field_line(self, const unsigned char* q, Py_ssize_t n, bint trailer) except -1
    cdef int start_line(self, const unsigned char* q, Py_ssize_t n) except -1
    cdef int end_head(self) except -1
    cdef int chunk_size_line(self, const unsigned char* q, Py_ssize_t n) except -1
    cdef int message_done(self, list trailers) except -1
    cdef int frame_body(self, _Head h, long long cl) except -1
    cdef int flush_chunked(self, object src, const unsigned char* p, Py_ssize_t pos) except -1
    cdef Py_ssize_t run(self, object src, const unsigned char* p, Py_ssize_t pos,
                        Py_ssize_t n) except -1


cdef class RequestParser(_Parser):
    cdef:
        bytes method                    # the request line under way
        bytes target
        bytes authority                 # an absolute-form target's authority, else None
        int version


cdef class ResponseParser(_Parser):
    cdef:
        object expected                 # collections.deque of the methods of requests sent
        int version
        int status
        bytes reason
