"""Shared gateway state: approvals, time-window grants and the audit session index.

    store = await open_store(cfg.state)   # hoopwire.config.StateConfig
    await store.create_approval({...})
    won = await store.decide_approval(id, "approved", decided_by="alice", reason=None)
    await store.close()

`sqlite:///abs/path.db` (the default; the gateway's worker processes on one machine share the
file) or `postgresql://user@host:port/dbname` (replicas share the database). Both backends run
the same SQL (store.py) and behave alike; the PostgreSQL driver is only imported when used.
"""

from __future__ import annotations

from hoopwire.config import StateConfig
from hoopwire.state.store import (APPROVAL_STATUSES, DECIDED_STATUSES, SCOPES, Store,
                                  StoreError)

__all__ = ["open_store", "Store", "StoreError", "APPROVAL_STATUSES", "DECIDED_STATUSES", "SCOPES"]


async def open_store(cfg: StateConfig) -> Store:
    """Connect and create the tables if missing (safe when several processes start at once).
    Raises StoreError when the store cannot be reached or set up."""
    url = cfg.url.lower()
    if url.startswith("sqlite://"):
        from hoopwire.state.sqlite import open_sqlite
        return await open_sqlite(cfg)
    if url.startswith(("postgresql://", "postgres://")):
        from hoopwire.state.postgres import open_postgres
        return await open_postgres(cfg)
    # the url is not echoed: it could be a DSN with a password in it
    raise StoreError("the state store url must start with sqlite:// or postgresql://")
