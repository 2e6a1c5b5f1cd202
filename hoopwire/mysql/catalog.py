"""What information_schema says about the upstream's tables, read over a side connection.

MySQL's column definitions name a result column's source (`org_table`, `org_name` in `schema`),
but those names are not facts the masker can rely on alone: a derived table or CTE alias stands
in for a table name (`SELECT name FROM (SELECT ssn AS name FROM users) AS users` arrives as
app.users.name), a view reports itself, a UNION keeps the first arm's name and drops the table.
Masking therefore also follows each statement's lineage (hoopwire/mysql/lineage.py), which asks
this catalog two things: the columns of a table (in order, for `*` and for placing an unqualified
name) and a view's definition (information_schema.VIEWS.VIEW_DEFINITION, so a view's columns are
followed to the base columns they read). Besides those, the masker wants the stored routines (a
call to one may read anything) and every collation's character set (a result in UTF-16 or UTF-32
hides values from the detectors, which read ASCII-compatible bytes).

Every user schema is read at once, cached per schema, and read again when older than `ttl`, when
a session's statement changed the schema (DDL: the masker marks the catalog stale and the next
statement starts a read), or when a result names a relation the catalog does not hold. The
system schemas (information_schema, mysql, performance_schema, sys: about 1,900 columns on
MariaDB 10.11, fixed by the server's version) and the collations are read once per catalog:
mariadb-dump, the CLI's SHOW and every ORM's reflection query them.

A view whose definition the stored user may not see (VIEW_DEFINITION is empty without SHOW VIEW)
has no definition here: lineage then cannot place its columns, and they are unresolved.

The side connection logs in with the connection's stored credentials: `connect` is an async
callable returning an object with `async query(sql) -> list[tuple]` (text values, None for NULL)
and `close()`. Every read is bounded by `timeout` (the connection's connect_timeout).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from hoopwire.logs import event

log = logging.getLogger("hoopwire.mysql.catalog")

__all__ = ["Catalog", "CatalogError", "Relation", "SYSTEM_SCHEMAS", "ASCII_UNSAFE_CHARSETS"]

SYSTEM_SCHEMAS = ("information_schema", "mysql", "performance_schema", "sys")
_NOT_SYSTEM = "NOT IN ('information_schema', 'mysql', 'performance_schema', 'sys')"
_IS_SYSTEM = "IN ('information_schema', 'mysql', 'performance_schema', 'sys')"

_TABLES = ("SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
           "WHERE TABLE_SCHEMA {}")
_COLUMNS = ("SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA {} ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION")
_VIEWS = ("SELECT TABLE_SCHEMA, TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS "
          "WHERE TABLE_SCHEMA {}")
_ROUTINES = ("SELECT ROUTINE_SCHEMA, ROUTINE_NAME FROM information_schema.ROUTINES "
             "WHERE ROUTINE_SCHEMA " + _NOT_SYSTEM)
# COLLATION_CHARACTER_SET_APPLICABILITY lists every id a result may carry (MariaDB 10.10+ gives
# the uca1400 collations ids there that COLLATIONS does not have); COLLATIONS is the fallback
_COLLATIONS = ("SELECT ID, CHARACTER_SET_NAME FROM "
               "information_schema.COLLATION_CHARACTER_SET_APPLICABILITY WHERE ID IS NOT NULL")
_COLLATIONS_OLD = "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS"

# character sets in which an ASCII character is not its ASCII byte: the detectors cannot read
# values sent in them (`SET character_set_results = utf16` is allowed by the server)
ASCII_UNSAFE_CHARSETS = frozenset({"ucs2", "utf16", "utf16le", "utf32"})


class CatalogError(Exception):
    """The catalog could not be read (side connection refused, lost, or timed out)."""


@dataclass
class Relation:
    schema: str
    name: str
    kind: str                                   # BASE TABLE | VIEW | SYSTEM VIEW | ...
    columns: list[str] = field(default_factory=list)
    view_sql: Optional[str] = None              # VIEW_DEFINITION (None: not a view, or hidden)
    _names: Optional[frozenset] = field(default=None, repr=False, compare=False)

    @property
    def is_view(self) -> bool:
        # a user's view (information_schema's tables are SYSTEM VIEWs: fixed columns, placed
        # as tables)
        return self.kind.upper() == "VIEW"

    def has_column(self, name: str) -> bool:
        """Whether the read saw a column of this name (column names compare without case)."""
        names = self._names
        if names is None:
            names = self._names = frozenset(c.lower() for c in self.columns)
        return name.lower() in names


def _key(schema: str, name: str) -> tuple[str, str]:
    # names compare without case: lower_case_table_names differs per server and platform, and
    # treating `Users` and `users` as one relation can only widen what is masked
    return schema.lower(), name.lower()


class Catalog:
    """The tables of one upstream, shared by the sessions of one connection."""

    def __init__(self, connect: Callable, *, ttl: float = 60.0, timeout: float = 10.0,
                 on_load: Callable[["Catalog"], None] | None = None, name: str = ""):
        self._connect = connect          # async () -> side connection (query, close)
        self.ttl = ttl
        self.timeout = timeout
        self.on_load = on_load
        self.name = name                 # the connection's name, for logs
        # (schema, name) lower-cased -> Relation; per schema: the schema's relations
        self.relations: dict[tuple[str, str], Relation] = {}
        self.schemas: dict[str, dict[str, Relation]] = {}
        self.routines: frozenset[str] = frozenset()        # lower-cased names, any schema
        self.charsets: dict[int, str] = {}                 # collation id -> character set
        self._system: dict[tuple[str, str], Relation] | None = None
        self.loaded_at = 0.0
        # when the last successful read began (monotonic): a change on the server seen after
        # it is one that read may not hold (the masker's fail-safe for renames made outside)
        self.read_from = 0.0
        self.stale = True
        self.generation = 0
        self.lookups = 0
        self._up = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    # -- what sessions ask, without waiting ------------------------------------------------

    def fresh(self) -> bool:
        return not self.stale and time.monotonic() - self.loaded_at < self.ttl

    @property
    def loaded(self) -> bool:
        return self.generation > 0

    def relation(self, schema: str, name: str) -> Optional[Relation]:
        return self.relations.get(_key(schema, name))

    def knows(self, schema: str, name: str) -> bool:
        return _key(schema, name) in self.relations

    def columns(self, schema: Optional[str], table: str) -> Optional[list[str]]:
        """The columns of schema.table in order, or None when the catalog does not hold it
        (lineage then cannot place what reads it). The `tables` callback of lineage."""
        if not schema:
            return None
        rel = self.relations.get(_key(schema, table))
        return list(rel.columns) if rel is not None else None

    def view_definition(self, schema: Optional[str], name: str) -> Optional[str]:
        """VIEW_DEFINITION of a view the stored user may see, else None. The `views` callback
        of lineage."""
        if not schema:
            return None
        rel = self.relations.get(_key(schema, name))
        return rel.view_sql if rel is not None and rel.is_view else None

    def charset(self, collation_id: int) -> Optional[str]:
        return self.charsets.get(collation_id)

    def ascii_safe(self, collation_id: int) -> bool:
        """Whether values in this collation's character set show ASCII as ASCII bytes. An id
        the catalog has not read (a newer server's) counts as unsafe."""
        cs = self.charsets.get(collation_id)
        return cs is not None and cs.lower() not in ASCII_UNSAFE_CHARSETS

    def invalidate(self) -> None:
        self.stale = True

    def reading(self) -> Optional[asyncio.Task]:
        """The read under way (refresh_soon's), or None."""
        task = self._task
        return task if task is not None and not task.done() else None

    def refresh_soon(self, min_age: float = 0.0) -> None:
        """Start a read in the background (at most one at a time); errors are logged, and the
        last read stays in use until one succeeds. `min_age`: not when the last read is
        younger than that and nothing made it stale (a name the catalog does not hold is most
        often a derived table's alias: one read per such result would be a read per query)."""
        if self._task is not None and not self._task.done():
            return
        if min_age and not self.stale and time.monotonic() - self.loaded_at < min_age:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.stale = True
        self._task = loop.create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            await self.load()
        except CatalogError as e:
            event(log, "masking catalog unavailable", logging.ERROR, connection=self.name,
                  error=str(e))
        except Exception:  # noqa: BLE001 -- a bug here must not end a session's loop
            log.exception("masking catalog read failed")

    # -- reading ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the user schemas' tables, columns, views and routines (and, the first time, the
        system schemas and the collations). One read at a time; a caller that waited for a
        read under way gets that read's answer."""
        async with self._lock:
            if self.fresh():
                return
            started = time.monotonic()
            if self._system is None:
                sys_rels = _relations(await self._query(_TABLES.format(_IS_SYSTEM)),
                                      await self._query(_COLUMNS.format(_IS_SYSTEM)), [])
                try:
                    coll = await self._query(_COLLATIONS)
                except CatalogError:
                    coll = await self._query(_COLLATIONS_OLD)
                self.charsets = {int(i): cs for i, cs in coll if i is not None and cs}
                self._system = sys_rels
            rels = _relations(await self._query(_TABLES.format(_NOT_SYSTEM)),
                              await self._query(_COLUMNS.format(_NOT_SYSTEM)),
                              await self._query(_VIEWS.format(_NOT_SYSTEM)))
            routines = await self._query(_ROUTINES)
            rels.update(self._system)
            self.relations = rels
            schemas: dict[str, dict[str, Relation]] = {}
            for (s, n), r in rels.items():
                schemas.setdefault(s, {})[n] = r
            self.schemas = schemas
            self.routines = frozenset(n.lower() for _s, n in routines if n)
            self.loaded_at = time.monotonic()
            self.read_from = started
            self.stale = False
            self.generation += 1
            self.lookups += 1
            event(log, "catalog loaded", logging.DEBUG, connection=self.name,
                  relations=len(rels), schemas=len(schemas))
            if self.on_load is not None:
                self.on_load(self)

    async def _query(self, sql: str) -> list[tuple]:
        """One query on the side connection, bounded by `timeout`; a lost connection is opened
        again once."""
        for attempt in (1, 2):
            try:
                if self._up is None:
                    self._up = await asyncio.wait_for(self._connect(), self.timeout)
                return await asyncio.wait_for(self._up.query(sql), self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 -- refused, lost, timed out: retried once
                self.close()
                if attempt == 2:
                    raise CatalogError(f"cannot read information_schema: "
                                       f"{type(e).__name__}: {e}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        up, self._up = self._up, None
        if up is not None:
            try:
                up.close()
            except Exception:  # noqa: BLE001
                pass
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()


def _relations(tables, columns, views) -> dict[tuple[str, str], Relation]:
    rels: dict[tuple[str, str], Relation] = {}
    for schema, name, kind in tables:
        if schema is None or name is None:
            continue
        rels[_key(schema, name)] = Relation(schema, name, kind or "BASE TABLE")
    for schema, name, col in columns:
        if schema is None or name is None or col is None:
            continue
        rel = rels.get(_key(schema, name))
        if rel is None:     # created between the two reads: its kind is not known -- a table
            rel = rels[_key(schema, name)] = Relation(schema, name, "BASE TABLE")
        rel.columns.append(col)
    for schema, name, definition in views:
        rel = rels.get(_key(schema or "", name or ""))
        if rel is not None and definition:
            rel.view_sql = definition
    return rels
