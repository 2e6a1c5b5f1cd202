"""PostgreSQL's entry in the protocol registry (hoopwire.protocols)."""

from hoopwire.core.seams import ProtocolSpec
from hoopwire.pg import posture
from hoopwire.pg.adapter import ADAPTER
from hoopwire.pg.dialect import DIALECT
from hoopwire.pg.session import PgListener

PROTOCOL = ProtocolSpec(name="postgres", listener=PgListener, dialect=DIALECT, adapter=ADAPTER,
                        posture=posture)
