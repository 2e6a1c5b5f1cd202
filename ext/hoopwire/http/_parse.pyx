# cython: language_level=3
# hoopwire.http._parse: a strict HTTP/1.1 parser (RFC 9112) for requests and responses, one state
# machine over a byte buffer. It cuts heads and bodies; it decides nothing about policy.
#
# Why strict: a gateway and the server behind it must read the same messages out of the same bytes,
# or a client smuggles a second request past the guardrails inside the first one's body. Every
# shape two parsers might frame differently (CL with TE, two CLs, a coding other than a final
# `chunked`, bare CR/LF, obs-fold, whitespace before the colon, odd chunk sizes) is refused, and the
# parser stops: the connection is closed after the error answer (RFC 9112 §11.2).
#
# Copies: body bytes are sliced out of the input once (a whole `bytes` feed of body is handed out
# as is); only an incomplete head or chunk-size line is kept between feeds, so a slow client
# sending a 64 KiB head a byte at a time costs O(n), not O(n^2).
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr

from collections import deque

HEAD = EV_HEAD
BODY = EV_BODY
END = EV_END
ERROR = EV_ERROR
B_NONE = BK_NONE
B_LENGTH = BK_LENGTH
B_CHUNKED = BK_CHUNKED
B_CLOSE = BK_CLOSE

# Content-Length and chunk sizes: the contract's bounds. 2^53 is the largest integer every JSON
# and JavaScript peer reads exactly; 16 hex digits are 64 bits.
DEF MAX_CONTENT_LENGTH = 9007199254740992
DEF MAX_CHUNK_HEX = 16

# byte classes (RFC 9110 §5.6.2 tchar, §5.5 field-vchar, RFC 3986 request-target characters)
cdef unsigned char TCHAR[256]
cdef unsigned char FIELDV[256]      # HT, SP, VCHAR, obs-text
cdef unsigned char TARGETCH[256]    # unreserved, sub-delims, ":", "@", "/", "?", "%"
cdef unsigned char HOSTCH[256]      # reg-name / IP-literal / port characters
cdef signed char HEXV[256]


cdef void _tables() noexcept:
    cdef int c
    cdef bytes extra_t = b"!#$%&'*+-.^_`|~"
    cdef bytes extra_u = b"-._~!$&'()*+,;=:@/?%"
    cdef bytes extra_h = b"-._~!$&'()*+,;=:[]%"
    for c in range(256):
        alnum = (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122)
        TCHAR[c] = alnum or c in extra_t
        FIELDV[c] = c == 9 or (32 <= c <= 126) or c >= 128
        TARGETCH[c] = alnum or c in extra_u
        HOSTCH[c] = alnum or c in extra_h
        HEXV[c] = (c - 48) if 48 <= c <= 57 else (c - 87) if 97 <= c <= 102 else \
            (c - 55) if 65 <= c <= 70 else -1


_tables()

# fields a chunked body's trailer section may not carry: framing, routing and credentials. The
# trailers are forwarded as received, and a server that merges them into its headers would
# otherwise get a second Host, length or Authorization the gateway never judged (RFC 9110 §6.5.1).
# Also every field the guardrail text reads (hoopwire.http.dialect.SELECTED_HEADERS: the method
# overrides, X-Original-URL, X-Forwarded-Prefix) and the ones the gateway sets itself: a head is
# judged and forwarded before its body arrives (bodies stream, 64 KiB backlog at most), so a
# trailer comes too late to be judged; refused for every request, a rule on a header cannot be
# sidestepped by sending it last (Tomcat merges allowed trailers into the headers).
cdef frozenset NO_TRAILER = frozenset((
    b"content-length", b"transfer-encoding", b"host", b"connection", b"upgrade", b"te",
    b"trailer", b"expect", b"authorization", b"proxy-authorization", b"content-type",
    b"content-encoding", b"cookie", b"keep-alive", b"proxy-connection",
    b"x-http-method-override", b"x-http-method", b"x-method-override", b"x-original-url",
    b"x-rewrite-url", b"x-forwarded-prefix", b"x-forwarded-for", b"x-forwarded-host",
    b"x-forwarded-proto", b"forwarded", b"x-request-id"))


