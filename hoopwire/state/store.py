"""The state store's API and the SQL both backends share.

Every query is written once here, in the SQL that SQLite (3.35+) and PostgreSQL both accept:
`?` placeholders (the PostgreSQL backend turns them into `%s`), `INSERT ... ON CONFLICT`,
`UPDATE ... RETURNING`. A backend only supplies three primitives (`_fetch`, `_execute`,
`_transaction`) and `close()`, so the two cannot drift apart in behaviour.

Rows cross the API as plain dicts. Columns are described once (`_Col`): the kind says how a value
is stored and read back, so lists come back as lists (JSON text via orjson) and booleans as
booleans on both backends (SQLite has no boolean type and would hand back 0/1).
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import orjson

__all__ = ["Store", "StoreError", "APPROVAL_STATUSES", "DECIDED_STATUSES", "SCOPES"]

APPROVAL_STATUSES = frozenset({"pending", "approved", "denied", "expired", "cancelled", "abandoned"})
DECIDED_STATUSES = APPROVAL_STATUSES - {"pending"}
SCOPES = frozenset({"once", "window"})

# SQLite's default limit on bound parameters was 999 before 3.32; chunk IN lists below it.
_IN_CHUNK = 500


class StoreError(Exception):
    """The store could not be reached or a query failed. The message names the store (path, or
    host:port/dbname) and the driver's reason; it never contains the password."""


class _ConnectionLost(StoreError):
    """The connection broke during a write that was not retried, so whether the write landed is
    unknown. The backend has already reconnected; the caller decides how to find out."""


# -- columns ---------------------------------------------------------------------------------------

_REQUIRED = object()  # a column without a default must be in the dict given to a write


@dataclass(frozen=True)
class _Col:
    name: str
    kind: str                 # text | float | int | bool | json (a list, stored as JSON text)
    default: Any = _REQUIRED  # value when the key is missing from a written dict
    not_null: bool = True


def _cols(*cols: _Col) -> tuple[_Col, ...]:
    return cols


APPROVAL_COLS = _cols(
    _Col("id", "text"),
    _Col("status", "text", "pending"),
    _Col("created_at", "float"),
    _Col("expires_at", "float"),
    _Col("decided_at", "float", None, False),
    _Col("requester", "text"),
    # the requester's issuer ("" for an API key): with `requester`, who asked. None only in rows
    # stored before the column existed.
    _Col("requester_issuer", "text", None, False),
    _Col("requester_groups", "json", ()),
    _Col("token_id", "text", None, False),
    _Col("connection", "text"),
    _Col("session_id", "text"),
    _Col("client_addr", "text"),
    _Col("statement", "text"),
    _Col("rule", "text"),
    _Col("approvers", "json", ()),
    _Col("reason_required", "bool", False),
    _Col("decided_by", "text", None, False),
    _Col("decided_by_issuer", "text", None, False),
    _Col("reason", "text", None, False),
    _Col("scope", "text", "once"),
    _Col("grant_until", "float", None, False),
    _Col("gateway_id", "text"),
)

GRANT_COLS = _cols(
    _Col("subject", "text"),
    # None only in grants stored before the column existed: whose they were cannot be told,
    # so they match nobody (ApprovalManager)
    _Col("issuer", "text", None, False),
    _Col("connection", "text"),
    _Col("rule", "text"),
    _Col("until", "float"),
    _Col("approval_id", "text"),
)

SESSION_COLS = _cols(
    _Col("id", "text"),
    _Col("subject", "text"),
    _Col("issuer", "text", None, False),   # "" for API keys; None when the writer gave none
    _Col("groups", "json", ()),
    _Col("token_id", "text", None, False),
    _Col("method", "text"),
    _Col("connection", "text"),
    _Col("role", "text", None, False),
    _Col("database", "text", None, False),
    _Col("client_addr", "text"),
    _Col("tls", "bool", False),
    _Col("started_at", "float"),
    _Col("ended_at", "float", None, False),
    _Col("bytes_in", "int", 0),
    _Col("bytes_out", "int", 0),
    _Col("close_reason", "text", None, False),
    _Col("statements", "int", 0),
    _Col("gateway_id", "text"),
)

