# cython: language_level=3
# hoopwire.pg._wire: framing and the relay loop for PostgreSQL, one extension so calls between
# the parts stay C calls.
include "_buffer.pxi"
include "_framing.pxi"
include "_relay.pxi"
include "_results.pxi"
