"""What the upstream's catalog says about result columns, read over a side connection.

RowDescription names each result column's source by table OID and attribute number. Masking
needs names (`schema.table.column`, as the configured globs say them), so the gateway reads
pg_class / pg_attribute once per database, caches the answer, and reads it again when it is
older than `ttl`, when a session's statement changed the schema (a DDL command tag), or when a
RowDescription names a relation it has not seen.

Views report their own OID and column number. A view column that is a plain column of another
relation is followed through the view's _RETURN rule (the top-level target list of its query
tree carries `resorigtbl` / `resorigcol`, the same fields the server fills RowDescription from),
so `CREATE VIEW v AS SELECT ssn AS s FROM users` masks `v.s` as `users.ssn`. A view column that
is an expression has no single source and counts as unresolved.

The system catalogs (pg_catalog, information_schema) are read with the rest: psql's `\\d`,
pg_dump and every ORM's reflection name them in their RowDescriptions, and a relation the
catalog does not hold costs a lookup. Anything else built in at initdb time (an OID below
FirstNormalObjectId that the read did not return) is placed without one: it cannot be a user's
table. A relation the read cannot see (dropped since, or created in a transaction not yet
committed) is placed as one with no named columns, and stays placed across later reads until
a read returns it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from hoopwire.logs import event
from hoopwire.pg import messages as m

log = logging.getLogger("hoopwire.pg.catalog")

__all__ = ["Catalog", "CatalogError", "Source", "view_targets"]

# Source column: (schema, table, column); None where the column is an expression.
Source = Optional[tuple[str, str, str]]

_COLUMNS = (
    "SELECT c.oid::int8, n.nspname, c.relname, c.relkind::text, a.attnum, a.attname, "
    "a.atttypid::int8 FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
    "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND n.nspname NOT LIKE 'pg\\_toast%' "
    "AND n.nspname {} ('pg_catalog', 'information_schema') ORDER BY 1, 5")
# the user's relations, read again whenever the catalog is stale; the system catalogs (about
# 3,000 columns, fixed at initdb) once per database, not at every DDL's reload
_ALL_COLUMNS = _COLUMNS.format("NOT IN")
_SYSTEM_COLUMNS = _COLUMNS.format("IN")

# ev_action for the plain columns' sources, pg_get_viewdef for lineage (hoopwire/pg/lineage.py)
_VIEW_RULES = (
    "SELECT r.ev_class::int8, r.ev_action::text, pg_catalog.pg_get_viewdef(r.ev_class) "
    "FROM pg_catalog.pg_rewrite r "
    "JOIN pg_catalog.pg_class c ON c.oid = r.ev_class "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE r.rulename = '_RETURN' AND c.relkind IN ('v', 'm') "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema')")

# which columns each view's query reads (expressions included): a view that reads a masked
# column through an expression is still a view "over" it
_VIEW_DEPS = (
    "SELECT DISTINCT r.ev_class::int8, d.refobjid::int8, d.refobjsubid FROM pg_catalog.pg_depend d "
    "JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid "
    "WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass "
    "AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjsubid > 0 "
    "AND r.rulename = '_RETURN' AND r.ev_class <> d.refobjid")


# functions not built in: a call to one (by name, whatever its arguments) may read anything
_USER_FUNCTIONS = (
    "SELECT DISTINCT lower(p.proname) FROM pg_catalog.pg_proc p "
    "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')")


# PostgreSQL's FirstNormalObjectId: every OID below it was assigned by initdb
FIRST_NORMAL_OID = 16384


class CatalogError(Exception):
    """The catalog could not be read (side connection refused, lost, or timed out)."""


@dataclass
class Relation:
    oid: int
    schema: str
    name: str
    kind: str                                   # pg_class.relkind
    columns: dict[int, tuple[str, int]] = field(default_factory=dict)  # attnum -> (name, type)
    placeholder: bool = False                   # placed, not read (see Catalog.place)


def _tokens(text: str):
    """Tokens of a pg_node_tree text: braces and parentheses alone, backslash escapes kept."""
    tok = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            tok.append(text[i + 1])
            i += 2
            continue
        if ch in "{}()":
            if tok:
                yield "".join(tok)
                tok = []
            yield ch
        elif ch.isspace():
            if tok:
                yield "".join(tok)
                tok = []
        else:
            tok.append(ch)
        i += 1
    if tok:
        yield "".join(tok)


def view_targets(ev_action: str) -> dict[int, tuple[int, int]]:
    """resno -> (resorigtbl, resorigcol) of the top-level target list of a view's query tree
    (pg_rewrite.ev_action as text). Entries with no single source column are left out."""
    out: dict[int, tuple[int, int]] = {}
    depth = 0               # brace (node) depth
    in_tl = False
    entry: dict[str, str] | None = None
    key = None
    for tok in _tokens(ev_action):
        if tok == "{":
            depth += 1
            if in_tl and depth == 2:
                entry = {}
            continue
        if tok == "}":
            if in_tl and depth == 2 and entry is not None:
                try:
                    resno = int(entry.get(":resno", "0"))
                    tbl = int(entry.get(":resorigtbl", "0"))
                    col = int(entry.get(":resorigcol", "0"))
                except ValueError:
                    resno = tbl = col = 0
                if resno > 0 and tbl and col > 0 and entry.get(":resjunk") != "true":
                    out[resno] = (tbl, col)
                entry = None
            depth -= 1
            if depth == 0:
                break           # only the first query of the rule
            continue
        if tok in "()":
            continue
        if depth == 1 and tok.startswith(":"):
            in_tl = tok == ":targetList"
            continue
        if in_tl and depth == 2 and entry is not None:
            if tok.startswith(":"):
                key = tok
            elif key is not None:
                entry[key] = tok
                key = None
    return out


class Catalog:
    """The catalog of one upstream database, shared by the sessions of one connection."""

    def __init__(self, connect: Callable, *, database: str, ttl: float = 60.0,
                 timeout: float = 10.0, on_load: Callable[["Catalog"], None] | None = None):
        self._connect = connect          # async () -> Upstream (logged in to `database`)
        self.database = database
        self.ttl = ttl
        self.timeout = timeout
        self.on_load = on_load
        self.relations: dict[int, Relation] = {}
        self._views: dict[int, dict[int, tuple[int, int]]] = {}
        self._sources: dict[tuple[int, int], Source] = {}
        self.view_reads: dict[int, set[tuple[int, int]]] = {}   # view -> (relation, attnum) read
        self.loaded_at = 0.0
        self.stale = True
        self.generation = 0
        self.lookups = 0
        # load tickets: a caller that invalidated needs a read that started after it did
        self._asked = 0
        self._answered = 0
        self._up = None
        self._lock = asyncio.Lock()
        self._system: dict[int, Relation] | None = None    # pg_catalog, information_schema
        self.view_defs: dict[int, str] = {}          # view oid -> pg_get_viewdef (lineage)
        self.user_functions: frozenset[str] = frozenset()
        self._lineage_rels: dict = {}

    # -- what sessions ask, without waiting ------------------------------------------------

    def fresh(self) -> bool:
        return not self.stale and time.monotonic() - self.loaded_at < self.ttl

    def knows(self, oid: int) -> bool:
        return oid in self.relations or oid < FIRST_NORMAL_OID

    def place(self, oid: int) -> None:
        """Hold `oid` as a relation without named columns (unresolved), until a read has it."""
        if oid not in self.relations:
            self.relations[oid] = Relation(oid, "", "", "r", placeholder=True)

    def source(self, oid: int, attnum: int) -> Source:
        """The base column behind (oid, attnum), following views; None for an expression.
        Call only for relations this catalog knows (see knows / load)."""
        key = (oid, attnum)
        try:
            return self._sources[key]
        except KeyError:
            pass
        seen = set()
        result: Source = None
        while (oid, attnum) not in seen and len(seen) < 32:
            seen.add((oid, attnum))
            rel = self.relations.get(oid)
            if rel is None:
                break
            if rel.kind in "vm":
                target = self._views.get(oid, {}).get(attnum)
                if target is None:
                    break
                oid, attnum = target
                continue
            col = rel.columns.get(attnum)
            if col is not None:
                result = (rel.schema, rel.name, col[0])
            break
        self._sources[key] = result
        return result

    def relations_named(self, schema: str | None, name: str) -> list[Relation]:
        """Relations a (possibly unqualified) name may denote; names compare case-insensitively
        (the statement's quoting is folded before it reaches here), which can only widen."""
        name = name.lower()
        schema = schema.lower() if schema else None
        return [r for r in self.relations.values()
                if r.name.lower() == name and (schema is None or r.schema.lower() == schema)]

    # -- what lineage (hoopwire/pg/lineage.py) asks ---------------------------------------------

    def lineage_relations(self, schema: str | None, name: str) -> list:
        """Relations a name may denote, as lineage.Rel: columns in order, a user view's
        definition; a relation placed but not read is opaque (what it holds is not known)."""
        key = (schema, name)
        got = self._lineage_rels.get(key)
        if got is None:
            from hoopwire.pg.lineage import Rel
            got = [Rel(r.schema, r.name, [c for _a, (c, _t) in sorted(r.columns.items())],
                       view_sql=self.view_defs.get(r.oid) if r.kind in "vm" else None,
                       opaque=r.placeholder)
                   for r in self.relations_named(schema, name)]
            if len(self._lineage_rels) >= 4096:      # names a client made up: bounded
                self._lineage_rels.clear()
            self._lineage_rels[key] = got
        return got

    def user_function(self, name: str) -> bool:
        return name in self.user_functions

    def invalidate(self) -> None:
        self.stale = True

    def ask(self) -> int:
        """A ticket for a read that starts after now (see load)."""
        self.stale = True
        self._asked += 1
        return self._asked

    # -- reading the catalog ----------------------------------------------------------------

    async def load(self, ticket: int = 0) -> None:
        """Read every relation's columns, every view's target list and what it reads. With a
        ticket (from ask), return only once a read that started after the ticket was taken has
        finished: a read already under way may not see what the caller needs."""
        async with self._lock:
            if self.fresh() and self._answered >= ticket:
                return
            started = self._asked
            if self._system is None:
                self._system = _relations(await self._query(_SYSTEM_COLUMNS))
            rows = await self._query(_ALL_COLUMNS)
            views = await self._query(_VIEW_RULES)
            deps = await self._query(_VIEW_DEPS)
            funcs = await self._query(_USER_FUNCTIONS)
            rels = _relations(rows)
            rels.update(self._system)
            # what was placed and the read still does not return stays placed
            for oid, rel in self.relations.items():
                if rel.placeholder and oid not in rels:
                    rels[oid] = rel
            self.relations = rels
            self._views = {int(o): view_targets(action or "") for o, action, _d in views}
            self.view_defs = {int(o): d for o, _a, d in views if d}
            self.user_functions = frozenset(f for (f,) in funcs if f)
            self._lineage_rels = {}
            self.view_reads = {}
            for v, ref, sub in deps:
                self.view_reads.setdefault(int(v), set()).add((int(ref), int(sub)))
            self._sources = {}
            self.loaded_at = time.monotonic()
            self.stale = False
            self._answered = started
            self.generation += 1
            self.lookups += 1
            event(log, "catalog loaded", logging.DEBUG, database=self.database,
                  relations=len(rels), views=len(self._views))
            if self.on_load is not None:
                self.on_load(self)

    async def _query(self, sql: str) -> list[tuple]:
        """One simple Query on the side connection; the rows as text tuples."""
        for attempt in (1, 2):
            try:
                if self._up is None:
                    self._up = await self._connect()
                return await asyncio.wait_for(self._run(sql), self.timeout)
            except CatalogError:
                raise
            except Exception as e:      # noqa: BLE001 -- a lost side connection is retried once
                self.close()
                if attempt == 2:
                    raise CatalogError(f"cannot read the catalog of {self.database!r}: {e!r}") from None
        raise AssertionError("unreachable")

    async def _run(self, sql: str) -> list[tuple]:
        up = self._up
        up.writer.write(m.message(b"Q", sql.encode() + b"\0"))
        rows, error = [], None
        while True:
            kind, body = await m.read_message(up.reader, max_size=256 * 1024 * 1024)
            if kind == b"D":
                rows.append(_data_row(body))
            elif kind == b"E":
                error = m.parse_fields(body).get("M", "error")
            elif kind == b"Z":
                break
        if error is not None:
            raise CatalogError(f"catalog query failed on {self.database!r}: {error}")
        return rows

    def close(self) -> None:
        """End the side connection (a later read opens a new one). Terminate first, so the
        server's backend leaves at once rather than on noticing the socket closed: DROP
        DATABASE waits only 5 s for other users of the database to go (PostgreSQL's
        CountOtherDBBackends), then fails with 55006."""
        if self._up is not None:
            try:
                self._up.writer.write(b"X\x00\x00\x00\x04")
                self._up.writer.close()
            except Exception:  # noqa: BLE001
                pass
            self._up = None


def _relations(rows) -> dict[int, "Relation"]:
    """Relations from the column rows of a catalog read (oid, schema, name, kind, attnum,
    attname, type)."""
    rels: dict[int, Relation] = {}
    for oid_s, schema, name, kind, attnum, attname, typ in rows:
        oid = int(oid_s)
        rel = rels.get(oid)
        if rel is None:
            rel = rels[oid] = Relation(oid, schema, name, kind)
        rel.columns[int(attnum)] = (attname, int(typ))
    return rels


def _data_row(body: bytes) -> tuple:
    return tuple(None if v is None else v.decode("utf-8", "replace")
                 for v in m.datarow_values(body))
