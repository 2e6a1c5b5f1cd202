# cython: language_level=3
# hoopwire.pg._wire: framing, the relay loop and the row walk for masking for PostgreSQL, one extension so calls between
# the parts stay C calls.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.bytearray cimport PyByteArray_GET_SIZE

from hoopwire.core._frames import FrameError, HOLD

# on_message's HOLD as a C-level name (a module global would be a dict lookup at every
# comparison): the core's object, compared by identity.
cdef object HOLD_ = HOLD


class PgFrameError(FrameError):
    """A framing error in PostgreSQL's words: SQLSTATE 08P01 (protocol_violation) unless said."""

    def __init__(self, message, code="08P01"):
        super().__init__(message, code)


include "_rows.pxi"
include "_framing.pxi"
include "_relay.pxi"
include "_results.pxi"
