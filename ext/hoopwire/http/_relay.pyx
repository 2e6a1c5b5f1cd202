# cython: language_level=3
# hoopwire.http._relay: the per-request head rewrites of the HTTP relay in C, one pass each.
#
# Why C: profiled through the relay (bench/http_call_profile.py, bench/README.md), the Python
# head rewrites were the largest Python share of a keep-alive request after the socket writes:
# the response head 30 us, the request head 17 and the Bearer token 7 (cProfile's inflated us,
# of ~110 per request outside the writes), mostly bytecode per header (a lower(), a set lookup
# and four list appends each). Here each head is one loop that decides every field, sums the
# size, and copies into one bytes object: in process, same run, the request head 3.6x, the
# response head 2.9x and the token 6.7x faster than the Python they replace.
#
# Behaviour is HttpConf.build_head's and HttpConf.response_head's (hoopwire/http/session.py),
# which stay as the reference: tests/test_http_rewrite.py checks both give the same bytes on the
# same heads. Masked responses (re-framed) have their own (Rewriter.reframed): the Python head was
# 27.7 of the 659 cProfile us of a masked 1 KiB request (216 unmasked; bench/README.md).
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memchr, memcpy

from hoopwire.http._parse cimport RequestHead, ResponseHead

# the sets of field names a head drops, by Connection token set: a client (and nginx on every
# answer) sends the same few tokens each time, so the union is made once (it cost 0.2 us a
# request); bounded, cleared when full
DEF DROPS_MAX = 64

cdef bytes _TE = b"transfer-encoding"
# what a re-framed (masked) body drops of the upstream's framing: ours replaces it
cdef frozenset _FRAMING = frozenset((b"content-length", b"transfer-encoding", b"trailer"))
cdef bytes _HOST = b"host"


cdef inline bytes _lower(bytes name):
    """ASCII lower-case of a field name (the parser admits tchar only); the object itself when
    it has no upper-case letter."""
    cdef const unsigned char* q = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(name)
    cdef bytes out
    cdef unsigned char* w
    for i in range(n):
        if 65 <= q[i] <= 90:
            break
    else:
        return name
    out = PyBytes_FromStringAndSize(NULL, n)
    w = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(w, q, <size_t>n)
    for i in range(i, n):
        if 65 <= w[i] <= 90:
            w[i] += 32
    return out


