"""MySQL/MariaDB's entry in the protocol registry (hoopwire.protocols)."""

from hoopwire.core.seams import ProtocolSpec
from hoopwire.mysql import posture
from hoopwire.mysql.adapter import ADAPTER
from hoopwire.mysql.dialect import DIALECT
from hoopwire.mysql.session import MysqlListener

PROTOCOL = ProtocolSpec(name="mysql", listener=MysqlListener, dialect=DIALECT, adapter=ADAPTER,
                        posture=posture)
