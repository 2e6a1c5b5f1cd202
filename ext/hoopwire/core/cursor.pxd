# One bounds-checked read cursor for every wire parser (PostgreSQL today, MySQL and HTTP next),
# so no parser checks bounds by hand.
#
# A Cursor is a pointer and the bytes left after it. Every read checks that its bytes are there;
# a read that would run past the end, or a malformed value (a MySQL 0xff length prefix, a string
# without its NUL), returns 0 / NULL, empties the cursor and sets `bad`. The flag is sticky: a
# parser reads a run of fields and tests `c.bad` once after them, and nothing it read after the
# first failure can be taken for data (every later read fails too).
#
# Everything is `cdef inline ... noexcept nogil` on a struct the caller keeps on its stack: the
# C compiler folds the calls into the parser, no Python object or exception check per field,
# and the audit thread can use it without the GIL.

from libc.string cimport memchr


cdef struct Cursor:
    const unsigned char* p      # next byte to read
    Py_ssize_t n                # bytes left from p
    bint bad                    # a read failed: the cursor is empty from then on


cdef inline Cursor cursor(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Cursor c
    c.p = p
    c.n = n if n > 0 else 0
    c.bad = n < 0
    return c


cdef inline void cur_fail(Cursor* c) noexcept nogil:
    c.p += c.n
    c.n = 0
    c.bad = True


cdef inline const unsigned char* cur_take(Cursor* c, Py_ssize_t k) noexcept nogil:
    """The next k bytes (a pointer to them), or NULL when fewer are left (or k < 0)."""
    cdef const unsigned char* q = c.p
    if k < 0 or k > c.n:
        cur_fail(c)
        return NULL
    c.p += k
    c.n -= k
    return q


cdef inline bint cur_skip(Cursor* c, Py_ssize_t k) noexcept nogil:
    return cur_take(c, k) != NULL


cdef inline unsigned int cur_u8(Cursor* c) noexcept nogil:
    cdef unsigned int b
    if c.n < 1:
        cur_fail(c)
        return 0
    b = c.p[0]
    c.p += 1
    c.n -= 1
    return b


cdef inline unsigned int cur_be16(Cursor* c) noexcept nogil:
    cdef const unsigned char* q = cur_take(c, 2)
    if q == NULL:
        return 0
    return (<unsigned int>q[0] << 8) | q[1]


cdef inline unsigned int cur_be32(Cursor* c) noexcept nogil:
    cdef const unsigned char* q = cur_take(c, 4)
    if q == NULL:
        return 0
    return (<unsigned int>q[0] << 24) | (<unsigned int>q[1] << 16) | (<unsigned int>q[2] << 8) | q[3]


cdef inline int cur_be32s(Cursor* c) noexcept nogil:
    """A signed big-endian int32 (PostgreSQL's value lengths: -1 is NULL)."""
    return <int>cur_be32(c)


cdef inline unsigned int cur_le16(Cursor* c) noexcept nogil:
    cdef const unsigned char* q = cur_take(c, 2)
    if q == NULL:
        return 0
    return q[0] | (<unsigned int>q[1] << 8)


cdef inline unsigned int cur_le24(Cursor* c) noexcept nogil:
    cdef const unsigned char* q = cur_take(c, 3)
    if q == NULL:
        return 0
    return q[0] | (<unsigned int>q[1] << 8) | (<unsigned int>q[2] << 16)


cdef inline unsigned int cur_le32(Cursor* c) noexcept nogil:
    cdef const unsigned char* q = cur_take(c, 4)
    if q == NULL:
        return 0
    return q[0] | (<unsigned int>q[1] << 8) | (<unsigned int>q[2] << 16) | (<unsigned int>q[3] << 24)


cdef inline unsigned long long cur_le64(Cursor* c) noexcept nogil:
    cdef const unsigned char* q = cur_take(c, 8)
    cdef unsigned long long v = 0
    cdef int i
    if q == NULL:
        return 0
    for i in range(7, -1, -1):
        v = (v << 8) | q[i]
    return v


cdef inline unsigned long long cur_lenenc(Cursor* c, bint* is_null) noexcept nogil:
    """A MySQL length-encoded integer: one byte below 0xfb, or 0xfc / 0xfd / 0xfe and a 2 / 3 /
    8-byte little-endian value; 0xfb is NULL in a row (is_null set, 0 returned); 0xff (an ERR
    packet's marker, never a length) is malformed."""
    cdef unsigned int b = cur_u8(c)
    is_null[0] = False
    if b < 0xfb:
        return b
    if b == 0xfb:
        is_null[0] = True
        return 0
    if b == 0xfc:
        return cur_le16(c)
    if b == 0xfd:
        return cur_le24(c)
    if b == 0xfe:
        return cur_le64(c)
    cur_fail(c)
    return 0


cdef inline const unsigned char* cur_lenenc_str(Cursor* c, Py_ssize_t* length) noexcept nogil:
    """A MySQL length-encoded string: its bytes and length; NULL with length -1 for a NULL value
    (c.bad stays clear); NULL with c.bad when its length or bytes are not all there."""
    cdef bint is_null
    cdef unsigned long long k = cur_lenenc(c, &is_null)
    length[0] = -1
    if c.bad or is_null:
        return NULL
    if k > <unsigned long long>c.n:
        cur_fail(c)
        return NULL
    length[0] = <Py_ssize_t>k
    return cur_take(c, <Py_ssize_t>k)


cdef inline const unsigned char* cur_cstr(Cursor* c, Py_ssize_t* length) noexcept nogil:
    """A NUL-terminated string: its bytes (length without the NUL); the cursor moves past the
    NUL. NULL (and c.bad) when no NUL is left."""
    cdef const unsigned char* q = c.p
    cdef const unsigned char* end
    if c.n > 0 and q[0] == 0:
        length[0] = 0                   # the empty name: most PostgreSQL messages carry one
        c.p += 1
        c.n -= 1
        return q
    end = <const unsigned char*>memchr(q, 0, <size_t>c.n) if c.n > 0 else NULL
    if end == NULL:
        length[0] = 0
        cur_fail(c)
        return NULL
    length[0] = end - q
    c.p = end + 1
    c.n -= length[0] + 1
    return q