STATEMENT_COLS = _cols(
    _Col("session_id", "text"),
    _Col("seq", "int"),
    _Col("ts", "float"),
    _Col("statement", "text"),
    _Col("verdict", "text"),
    _Col("rules", "json", ()),
    _Col("approval_id", "text", None, False),
    _Col("rows", "int", None, False),
    _Col("masked", "int", 0),
    _Col("duration_ms", "float", None, False),
    _Col("error", "text", None, False),
)

# table -> (columns, primary key columns). Tables live in the connected database's default schema.
TABLES: dict[str, tuple[tuple[_Col, ...], tuple[str, ...]]] = {
    "hoopwire_approvals": (APPROVAL_COLS, ("id",)),
    "hoopwire_grants": (GRANT_COLS, ("approval_id", "subject", "connection", "rule")),
    "hoopwire_sessions": (SESSION_COLS, ("id",)),
    "hoopwire_statements": (STATEMENT_COLS, ("session_id", "seq")),
}

# Columns added after a table was first released, (table, column): CREATE TABLE IF NOT EXISTS
# leaves an existing table as it is, so each backend adds these where missing (nullable, no
# default: old rows read None).
ADDED_COLUMNS = (
    ("hoopwire_approvals", "requester_issuer"),
    ("hoopwire_approvals", "decided_by_issuer"),
    ("hoopwire_grants", "issuer"),
    ("hoopwire_sessions", "issuer"),
)

# (index name, table, columns): one per list query, so none of them scans a grown audit index.
INDEXES = (
    ("hoopwire_approvals_created", "hoopwire_approvals", ("created_at",)),
    ("hoopwire_approvals_status", "hoopwire_approvals", ("status", "created_at")),
    ("hoopwire_approvals_due", "hoopwire_approvals", ("status", "expires_at")),
    ("hoopwire_grants_until", "hoopwire_grants", ("until",)),
    ("hoopwire_sessions_started", "hoopwire_sessions", ("started_at",)),
    ("hoopwire_sessions_subject", "hoopwire_sessions", ("subject", "started_at")),
    ("hoopwire_sessions_connection", "hoopwire_sessions", ("connection", "started_at")),
    ("hoopwire_sessions_ended", "hoopwire_sessions", ("ended_at",)),
)


def q(name: str) -> str:
    # Several column names are keywords somewhere (database, groups, rows, until): quote them all.
    return '"' + name + '"'


def _names(cols: Iterable[_Col]) -> str:
    return ", ".join(q(c.name) for c in cols)


