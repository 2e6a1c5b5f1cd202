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
from libc.string cimport memchr, memcmp, memcpy, memset


cdef extern from "string.h" nogil:
    # GNU (pyconfig.h defines _GNU_SOURCE before string.h is read)
    void* memmem(const void* hay, size_t hn, const void* needle, size_t nn)

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

    cpdef scan(self, RequestHead head):
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

    cpdef request(self, RequestHead head, bytes path, bytes xff, bytes rid):
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

    cpdef response(self, ResponseHead head, bint client10, bint req_done, bint keep_alive,
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


# -- the stored credential in responses (issue 21) ------------------------------------------------
#
# An upstream that echoes its request (httpbin's /headers, debug endpoints, error pages that dump
# the request) sends the credential the gateway injected back; a client must never see it. Every
# response of a connection with a stored credential is checked for its forms (session.
# secret_forms: the secret, URL/JSON/HTML-escaped, base64 at three alignments) in its head and
# body, and each occurrence is replaced by as many `*`: same length, so Content-Length and chunk
# sizes stay right. One memmem per form per read (glibc's): 4 forms for a usual key, 0.28 us
# for a 1 KiB body in process (0.11 us one form); wrk_compare 1k, hoopwire against the tree
# before, same run: proxy CPU per request x1.07-1.08 (load 2.1-2.8, two runs, rounds 1.0-1.1 on
# the quieter one). A read's last bytes that begin a form are held back until the next read
# says whether the form completes (at most the longest form less one).

cdef class SecretScan:
    """The forms of one configuration's stored credential (HttpConf.secret_scan)."""

    cdef readonly tuple needles         # longest first, none empty
    cdef Py_ssize_t longest

    def __init__(self, needles):
        self.needles = tuple(bytes(nd) for nd in needles if len(nd))
        if not self.needles:
            raise ValueError("no form to look for")
        self.longest = max(PyBytes_GET_SIZE(nd) for nd in self.needles)

    cdef bint _any(self, const char* p, Py_ssize_t n) noexcept:
        cdef bytes nd
        for nd in self.needles:
            if memmem(p, <size_t>n, PyBytes_AS_STRING(nd), <size_t>PyBytes_GET_SIZE(nd)) != NULL:
                return True
        return False

    cdef Py_ssize_t _redact_in(self, char* w, Py_ssize_t n) noexcept:
        """Replace every occurrence of every form in w[:n] by `*`s: the count."""
        cdef bytes nd
        cdef Py_ssize_t hits = 0, ln, at
        cdef char* f
        for nd in self.needles:
            ln = PyBytes_GET_SIZE(nd)
            at = 0
            while n - at >= ln:
                f = <char*>memmem(w + at, <size_t>(n - at), PyBytes_AS_STRING(nd), <size_t>ln)
                if f == NULL:
                    break
                memset(f, 42, <size_t>ln)
                hits += 1
                at = (f - w) + ln
        return hits

    cdef Py_ssize_t _held(self, const char* p, Py_ssize_t n) noexcept:
        """The length of the longest suffix of p[:n] that is a proper prefix of a form: the
        bytes a form split across two reads may have begun in."""
        cdef bytes nd
        cdef Py_ssize_t best = 0, m, start
        cdef const char* q
        for nd in self.needles:
            q = PyBytes_AS_STRING(nd)
            m = PyBytes_GET_SIZE(nd) - 1
            if m > n:
                m = n
            start = n - m
            while start < n - best:
                if p[start] == q[0] and memcmp(p + start, q, <size_t>(n - start)) == 0:
                    best = n - start
                    break
                start += 1
        return best

    cpdef tuple redact(self, bytes buf):
        """(buf with every form replaced by `*`s -- buf itself when none is in it, the count)."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf), hits
        cdef bytes out
        if not self._any(PyBytes_AS_STRING(buf), n):
            return buf, 0
        out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(buf), n)
        hits = self._redact_in(PyBytes_AS_STRING(out), n)
        return out, hits

    cpdef tuple step(self, object carry, bytes data, bint final):
        """One read of a body: (the bytes to send now, redacted; the bytes held back, or None;
        the count). `carry` is what the previous read held back (None: nothing); `final`
        holds nothing back (the body ended)."""
        cdef Py_ssize_t n, k, hits = 0
        cdef bytes buf, out
        if carry is None:
            buf = data
        else:
            buf = <bytes?>carry + data
        n = PyBytes_GET_SIZE(buf)
        if self._any(PyBytes_AS_STRING(buf), n):
            buf = PyBytes_FromStringAndSize(PyBytes_AS_STRING(buf), n)
            hits = self._redact_in(PyBytes_AS_STRING(buf), n)
        k = 0 if final else self._held(PyBytes_AS_STRING(buf), n)
        if k == 0:
            return buf, None, hits
        out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(buf), n - k)
        return out, PyBytes_FromStringAndSize(PyBytes_AS_STRING(buf) + n - k, k), hits


# -- the relay's event plumbing ------------------------------------------------------------------
#
# Why C: after the head rewrites moved here, the event plumbing of hoopwire/http/relay.py
# (data_received, _pump, _begin, _admit, _forward, _attach, upstream_data, _response_end,
# _finish, _Req()) was about a third of the gateway's CPU and 38 Python calls per keep-alive
# request (bench/http_call_profile.py, bench/README.md). These functions are that plumbing for
# the common case -- a cached identity, a cached "no rule matched" verdict, no masking, a
# pooled upstream connection -- and call the Python methods of relay.Relay for everything
# else (authentication, judging, masking, answers the gateway makes, errors, timeouts), so the
# slow paths stay in one place. relay.py keeps its Python methods as the twin these replace
# (install() binds these over them; HOOPWIRE_HTTP_PURE=1 keeps the Python ones), and
# tests/test_http_fastpath.py runs the same exchanges through both.
import asyncio
import logging
import os

from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

cdef object _log = logging.getLogger("hoopwire.http")
cdef object _get_running_loop = asyncio.get_running_loop

DEF HEAD = 1
DEF BODY = 2
DEF END = 3
DEF ERROR = 4
DEF B_NONE = 0
DEF B_CHUNKED = 2
DEF B_CLOSE = 3
# relay.BACKLOG_MAX (the contract's 64 KiB of pipelined requests before the client is paused)
DEF BACKLOG_MAX = 64 * 1024

cdef str _FORWARD = "forward"
cdef str _INSPECT = "inspect"
cdef str _ANSWERED = "answered"

# relay.Relay's Python methods the fast path hands the rest of a request to (install())
cdef object _py_begin = None
cdef object _py_admit = None
cdef object _py_upstream_data = None
cdef object _relay_cls = None


cdef inline double _monotonic() noexcept:
    """time.monotonic() (CLOCK_MONOTONIC on Linux): the relay's deadlines compare with it."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline double _time() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


# Request ids: 16 hex digits, a random prefix per process and a counter (relay.new_request_id's
# scheme; os.urandom per request cost 1.5 us of the ~30 us of Python a request took)
cdef bytes _RID_PREFIX = os.urandom(4).hex().encode()
cdef unsigned int _rid_count = 0
cdef const char* _HEX = "0123456789abcdef"


cpdef bytes new_request_id():
    global _rid_count
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 16)
    cdef char* w = PyBytes_AS_STRING(out)
    cdef unsigned int v
    cdef int i
    _rid_count += 1                  # wraps at 2**32 as relay's `& 0xFFFFFFFF` does
    v = _rid_count
    memcpy(w, PyBytes_AS_STRING(_RID_PREFIX), 8)
    for i in range(15, 7, -1):
        w[i] = _HEX[v & 15]
        v >>= 4
    return out


