"""The PostgreSQL relay extension's old name, kept while branches that import it merge: the
extension is hoopwire.pg._wire (ext/hoopwire/pg/_wire.pyx). Import from there; delete this file once
nothing imports hoopwire._pgwire."""

from hoopwire.pg._wire import *  # noqa: F401,F403
from hoopwire.core._frames import RTT_BOUNDS, ConnStats  # noqa: F401,E402  (moved to the core)
