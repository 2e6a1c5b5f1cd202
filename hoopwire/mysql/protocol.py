"""MySQL/MariaDB's entry in the protocol registry (hoopwire.protocols)."""

from hoopwire.core.seams import ProtocolSpec
from hoopwire.mysql.adapter import ADAPTER
from hoopwire.mysql.dialect import DIALECT
from hoopwire.mysql.session import MysqlListener

# posture (`check-config --connect`'s look at the upstream user's grants) is PostgreSQL-only
# for now: None makes the check say so for a mysql connection
PROTOCOL = ProtocolSpec(name="mysql", listener=MysqlListener, dialect=DIALECT, adapter=ADAPTER,
                        posture=None)