cdef class Req:
    """One request, from its head to the end of its response (relay._Req's fields)."""

    cdef public object head, rid, method, path, text, up, out_head, pending, phase, inspect
    cdef public object identity, error, mask, shape
    cdef public object carry            # the body's bytes held back by the secret scan, or None
    cdef public bint reframe            # a chunked body re-chunked as the scan sends it
    cdef public long long redacted      # forms of the stored credential redacted
    cdef public double started, up_deadline, sent_at
    cdef public long long pending_bytes, masked
    cdef public int status
    cdef public bint req_done, resp_started, resp_close, skip_end, retried, body_sent
    cdef public bint close_after, keep_alive, up_reusable, dechunk

    def __init__(self, head, rid):
        self.head = head
        self.rid = rid
        self.started = _time()
        self.method = head.method
        self.path = b""
        self.pending = []            # body slices waiting for the upstream connection
        self.phase = "auth"          # auth -> inspect? -> held? -> connect -> forward
        self.keep_alive = head.keep_alive
        # the rest as relay._Req: None, 0 and False (Cython's defaults)


cdef Req _new_req(RequestHead head, bytes rid):
    cdef Req r = Req.__new__(Req)
    r.head = head
    r.rid = rid
    r.started = _time()
    r.method = head.method
    r.path = b""
    r.pending = []
    r.phase = "auth"
    r.keep_alive = head.keep_alive
    return r