cdef inline bytes _slice(object src, const unsigned char* p, Py_ssize_t a, Py_ssize_t b):
    """Bytes a..b of the feed: the feed itself when it is bytes and all of it (no copy)."""
    if a == 0 and PyBytes_CheckExact(src) and b == PyBytes_GET_SIZE(src):
        return <bytes>src
    return PyBytes_FromStringAndSize(<const char*>p + a, b - a)


cdef inline bint _ows(unsigned char c) noexcept:
    return c == 32 or c == 9


cdef bint _is_token(bytes b):
    cdef const unsigned char* q = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(b)
    if n == 0:
        return False
    for i in range(n):
        if not TCHAR[q[i]]:
            return False
    return True


cdef long long _content_length(bytes v):
    """1*DIGIT up to 2^53, else -1: no sign, no `0x`, no inner spaces, no list (`5, 5`)."""
    cdef const unsigned char* q = <const unsigned char*>PyBytes_AS_STRING(v)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(v)
    cdef long long r = 0
    if n == 0 or n > 16:
        return -1
    for i in range(n):
        if not (48 <= q[i] <= 57):
            return -1
        r = r * 10 + (q[i] - 48)
    return r if r <= MAX_CONTENT_LENGTH else -1


cdef list _codings(list values):
    """The transfer codings of every Transfer-Encoding field, lower-cased, in order; None when an
    element is empty or not a token (a parameter, a quote, a stray comma)."""
    cdef list out = []
    cdef bytes v, el
    for v in values:
        for el in v.split(b","):
            el = el.strip(b" \t")
            if not _is_token(el):
                return None
            out.append(el.lower())
    return out


cdef class _Head:

    def get(self, bytes name_lower):
        """The first value of a field (name given lower-case), or None."""
        cdef bytes n, v
        for n, v in self.headers:
            if len(n) == len(name_lower) and n.lower() == name_lower:
                return v
        return None

    def get_all(self, bytes name_lower):
        cdef bytes n, v
        return [v for n, v in self.headers if len(n) == len(name_lower) and n.lower() == name_lower]

    def _key(self):
        return (self.version, self.headers, self.body, self.content_length, self.keep_alive,
                self.connection_tokens, self.head_bytes)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self):
        return hash(self._fields()[:2])

    def _fields(self):
        return self._key()

    def __repr__(self):
        return f"<{type(self).__name__} {self._fields()!r}>"


cdef class RequestHead(_Head):

    def _fields(self):
        return (self.method, self.target, self.expect_continue, self.upgrade) + self._key()


cdef class ResponseHead(_Head):

    def _fields(self):
        return (self.status, self.reason) + self._key()


