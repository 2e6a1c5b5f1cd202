"""The state store in a SQLite file, shared by the gateway's worker processes on one machine.

sqlite3 blocks, so each store owns one worker thread that holds its connection and runs every
query: the event loop only awaits a future, and the connection never meets a second thread.
WAL lets the other processes read while one writes; busy_timeout makes a writer wait for the
write lock instead of failing at once. Statements run in autocommit (one statement, one
transaction); multi-statement work takes the write lock up front (BEGIN IMMEDIATE), because a
WAL transaction that read first and then tries to write can fail with SQLITE_BUSY_SNAPSHOT,
which no busy timeout retries.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from hoopwire.config import StateConfig
from hoopwire.state.store import Store, StoreError, added_column_ddl, schema_ddl

__all__ = ["SqliteStore", "open_sqlite", "sqlite_path"]

BUSY_TIMEOUT_MS = 5000

_TYPES = {"text": "TEXT", "float": "REAL", "int": "INTEGER", "bool": "INTEGER", "json": "TEXT"}


def sqlite_path(url: str) -> str:
    """`sqlite:///abs/path.db` -> `/abs/path.db`."""
    if url[:9].lower() != "sqlite://":
        raise StoreError("a SQLite state url starts with sqlite://")
    path = url[len("sqlite://"):]
    if not path.startswith("/"):
        # a relative path would follow the working directory, which differs between the ways
        # the gateway gets started; workers must all land on the same file
        raise StoreError(f"the SQLite state url must name an absolute path (sqlite:///...), not {url!r}")
    return path


async def open_sqlite(cfg: StateConfig) -> "SqliteStore":
    path = sqlite_path(cfg.url)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hoopwire-state")
    try:
        conn = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
    except BaseException:
        executor.shutdown(wait=False)
        raise
    return SqliteStore(path, executor, conn)


def _connect(path: str) -> sqlite3.Connection:
    try:
        os.makedirs(os.path.dirname(path) or "/", mode=0o700, exist_ok=True)
        # created by us first so that it is 0600 (sqlite3 would use 0644); SQLite gives the
        # -wal and -shm files the database file's mode
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as e:
        raise StoreError(f"state store {path}: {e}") from e
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _enable_wal(conn, path)
        # with WAL, NORMAL stays consistent after a crash and skips an fsync per commit; a power
        # cut can lose the last commits, which for this state is an acceptable trade
        conn.execute("PRAGMA synchronous = NORMAL")
        # several workers starting together all create the tables; the write lock orders them
        conn.execute("BEGIN IMMEDIATE")
        try:
            for ddl in schema_ddl(_TYPES):
                conn.execute(ddl)
            # a file made by an older version: add the columns it lacks (SQLite has no
            # ADD COLUMN IF NOT EXISTS, so ask the table what it has)
            for ddl in added_column_ddl(_TYPES, lambda t: {
                    r[1] for r in conn.execute(f"PRAGMA table_info({t})").fetchall()}):
                conn.execute(ddl)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        conn.close()
        raise StoreError(f"state store {path}: {e}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, path: str) -> None:
    # Switching a fresh file to WAL needs it to itself for a moment; when several workers start
    # at once the switch can report "locked" without going through the busy handler, so retry
    # for as long as busy_timeout would have waited.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    if str(mode).lower() != "wal":
        raise StoreError(f"state store {path}: cannot use WAL journal mode (got {mode!r}); "
                         "the file must be on a local filesystem")


def _fetch(conn: sqlite3.Connection, sql: str, params: Sequence) -> list[tuple]:
    cur = conn.execute(sql, params)
    try:
        # fetch to the end: an UPDATE ... RETURNING finishes (and commits) only when stepped out
        return cur.fetchall()
    finally:
        cur.close()


def _execute(conn: sqlite3.Connection, sql: str, params: Sequence) -> int:
    cur = conn.execute(sql, params)
    try:
        return cur.rowcount
    finally:
        cur.close()


def _transaction(conn: sqlite3.Connection, steps: Sequence[tuple[str, Sequence[Sequence]]]) -> list[int]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        counts = []
        for sql, seq in steps:
            cur = conn.executemany(sql, seq)
            counts.append(cur.rowcount)
            cur.close()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return counts


class SqliteStore(Store):
    def __init__(self, path: str, executor: ThreadPoolExecutor, conn: sqlite3.Connection):
        self.path = path
        self._executor = executor
        self._conn: sqlite3.Connection | None = conn

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}{' closed' if self._conn is None else ''}>"

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        conn = self._conn
        if conn is None:
            raise StoreError(f"state store {self.path} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn, *args)
        except sqlite3.Error as e:
            raise StoreError(f"state store {self.path}: {e}") from e

    async def _fetch(self, sql: str, params: Sequence = (), *, retry: bool = True) -> list[tuple]:
        # a file does not lose its connection: nothing to retry
        return await self._call(_fetch, sql, tuple(params))

    async def _execute(self, sql: str, params: Sequence = ()) -> int:
        return await self._call(_execute, sql, tuple(params))

    async def _transaction(self, steps: Sequence[tuple[str, Sequence[Sequence]]]) -> list[int]:
        return await self._call(_transaction, steps)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        finally:
            # the thread has nothing left queued; it exits without being waited for
            self._executor.shutdown(wait=False)