def install(cls):
    """Bind the C plumbing over relay.Relay's Python methods (kept for the rest)."""
    global _py_begin, _py_admit, _py_upstream_data, _relay_cls
    _py_begin = cls._begin
    _py_admit = cls._admit
    _py_upstream_data = cls.upstream_data
    _relay_cls = cls
    cls.data_received = relay_data_received
    cls._pump = relay_pump
    cls._begin = relay_begin
    cls._forward = relay_forward
    cls._attach = relay_attach
    cls._request_end = relay_request_end
    cls.upstream_data = relay_upstream_data
    cls._response_end = relay_response_end
    cls._finish = relay_finish


# -- the client's side

def relay_data_received(self, data):
    cdef Py_ssize_t n = len(data)
    self.bytes_in += n
    stats = self.stats
    stats.bytes_from_client += n
    self.last_active = _monotonic()
    cur = self.cur
    if cur is not None and (<Req?>cur).req_done:
        self.backlog += n
        if self.backlog > BACKLOG_MAX:
            self.pause_client("backlog")
    try:
        events = self.parser.feed(data)
    except Exception:  # a parser fault is ours: the client hears 500
        _log.exception("request parser failed", extra={"fields": {"connection": self.cfg.name}})
        self._fail(500, "internal", "internal error in the gateway")
        return
    if events:
        self.queue.extend(events)
        if not self.busy:
            _pump(self)


def relay_pump(self):
    _pump(self)


cdef int _pump(self) except -1:
    """Handle the queued events while nothing waits (auth, connect, approval, response)."""
    queue = self.queue
    cdef tuple ev
    cdef int kind
    cdef Req req
    while queue and not self.busy and not self.closed:
        cur = self.cur
        ev = <tuple?>queue[0]
        kind = ev[0]
        if cur is None or (<Req?>cur).req_done:
            if cur is not None:
                return 0         # the next request waits for this response
            queue.popleft()
            if kind == HEAD:
                _begin(self, ev[1])
            elif kind == ERROR:
                self._refuse_parse(ev[1], ev[2])
            # a stray BODY/END cannot come without a HEAD: the parser's contract
            continue
        req = <Req>cur
        queue.popleft()
        if kind == BODY:
            if req.phase == _FORWARD:
                req.up.transport.write(ev[1])     # UpstreamConn.write's body
                req.body_sent = True
            else:
                self._body(req, ev[1], ev[2])
        elif kind == END:
            _request_end(self, req)
        elif kind == ERROR:
            # the request broke off mid-body: what reached the upstream is not a request
            self._refuse_parse(ev[1], ev[2], req)
        elif kind == HEAD:
            queue.appendleft(ev)   # unreachable: the parser ends a message before a head
            return 0
    if not queue and self.backlog:
        self.backlog = 0
        self.resume_client("backlog")
    return 0


