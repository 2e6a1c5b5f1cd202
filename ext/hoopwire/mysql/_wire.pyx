# cython: language_level=3
# hoopwire.mysql._wire: MySQL/MariaDB framing, the relay and the row walks for masking, one
# extension so calls between the parts stay C calls.
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from hoopwire._mask import MaskRowError
from hoopwire.core._frames import FrameError, HOLD

# on_message's HOLD as a C-level name: the core's object, compared by identity
cdef object HOLD_ = HOLD


class MysqlFrameError(FrameError):
    """A framing or protocol error in MySQL's words: `code` is the error number the client is
    told (ER_MALFORMED_PACKET 1835 unless said)."""

    def __init__(self, message, code=1835):
        super().__init__(message, code)


include "_framing.pxi"
include "_rows.pxi"
include "_relay.pxi"
include "_results.pxi"
