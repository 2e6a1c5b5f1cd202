# cython: language_level=3, boundscheck=False, wraparound=False
"""The HTTP request text as logs and the audit show it, in C: query values and the body as '?'.

The audit's encoder masks every new statement text on its own thread, without the GIL, through
a dialect's C half (ext/hoopwire/core/dialect.pxd). The HTTP dialect had only a Python masker,
so each request text the encoder had not seen twice took the GIL from the event loop (2 us for
a bare GET, 9 us with a query and a body, plus the thread switches). This is the same masking
as hoopwire.http.dialect.mask_literals_reference, byte for byte (tests/test_http_target.py
holds them to each other):

* line 1, `METHOD target`: in the target's query (after the first '?'), every `name=value`
  becomes `name=?` and every bare parameter `?`; separators '&' and ';' stay;
* header lines `x-original-url: ` and `x-rewrite-url: ` (targets too): the same;
* after the first blank line (the body): '?' when anything follows it.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.pycapsule cimport PyCapsule_New
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from hoopwire.core.dialect cimport CDIALECT_CAPSULE, CDialect

ctypedef unsigned char uchar

__all__ = ["mask_literals"]


cdef inline Py_ssize_t _find(const uchar* s, Py_ssize_t a, Py_ssize_t b, uchar c) noexcept nogil:
    while a < b:
        if s[a] == c:
            return a
        a += 1
    return -1


cdef inline Py_ssize_t _copy(uchar* out, Py_ssize_t o, const uchar* s, Py_ssize_t a,
                             Py_ssize_t b) noexcept nogil:
    if b > a:
        memcpy(out + o, s + a, b - a)
        return o + (b - a)
    return o


cdef Py_ssize_t _mask_query(const uchar* s, Py_ssize_t a, Py_ssize_t b, uchar* out,
                            Py_ssize_t o) noexcept nogil:
    cdef Py_ssize_t i = a, j, eq
    while True:
        j = i
        while j < b and s[j] != 38 and s[j] != 59:     # '&' ';'
            j += 1
        if j > i:
            eq = _find(s, i, j, 61)                    # '='
            if eq < 0:
                out[o] = 63                            # a bare parameter may be a token itself
                o += 1
            else:
                o = _copy(out, o, s, i, eq)
                out[o] = 61
                out[o + 1] = 63
                o += 2
        if j >= b:
            return o
        out[o] = s[j]
        o += 1
        i = j + 1


cdef Py_ssize_t _mask_target(const uchar* s, Py_ssize_t a, Py_ssize_t b, uchar* out,
                             Py_ssize_t o) noexcept nogil:
    cdef Py_ssize_t q = _find(s, a, b, 63)             # '?'
    if q < 0:
        return _copy(out, o, s, a, b)
    o = _copy(out, o, s, a, q + 1)
    return _mask_query(s, q + 1, b, out, o)


cdef inline bint _url_header(const uchar* s, Py_ssize_t a, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t n = c - a
    return (n == 14 and memcmp(s + a, b"x-original-url", 14) == 0) or \
           (n == 13 and memcmp(s + a, b"x-rewrite-url", 13) == 0)


cdef Py_ssize_t _mask_into(const uchar* s, Py_ssize_t n, uchar* out) noexcept nogil:
    """Mask s[0:n] into out (room for n + n // 2 + 8 bytes: a `name=` grows by its '?',
    at most one byte in three); the length written."""
    cdef Py_ssize_t cut = -1, head_end, pos = 0, e, sp, c, o = 0, k
    cdef bint first = True
    for k in range(n - 1):
        if s[k] == 10 and s[k + 1] == 10:
            cut = k
            break
    head_end = cut if cut >= 0 else n
    while True:
        e = _find(s, pos, head_end, 10)
        if e < 0:
            e = head_end
        if first:
            sp = _find(s, pos, e, 32)
            if sp < 0:
                o = _copy(out, o, s, pos, e)
            else:
                o = _copy(out, o, s, pos, sp + 1)
                o = _mask_target(s, sp + 1, e, out, o)
            first = False
        else:
            c = -1
            k = pos
            while k + 1 < e:
                if s[k] == 58 and s[k + 1] == 32:      # ": "
                    c = k
                    break
                k += 1
            if c >= 0 and _url_header(s, pos, c):
                o = _copy(out, o, s, pos, c + 2)
                o = _mask_target(s, c + 2, e, out, o)
            else:
                o = _copy(out, o, s, pos, e)
        if e >= head_end:
            break
        out[o] = 10
        o += 1
        pos = e + 1
    if cut >= 0:
        out[o] = 10
        out[o + 1] = 10
        o += 2
        if cut + 2 < n:
            out[o] = 63
            o += 1
    return o


cdef int _mask_text(const uchar* s, Py_ssize_t n, uchar** out, Py_ssize_t* out_len) \
        except -1 nogil:
    """The HTTP CDialect.mask_literals: the output left in *out for the caller to free."""
    cdef uchar* buf = <uchar*>malloc(n + n // 2 + 8)
    if buf == NULL:
        with gil:
            raise MemoryError()
    out[0] = buf
    out_len[0] = _mask_into(s, n, buf)
    return 0


cdef CDialect _C_DIALECT
_C_DIALECT.name = "http"
_C_DIALECT.mask_literals = _mask_text


def mask_literals(text) -> str:
    """The request text for logs and the audit (see the module doc); the text may be cut short
    (statement_text_limit): whatever part is there is masked."""
    cdef bytes b = text if type(text) is bytes else bytes(text)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef uchar* buf = <uchar*>malloc(n + n // 2 + 8)
    if buf == NULL:
        raise MemoryError()
    try:
        return PyUnicode_DecodeUTF8(<const char*>buf,
                                    _mask_into(<const uchar*>PyBytes_AS_STRING(b), n, buf),
                                    "replace")
    finally:
        free(buf)


# what the audit's encoder runs without the GIL for this function (ext/hoopwire/core/dialect.pxd)
mask_literals.c_dialect = PyCapsule_New(<void*>&_C_DIALECT, CDIALECT_CAPSULE, NULL)