def relay_begin(self, head):
    _begin(self, head)


cdef int _begin(self, RequestHead head) except -1:
    conf = self.conf
    if conf is not self.listener.conf or self.refusing is not None or \
            head.method == b"CONNECT" or head.upgrade:
        # a reload while a request was in flight, refusing, a tunnel: relay.Relay._begin
        _py_begin(self, head)
        return 0
    cdef Req req = _new_req(head, new_request_id())
    self.cur = req
    cdef Rewriter rw = <Rewriter?>conf.rw
    cdef tuple scanned = <tuple>rw.scan(head)
    token = scanned[0]
    req.shape = scanned[1]
    if token is None:
        self._unauthorized(req, "no_token" if head.get(conf.identity_header) is None
                           else "bad_scheme")
        return 0
    tokens = self.tokens
    hit = tokens.get(token)
    if hit is not None:
        identity = hit[0]
        expires = identity.expires_at
        if expires is None or expires > req.started:
            _admit(self, req, identity, hit[1])
            return 0
        del tokens[token]
    self.busy = True
    _get_running_loop().create_task(self._authenticate(req, token))
    return 0


cdef int _admit(self, Req req, identity, policy) except -1:
    """relay.Relay._admit's common case: the groups allowed, the session's own identity, a
    cached verdict. Anything else is the Python method's (nothing here has happened yet that
    it would do twice)."""
    allowed = self.conf.allow_groups
    s = self.session
    cdef RequestHead head = <RequestHead>req.head
    if (allowed and not (identity.groups & allowed)) or s is None or \
            s.identity is not identity or req.shape is None or self.policy is None or \
            head.body != B_NONE:
        _py_admit(self, req, identity, policy)
        return 0
    hit = self.verdicts.get((head.method, head.target, req.shape))
    if hit is None:
        _py_admit(self, req, identity, policy)
        return 0
    req.identity = identity
    # judged before, nothing matched: the same canonical target and text
    req.path = (<tuple?>hit)[0]
    req.text = (<tuple>hit)[1]
    _forward(self, req)
    return 0


def relay_request_end(self, req):
    _request_end(self, <Req?>req)


cdef int _request_end(self, Req req) except -1:
    req.req_done = True
    self.deadline = 0.0              # _cancel_request_timer
    phase = req.phase
    if phase == _INSPECT:
        if not self._judge(req, bytes(req.inspect)):
            return 0
        _forward(self, req)
    elif phase == _ANSWERED:
        _finish(self, req)
    return 0


# -- upstream

def relay_forward(self, req):
    _forward(self, <Req?>req)


cdef int _forward(self, Req req) except -1:
    req.phase = "connect"
    # HttpConf.build_head, in C
    req.out_head = (<Rewriter?>self.conf.rw).request(req.head, req.path, self.xff, req.rid)
    pool = self.listener.pool
    up = pool.take_idle()
    if up is not None:
        _attach(self, req, up)
        return 0
    self.busy = True
    _get_running_loop().create_task(self._connect(req, pool))
    return 0


def relay_attach(self, req, up):
    _attach(self, <Req?>req, up)


cdef int _attach(self, Req req, up) except -1:
    req.up = up
    up.relay = self
    up.parser.expect(req.method)
    req.phase = _FORWARD
    transport = up.transport
    if req.pending:
        transport.write(req.out_head + b"".join(req.pending))
        req.pending = []
        req.body_sent = True
        if req.pending_bytes > BACKLOG_MAX:
            self.resume_client("body")
        req.pending_bytes = 0
    else:
        transport.write(req.out_head)
    if self.out_paused:
        up.paused = True
        transport.pause_reading()
    self.units_sent += 1
    stats = self.stats
    stats.queries += 1
    cdef double now = _monotonic()
    req.sent_at = now
    req.up_deadline = now + self.conf.upstream_timeout
    return 0