cdef class _Parser:

    def __init__(self, Py_ssize_t max_line=8192, Py_ssize_t max_header_bytes=65536,
                 Py_ssize_t max_headers=100):
        self.max_line = max_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.state = S_START
        self.failed = False
        self.buf = bytearray()
        self.events = []
        self.head_size = 0
        self.fields = []
        self.head = None
        self.remaining = 0
        self.raw_from = -1
        self.pieces = []

    @property
    def pending(self):
        """Bytes kept but not yet parsed into events (an incomplete line)."""
        return PyByteArray_GET_SIZE(self.buf)

    def feed(self, data):
        cdef Py_buffer view
        cdef const unsigned char* p
        cdef const unsigned char* lf
        cdef Py_ssize_t n, pos = 0, used
        cdef bytearray b
        if self.state == S_DEAD:
            return []
        self.events = []
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const unsigned char*>view.buf
            n = view.len
            if PyByteArray_GET_SIZE(self.buf):
                # a line began in an earlier feed: complete it in the kept buffer, then go on in
                # the new bytes themselves (bodies are never taken from the kept buffer)
                lf = <const unsigned char*>memchr(p, 10, <size_t>n)
                pos = (lf - p + 1) if lf != NULL else n
                self.buf += PyBytes_FromStringAndSize(<const char*>p, pos)
                if lf == NULL:
                    self.line_limits(PyByteArray_GET_SIZE(self.buf), -1)
                    return self.events
                b = self.buf
                self.buf = bytearray()
                self.run(b, <const unsigned char*>PyByteArray_AS_STRING(b), 0,
                         PyByteArray_GET_SIZE(b))
            if self.state != S_DEAD and pos < n:
                used = self.run(data, p, pos, n)
                if used < n and self.state != S_DEAD:
                    self.buf = bytearray(PyBytes_FromStringAndSize(<const char*>p + used, n - used))
        finally:
            PyBuffer_Release(&view)
        return self.events

    cdef int fail(self, int status, str reason) except -1:
        if self.is_response:
            status = 502
        self.events.append((EV_ERROR, status, reason))
        self.state = S_DEAD
        self.failed = True
        self.buf = bytearray()
        return 0

    cdef int line_limits(self, Py_ssize_t avail, Py_ssize_t lf) except -1:
        """Refuse a line that outgrew its limit, deciding exactly as if its bytes had come one at
        a time: `avail` bytes without LF so far (lf < 0), or a line whose LF is at offset lf.
        A start line (or chunk-size line) is too long once max_line + 2 bytes hold no LF; a head
        is too big once its bytes pass max_header_bytes; the first limit reached wins."""
        cdef int st = self.state
        cdef Py_ssize_t j1 = -1, j2 = -1
        cdef Py_ssize_t lim1 = avail if lf < 0 else lf
        cdef Py_ssize_t lim2 = avail if lf < 0 else lf + 1
        cdef bint hit1, hit2
        if st == S_START or st == S_CHUNK_SIZE:
            j1 = self.max_line + 2
        if st != S_CHUNK_SIZE:
            j2 = self.max_header_bytes - self.head_size + 1
            if j2 < 1:
                j2 = 1
        hit1 = 0 < j1 <= lim1
        hit2 = 0 < j2 <= lim2
        if hit1 and (not hit2 or j1 <= j2):
            if st == S_CHUNK_SIZE:
                return self.fail(400, "chunk-size line too long")
            return self.fail(414, "status line too long" if self.is_response
                             else "request line too long")
        if hit2:
            return self.fail(431, "header section too large" if st != S_TRAILERS
                             else "trailer section too large")
        return 0

    cdef int field_line(self, const unsigned char* q, Py_ssize_t n, bint trailer) except -1:
        cdef const unsigned char* colon
        cdef Py_ssize_t c, a, b, i
        cdef bytes name
        cdef bint tab
        if _ows(q[0]):
            return self.fail(400, "obs-fold (a line starting with whitespace)")
        colon = <const unsigned char*>memchr(q, 58, <size_t>n)
        if colon == NULL:
            return self.fail(400, "field line without a colon")
        c = colon - q
        if c == 0:
            return self.fail(400, "empty field name")
        for i in range(c):
            if not TCHAR[q[i]]:
                if _ows(q[i]):
                    return self.fail(400, "whitespace between field name and colon")
                return self.fail(400, "invalid character in a field name")
        a = c + 1
        b = n
        while a < b and _ows(q[a]):
            a += 1
        while b > a and _ows(q[b - 1]):
            b -= 1
        for i in range(a, b):
            if not FIELDV[q[i]]:
                return self.fail(400, "control character in a field value")
        tab = memchr(q + c + 1, 9, <size_t>(a - c - 1)) != NULL or \
            memchr(q + b, 9, <size_t>(n - b)) != NULL
        if len(self.fields) >= self.max_headers:
            return self.fail(431, "too many header fields" if not trailer else "too many trailer fields")
        name = PyBytes_FromStringAndSize(<const char*>q, c)
        if tab and (c == 14 or c == 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            # OWS may be a tab (RFC 9110 §5.6.3), but llhttp (Node) refuses `chunked<HT>` and
            # a server that keeps the tab reads another coding: framing fields get spaces only
            return self.fail(400, "tab around a framing field's value")
        if trailer and name.lower().replace(b"_", b"-") in NO_TRAILER:
            # `_` as `-`: CGI and WSGI servers name X_HTTP_Method_Override as the dashed one
            return self.fail(400, "a framing, credential or inspected field in trailers")
        self.fields.append((name, PyBytes_FromStringAndSize(<const char*>q + a, b - a)))
        return 0

    cdef int start_line(self, const unsigned char* q, Py_ssize_t n) except -1:
        raise NotImplementedError

    cdef int end_head(self) except -1:
        raise NotImplementedError

    cdef int chunk_size_line(self, const unsigned char* q, Py_ssize_t n) except -1:
        """chunk-size [ chunk-ext ]: 1*16HEXDIG *( ";" name [ "=" ( token / quoted-string ) ] )
        (RFC 9112 §7.1.1). No leading space, no `0x`, and no whitespace at all: the RFC's BWS
        around `;` and `=` is refused by llhttp and (before `;`) by h11, and strict wins where
        parsers differ."""
        cdef Py_ssize_t i = 0, j
        cdef unsigned long long v = 0
        cdef unsigned char c
        while i < n and HEXV[q[i]] >= 0:
            if i >= MAX_CHUNK_HEX:
                return self.fail(400, "chunk size over 16 hex digits")
            v = (v << 4) | <unsigned long long>HEXV[q[i]]
            i += 1
        if i == 0:
            return self.fail(400, "chunk size not hex")
        while i < n:
            if q[i] != 59:                  # ";"
                return self.fail(400, "bad chunk extension")
            i += 1
            j = i
            while i < n and TCHAR[q[i]]:
                i += 1
            if i == j:
                return self.fail(400, "bad chunk extension name")
            if i < n and q[i] == 61:        # "="
                i += 1
                if i < n and q[i] == 34:    # a quoted-string
                    i += 1
                    while True:
                        if i >= n:
                            return self.fail(400, "unterminated quoted chunk extension")
                        c = q[i]
                        if c == 34:
                            i += 1
                            break
                        if c == 92:         # quoted-pair
                            i += 1
                            if i >= n or not FIELDV[q[i]]:
                                return self.fail(400, "bad quoted-pair in chunk extension")
                        elif not FIELDV[c]:
                            return self.fail(400, "control character in chunk extension")
                        i += 1
                else:
                    j = i
                    while i < n and TCHAR[q[i]]:
                        i += 1
                    if i == j:
                        return self.fail(400, "bad chunk extension value")
        if v == 0:
            self.state = S_TRAILERS
            self.fields = []
            self.head_size = 0
        else:
            self.remaining = v
            self.state = S_CHUNK_DATA
        return 0

    cdef int message_done(self, list trailers) except -1:
        self.events.append((EV_END, trailers))
        self.state = S_START
        self.head = None
        self.head_size = 0
        self.fields = []
        self.remaining = 0
        return 0

    cdef int flush_chunked(self, object src, const unsigned char* p, Py_ssize_t pos) except -1:
        """Report the chunked bytes read since raw_from as one BODY: raw (framing included) and
        the chunk data in it."""
        cdef Py_ssize_t a, b
        cdef bytes raw, data
        if self.raw_from < 0:
            return 0
        if pos > self.raw_from:
            raw = _slice(src, p, self.raw_from, pos)
            if not self.pieces:
                data = b""
            elif len(self.pieces) == 1:
                a, b = self.pieces[0]
                data = PyBytes_FromStringAndSize(<const char*>p + a, b - a)
            else:
                data = b"".join([PyBytes_FromStringAndSize(<const char*>p + a, b - a)
                                 for a, b in self.pieces])
            self.events.append((EV_BODY, raw, data))
        self.raw_from = -1
        self.pieces = []
        return 0

    cdef Py_ssize_t run(self, object src, const unsigned char* p, Py_ssize_t pos,
                        Py_ssize_t n) except -1:
        """Parse p[pos:n] (src is the object that holds them); returns where it stopped: n, or
        the start of an incomplete line."""
        cdef const unsigned char* lf
        cdef const unsigned char* q
        cdef Py_ssize_t avail, e, ln, unit = pos
        cdef unsigned long long k
        cdef int st
        cdef bytes chunk
        while pos < n and self.state != S_DEAD:
            st = self.state
            unit = pos
            if st <= S_TRAILERS:
                if st == S_START and self.is_response and not (<ResponseParser>self).expected:
                    self.fail(502, "response bytes without a request")
                    break
                if (st == S_CHUNK_SIZE or st == S_TRAILERS) and self.raw_from < 0:
                    self.raw_from = pos
                avail = n - pos
                lf = <const unsigned char*>memchr(p + pos, 10, <size_t>avail)
                e = (lf - (p + pos)) if lf != NULL else -1
                self.line_limits(avail, e)
                if lf == NULL or self.state == S_DEAD:
                    break
                if e == 0 or p[pos + e - 1] != 13:
                    self.fail(400, "bare LF (line not ended by CRLF)")
                    break
                if st != S_CHUNK_SIZE:
                    self.head_size += e + 1
                q = p + pos
                ln = e - 1
                pos += e + 1
                if st == S_START:
                    self.start_line(q, ln)
                elif st == S_HEADERS:
                    if ln == 0:
                        self.end_head()
                    else:
                        self.field_line(q, ln, False)
                elif st == S_CHUNK_SIZE:
                    self.chunk_size_line(q, ln)
                elif ln == 0:
                    self.flush_chunked(src, p, pos)
                    self.message_done(self.fields)
                else:
                    self.field_line(q, ln, True)
            elif st == S_BODY_LENGTH:
                k = <unsigned long long>(n - pos)
                if k > self.remaining:
                    k = self.remaining
                chunk = _slice(src, p, pos, pos + <Py_ssize_t>k)
                self.events.append((EV_BODY, chunk, chunk))
                pos += <Py_ssize_t>k
                self.remaining -= k
                if self.remaining == 0:
                    self.message_done([])
            elif st == S_CHUNK_DATA:
                if self.raw_from < 0:
                    self.raw_from = pos
                k = <unsigned long long>(n - pos)
                if k > self.remaining:
                    k = self.remaining
                self.pieces.append((pos, pos + <Py_ssize_t>k))
                pos += <Py_ssize_t>k
                self.remaining -= k
                if self.remaining == 0:
                    self.state = S_CHUNK_CR
            elif st == S_CHUNK_CR or st == S_CHUNK_LF:
                if self.raw_from < 0:
                    self.raw_from = pos
                if p[pos] != (13 if st == S_CHUNK_CR else 10):
                    self.fail(400, "chunk data not followed by CRLF")
                    break
                pos += 1
                self.state = S_CHUNK_LF if st == S_CHUNK_CR else S_CHUNK_SIZE
            elif st == S_BODY_CLOSE:
                chunk = _slice(src, p, pos, n)
                self.events.append((EV_BODY, chunk, chunk))
                pos = n
            else:
                break
        if self.state != S_DEAD:
            self.flush_chunked(src, p, pos)
        elif self.raw_from >= 0:
            # the chunked bytes before the one that failed are reported before the ERROR, as
            # they would have been had they come in an earlier feed
            err = self.events.pop()
            self.flush_chunked(src, p, unit)
            self.events.append(err)
        return pos

    cdef int frame_body(self, _Head h, long long cl) except -1:
        """Report the head and enter its body's state (END at once when it has none)."""
        self.head = h
        h.head_bytes = self.head_size
        self.events.append((EV_HEAD, h))
        self.fields = []
        if h.body == BK_CHUNKED:
            self.state = S_CHUNK_SIZE
        elif h.body == BK_LENGTH and cl > 0:
            self.remaining = <unsigned long long>cl
            self.state = S_BODY_LENGTH
        elif h.body == BK_CLOSE:
            self.state = S_BODY_CLOSE
        else:
            self.message_done([])
        return 0


cdef int _version(const unsigned char* q, Py_ssize_t n) noexcept:
    """HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive: 10 * major + minor, or -1."""
    if n != 8 or q[0] != 72 or q[1] != 84 or q[2] != 84 or q[3] != 80 or q[4] != 47 \
            or q[6] != 46 or not (48 <= q[5] <= 57) or not (48 <= q[7] <= 57):
        return -1
    return (q[5] - 48) * 10 + (q[7] - 48)


cdef class RequestParser(_Parser):

    def __init__(self, Py_ssize_t max_line=8192, Py_ssize_t max_header_bytes=65536,
                 Py_ssize_t max_headers=100):
        _Parser.__init__(self, max_line, max_header_bytes, max_headers)
        self.is_response = False

    def feed_eof(self):
        """The client closed: an ERROR when a request was under way, else nothing."""
        self.events = []
        if self.state == S_DEAD:
            return []
        if self.state != S_START or PyByteArray_GET_SIZE(self.buf):
            self.fail(400, "connection closed in the middle of a request")
        return self.events

    cdef int start_line(self, const unsigned char* q, Py_ssize_t n) except -1:
        """request-line = method SP request-target SP HTTP-version, nothing else (RFC 9112 §3)."""
        cdef const unsigned char* sp1
        cdef const unsigned char* sp2
        cdef Py_ssize_t m, t, i, rest
        cdef int v
        if n == 0:
            # RFC 9112 §2.2 lets a server skip empty lines here (a CRLF some 1990s clients
            # sent after a POST body); h11 refuses them, and strict wins where parsers differ
            return self.fail(400, "empty line before the request line")
        sp1 = <const unsigned char*>memchr(q, 32, <size_t>n)
        if sp1 == NULL:
            return self.fail(400, "malformed request line")
        m = sp1 - q
        sp2 = <const unsigned char*>memchr(sp1 + 1, 32, <size_t>(n - m - 1))
        if sp2 == NULL:
            return self.fail(400, "malformed request line (HTTP/0.9 or missing version)")
        t = sp2 - sp1 - 1
        rest = n - m - t - 2
        if m == 0 or t == 0:
            return self.fail(400, "malformed request line")
        for i in range(m):
            if not TCHAR[q[i]]:
                return self.fail(400, "method is not a token")
        for i in range(m):
            if 97 <= q[i] <= 122:
                # methods are case-sensitive (RFC 9110 §9.1) and every registered one is upper
                # case, but servers that upper-case what they get (Werkzeug, for one) would run
                # `delete` as the DELETE a guardrail was never asked about: refused as unknown
                return self.fail(501, "method with lower-case letters")
        v = _version(sp2 + 1, rest)
        if v < 0:
            return self.fail(400, "malformed HTTP version")
        self.method = PyBytes_FromStringAndSize(<const char*>q, m)
        self.target = PyBytes_FromStringAndSize(<const char*>sp1 + 1, t)
        if v == 20 and self.method == b"PRI" and self.target == b"*":
            return self.fail(400, "HTTP/2 connection preface")
        if v != 10 and v != 11:
            return self.fail(505, "HTTP version not supported")
        self.version = v
        if self.method == b"CONNECT":
            # a tunnel carries bytes no rule or mask sees (issue 21's contract)
            return self.fail(501, "CONNECT is not supported")
        i = 0
        while i < t:
            if not TARGETCH[sp1[1 + i]]:
                return self.fail(400, "invalid character in request target")
            if sp1[1 + i] == 37:            # "%" HEXDIG HEXDIG
                if i + 2 >= t or HEXV[sp1[2 + i]] < 0 or HEXV[sp1[3 + i]] < 0:
                    return self.fail(400, "bad percent-encoding in request target")
                i += 2
            i += 1
        self.authority = None
        if sp1[1] == 47:                    # origin-form
            pass
        elif t == 1 and sp1[1] == 42:       # "*": OPTIONS only (RFC 9112 §3.2.4)
            if self.method != b"OPTIONS":
                return self.fail(400, "asterisk-form target on a method other than OPTIONS")
        else:
            self.authority = _absolute_authority(self.target)
            if self.authority is None:
                return self.fail(400, "request target is not origin-form or http(s) absolute-form")
        self.state = S_HEADERS
        self.fields = []
        return 0

    cdef int end_head(self) except -1:
        cdef RequestHead h = RequestHead.__new__(RequestHead)
        cdef bytes name, value, ln, tok
        cdef list hosts = [], cls = [], tes = [], conns = [], te
        cdef bint expect = False, upgrade = False
        cdef long long cl = -1
        cdef set tokens = set()
        for name, value in self.fields:
            ln = name.lower()
            if ln == b"host":
                hosts.append(value)
            elif ln == b"content-length":
                cls.append(value)
            elif ln == b"transfer-encoding":
                tes.append(value)
            elif ln == b"connection":
                conns.append(value)
            elif ln == b"expect":
                if value.lower() == b"100-continue":
                    expect = True
            elif ln == b"upgrade":
                upgrade = True
        if len(hosts) > 1:
            return self.fail(400, "more than one Host field")
        if not hosts and self.version == 11:
            return self.fail(400, "missing Host field (HTTP/1.1)")
        if hosts:
            for i in range(len(hosts[0])):
                if not HOSTCH[(<bytes>hosts[0])[i]]:
                    return self.fail(400, "invalid Host field")
            if self.authority is not None and (<bytes>hosts[0]).lower() != self.authority.lower():
                # RFC 9112 §3.2.2 says to ignore Host here; a gateway and a server that disagree
                # on which one names the site is the routing confusion we refuse instead
                return self.fail(400, "absolute-form target and Host disagree")
        if len(cls) > 1:
            return self.fail(400, "more than one Content-Length field")
        if cls:
            cl = _content_length(cls[0])
            if cl < 0:
                return self.fail(400, "invalid Content-Length")
        if tes:
            if cls:
                return self.fail(400, "both Content-Length and Transfer-Encoding")
            if self.version == 10:
                return self.fail(400, "Transfer-Encoding on HTTP/1.0")
            te = _codings(tes)
            if te is None:
                return self.fail(400, "malformed Transfer-Encoding")
            if any(tok != b"chunked" for tok in te):
                return self.fail(501, "transfer coding other than chunked")
            if len(te) != 1:
                return self.fail(400, "chunked applied more than once")
        for value in conns:
            for tok in value.split(b","):
                tok = tok.strip(b" \t")
                if not tok:
                    continue
                if not _is_token(tok):
                    return self.fail(400, "malformed Connection field")
                tokens.add(tok.lower())
        h.method = self.method
        h.target = self.target
        h.version = self.version
        h.headers = self.fields
        h.connection_tokens = frozenset(tokens)
        h.keep_alive = b"close" not in tokens and (self.version == 11 or b"keep-alive" in tokens)
        h.expect_continue = expect and self.version == 11
        h.upgrade = upgrade or b"upgrade" in tokens
        h.content_length = -1
        if tes:
            h.body = BK_CHUNKED
        elif cls:
            h.body = BK_LENGTH
            h.content_length = cl
        else:
            h.body = BK_NONE
        return self.frame_body(h, cl)


cdef object _absolute_authority(bytes target):
    """The authority of an http:// or https:// absolute-form target, or None (another scheme, no
    authority, or userinfo, which RFC 9110 §4.2.4 makes an error)."""
    cdef bytes low = target[:8].lower()
    cdef Py_ssize_t start, end
    if low.startswith(b"http://"):
        start = 7
    elif low.startswith(b"https://"):
        start = 8
    else:
        return None
    end = start
    while end < len(target) and target[end] not in b"/?":
        end += 1
    auth = target[start:end]
    if not auth or b"@" in auth:
        return None
    return auth


cdef class ResponseParser(_Parser):

    def __init__(self, Py_ssize_t max_line=8192, Py_ssize_t max_header_bytes=65536,
                 Py_ssize_t max_headers=100):
        _Parser.__init__(self, max_line, max_header_bytes, max_headers)
        self.is_response = True
        self.expected = deque()

    def expect(self, method):
        """A request was sent with this method (in order): its response comes next."""
        self.expected.append(bytes(method))

    def feed_eof(self):
        """The upstream closed: END of a close-delimited body, ERROR in the middle of any other
        response, nothing between responses."""
        self.events = []
        if self.state == S_DEAD:
            return []
        if self.state == S_BODY_CLOSE:
            self.message_done([])
        elif self.state != S_START or PyByteArray_GET_SIZE(self.buf):
            self.fail(502, "upstream closed in the middle of a response")
        return self.events

    cdef int start_line(self, const unsigned char* q, Py_ssize_t n) except -1:
        """status-line = HTTP-version SP 3DIGIT SP [ reason-phrase ] (RFC 9112 §4); a status line
        without the second SP is taken too (a reason-less line some servers send)."""
        cdef int v, i
        if n < 12 or q[8] != 32:
            return self.fail(502, "malformed status line")
        v = _version(q, 8)
        if v != 10 and v != 11:
            return self.fail(502, "upstream HTTP version not 1.0 or 1.1")
        for i in range(9, 12):
            if not (48 <= q[i] <= 57):
                return self.fail(502, "malformed status code")
        if n > 12 and q[12] != 32:
            return self.fail(502, "malformed status line")
        for i in range(13, n):
            if not FIELDV[q[i]]:
                return self.fail(502, "control character in reason phrase")
        self.version = v
        self.status = (q[9] - 48) * 100 + (q[10] - 48) * 10 + (q[11] - 48)
        if self.status < 100 or self.status > 599:
            return self.fail(502, "status code out of range")
        self.reason = PyBytes_FromStringAndSize(<const char*>q + 13, n - 13) if n > 13 else b""
        self.state = S_HEADERS
        self.fields = []
        return 0

    cdef int end_head(self) except -1:
        cdef ResponseHead h = ResponseHead.__new__(ResponseHead)
        cdef bytes name, value, ln, tok, method
        cdef list cls = [], tes = [], conns = [], te
        cdef long long cl = -1
        cdef set tokens = set()
        for name, value in self.fields:
            ln = name.lower()
            if ln == b"content-length":
                cls.append(value)
            elif ln == b"transfer-encoding":
                tes.append(value)
            elif ln == b"connection":
                conns.append(value)
        for value in conns:
            for tok in value.split(b","):
                tok = tok.strip(b" \t")
                if tok:
                    tokens.add(tok.lower())
        h.status = self.status
        h.reason = self.reason
        h.version = self.version
        h.headers = self.fields
        h.connection_tokens = frozenset(tokens)
        h.content_length = -1
        h.keep_alive = b"close" not in tokens and (self.version == 11 or b"keep-alive" in tokens)
        if self.status < 200:
            if self.status == 101:
                # the gateway never forwards Upgrade, so a switch it did not ask for is a fault
                return self.fail(502, "unexpected 101 Switching Protocols")
            # an interim response: its own HEAD and END, then the final one of the same request
            h.body = BK_NONE
            return self.frame_body(h, -1)
        method = self.expected.popleft()
        if len(cls) > 1:
            return self.fail(502, "more than one Content-Length field")
        if cls:
            cl = _content_length(cls[0])
            if cl < 0:
                return self.fail(502, "invalid Content-Length")
        if tes:
            if cls:
                return self.fail(502, "both Content-Length and Transfer-Encoding")
            if self.version == 10:
                return self.fail(502, "Transfer-Encoding on HTTP/1.0")
            te = _codings(tes)
            if te is None or not te or te[len(te) - 1] != b"chunked" or te.count(b"chunked") != 1:
                # RFC 9112 §6.3 would read such a body to the close; refusing keeps every
                # response's end unambiguous for the pooled connection
                return self.fail(502, "Transfer-Encoding without a final chunked")
        if method == b"HEAD" or self.status == 204 or self.status == 304:
            h.body = BK_NONE
        elif tes:
            h.body = BK_CHUNKED
        elif cls:
            h.body = BK_LENGTH
            h.content_length = cl
        else:
            h.body = BK_CLOSE
            h.keep_alive = False
        return self.frame_body(h, cl)
