# Declarations of the hoopwire._pgwire extension: the shared framing layer, PostgreSQL framing
# and the relay. ext/pgwire.pyx includes the implementations in the same order.
include "buffer.pxd"
include "pg/framing.pxd"
include "pg/relay.pxd"
