"""Throwaway servers for tests, benchmarks and the demo.

Each server lives in its own temporary directory, listens on loopback only and is removed on
stop() (and at interpreter exit, in case a caller never got that far). Nothing here is meant for
production data: durability is switched off for speed.
"""

from hoopwire.devserver.mariadb import MariaDbServer, MariaDbServerError, find_mariadb_binaries
from hoopwire.devserver.base import free_loopback_port, wait_for_listener
from hoopwire.devserver.postgres import PgServer, PgServerError, find_pg_bindir

__all__ = ["MariaDbServer", "MariaDbServerError", "PgServer", "PgServerError",
           "find_mariadb_binaries", "find_pg_bindir", "free_loopback_port", "wait_for_listener"]