def schema_ddl(sql_types: dict[str, str]) -> list[str]:
    """CREATE ... IF NOT EXISTS for every table and index; `sql_types` maps a column kind to the
    backend's type name. Callers must serialise concurrent runs themselves (see the backends)."""
    out = []
    for table, (cols, pkey) in TABLES.items():
        defs = [f"{q(c.name)} {sql_types[c.kind]}{' NOT NULL' if c.not_null else ''}" for c in cols]
        defs.append(f"PRIMARY KEY ({', '.join(q(k) for k in pkey)})")
        out.append(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(defs)})")
    for name, table, columns in INDEXES:
        out.append(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({', '.join(q(c) for c in columns)})")
    return out


def added_column_ddl(sql_types: dict[str, str], existing: Callable[[str], set[str]] | None = None,
                     if_not_exists: bool = False) -> list[str]:
    """ALTER TABLE ... ADD COLUMN for ADDED_COLUMNS: those missing from `existing(table)` (the
    table's column names), or all of them with IF NOT EXISTS where the backend has it."""
    out = []
    for table, name in ADDED_COLUMNS:
        if existing is not None and name in existing(table):
            continue
        col = next(c for c in TABLES[table][0] if c.name == name)
        assert not col.not_null, "an added column must be nullable: old rows have no value"
        out.append(f"ALTER TABLE {table} ADD COLUMN {'IF NOT EXISTS ' if if_not_exists else ''}"
                   f"{q(name)} {sql_types[col.kind]}")
    return out


def encode(cols: Sequence[_Col], row: dict, what: str) -> tuple:
    """A dict as a parameter tuple in column order. A missing key takes the column's default;
    a missing key without one is the caller's bug, hence ValueError rather than StoreError.
    Keys that are not columns are ignored."""
    out = []
    for c in cols:
        v = row.get(c.name, c.default)
        if v is _REQUIRED:
            raise ValueError(f"{what}: missing {c.name!r}")
        if v is None:
            if c.not_null:
                raise ValueError(f"{what}: {c.name!r} must not be None")
        elif c.kind == "json":
            if isinstance(v, (str, bytes)):
                raise ValueError(f"{what}: {c.name!r} must be a list, not a string")
            # groups often arrive as an Identity's frozenset: store them sorted, as a list
            v = orjson.dumps(sorted(v) if isinstance(v, (set, frozenset)) else list(v)).decode()
        elif c.kind == "float":
            v = float(v)
        elif c.kind == "int":
            v = int(v)
        elif c.kind == "bool":
            v = bool(v)
        out.append(v)
    return tuple(out)


def decode(cols: Sequence[_Col], values: Sequence) -> dict:
    row = {}
    for c, v in zip(cols, values):
        if v is not None:
            if c.kind == "json":
                v = orjson.loads(v)
            elif c.kind == "bool":
                v = bool(v)
            elif c.kind == "float":
                v = float(v)
        row[c.name] = v
    return row


# -- statements --------------------------------------------------------------------------------------

_A = "hoopwire_approvals"
_A_COLS = _names(APPROVAL_COLS)
_A_PARAMS = ", ".join("?" * len(APPROVAL_COLS))

_INSERT_APPROVAL = f"INSERT INTO {_A} ({_A_COLS}) VALUES ({_A_PARAMS}) ON CONFLICT (id) DO NOTHING"
_GET_APPROVAL = f"SELECT {_A_COLS} FROM {_A} WHERE id = ?"
# The compare-and-set: only a row still pending changes, so of two replicas deciding at once
# exactly one gets a row back.
_DECIDE = (f"UPDATE {_A} SET status = ?, decided_at = ?, decided_by = ?, decided_by_issuer = ?,"
           f" reason = ?, scope = ?,"
           f" grant_until = ? WHERE id = ? AND status = 'pending' RETURNING {_A_COLS}")
_EXPIRE = (f"UPDATE {_A} SET status = 'expired', decided_at = ?"
           f" WHERE status = 'pending' AND expires_at <= ? RETURNING {_A_COLS}")
_ABANDON = (f"UPDATE {_A} SET status = 'abandoned', decided_at = ?"
            f" WHERE status = 'pending' AND gateway_id = ?")

_G = "hoopwire_grants"
_INSERT_GRANT = (f"INSERT INTO {_G} ({_names(GRANT_COLS)})"
                 f" VALUES ({', '.join('?' * len(GRANT_COLS))}) ON CONFLICT DO NOTHING")
_ACTIVE_GRANTS = f"SELECT {_names(GRANT_COLS)} FROM {_G} WHERE {q('until')} > ? ORDER BY {q('until')}"

_S = "hoopwire_sessions"
_S_COLS = _names(SESSION_COLS)
_UPSERT_SESSION = (
    f"INSERT INTO {_S} ({_S_COLS}) VALUES ({', '.join('?' * len(SESSION_COLS))})"
    f" ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{q(c.name)} = excluded.{q(c.name)}" for c in SESSION_COLS if c.name != "id"))
