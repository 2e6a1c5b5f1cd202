"""The state store in PostgreSQL, for several gateway replicas sharing one state.

One psycopg AsyncConnection in autocommit, so each statement is its own transaction, as on
SQLite. An asyncio.Lock lets one operation at a time use it: psycopg would interleave two
coroutines' statements, and a statement slipping into another operation's transaction would
commit or roll back with it.

A connection found broken (server restart, failover, idle timeout) is replaced once. Reads and
idempotent writes then run again; a write that is not safe to repeat raises _ConnectionLost and
Store decides how to learn whether it landed.

Decisions reach the other replicas by LISTEN/NOTIFY: announce_decided() sends a NOTIFY on
DECIDED_CHANNEL, and watch_decided() keeps a second connection listening on it (a connection
waiting for notifications cannot run the store's statements in between). Polling stays behind
it for what a listener misses while it reconnects.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Awaitable, Callable, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict

from hoopwire.config import StateConfig
from hoopwire.logs import event
from hoopwire.state.store import (Store, StoreError, _ConnectionLost, added_column_ddl,
                                  schema_ddl)

__all__ = ["PostgresStore", "open_postgres"]

CONNECT_TIMEOUT = 10  # seconds, unless the url sets connect_timeout
DECIDED_CHANNEL = "hoopwire_approval_decided"    # NOTIFY payload: the approval id
LISTEN_RETRY_MAX = 30.0   # seconds between attempts to listen again, at most

log = logging.getLogger("hoopwire.state")

_TYPES = {"text": "text", "float": "double precision", "int": "bigint", "bool": "boolean",
          "json": "text"}

# Concurrent CREATE TABLE IF NOT EXISTS of one table can still fail on PostgreSQL (a unique
# violation in pg_type), so replicas starting together take this advisory lock first. Any
# constant works; this is b"hoopwire" read as a big-endian integer.
_SCHEMA_LOCK = 0x686F6F7077697265

Op = Callable[[psycopg.AsyncConnection], Awaitable[Any]]


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    # Store writes `?` placeholders; psycopg wants `%s` and would read any other `%` as one.
    assert "%" not in sql, "a literal % in shared SQL would need escaping for psycopg"
    return sql.replace("?", "%s")


async def open_postgres(cfg: StateConfig) -> "PostgresStore":
    store = PostgresStore(cfg)
    await store._run(_create_schema, retry=True)
    return store


async def _create_schema(conn: psycopg.AsyncConnection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for ddl in schema_ddl(_TYPES):
            await conn.execute(ddl)
        # a database set up by an older version: add the columns it lacks
        for ddl in added_column_ddl(_TYPES, if_not_exists=True):
            await conn.execute(ddl)


class PostgresStore(Store):
    def __init__(self, cfg: StateConfig):
        self._conninfo = cfg.url
        self._password = cfg.password.get() if cfg.password is not None else None
        try:
            params = conninfo_to_dict(cfg.url)
        except psycopg.Error:
            # the driver's message quotes the url, which may hold a password: do not repeat it
            raise StoreError("the PostgreSQL state url cannot be parsed") from None
        # every password we know of, to scrub from driver messages (one may be in the url)
        self._secrets = [s for s in (self._password, params.get("password")) if s]
        self.target = (f"{params.get('user') or ''}@{params.get('host') or 'localhost'}:"
                       f"{params.get('port') or 5432}/{params.get('dbname') or ''}")
        self._connect_args: dict[str, Any] = {"autocommit": True}
        if self._password is not None:
            self._connect_args["password"] = self._password
        if "connect_timeout" not in params:
            self._connect_args["connect_timeout"] = CONNECT_TIMEOUT
        if "application_name" not in params:
            self._connect_args["application_name"] = "hoopwire-state"
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<PostgresStore {self.target}{' closed' if self._closed else ''}>"

    def _error(self, what: str, e: BaseException, cls: type[StoreError] = StoreError) -> StoreError:
        msg = " ".join(str(e).split())  # libpq messages span lines
        for s in self._secrets:
            msg = msg.replace(s, "***")
        return cls(f"state store postgresql {self.target}: {what}: {msg}")

    async def _connect(self) -> psycopg.AsyncConnection:
        try:
            return await psycopg.AsyncConnection.connect(self._conninfo, **self._connect_args)
        except psycopg.Error as e:
            # not chained: a driver exception is printed whole in tracebacks, unscrubbed
            raise self._error("cannot connect", e) from None

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except psycopg.Error:
                pass  # it is broken already; closing only frees the socket

    async def _run(self, op: Op, *, retry: bool) -> Any:
        async with self._lock:
            if self._closed:
                raise StoreError(f"state store postgresql {self.target} is closed")
            if self._conn is None or self._conn.closed or self._conn.broken:
                # known dead (a failure of the last operation): replace it before using it, so
                # that a write that is not retried does not spend its one attempt on it
                await self._discard()
                self._conn = await self._connect()
            try:
                return await op(self._conn)
            except psycopg.Error as e:
                if not (self._conn.broken or self._conn.closed):
                    raise self._error("query failed", e) from None
                first = e
            await self._discard()
            self._conn = await self._connect()
            if not retry:
                raise self._error("connection lost", first, _ConnectionLost)
            try:
                return await op(self._conn)
            except psycopg.Error as e:
                raise self._error("query failed after reconnecting", e) from None

    async def _fetch(self, sql: str, params: Sequence = (), *, retry: bool = True) -> list[tuple]:
        sql = _pg(sql)

        async def op(conn: psycopg.AsyncConnection) -> list[tuple]:
            cur = await conn.execute(sql, tuple(params))
            return await cur.fetchall() if cur.description is not None else []
        return await self._run(op, retry=retry)

    async def _execute(self, sql: str, params: Sequence = ()) -> int:
        sql = _pg(sql)

        async def op(conn: psycopg.AsyncConnection) -> int:
            return (await conn.execute(sql, tuple(params))).rowcount
        return await self._run(op, retry=True)

    async def _transaction(self, steps: Sequence[tuple[str, Sequence[Sequence]]]) -> list[int]:
        steps = [(_pg(sql), seq) for sql, seq in steps]

        async def op(conn: psycopg.AsyncConnection) -> list[int]:
            counts = []
            async with conn.transaction(), conn.cursor() as cur:
                for sql, seq in steps:
                    if len(seq) == 1:
                        await cur.execute(sql, seq[0])
                        counts.append(cur.rowcount)
                    else:
                        # pipelined: one round trip for the batch, not one per row
                        await cur.executemany(sql, seq)
                        counts.append(cur.rowcount)
            return counts
        # a transaction cut off before COMMIT left nothing behind, and the steps Store sends
        # (upserts, inserts that skip duplicates, deletes) are safe to repeat after a lost COMMIT
        return await self._run(op, retry=True)

    async def announce_decided(self, id: str) -> None:
        await self._execute("SELECT pg_notify(?, ?)", (DECIDED_CHANNEL, id))

    async def watch_decided(self, on_decided: Callable[[str | None], None]) -> bool:
        delay = 1.0
        while not self._closed:
            conn = None
            try:
                conn = await self._connect()
                await conn.execute(f"LISTEN {DECIDED_CHANNEL}")
                delay = 1.0
                on_decided(None)        # what was announced while nobody listened
                async for n in conn.notifies():
                    on_decided(n.payload)
            except (StoreError, psycopg.Error) as e:
                err = e if isinstance(e, StoreError) else self._error("listening failed", e)
                event(log, "not listening for approval decisions; polling meanwhile",
                      logging.WARNING, retry_in=delay, error=str(err))
            finally:
                if conn is not None:
                    try:
                        await conn.close()
                    except psycopg.Error:
                        pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_RETRY_MAX)
        return True

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            await self._discard()