def upstream_conn_data_received(self, data):
    """UpstreamConn.data_received."""
    relay = self.relay
    if relay is None:
        # a server that speaks on an idle connection (a 408 before it closes): not a response
        # to anything we sent; the connection is not reused
        self.close()
        return
    if _relay_cls is not None and type(relay) is _relay_cls:
        _upstream_data(relay, self, data)
    else:
        relay.upstream_data(self, data)


def relay_upstream_data(self, up, data):
    _upstream_data(self, up, data)


cdef int _upstream_data(self, up, data) except -1:
    cur = self.cur
    if cur is None or (<Req?>cur).up is not up:
        up.close()
        return 0
    cdef Req req = <Req>cur
    if req.mask is not None or self.listener.masker is not None:
        _py_upstream_data(self, up, data)    # masking: relay.Relay.upstream_data
        return 0
    req.up_deadline = 0.0
    cdef Py_ssize_t n = len(data)
    self.bytes_out += n
    stats = self.stats
    stats.bytes_from_upstream += n
    try:
        events = up.parser.feed(data)
    except Exception:
        _log.exception("response parser failed", extra={"fields": {"connection": self.cfg.name}})
        events = [(ERROR, 502, "parser fault")]
    # one write per read from the upstream: head and body in one send (two sends cost a
    # syscall more, and a client's stack may wait for the second)
    cdef list out = []
    cdef tuple ev
    cdef int kind
    cdef ResponseHead head
    cdef tuple r
    cdef bytes hb
    cdef object scan_ = self.conf.secret_scan
    cdef SecretScan scan = <SecretScan>scan_ if scan_ is not None else None
    transport = self.transport
    for ev in events:
        kind = ev[0]
        if kind == BODY:
            if scan is None:
                out.append(ev[2] if req.dechunk else ev[1])
            else:
                hb = _scan_body(self, req, scan, <bytes?>ev[2])
                if PyBytes_GET_SIZE(hb):
                    out.append(hb)
        elif kind == HEAD:
            head = <ResponseHead?>ev[1]
            if head.status < 200:
                # 1xx: the gateway answered 100-continue itself; interim responses are not
                # relayed (an HTTP/1.0 client must never see one)
                req.skip_end = True
                continue
            req.status = head.status
            req.resp_started = True
            req.up_reusable = head.keep_alive and head.body != B_CLOSE
            # HttpConf.response_head(req, head), in C
            r = (<Rewriter?>self.conf.rw).response(
                head, (<RequestHead>req.head).version == 10, req.req_done, req.keep_alive,
                req.rid)
            req.resp_close = r[1]
            if r[2]:
                req.dechunk = True
            hb = <bytes>r[0]
            if scan is not None:
                if head.body != B_NONE and not plain_coding(head):
                    # a compressed body cannot be read for the credential (relay._unscannable)
                    req.resp_started = False
                    self._unscannable(req, up)
                    return 0
                req.reframe = head.body == B_CHUNKED and not req.dechunk
                r = scan.redact(hb)
                if r[1]:
                    hb = <bytes>r[0]
                    self._credential_echo(req, r[1], "head")
            out.append(hb)
        elif kind == END:
            if req.skip_end:
                req.skip_end = False
                continue
            if scan is not None and (req.carry is not None or req.reframe):
                out.append(self._scan_end(req, ev[1]))
            if out:
                transport.write(out[0] if len(out) == 1 else b"".join(out))
            _response_end(self, req, up)
            return 0
        else:
            if out:
                transport.write(b"".join(out))
            self._bad_upstream(req, up, ev[2])
            return 0
    if out:
        transport.write(out[0] if len(out) == 1 else b"".join(out))
    return 0