_GET_SESSION = f"SELECT {_S_COLS} FROM {_S} WHERE id = ?"
_CLOSE_ORPHANS = (f"UPDATE {_S} SET ended_at = ?, close_reason = ?"
                  f" WHERE gateway_id = ? AND ended_at IS NULL")

_T = "hoopwire_statements"
_T_COLS = _names(STATEMENT_COLS)
_INSERT_STATEMENT = (f"INSERT INTO {_T} ({_T_COLS}) VALUES ({', '.join('?' * len(STATEMENT_COLS))})"
                     f" ON CONFLICT DO NOTHING")
_SESSION_STATEMENTS = f"SELECT {_T_COLS} FROM {_T} WHERE session_id = ? ORDER BY seq"

# Statements go with their session; decided approvals once decided (or, never decided, created)
# before the cut; grants once they ran out.
_PRUNE = (
    f"DELETE FROM {_T} WHERE session_id IN (SELECT id FROM {_S} WHERE ended_at < ?)",
    f"DELETE FROM {_S} WHERE ended_at < ?",
    f"DELETE FROM {_A} WHERE status <> 'pending' AND COALESCE(decided_at, created_at) < ?",
    f"DELETE FROM {_G} WHERE {q('until')} < ?",
)


def _check_limit(limit: int) -> int:
    limit = int(limit)
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return limit


# -- the store --------------------------------------------------------------------------------------

