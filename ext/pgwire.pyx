# cython: language_level=3
# hoopwire._pgwire: framing and the relay loop for PostgreSQL, one extension so calls between
# the parts stay C calls.
include "buffer.pyx"
include "pg/framing.pyx"
include "pg/relay.pyx"
include "pg/results.pyx"