cdef inline Py_ssize_t _put(char* w, Py_ssize_t at, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(w + at, PyBytes_AS_STRING(b), <size_t>n)
    return at + n


cdef inline Py_ssize_t _put_c(char* w, Py_ssize_t at, const char* s, Py_ssize_t n) noexcept:
    memcpy(w + at, s, <size_t>n)
    return at + n


cdef inline Py_ssize_t _start_line_and_fields(char* w, int status, bytes reason, list headers,
                                              const char* keep, Py_ssize_t nh):
    """`HTTP/1.1 <status> <reason>` and the fields `keep` marks, written from w[0]: how every
    response head the gateway rewrites begins. Returns the offset after them."""
    cdef Py_ssize_t at, i
    cdef tuple t
    # the parser admits 100..599 only: three digits
    at = _put_c(w, 0, "HTTP/1.1 ", 9)
    w[9] = <char>(48 + status // 100)
    w[10] = <char>(48 + status // 10 % 10)
    w[11] = <char>(48 + status % 10)
    w[12] = 32
    at = _put(w, 13, reason)
    at = _put_c(w, at, "\r\n", 2)
    for i in range(nh):
        if keep[i]:
            t = <tuple>headers[i]
            at = _put(w, at, <bytes>t[0])
            at = _put_c(w, at, ": ", 2)
            at = _put(w, at, <bytes>t[1])
            at = _put_c(w, at, "\r\n", 2)
    return at


cdef inline Py_ssize_t _connection_and_id(char* w, Py_ssize_t at, bint close, bint client10,
                                          bytes rid):
    """How every rewritten response head ends: the connection's fate where the client must be
    told, the request id, the blank line."""
    if close:
        at = _put_c(w, at, "Connection: close\r\n", 19)
    elif client10:
        at = _put_c(w, at, "Connection: keep-alive\r\n", 24)
    at = _put_c(w, at, "X-Request-Id: ", 14)
    at = _put(w, at, rid)
    return _put_c(w, at, "\r\n\r\n", 4)


cdef class Rewriter:
    """One configuration's head rewrites (HttpConf makes one per (re)load)."""

    cdef readonly bytes base            # the upstream path prefix
    cdef readonly bytes host            # the Host the upstream expects
    cdef readonly bint keep_client_host
    cdef readonly frozenset drop        # request fields never forwarded (relay._HOP and ours)
    cdef readonly bytes cred_line       # `Name: value\r\n` of the stored credential, or b""
    cdef readonly bint identity_encoding    # masking applies: Accept-Encoding: identity
    cdef readonly frozenset resp_drop   # response fields never forwarded
    cdef readonly bytes identity_header # lower-case
    cdef readonly frozenset selected    # the fields the guardrails' request text carries
    cdef dict _drops                    # Connection tokens -> request drop set
    cdef dict _resp_drops               # the same for responses

    def __init__(self, bytes base, bytes host, bint keep_client_host, frozenset drop,
                 bytes cred_line, bint identity_encoding, frozenset resp_drop,
                 bytes identity_header, frozenset selected):
        self.base = base
        self.host = host
        self.keep_client_host = keep_client_host
        self.drop = drop
        self.cred_line = cred_line
        self.identity_encoding = identity_encoding
        self.resp_drop = resp_drop
        self.identity_header = identity_header
        self.selected = selected
        self._drops = {}
        self._resp_drops = {}

    cdef frozenset _with(self, dict cache, frozenset base, frozenset tokens):
        cdef frozenset d = cache.get(tokens)
        if d is None:
            if len(cache) >= DROPS_MAX:
                cache.clear()
            d = base | tokens
            cache[tokens] = d
        return d

    def bearer(self, RequestHead head):
        """The token of the identity header's `Bearer <token>` (the scheme case-insensitive,
        RFC 9110 11.1; the value OWS-stripped by the parser, the token stripped again), or
        None (no such header, another scheme, or no token: the caller tells which)."""
        return self.scan(head)[0]

    def scan(self, RequestHead head):
        """One pass over the fields for what the relay asks of every request: (the Bearer
        token as bearer() reads it, the shape's Host) where the Host is the Host field's value
        (b"" without one) when it is the only field of the request text (`selected`, names
        read as dialect.request_text reads them), else None: the guardrails' text is then a
        function of the method, target and Host alone, which the relay's verdict cache keys
        on (and the relay checks it is, before it caches one)."""
        cdef bytes want = self.identity_header
        cdef frozenset selected = self.selected
        cdef Py_ssize_t wn = PyBytes_GET_SIZE(want), n, a, b
        cdef bytes name, value, low, sel
        cdef object token = None, host = b""
        cdef bint seen = False
        cdef const unsigned char* q
        cdef tuple t
        for t in head.headers:
            name = <bytes>t[0]
            low = _lower(name)
            # request_text reads `_` in a name as `-` (CGI servers merge the two spellings)
            sel = low if memchr(PyBytes_AS_STRING(low), 95, <size_t>PyBytes_GET_SIZE(low)) == NULL \
                else low.replace(b"_", b"-")
            if sel in selected:
                if host is not None and PyBytes_GET_SIZE(sel) == 4 and sel == _HOST \
                        and PyBytes_GET_SIZE(<bytes>t[1]):
                    host = t[1]
                else:
                    host = None             # another field of the text, or an empty Host
            if seen or PyBytes_GET_SIZE(low) != wn or low != want:
                continue
            seen = True                     # the first identity field counts (head.get)
            value = <bytes>t[1]
            n = PyBytes_GET_SIZE(value)
            q = <const unsigned char*>PyBytes_AS_STRING(value)
            if n < 8 or (q[0] | 32) != 98 or (q[1] | 32) != 101 or (q[2] | 32) != 97 \
                    or (q[3] | 32) != 114 or (q[4] | 32) != 101 or (q[5] | 32) != 114 \
                    or q[6] != 32:
                continue
            # bytes.strip(): ASCII whitespace both ends
            a, b = 7, n
            while a < b and (q[a] == 32 or 9 <= q[a] <= 13):
                a += 1
            while b > a and (q[b - 1] == 32 or 9 <= q[b - 1] <= 13):
                b -= 1
            if a < b:
                token = PyBytes_FromStringAndSize(<const char*>q + a, b - a)
        return token, host

    def request(self, RequestHead head, bytes path, bytes xff, bytes rid):
        """The request head the upstream gets (HttpConf.build_head)."""
        cdef list headers = head.headers
        cdef Py_ssize_t nh = len(headers), i, total, at
        cdef frozenset drop = self.drop
        cdef bytes name, value, low, hostv
        cdef object client_host = None
        cdef tuple t
        cdef char* keep
        cdef bytes out
        cdef char* w
        if head.connection_tokens:
            drop = self._with(self._drops, drop, head.connection_tokens)
        keep = <char*>PyMem_Malloc(nh + 1)
        if keep == NULL:
            raise MemoryError()
        try:
            total = 0
            for i in range(nh):
                t = <tuple>headers[i]
                name = <bytes>t[0]
                low = _lower(name)
                if client_host is None and PyBytes_GET_SIZE(low) == 4 and low == _HOST:
                    client_host = t[1]
                if low in drop:
                    keep[i] = 0
                else:
                    keep[i] = 1
                    total += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(<bytes>t[1]) + 4
            hostv = self.host
            if self.keep_client_host and client_host:
                hostv = <bytes>client_host
            # "M SP base path SP HTTP/1.1 CRLF Host: h CRLF" + fields + credential + ...
            total += PyBytes_GET_SIZE(head.method) + 1 + PyBytes_GET_SIZE(self.base) + \
                PyBytes_GET_SIZE(path) + 17 + PyBytes_GET_SIZE(hostv) + 2 + \
                PyBytes_GET_SIZE(self.cred_line) + PyBytes_GET_SIZE(xff) + \
                PyBytes_GET_SIZE(rid) + 14 + 4
            if self.identity_encoding:
                total += 27
            if client_host:
                total += 18 + PyBytes_GET_SIZE(<bytes>client_host) + 2
            out = PyBytes_FromStringAndSize(NULL, total)
            w = PyBytes_AS_STRING(out)
            at = _put(w, 0, head.method)
            at = _put_c(w, at, " ", 1)
            at = _put(w, at, self.base)
            at = _put(w, at, path)
            at = _put_c(w, at, " HTTP/1.1\r\nHost: ", 17)
            at = _put(w, at, hostv)
            at = _put_c(w, at, "\r\n", 2)
            for i in range(nh):
                if keep[i]:
                    t = <tuple>headers[i]
                    at = _put(w, at, <bytes>t[0])
                    at = _put_c(w, at, ": ", 2)
                    at = _put(w, at, <bytes>t[1])
                    at = _put_c(w, at, "\r\n", 2)
        finally:
            PyMem_Free(keep)
        at = _put(w, at, self.cred_line)
        if self.identity_encoding:
            # the masker reads plain bytes: a compressed body could not be masked (502)
            at = _put_c(w, at, "Accept-Encoding: identity\r\n", 27)
        at = _put(w, at, xff)
        if client_host:
            at = _put_c(w, at, "X-Forwarded-Host: ", 18)
            at = _put(w, at, <bytes>client_host)
            at = _put_c(w, at, "\r\n", 2)
        at = _put_c(w, at, "X-Request-Id: ", 14)
        at = _put(w, at, rid)
        at = _put_c(w, at, "\r\n\r\n", 4)
        assert at == total
        return out

    def response(self, ResponseHead head, bint client10, bint req_done, bint keep_alive,
                 bytes rid):
        """The response head the client gets when its body is forwarded as framed
        (HttpConf.response_head without `length`): (head bytes, the client's connection ends
        with this response, the body goes to an HTTP/1.0 client as chunk data only)."""
        cdef list headers = head.headers
        cdef Py_ssize_t nh = len(headers), i, total, at, rn
        cdef frozenset drop = self.resp_drop
        cdef bytes name, low
        cdef tuple t
        cdef char* keep
        cdef bytes out
        cdef char* w
        cdef bint dechunk = head.body == 2 and client10
        cdef bint close
        cdef int status = head.status
        if head.connection_tokens:
            drop = self._with(self._resp_drops, drop, head.connection_tokens)
        close = head.body == 3 or dechunk or not req_done or not keep_alive
        keep = <char*>PyMem_Malloc(nh + 1)
        if keep == NULL:
            raise MemoryError()
        try:
            rn = PyBytes_GET_SIZE(head.reason)
            total = 13 + rn + 2
            for i in range(nh):
                t = <tuple>headers[i]
                name = <bytes>t[0]
                low = _lower(name)
                if low in drop or (dechunk and PyBytes_GET_SIZE(low) == 17 and low == _TE):
                    keep[i] = 0
                else:
                    keep[i] = 1
                    total += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(<bytes>t[1]) + 4
            if close:
                total += 19
            elif client10:
                total += 24
            total += 14 + PyBytes_GET_SIZE(rid) + 4
            out = PyBytes_FromStringAndSize(NULL, total)
            w = PyBytes_AS_STRING(out)
            at = _start_line_and_fields(w, status, head.reason, headers, keep, nh)
        finally:
            PyMem_Free(keep)
        at = _connection_and_id(w, at, close, client10, rid)
        assert at == total
        return out, close, dechunk

    def reframed(self, ResponseHead head, bint client10, bint req_done, bint keep_alive,
                 bytes rid, long long length, bint chunked):
        """The response head of a re-framed (masked) body (HttpConf.response_head with
        `length`): the upstream's framing fields out, `Content-Length: length` in (length
        >= 0), else a stream: `Transfer-Encoding: chunked` when `chunked`, or to the close.
        (head bytes, the client's connection ends with this response)."""
        cdef list headers = head.headers
        cdef Py_ssize_t nh = len(headers), i, total, at, rn, nd = 0
        cdef frozenset drop = self.resp_drop
        cdef bytes name, low
        cdef tuple t
        cdef char* keep
        cdef bytes out
        cdef char* w
        cdef char digits[24]
        cdef unsigned long long v
        cdef bint close
        cdef int status = head.status
        if head.connection_tokens:
            drop = self._with(self._resp_drops, drop, head.connection_tokens)
        close = not req_done or not keep_alive or (length < 0 and not chunked)
        if length >= 0:
            # the decimal digits, last first
            v = <unsigned long long>length
            while True:
                digits[nd] = <char>(48 + v % 10)
                nd += 1
                v //= 10
                if v == 0:
                    break
        keep = <char*>PyMem_Malloc(nh + 1)
        if keep == NULL:
            raise MemoryError()
        try:
            rn = PyBytes_GET_SIZE(head.reason)
            total = 13 + rn + 2
            for i in range(nh):
                t = <tuple>headers[i]
                name = <bytes>t[0]
                low = _lower(name)
                if low in drop or low in _FRAMING:
                    keep[i] = 0
                else:
                    keep[i] = 1
                    total += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(<bytes>t[1]) + 4
            if length >= 0:
                total += 16 + nd + 2
            elif chunked:
                total += 28
            if close:
                total += 19
            elif client10:
                total += 24
            total += 14 + PyBytes_GET_SIZE(rid) + 4
            out = PyBytes_FromStringAndSize(NULL, total)
            w = PyBytes_AS_STRING(out)
            at = _start_line_and_fields(w, status, head.reason, headers, keep, nh)
        finally:
            PyMem_Free(keep)
        if length >= 0:
            at = _put_c(w, at, "Content-Length: ", 16)
            for i in range(nd - 1, -1, -1):
                w[at] = digits[i]
                at += 1
            at = _put_c(w, at, "\r\n", 2)
        elif chunked:
            at = _put_c(w, at, "Transfer-Encoding: chunked\r\n", 28)
        at = _connection_and_id(w, at, close, client10, rid)
        assert at == total
        return out, close