class Store(abc.ABC):
    """Approvals, time-window grants and the audit session index, shared by every gateway process
    (SQLite) or replica (PostgreSQL). Made by `hoopwire.state.open_store()`.

    Times are float epoch seconds. Failures of the store raise StoreError; a malformed argument
    (missing field, unknown status) raises ValueError.
    """

    # -- what a backend supplies -------------------------------------------------------------

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection. Safe to repeat; later calls raise StoreError."""

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Sequence = (), *, retry: bool = True) -> list[tuple]:
        """Run one statement in its own transaction and return its rows. With retry=False a broken
        connection raises _ConnectionLost instead of running the statement a second time."""

    @abc.abstractmethod
    async def _execute(self, sql: str, params: Sequence = ()) -> int:
        """Run one statement in its own transaction; the number of rows it changed."""

    @abc.abstractmethod
    async def _transaction(self, steps: Sequence[tuple[str, Sequence[Sequence]]]) -> list[int]:
        """Run each (sql, list of parameter tuples) step in one transaction, every parameter tuple
        once; the rows each step changed."""

    # -- approvals ------------------------------------------------------------------------------

    async def create_approval(self, a: dict) -> None:
        """Store a new approval request (status 'pending' unless given)."""
        _check_choice(a.get("status", "pending"), APPROVAL_STATUSES, "status")
        _check_choice(a.get("scope", "once"), SCOPES, "scope")
        params = encode(APPROVAL_COLS, a, "approval")
        # ON CONFLICT DO NOTHING makes a retry after a lost reply harmless; a first attempt that
        # inserts nothing met a real duplicate.
        try:
            rows = await self._fetch(_INSERT_APPROVAL + " RETURNING id", params, retry=False)
        except _ConnectionLost:
            await self._fetch(_INSERT_APPROVAL + " RETURNING id", params)
            return
        if not rows:
            raise StoreError(f"approval {a['id']!r} already exists")

    async def get_approval(self, id: str) -> dict | None:
        rows = await self._fetch(_GET_APPROVAL, (id,))
        return decode(APPROVAL_COLS, rows[0]) if rows else None

    async def list_approvals(self, status: str | None = None, limit: int = 100, *,
                             connections: Iterable[str] | None = None) -> list[dict]:
        """Newest (by created_at) first; with `connections`, only requests of those (an empty
        set: none)."""
        limit = _check_limit(limit)
        where, params = [], []
        if status is not None:
            _check_choice(status, APPROVAL_STATUSES, "status")
            where.append("status = ?")
            params.append(status)
        if connections is not None:
            names = sorted(set(connections))
            if not names:
                return []
            if len(names) > _IN_CHUNK:
                raise ValueError(f"at most {_IN_CHUNK} connections")
            where.append(f"{q('connection')} IN ({', '.join('?' * len(names))})")
            params += names
        params.append(limit)
        rows = await self._fetch(
            f"SELECT {_A_COLS} FROM {_A}{' WHERE ' + ' AND '.join(where) if where else ''}"
            f" ORDER BY created_at DESC, id DESC LIMIT ?", params)
        return [decode(APPROVAL_COLS, r) for r in rows]

    async def decide_approval(self, id: str, status: str, *, decided_by: str | None,
                              reason: str | None, scope: str = "once",
                              grant_until: float | None = None,
                              now: float | None = None,
                              decided_by_issuer: str | None = None) -> dict | None:
        """Move a pending approval to `status`. Returns the updated row, or None when it was not
        pending (already decided elsewhere, expired) or does not exist."""
        _check_choice(status, DECIDED_STATUSES, "status")
        _check_choice(scope, SCOPES, "scope")
        now = time.time() if now is None else float(now)
        grant_until = None if grant_until is None else float(grant_until)
        params = (status, now, decided_by, decided_by_issuer, reason, scope, grant_until, id)
        try:
            rows = await self._fetch(_DECIDE, params, retry=False)
        except _ConnectionLost:
            # The first attempt may have landed with its reply lost. A retry would then find the
            # row decided and report a loss for what was our own win, so recognise our decision
            # by its exact values (decided_at is our `now`, to the bit).
            rows = await self._fetch(_DECIDE, params)
            if not rows:
                row = await self.get_approval(id)
                if row is not None and (row["status"], row["decided_at"], row["decided_by"],
                                        row["reason"]) == (status, now, decided_by, reason):
                    return row
        return decode(APPROVAL_COLS, rows[0]) if rows else None

    async def decided_among(self, ids: list[str]) -> list[dict]:
        """The approvals among `ids` that are no longer pending (how a gateway waiting on requests
        learns of decisions taken by another process or replica)."""
        ids = list(dict.fromkeys(ids))
        out = []
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i:i + _IN_CHUNK]
            rows = await self._fetch(
                f"SELECT {_A_COLS} FROM {_A} WHERE id IN ({', '.join('?' * len(chunk))})"
                f" AND status <> 'pending'", chunk)
            out += [decode(APPROVAL_COLS, r) for r in rows]
        return out

    async def expire_due(self, now: float) -> list[dict]:
        """Pending approvals whose expires_at <= now become 'expired' (decided_at = now), in one
        statement, so a row is expired (and returned) by exactly one caller.

        After a broken connection the statement is run again; rows expired by a first attempt
        whose reply was lost are then not returned (decided_among() still reports them)."""
        rows = await self._fetch(_EXPIRE, (float(now), float(now)))
        return [decode(APPROVAL_COLS, r) for r in rows]

    async def abandon_pending(self, gateway_id: str, now: float) -> int:
        """At a gateway's start: its pending requests from before can no longer be answered
        (their sessions are gone), so they become 'abandoned'. Returns how many."""
        return await self._execute(_ABANDON, (float(now), gateway_id))

    # -- decisions taken by other processes ------------------------------------------------------

    async def announce_decided(self, id: str) -> None:
        """Tell the processes watching this store (watch_decided) that approval `id` was decided.
        Where the store cannot carry a message (SQLite) nothing happens: they poll."""

    async def watch_decided(self, on_decided: Callable[[str | None], None]) -> bool:
        """Call on_decided(id) for every announce_decided() of any process, and on_decided(None)
        whenever watching (re)starts -- announcements made before it may have been missed --
        until cancelled. Returns False at once where the store cannot do this (polling alone
        then finds decisions)."""
        return False

    # -- grants -----------------------------------------------------------------------------------

    async def add_grant(self, *, subject: str, connection: str, rule: str, until: float,
                        approval_id: str, issuer: str | None = None) -> None:
        """A time-window grant: the identity (`issuer`, `subject`) may run what `rule` holds
        for approval on `connection` until `until`. Adding the same grant twice is harmless."""
        params = encode(GRANT_COLS, {"subject": subject, "issuer": issuer,
                                     "connection": connection, "rule": rule,
                                     "until": until, "approval_id": approval_id}, "grant")
        await self._execute(_INSERT_GRANT, params)

    async def active_grants(self, now: float) -> list[dict]:
        """Grants with until > now, soonest to end first."""
        rows = await self._fetch(_ACTIVE_GRANTS, (float(now),))
        return [decode(GRANT_COLS, r) for r in rows]

    # -- audit index ------------------------------------------------------------------------------

    async def record_sessions(self, rows: list[dict]) -> None:
        """Insert or replace sessions by id (a session is written when it starts and again when it
        ends; the last write wins). One transaction."""
        if rows:
            params = [encode(SESSION_COLS, r, "session") for r in rows]
            await self._transaction([(_UPSERT_SESSION, params)])

    async def record_statements(self, rows: list[dict]) -> None:
        """Insert statements; one already stored under the same (session_id, seq) is left as it
        is, so a batch written twice is harmless. One transaction."""
        if rows:
            params = [encode(STATEMENT_COLS, r, "statement") for r in rows]
            await self._transaction([(_INSERT_STATEMENT, params)])

    async def list_sessions(self, *, identity: str | None = None, connection: str | None = None,
                            since: float | None = None, limit: int = 100,
                            issuer: str | None = None) -> list[dict]:
        """Newest (by started_at) first. `identity` matches the subject exactly, `issuer` the
        issuer ("" for API keys); `since` keeps sessions that started at or after it."""
        where, params = [], []
        if identity is not None:
            where.append("subject = ?")
            params.append(identity)
        if issuer is not None:
            where.append("issuer = ?")
            params.append(issuer)
        if connection is not None:
            where.append(f"{q('connection')} = ?")
            params.append(connection)
        if since is not None:
            where.append("started_at >= ?")
            params.append(float(since))
        params.append(_check_limit(limit))
        sql = (f"SELECT {_S_COLS} FROM {_S}{' WHERE ' + ' AND '.join(where) if where else ''}"
               f" ORDER BY started_at DESC, id DESC LIMIT ?")
        return [decode(SESSION_COLS, r) for r in await self._fetch(sql, params)]

    async def get_session(self, id: str) -> dict | None:
        rows = await self._fetch(_GET_SESSION, (id,))
        return decode(SESSION_COLS, rows[0]) if rows else None

    async def session_statements(self, id: str) -> list[dict]:
        """The session's statements in seq order."""
        rows = await self._fetch(_SESSION_STATEMENTS, (id,))
        return [decode(STATEMENT_COLS, r) for r in rows]

    async def close_orphaned_sessions(self, gateway_id: str, now: float,
                                      reason: str = "gateway_restart") -> int:
        """Sessions `gateway_id` left open when it stopped without ending them (a crash, a
        kill): ended now with `reason`. A gateway calls this for its own id as it starts, so the
        index never shows a session as live that nothing serves. Returns how many."""
        return await self._execute(_CLOSE_ORPHANS, (float(now), reason, gateway_id))

    async def prune(self, before: float) -> int:
        """Delete, in one transaction, sessions that ended before `before` with their statements,
        approvals decided before it and grants that ran out before it. Sessions still open
        (ended_at unset) and pending approvals are kept. Returns the rows removed (all tables)."""
        before = float(before)
        counts = await self._transaction([(sql, [(before,)]) for sql in _PRUNE])
        return sum(counts)


def _check_choice(value: Any, allowed: frozenset[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(sorted(allowed))}, not {value!r}")