cpdef bint plain_coding(ResponseHead head) except -1:
    """The body is the bytes the client reads: no content coding but identity in any
    Content-Encoding field, and no transfer coding but chunked (a client inflates `gzip,
    chunked` too). The secret scan and the masker read only such bodies; the first field
    alone let `Content-Encoding: identity` then `Content-Encoding: gzip` through."""
    cdef bytes n, v, t
    for n, v in head.headers:
        if len(n) == 16 and n.lower() == b"content-encoding":
            for t in v.split(b","):
                t = t.strip().lower()
                if t and t != b"identity":
                    return False
        elif len(n) == 17 and n.lower() == b"transfer-encoding":
            for t in v.split(b","):
                t = t.strip().lower()
                if t and t != b"chunked":
                    return False
    return True


cdef bytes _scan_body(self, Req req, SecretScan scan, bytes data):
    """A read of a response body, the stored credential's forms redacted (relay.Relay.
    _scan_body): as it came when nothing in it begins a form (a Content-Length or close body,
    the common case, is not copied), else redacted and with its last bytes that begin a form
    held back (req.carry); a chunked body re-chunked (req.reframe)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef tuple r
    cdef bytes out
    if req.carry is None and not req.reframe and not scan._any(PyBytes_AS_STRING(data), n) \
            and scan._held(PyBytes_AS_STRING(data), n) == 0:
        return data
    r = scan.step(req.carry, data, False)
    req.carry = r[1]
    if r[2]:
        self._credential_echo(req, r[2], "body")
    out = <bytes>r[0]
    if req.reframe and PyBytes_GET_SIZE(out):
        return b"%x\r\n%b\r\n" % (PyBytes_GET_SIZE(out), out)
    return out


def relay_response_end(self, req, up):
    _response_end(self, <Req?>req, up)


cdef int _response_end(self, Req req, up) except -1:
    self.units_done += 1
    if req.sent_at:
        # request sent -> response complete: hoopwire_statement_seconds, as a statement's
        self.stats.observe(_monotonic() - req.sent_at)
    if up is not None:
        req.up = None
        # its own pool: a reload that changed the upstream made a new listener.pool, and the
        # old upstream's connection must close there, not serve the new one's requests
        up.pool.release(up, req.up_reusable and req.req_done)
    _finish(self, req)
    return 0


def relay_finish(self, req):
    _finish(self, <Req?>req)


cdef int _finish(self, Req req) except -1:
    """The request's exchange is over: record it, then the next one (or close)."""
    if self.cur is not req:
        return 0
    self.cur = None
    s = self.session
    if s is not None and req.identity is not None and s.statements is not None:
        self._record(req)
    if req.close_after or not req.keep_alive or req.resp_close or not req.req_done or \
            (self.eof and not self.queue):
        self._close("client_done")
        return 0
    conf = self.conf
    if conf is not self.listener.conf and not self.queue:
        conf = self._take_conf(True)     # a reload during the request: its conf from now on
    self.deadline = _monotonic() + conf.request_timeout   # _arm_request_timer
    if self.queue and not self.busy:
        _pump(self)
    return 0


# -- the upstream pool's per-request pair (upstream.Pool.take_idle and release, bound over the
# Python ones by install_pool: two Python calls and a third (_wake) of the 7 a request had left)

cdef double _idle_max = 4.0          # upstream.IDLE_MAX (install_pool)


def install_pool(cls, double idle_max):
    global _idle_max
    _idle_max = idle_max
    cls.take_idle = pool_take_idle
    cls.release = pool_release


def pool_take_idle(self):
    """An idle connection, most recently used first (its server has it warmest), or None."""
    idle = self.idle
    cdef double now = _monotonic()
    while idle:
        conn = idle.pop()
        if conn.closed:
            continue
        if now - conn.idle_since > _idle_max:
            conn.close()
            continue
        conn.reused = True
        return conn
    return None


def pool_release(self, conn, bint reusable):
    """A request is done with `conn`: back to the pool, or closed."""
    conn.relay = None
    if conn.paused:
        conn.paused = False
        conn.transport.resume_reading()
    if not reusable or conn.closed or self.closing:
        conn.close()
        return
    conn.idle_since = _monotonic()
    self.idle.append(conn)
    if self.waiters:
        self._wake()
