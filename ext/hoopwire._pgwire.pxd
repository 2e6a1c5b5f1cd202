# Declarations of the hoopwire._pgwire extension: the shared framing layer, PostgreSQL framing
# and the relay. ext/pgwire.pyx includes the implementations in the same order.
cimport cython
from cpython.ref cimport PyObject
from hoopwire._auditlog cimport StatementLog, TagBuf, tags_push
from hoopwire._mask cimport RowPlan

include "buffer.pxd"
include "pg/framing.pxd"
include "pg/relay.pxd"
include "pg/results.pxd"
