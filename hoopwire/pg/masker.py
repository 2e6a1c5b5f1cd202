"""Masking of what a PostgreSQL session returns: the Python half of the relay's result tracking.

The relay (hoopwire.pg._wire, ext/hoopwire/pg/_results.pxi) follows every result the upstream sends and asks
this module, once per result set, how its rows are to be rewritten; the rows themselves go
through the RowPlan in Cython. Here:

* RowDescription -> RowPlan: each column's source (table OID, attribute number) is named through
  the Catalog, views followed, and matched against the column rules; other columns go to the
  detectors. A description naming a relation the catalog has not read answers HOLD: the relay
  stops reading the upstream, the catalog is read, and the same message is judged again.
* expressions (`upper(ssn)`, `ssn || ''`) when the statement mentions a masked column, the
  table it lives in or a view over it: column lineage (hoopwire/pg/lineage.py) says what each
  reads -- a masked column: masked; nothing masked: passed as sent; not placeable: by
  unresolved_columns (`detect` leaves them to the detectors, `mask` masks them, `block`
  refuses the result). WriteGuard refuses statements that store a masked value.
* COPY TO STDOUT: the statement names the table and columns, or a query whose plain columns
  are named as its RowDescription would name them and the rest by lineage; text and CSV rows
  are masked line by line; binary COPY is masked like a binary result when the catalog names
  its columns (a table's), and refused when it cannot (or with binary_copy = refuse).
* ErrorResponse / NoticeResponse: while column rules apply, text fields are withheld unless
  their shape is known to carry no data (hoopwire/pg/errortext.py); then, like Notification-
  Response payloads, through the detectors.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import struct
from dataclasses import dataclass
from typing import NamedTuple, Optional

import pglast
import pglast.ast
import pglast.enums

from hoopwire import metrics
from hoopwire._mask import MaskRowError, RowPlan
from hoopwire.pg._wire import HOLD, DataRowPlan, error_response
from hoopwire.pg import messages as m
from hoopwire._sqlnorm import normalize_statements, statement_shape
from hoopwire.logs import event
from hoopwire.masking.engine import MaskEngine, MaskRule
# Columns here carry PostgreSQL type OIDs and format codes; _plan maps them to the masker's
# value kinds (hoopwire.pg.kinds) when it builds the plan.
from hoopwire.pg.kinds import PgColumn as Column, to_column
from hoopwire.masking.strategies import Strategy
from hoopwire.pg.catalog import Catalog, CatalogError
from hoopwire.pg import lineage as lin
from hoopwire.policy.rules import Verdict
from hoopwire.pg.errortext import scrub

log = logging.getLogger("hoopwire.pg.masking")

__all__ = ["ConnectionMasking", "SessionMasker", "StatementInfo", "CopySpec", "parse_copy"]

_STMT_CACHE = 2048
_IDENT = re.compile(rb'[a-z_\x80-\xff][a-z0-9_$\x80-\xff]*|"(?:[^"]|"")*"')
_DDL = (b"CREATE", b"ALTER", b"DROP", b"COMMENT", b"GRANT", b"REVOKE", b"SECURITY", b"IMPORT",
        b"REFRESH", b"SELECT INTO")
_TEXT_FIELDS = frozenset(b"MDHWq")       # message, detail, hint, context, internal query
_UNRESOLVED = "unresolved"
# statements after which a database's catalog connection must be gone (normaliser's full view)
_DB_WORD = re.compile(rb"(?i)database")
_DB_NAME = rb'("(?:[^"]|"")*"|[^\s;"]+)'
_DB_GOING = (re.compile(rb"^drop\s+database\s+(?:if\s+exists\s+)?" + _DB_NAME),
             re.compile(rb"^alter\s+database\s+" + _DB_NAME + rb"\s+rename\b"))
# statements whose rows come from a statement or cursor named earlier, whose text we do not see
_OPAQUE_READS = (b"execute", b"fetch", b"move")
# relations whose rows are copies of any column's values (lineage._OPAQUE_RELS): naming one is a
# mention, or `SELECT most_common_vals FROM pg_stats WHERE tablename = 'users'` would name nothing
_OPAQUE_NAMES = frozenset((b"pg_stats", b"pg_stats_ext", b"pg_stats_ext_exprs", b"pg_statistic",
                           b"pg_statistic_ext_data", b"pg_stat_statements"))


@dataclass(frozen=True)
class CopySpec:
    """What a COPY ... TO STDOUT statement says about the rows it sends."""
    schema: Optional[str] = None            # None with table=None: COPY (query)
    table: Optional[str] = None
    columns: Optional[tuple[str, ...]] = None
    csv: bool = False
    binary: bool = False
    delimiter: Optional[bytes] = None
    null: Optional[bytes] = None
    quote: bytes = b'"'
    escape: Optional[bytes] = None
    header: bool = False


class StatementInfo(NamedTuple):
    """What a statement's text says to masking. A tuple, not a frozen dataclass: one is made per
    statement whose text is new (pgbench's select, a new key each time), and a dataclass's
    __init__ cost 3 us of it, a tuple's 0.6 (Python 3.11, this machine)."""
    mentions: bool                          # names a masked column, its table or a view over it
    copies: tuple[CopySpec, ...] = ()       # COPY TO STDOUT statements, in order
    sql: bytes = b""                        # the text, for lineage (kept when it mentions)
    defines: bool = False                   # DECLARE or PREPARE: rows a later FETCH/EXECUTE gets
    code: bool = False                      # DO, CREATE, ALTER, CLUSTER, WHERE CURRENT OF


NO_INFO = StatementInfo(False)


# --------------------------------------------------------------------------------------------
# COPY statements

_TOKEN = re.compile(rb"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<qid>\"(?:[^\"]|\"\")*\")|"
                    rb"(?P<word>[a-z_\x80-\xff][a-z0-9_$\x80-\xff]*)|(?P<num>[0-9][0-9.]*)|(?P<p>.))", re.S)


def _tokens(text: bytes) -> list[tuple[str, bytes]]:
    out, pos = [], 0
    while pos < len(text):
        mt = _TOKEN.match(text, pos)
        if mt is None or mt.end() == pos:
            break
        pos = mt.end()
        kind = mt.lastgroup
        val = mt.group(kind)
        if kind == "str":
            val = val[1:-1].replace(b"''", b"'")
        elif kind == "qid":
            kind, val = "word", val[1:-1].replace(b'""', b'"')
        out.append((kind, val))
    return out


def parse_copy(stmt_full: bytes) -> Optional[CopySpec]:
    """A COPY ... TO STDOUT statement (hoopwire._sqlnorm full view: lower-cased outside
    literals) -> CopySpec; None for any other statement. A COPY TO STDOUT whose options cannot
    be read comes back as COPY (query) in text format: unresolved, detectors only.

    The result tracking maps the n-th CopyOutResponse of a simple Query to the n-th spec of
    its text, so None is only for a statement that cannot send one (not COPY, COPY FROM, COPY
    TO a file or program): a COPY read wrongly as "not to the client" would shift every COPY
    after it onto the wrong spec. Anything else unreadable is CopySpec() -- unresolved."""
    toks = _tokens(stmt_full)
    if not toks or toks[0] != ("word", b"copy"):
        return None
    i = 1

    def at(k):
        return toks[k] if k < len(toks) else ("", b"")

    binary = False
    if at(i) == ("word", b"binary"):
        binary, i = True, i + 1
    schema = table = None
    columns = None
    if at(i) == ("p", b"("):
        depth = 0
        while i < len(toks):
            if toks[i] == ("p", b"("):
                depth += 1
            elif toks[i] == ("p", b")"):
                depth -= 1
                if depth == 0:
                    break
            i += 1
        i += 1
    else:
        if at(i)[0] != "word":
            return _unreadable_copy(toks)
        # table, schema.table, or database.schema.table: PostgreSQL takes a three-part name
        # when its first part is the current database (`COPY appdb.public.users` reads
        # public.users), and refuses four parts
        parts, i = [at(i)[1].decode("utf-8", "replace")], i + 1
        while at(i) == ("p", b".") and at(i + 1)[0] == "word":
            parts.append(at(i + 1)[1].decode("utf-8", "replace"))
            i += 2
        if len(parts) > 3 or at(i) == ("p", b"."):
            return _unreadable_copy(toks)
        table = parts[-1]
        schema = parts[-2] if len(parts) > 1 else None
        if at(i) == ("p", b"("):
            cols, i = [], i + 1
            while i < len(toks) and at(i) != ("p", b")"):
                if at(i)[0] == "word":
                    cols.append(at(i)[1].decode("utf-8", "replace"))
                i += 1
            columns, i = tuple(cols), i + 1
    if at(i) != ("word", b"to") or at(i + 1) != ("word", b"stdout"):
        return _unreadable_copy(toks)
    i += 2
    opts = {"binary": binary}
    rest = toks[i:]
    if rest and rest[0] == ("word", b"with"):
        rest = rest[1:]
    try:
        if rest and rest[0] == ("p", b"("):
            _new_options(rest[1:], opts)
        else:
            _old_options(rest, opts)
    except (IndexError, ValueError):
        return CopySpec()
    fmt = opts.get("format", b"binary" if opts["binary"] else b"text")
    return CopySpec(schema=schema, table=table, columns=columns, csv=fmt == b"csv",
                    binary=fmt == b"binary", delimiter=opts.get("delimiter"), null=opts.get("null"),
                    quote=opts.get("quote", b'"'), escape=opts.get("escape"),
                    header=opts.get("header", False))


def _unreadable_copy(toks) -> Optional[CopySpec]:
    """A COPY statement parse_copy could not follow: None when it plainly sends nothing to
    the client (FROM, or TO a file or a program), else an unresolved CopySpec()."""
    depth = 0
    for k, t in enumerate(toks):
        if t == ("p", b"("):
            depth += 1
        elif t == ("p", b")"):
            depth -= 1
        elif depth == 0 and t == ("word", b"from"):
            return None
        elif depth == 0 and t == ("word", b"to"):
            nxt = toks[k + 1] if k + 1 < len(toks) else ("", b"")
            if nxt[0] == "str" or nxt == ("word", b"program"):
                return None
    return CopySpec()


def _new_options(toks, opts) -> None:
    i = 0
    while i < len(toks) and toks[i] != ("p", b")"):
        kind, name = toks[i]
        if kind != "word":
            i += 1
            continue
        i += 1
        val = None
        if i < len(toks) and toks[i] not in (("p", b","), ("p", b")")):
            if toks[i] == ("p", b"("):              # force_quote (a, b)
                while i < len(toks) and toks[i] != ("p", b")"):
                    i += 1
                i += 1
            else:
                val = toks[i][1]
                i += 1
        if name == b"format" and val is not None:
            opts["format"] = val
        elif name in (b"delimiter", b"null", b"quote", b"escape") and val is not None:
            opts[name.decode()] = val
        elif name == b"header":
            opts["header"] = val is None or val not in (b"false", b"off", b"0")
        if i < len(toks) and toks[i] == ("p", b","):
            i += 1


def _old_options(toks, opts) -> None:
    i = 0
    while i < len(toks):
        kind, w = toks[i]
        i += 1
        if w == b"binary":
            opts["format"] = b"binary"
        elif w == b"csv":
            opts["format"] = b"csv"
        elif w == b"header":
            opts["header"] = True
        elif w in (b"delimiter", b"null", b"quote", b"escape"):
            if i < len(toks) and toks[i] == ("word", b"as"):
                i += 1
            opts[w.decode()] = toks[i][1]
            i += 1


def _needle(names: frozenset, glob_heads: Optional[list]) -> Optional[re.Pattern]:
    """One pattern found in every statement piece in which `statement`'s identifier loop could
    find a mention, or None when no such pattern exists (a glob with no fixed head).

    An identifier the loop takes is a run of the piece itself, or a quoted identifier whose
    `""` it unescapes: a name is a mention only if the piece holds the name, or the name with
    its quotes doubled, as bytes; an identifier a column glob matches starts with the glob's
    fixed head. So a piece holding none of these holds no mention, and the loop (about
    3 us per statement for pgbench's six identifiers, with regex calls per identifier) is
    skipped by one search in C."""
    if glob_heads is None:
        return None
    words = set(names) | _OPAQUE_NAMES | set(glob_heads)
    words |= {w.replace(b'"', b'""') for w in words if b'"' in w}
    return re.compile(b"|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)))


# --------------------------------------------------------------------------------------------

class ConnectionMasking:
    """The masking of one configured connection: engine, catalogs (one per database), and the
    names whose mention makes an unresolved column suspect."""

    def __init__(self, engine: MaskEngine, *, unresolved: str, binary_copy: str, connect,
                 connection: str, catalog_ttl: float = 60.0, timeout: float = 10.0,
                 masked_writes: str = "refuse"):
        self.engine = engine
        self.masked_writes = masked_writes
        # lineage per normalised statement text (hoopwire/pg/lineage.py), and the raw text's
        # way to it; both dropped on every catalog read (names, columns, views may have moved)
        self._lineage: dict[tuple[str, bytes], Optional[list]] = {}
        self._lineage_raw: dict[tuple[str, bytes], Optional[list]] = {}
        self.unresolved = unresolved
        self.binary_copy = binary_copy
        self.connection = connection
        self._connect = connect                  # async (database) -> Upstream
        self.catalog_ttl = catalog_ttl
        self.timeout = timeout
        self.catalogs: dict[str, Catalog] = {}
        self._names: dict[str, frozenset[bytes]] = {}
        self._stmt_cache: dict[tuple[str, bytes], StatementInfo] = {}
        # (database, statement_shape key) -> (mentions, defines, code): what `statement` reads
        # from a text holds for every text of its shape (literals and integers set aside: no
        # name is in one), so a new key in a known statement costs one lexer pass in C
        self._shape_facts: dict[tuple[str, bytes], tuple[bool, bool, bool]] = {}
        self.has_columns = bool(engine.rules)
        # column-part globs of the rules: an identifier matching one is a mention even when
        # the catalog has not seen the column yet
        self._col_globs = []
        prefixes: list[bytes] | None = []
        for r in engine.rules:
            for g in r.globs:
                col = g.rsplit(".", 1)[-1].lower()
                self._col_globs.append(re.compile(fnmatch.translate(col).encode(), re.S))
                head = re.split(r"[*?\[]", col, maxsplit=1)[0].encode()
                if not head:
                    prefixes = None      # `*.*`: every identifier may be a mention
                elif prefixes is not None:
                    prefixes.append(head)
        self._glob_heads = prefixes
        # per database: one search that finds no identifier of `_names` in a statement, so the
        # per-identifier loop of `statement` runs only where one may be (see _needle)
        self._needles: dict[str, Optional[re.Pattern]] = {}
        self._no_names = _needle(frozenset(), prefixes)
        self.unresolved_rule = MaskRule(-1, _UNRESOLVED, ("*",), Strategy("redact", 0, b"-"))

    @property
    def active(self) -> bool:
        return self.engine.scanner is not None or self.has_columns

    def catalog(self, database: str) -> Catalog:
        cat = self.catalogs.get(database)
        if cat is None:
            cat = self.catalogs[database] = Catalog(
                lambda: self._connect(database), database=database, ttl=self.catalog_ttl,
                timeout=self.timeout, on_load=self._names_from)
        return cat

    def close(self) -> None:
        for c in self.catalogs.values():
            c.close()

    def release(self, database: str) -> None:
        """No session is left on `database`: end its catalog connection (what was read stays,
        so the next session reads only when it is stale). An idle side connection would make a
        client's DROP DATABASE of it fail with 55006."""
        cat = self.catalogs.get(database)
        if cat is not None:
            cat.close()

    def database_statement(self, sql: bytes) -> None:
        """A DROP DATABASE or ALTER DATABASE ... RENAME is about to go upstream: the catalog of
        that name is closed and forgotten first (a database made again under the name has new
        OIDs, which the old read would name wrongly). Names compare without case: closing one
        too many costs a reconnect."""
        if len(sql) > 4096:
            return
        try:
            pieces = normalize_statements(sql, True)
        except Exception:  # noqa: BLE001 -- not ours to judge; the server reads it
            return
        for piece in pieces:
            mt = _DB_GOING[0].match(piece) or _DB_GOING[1].match(piece)
            if mt is None:
                continue
            name = mt.group(1)
            if name[:1] == b'"':
                name = name[1:-1].replace(b'""', b'"')
            low = name.decode("utf-8", "replace").lower()
            for db in [d for d in self.catalogs if d.lower() == low]:
                event(log, "masking catalog closed for a database statement", logging.INFO,
                      connection=self.connection, database=db)
                self.catalogs.pop(db).close()

    def _names_from(self, cat: Catalog) -> None:
        """Identifiers that mention masked data in this database: masked columns, the
        relations holding them, and every view that reads one (through views, to any depth)."""
        rule = self.engine.column_rule
        names: set[bytes] = set()
        masked: set[tuple[int, int]] = set()        # (relation, attnum) holding masked data
        for rel in cat.relations.values():
            for attnum, (col, _typ) in rel.columns.items():
                src = cat.source(rel.oid, attnum)
                if (src is not None and rule(*src) is not None) or \
                        (rel.kind not in "vm" and rule(rel.schema, rel.name, col) is not None):
                    names.add(col.lower().encode())
                    names.add(rel.name.lower().encode())
                    masked.add((rel.oid, attnum))
        sensitive_views: set[int] = set()
        changed = True
        while changed:
            changed = False
            for view, reads in cat.view_reads.items():
                if view in sensitive_views:
                    continue
                if any(r in masked or r[0] in sensitive_views for r in reads):
                    sensitive_views.add(view)
                    changed = True
        for v in sensitive_views:
            rel = cat.relations.get(v)
            if rel is not None:
                names.add(rel.name.lower().encode())
        if names:
            # a user's function may return anything (`SELECT * FROM get_users()` names no
            # column): calling one is a mention, so its unplaceable outputs are masked by
            # unresolved_columns rather than left to the detectors
            names.update(f.encode() for f in cat.user_functions)
        self._names[cat.database] = frozenset(names)
        self._needles[cat.database] = _needle(self._names[cat.database], self._glob_heads)
        self._stmt_cache.clear()
        self._shape_facts.clear()
        self._lineage.clear()
        self._lineage_raw.clear()

    def statement(self, database: str, sql: bytes) -> StatementInfo:
        key = (database, sql)
        info = self._stmt_cache.get(key)
        if info is not None:
            return info
        try:
            shaped = statement_shape(sql, True) if len(sql) <= LINEAGE_MAX else None
        except Exception:  # noqa: BLE001 -- read below, the long way
            shaped = None
        if shaped is not None and not shaped[1]:
            info = NO_INFO                  # blank, or only comments
        elif shaped is not None:
            skey = (database, shaped[0])
            facts = self._shape_facts.get(skey)
            if facts is None:
                # read from the shape's own pieces, so what is cached is the shape's by
                # construction; a COPY's options are read from its text, the long way
                got = self._facts(database, shaped[2])
                if not got[1]:
                    facts = (got[0], got[2], got[3])
                    if len(self._shape_facts) >= _STMT_CACHE:
                        self._shape_facts.clear()
                    self._shape_facts[skey] = facts
            if facts is not None:
                info = self._info(facts[0], (), sql, facts[1], facts[2])
        if info is None:
            try:
                pieces = normalize_statements(sql, True)
            except Exception:  # noqa: BLE001 -- unreadable text: assume the worst
                info = StatementInfo(True)
            else:
                mentions, copies, defines, code = self._facts(database, pieces)
                info = self._info(mentions, copies, sql, defines, code) if pieces else NO_INFO
        if len(self._stmt_cache) >= _STMT_CACHE:
            self._stmt_cache.clear()
        self._stmt_cache[key] = info
        return info

    def _facts(self, database: str, pieces: list) -> tuple[bool, tuple, bool, bool]:
        """(mentions, copies, defines, code) of a text's statements (full views)."""
        names = self._names.get(database, frozenset())
        needle = self._needles.get(database, self._no_names)
        mentions = False
        copies = []
        defines = code = False
        for piece in pieces:
            if piece[:7] in (b"declare", b"prepare"):
                defines = True
            if piece.startswith((b"do ", b"create ", b"alter ", b"cluster")) or \
                    b" current of " in piece:
                code = True
            if not mentions and self.has_columns and (
                    needle is None or needle.search(piece) is not None):
                for mt in _IDENT.finditer(piece):
                    w = mt.group(0)
                    if w[:1] == b'"':
                        w = w[1:-1].replace(b'""', b'"')
                    if w in names or w in _OPAQUE_NAMES or \
                            any(g.match(w) for g in self._col_globs):
                        mentions = True
                        break
            if not mentions and self.has_columns and piece.startswith(_OPAQUE_READS):
                mentions = True      # rows of a statement or cursor declared earlier
            if piece[:4] == b"copy":
                spec = parse_copy(piece)
                if spec is not None:
                    copies.append(spec)
        return mentions, tuple(copies), defines, code

    def _info(self, mentions: bool, copies: tuple, sql: bytes, defines: bool,
              code: bool) -> StatementInfo:
        # the text is kept while column rules apply: lineage reads it, and a result judged
        # after a catalog read asks again whether it mentions masked data (see row_description)
        if mentions or copies or defines or self.has_columns:
            return StatementInfo(mentions, copies, sql if self.has_columns else b"", defines,
                                 code)
        return NO_INFO

    def lineage(self, database: str, sql: bytes) -> Optional[list]:
        """The statements of `sql` with their column lineage (hoopwire/pg/lineage.py), or None
        when the text cannot be read. Cached per normalised text until the catalog's next read:
        a first sight costs a parse (about 100-300 us), a hit one dict lookup."""
        raw = (database, sql)
        try:
            return self._lineage_raw[raw]
        except KeyError:
            pass
        if len(sql) > LINEAGE_MAX:
            return None
        try:
            key = (database, b"\0".join(normalize_statements(sql, False)))
        except Exception:  # noqa: BLE001
            key = raw
        try:
            got = self._lineage[key]
        except KeyError:
            try:
                got = lin.analyze(sql.decode("utf-8", "replace"), self.catalog(database))
            except lin.LineageError:
                got = None
            except Exception:  # noqa: BLE001 -- never a crashed session over lineage
                log.exception("lineage failed")
                got = None
            if len(self._lineage) >= _STMT_CACHE:
                self._lineage.clear()
            self._lineage[key] = got
        if len(self._lineage_raw) >= _STMT_CACHE:
            self._lineage_raw.clear()
        self._lineage_raw[raw] = got
        return got

    def masked_source(self, sources) -> Optional[tuple[str, str, str]]:
        """The source among `sources` whose rule masks the most (null, redact, hash, format,
        partial; the first configured among equals), or None when none is masked."""
        rule = self.engine.column_rule
        best, rank = None, None
        for src in sources:
            if src is lin.UNKNOWN:
                continue
            r = rule(*src)
            if r is None:
                continue
            k = (_STRICT.get(r.strategy.name, 9), r.index)
            if rank is None or k < rank:
                best, rank = src, k
        return best


# the type of a binary COPY column the catalog does not name: not a string (kinds.column_kind)
_UNTYPED = -1
# how much of a value a strategy lets through, least first (for an output reading several)
_STRICT = {"null": 0, "redact": 1, "hash": 2, "format": 3, "partial": 4}
# Longest text lineage reads: parsing runs on the event loop, about 15 us per node of the tree
# (a 30 KiB `SELECT 1+1+...+1` takes 250 ms, a 1.6 MB INSERT 800 ms). Longer texts are not
# placeable: plain columns still take their RowDescription source, and a write is judged by
# its words (see write_verdict).
LINEAGE_MAX = 32 * 1024
_STORE_CALLS = re.compile(rb"\b(?:set_config|lo_from_bytea|lo_put|lowrite|pg_notify|"
                          rb"pg_logical_emit_message|dblink\w*)\b")
_SELECT_STORES = re.compile(rb"\binto\b")
_INSERT_COPIES = re.compile(rb"\b(?:select|returning|update)\b")
_NAMED_MAX = 512                           # cursors and prepared statements remembered


class SessionMasker:
    """Per session: called by the relay's result tracking (ext/hoopwire/pg/_results.pxi)."""

    def __init__(self, conn: ConnectionMasking, database: str):
        self.conn = conn
        self.database = database
        self.catalog = conn.catalog(database)
        self.relay = None                 # set by the session once the relay exists
        self.marker_prefix: Optional[bytes] = None     # the gateway's, set with relay
        self._task: asyncio.Task | None = None
        self._wanted: set[int] = set()     # relations the held result waits for
        self._again = False                # a hold came in: the lookup task goes round again
        self._failure: str | None = None   # why the catalog could not be read (see _refusal)
        self.masked_total = 0
        # prepared statement name -> what EXECUTE of it may return: lineages of SQL PREPAREs
        # (see _define), or the text of a protocol Parse the server took (see parsed); and
        # cursor name -> the lineages of its DECLAREs, for FETCH. Two namespaces, as the
        # server has them: DEALLOCATE ALL closes no cursor.
        self._named: dict[str, list] = {}
        self._cursors: dict[str, list] = {}
        self._described: dict[bytes, _Shape] = {}   # RowDescription bytes -> _Shape

    def rebind(self, conn: Optional[ConnectionMasking]) -> None:
        """A reload changed the connection's masking: from the next result on, use it. A reload
        that removes masking leaves an open session masking by its last rules: relaxing a
        running session is not worth the risk of a half-followed result."""
        if conn is None:
            return
        self.conn = conn
        self.catalog = conn.catalog(self.database)

    @property
    def engine(self) -> MaskEngine:
        """The connection's engine, counting characters as the session's client encoding does
        (the server's last report): `partial` keeps `keep` of the client's characters."""
        relay = self.relay
        return self.conn.engine.for_encoding(relay.client_encoding if relay is not None else None)

    # -- statements ---------------------------------------------------------------------------

    def statement(self, sql: bytes) -> StatementInfo:
        info = self.conn.statement(self.database, sql)
        if info.defines and self.conn.has_columns:
            self._define(sql)
        return info

    def _define(self, sql: bytes) -> None:
        """Remember what a DECLARE or PREPARE will return. Taken when the client sends it, not
        when the server accepts it, so a name keeps every lineage it was given (up to four),
        and a FETCH is judged by all of them: a failed DECLARE cannot unmask a cursor."""
        stmts = self.conn.lineage(self.database, sql)
        for st in stmts or ():
            if st.kind == "declare":
                book = self._cursors
            elif st.kind == "prepare":
                book = self._named
            else:
                continue
            known = book.setdefault(st.name, [])
            if st.outputs not in known:
                known.append(st.outputs)
                del known[:-4]
            if len(book) > _NAMED_MAX:
                book.pop(next(iter(book)))

    def _fetched(self, name: str) -> list:
        """The lineages FETCH from cursor `name` may have: its DECLAREs', taken when sent. A
        DECLARE over a table the session made before the catalog read it places nothing, and
        every column of its FETCH is masked. Placing it again at FETCH, on a later catalog
        read, leaked: a cursor keeps the plan of its DECLARE, while the read sees what another
        session changed since (a view replaced after DECLARE ... WITH HOLD gave its old
        column, ssn, in clear: tests/test_redteam_session5.py). Over-masking is the safe
        error; holding such a DECLARE until the catalog has read the session's DDL (as
        MySQL's pending_read does) is the fix that keeps the columns."""
        return self._cursors.get(name) or [None]

    def parsed(self, name: bytes, sql: bytes) -> None:
        """The server's ParseComplete for the named statement `name` (the relay calls this once
        per named Parse, never on Bind or Execute): SQL EXECUTE of it returns what `sql` does.
        Unlike a PREPARE's lineage, taken when sent, this is the server's answer, and a Parse
        of a name that exists fails (42P05): the name was free and now holds this text alone,
        so it replaces what the name had. The text is kept, not its lineage: EXECUTE's result
        is judged on the catalog as read for it (a Parse may come before the first read)."""
        if not self.conn.has_columns:
            return
        key = name.decode("utf-8", "replace")
        self._named.pop(key, None)
        # a name that is no UTF-8 (LATIN1 is a safe client encoding) reads as U+FFFD here and
        # in EXECUTE's text alike: b"\xe9" and b"\xe8" share a key, and the second Parse
        # replaced what EXECUTE "\xe9" was judged by (its upper(ssn) came back clear). Such
        # a name is not known: masked
        self._named[key] = [None if "\ufffd" in key else sql]
        if len(self._named) > _NAMED_MAX:
            self._named.pop(next(iter(self._named)))

    def closed(self, name: bytes) -> None:
        """CloseComplete of the named statement `name`: EXECUTE of it no longer runs anything."""
        self._named.pop(name.decode("utf-8", "replace"), None)

    def _deallocated(self, tag: bytes, sql: Optional[bytes]) -> None:
        """DEALLOCATE or DISCARD ALL answered: the names it closed are forgotten. The text's
        statements are replayed in order, so a PREPARE after the DEALLOCATE in the same Query
        (its lineage taken when sent) stands. At the text's first such answer the later ones
        count as done too; a PREPARE sent in a later Query before this answer is forgotten with
        the name: EXECUTE of a name not known is judged unknown (masked by default), the safe
        side, for an odd client."""
        if tag.startswith(b"DISCARD") and tag != b"DISCARD ALL":
            return                  # PLANS, SEQUENCES, TEMP: no name closes
        nodes = None
        if sql is not None and len(sql) <= LINEAGE_MAX:
            try:
                nodes = [s.stmt for s in pglast.parse_sql(sql.decode("utf-8", "replace"))]
            except Exception:  # noqa: BLE001 -- the server read it; see below
                nodes = None
        if nodes is None:           # not known or not readable: every name it may have closed
            self._named.clear()
            if tag == b"DISCARD ALL":
                self._cursors.clear()
            return
        stmts = self.conn.lineage(self.database, sql)
        if stmts is None or len(stmts) != len(nodes):
            stmts = [None] * len(nodes)
        for node, st in zip(nodes, stmts):
            if isinstance(node, pglast.ast.DeallocateStmt):
                if node.isall or not node.name:
                    self._named.clear()
                else:
                    self._named.pop(node.name, None)
            elif isinstance(node, pglast.ast.DiscardStmt) and \
                    node.target == pglast.enums.DiscardMode.DISCARD_ALL:
                self._named.clear()
                self._cursors.clear()
            elif st is not None and st.kind == "prepare":
                known = self._named.setdefault(st.name, [])
                if st.outputs not in known:
                    known.append(st.outputs)
                    del known[:-4]

    def _lineage_columns(self, info: StatementInfo, n: int, copy: bool = False,
                         names: Optional[list] = None):
        """Per column of an n-column result of `info`'s text, the sources it reads (a frozenset,
        lineage.UNKNOWN among them when not placeable); None when no statement of the text
        fits. A text of several statements: every statement whose shape fits n columns is a
        candidate, and a column reads what it reads in any of them."""
        if not info.sql:
            return None
        stmts = self.conn.lineage(self.database, info.sql)
        if stmts is None:
            return None
        shapes = list(self._shapes(stmts, n, copy))
        if names is not None and len(shapes) > 1:
            # several statements of one Query fit: drop those whose every output name is fixed
            # by the text and is not the RowDescription's (`SELECT name ...; SELECT ssn ...`)
            named = [(st, f) for st, f in shapes
                     if st.names is None or len(st.names) != n or
                     all(a is None or a == b for a, b in zip(st.names, names))]
            if named:
                shapes = named
        if not shapes:
            return None
        return [frozenset().union(*(f[i] for _st, f in shapes)) for i in range(n)]

    def _reads_relations(self, info: StatementInfo, n: int) -> bool:
        """Whether an n-column result of `info`'s text may read any relation (by lineage on
        the catalog as it is): `SELECT 1` does not, and goes on while the catalog is stale and
        cannot be read."""
        sources = self._lineage_columns(info, n)
        return sources is None or any(sources)

    def _shapes(self, stmts, n: int, copy: bool):
        """(statement, fitted outputs) of the plain row statements of a text (see above)."""
        for st in stmts:
            if (st.kind == "copy") if copy else (st.kind == "rows"):
                f = _fit(st.outputs, n)
                if f is not None:
                    yield st, f
            elif not copy and st.kind in ("fetch", "execute"):
                for outs in self._fetched(st.name) if st.kind == "fetch" else \
                        self._named.get(st.name) or [None]:
                    if isinstance(outs, bytes):
                        outs = self._parsed_outputs(outs)
                    f = _fit(outs, n)
                    if f is not None:
                        yield lin.Statement("rows", outs), f

    def _parsed_outputs(self, sql: bytes) -> Optional[list]:
        """What a protocol Parse's text returns (its lineage's outputs), None: not known."""
        stmts = self.conn.lineage(self.database, sql)
        if not stmts or len(stmts) != 1 or stmts[0].kind != "rows":
            return None
        return stmts[0].outputs

    def _by_lineage(self, cols: list, info: StatementInfo, copy: bool = False,
                    names: Optional[list] = None):
        """Columns as lineage names them. A column whose RowDescription source is masked keeps
        it (the fast path); else lineage decides: reading a masked column -> that column's
        rule (the strictest of several), fully placed and reading none -> a named no-rule
        source (passed as sent, detectors aside), unplaceable -> unresolved. Returns (cols,
        any unplaceable, whether computed values must be redacted)."""
        rule = self.conn.engine.column_rule
        sources = self._lineage_columns(info, len(cols), copy, names)
        if sources is None:
            return cols, any(c.column is None for c in cols), False
        out, unplaced, redact = [], False, False
        for c, srcs in zip(cols, sources):
            if c.column is not None and rule(c.schema or "", c.table or "", c.column) is not None:
                out.append(c)
                continue
            masked = self.conn.masked_source(srcs)
            if masked is not None:
                if rule(*masked).strategy.name in ("null", "redact"):
                    out.append(Column(masked[0], masked[1], masked[2], c.type_oid, c.format))
                else:
                    # a value computed from the column under a strategy that keeps part of it
                    # (partial, hash, format) would be an oracle: `substr(ssn, k, 4)` shows any
                    # four characters, a hash of one character is a ten-entry codebook
                    out.append(Column(None, None, None, c.type_oid, c.format))
                    redact = True
            elif lin.UNKNOWN in srcs:
                out.append(Column(None, None, None, c.type_oid, c.format))
                unplaced = True
            elif c.column is not None:
                out.append(c)
            else:
                out.append(Column("", "", "", c.type_oid, c.format))    # placed: no rule
        return out, unplaced, redact

    def write_verdict(self, sql: bytes):
        """A Verdict refusing a statement that stores a masked value where the session can
        read it back (masked_writes = "refuse"), or None."""
        info = self.conn.statement(self.database, sql)
        if not info.mentions and not info.code:
            return None
        stmts = self.conn.lineage(self.database, sql)
        if stmts is None and len(sql) > LINEAGE_MAX:
            # too long to read: a bulk INSERT ... VALUES of literals, or a SELECT that calls
            # no store function and has no INTO, goes on; anything else is refused
            try:
                pieces = normalize_statements(sql, False)
            except Exception:  # noqa: BLE001
                pieces = [b"?"]
            if not all(_STORE_CALLS.search(p) is None and (
                    p.startswith((b"select", b"values", b"table")) and
                    _SELECT_STORES.search(p) is None or
                    p.startswith(b"insert") and _INSERT_COPIES.search(p) is None)
                    for p in pieces):
                return self._refuse_write("a statement too long for the gateway to follow "
                                          f"({len(sql)} bytes, over {LINEAGE_MAX})")
            return None
        for st in stmts or ():
            for target, sources in st.writes:
                sources = self._cursor_sources(sources)
                if lin.CODE in sources:
                    return self._refuse_write(
                        "anything: a DO block, function, procedure, trigger or rule runs code "
                        "the gateway cannot follow, CLUSTER orders rows by an index, a schema "
                        "renamed moves tables away from the names rules match", "code")
                masked = self.conn.masked_source(sources)
                if masked is None or (target is not None and self._target_masked(target)):
                    continue
                return self._refuse_write(f"the masked column {'.'.join(masked)}")
        return None

    def _cursor_sources(self, sources):
        """`WHERE CURRENT OF c` reads what chose c's rows: every output of every DECLARE the
        session sent for c (a cursor it did not see declared -- a function's -- reads
        anything)."""
        if not any(s[1] == lin.CURSOR for s in sources):
            return sources
        out = set(sources)
        for src in sources:
            if src[1] != lin.CURSOR:
                continue
            out.discard(src)
            known = self._cursors.get(src[2])
            if not known or any(o is None for o in known):
                out.add(lin.CODE)
                continue
            for outs in known:
                for o in outs:
                    out |= o.sources if isinstance(o, lin.Spread) else o
        return frozenset(out)

    def _refuse_write(self, what: str, kind: str = "value"):
        event(log, "masked write refused", logging.WARNING, connection=self.conn.connection,
              database=self.database, reads=what)
        metrics.MASK_REFUSED.labels(self.conn.connection).inc()
        if kind == "code":
            msg = f"it may store {what} (masked_writes = \"refuse\" while column rules apply)"
        elif kind == "unread":
            msg = f"{what} (masked_writes = \"refuse\"; the gateway's log says why)"
        else:
            msg = (f"it stores a value read from {what} where it could be read back unmasked "
                   "(a filter that chooses the rows a write touches counts; writes into a "
                   "column masked whole as well are allowed)")
        return Verdict(action="block", rule="masked-write", matched=("masked-write",),
                       message=msg)

    def _target_masked(self, target) -> bool:
        """The target column is masked whole (null, redact): whatever is stored there reads
        back as `****`. A rule that keeps part of the value (partial, hash, format) does not
        count: `UPDATE users SET ssn = substr(ssn, 1, 5)` in a transaction shows two other
        characters under partial(keep=2), `SET ssn = CASE WHEN ssn LIKE '1%' ...` a codebook
        under hash."""
        schema, table, col = target
        rule = self.conn.engine.column_rule

        def whole(r) -> bool:
            return r is not None and r.strategy.name in ("null", "redact")
        if schema:
            return whole(rule(schema, table, col))
        rels = self.catalog.relations_named(None, table)
        return bool(rels) and all(whole(rule(r.schema, r.name, col)) for r in rels)

    def command_complete(self, tag: bytes, sql: Optional[bytes] = None) -> None:
        """CommandComplete of DDL, DEALLOCATE or DISCARD (the relay calls for these tags, and
        DECLARE's, only); `sql`: the text it answers, when known."""
        if tag.startswith(_DDL):
            self.catalog.invalidate()
        elif tag.startswith((b"DEALLOCATE", b"DISCARD")):
            self._deallocated(tag, sql)

    # -- result sets ---------------------------------------------------------------------------

    def row_description(self, msg: bytes, info: StatementInfo):
        """RowPlan for the rows that follow, HOLD (catalog being read), or an ErrorResponse
        (bytes) refusing the result."""
        shape = self._described.get(msg)
        if shape is None:
            fields = _row_description(msg)
            if fields is None:
                raise MaskRowError("malformed RowDescription from the upstream")
            shape = _Shape(fields)
            if len(self._described) >= _SHAPES:
                self._described.clear()
            self._described[msg] = shape
        if self._failure is not None:
            return self._refusal()
        fields = shape.fields
        oids = shape.oids
        # a result that names no relation, of a statement that mentions nothing masked, needs
        # no catalog (`SELECT 1` goes on while the catalog cannot be read) -- unless a DDL
        # statement made it stale and the result has expressions: `CREATE OR REPLACE VIEW v AS
        # SELECT ssn AS x ...` then `SELECT upper(x) FROM v` is judged by the new definition
        has_expr = shape.has_expr and self.conn.has_columns
        if oids or info.mentions or (
                has_expr and self.catalog.stale and self._reads_relations(info, len(fields))):
            cat = self.catalog
            # every relation of this RowDescription was known at this catalog generation (a
            # read replaces the relations and moves the generation on): only freshness to ask
            if shape.known_cat is not cat or shape.known_gen != cat.generation or \
                    not cat.fresh():
                need = self._need(oids)
                if need is not None:
                    return self._hold(need)
                shape.known_cat, shape.known_gen = cat, cat.generation
        if not has_expr and not info.mentions:
            # Every column is a table's own (or there are no column rules) and the statement
            # names nothing masked: the plan follows from the RowDescription, the catalog's
            # generation and the client encoding alone, so a statement shape seen before
            # (pgbench's select with a new literal each time) reuses it. Building it cost
            # about a third of what a mask rule added per transaction (bench/README.md).
            relay = self.relay
            cat = self.catalog
            key = (cat, cat.generation, self.conn,
                   relay.client_encoding if relay is not None else None)
            if shape.plan_key == key:
                return shape.plan
            plan = self._plain_plan(fields)
            if not isinstance(plan, bytes):
                shape.plan_key, shape.plan = key, plan
            return plan
        if has_expr and not info.mentions and info.sql:
            info = self.conn.statement(self.database, info.sql)     # names as last read
        return self._judged_plan(fields, info)

    def _plain_plan(self, fields):
        return self._judged_plan(fields, NO_INFO)

    def _judged_plan(self, fields, info: StatementInfo):
        cols, unresolved = [], False
        for _name, oid, attnum, typ, fmt in fields:
            src = self.catalog.source(oid, attnum) if oid else None
            if src is None:
                unresolved = True
                cols.append(Column(None, None, None, typ, fmt))
            else:
                cols.append(Column(src[0], src[1], src[2], typ, fmt))
        redact = False
        if info.mentions and self.conn.has_columns:
            cols, unresolved, redact = self._by_lineage(
                cols, info, names=[f[0].decode("utf-8", "replace") for f in fields])
        return self._plan(cols, unresolved and info.mentions, "result", redact=redact)

    def copy_out(self, msg: bytes, spec: Optional[CopySpec], info: StatementInfo):
        """The masker for a COPY TO STDOUT's rows (None: pass them as they are), HOLD, or an
        ErrorResponse refusing it."""
        if len(msg) < 8:
            raise MaskRowError("malformed CopyOutResponse from the upstream")
        overall = msg[5]
        ncols = struct.unpack_from("!h", msg, 6)[0]
        if spec is None:
            spec = CopySpec(binary=overall == 1)
        redact = False
        cols: list[Column] = []
        unresolved = spec.table is None
        if self._failure is not None:
            return self._refusal()
        if spec.table is not None:
            if not self.catalog.fresh():
                return self._hold(set())
            cands = self.catalog.relations_named(spec.schema, spec.table)
            cols = self._copy_columns(cands, spec, ncols)
        if not cols:
            cols = [Column(None, None, None, 0, 0)] * ncols
            unresolved = True
            if spec.table is None and overall != 1 and info.mentions and self.conn.has_columns:
                if not self.catalog.fresh():
                    return self._hold(set())
                # COPY (query) has no RowDescription: the plain columns the server would name
                # in one come from the query's text, so `COPY (SELECT id, ssn FROM users)`
                # keeps ssn's own rule (partial) as `SELECT id, ssn FROM users` does, instead
                # of the `****` lineage gives a value it cannot tell from `substr(ssn, 1, 6)`
                cols = self._copy_origins(info, ncols) or cols
                cols, unresolved, redact = self._by_lineage(cols, info, copy=True)  # (query)
        if overall == 1:
            if self.conn.binary_copy == "refuse":
                self._log_refused("binary COPY")
                return error_response("ERROR", "42501", "binary COPY is not allowed through "
                                      "the gateway while masking applies (use text or CSV format)")
            # Binary values carry no type on the wire: a column the catalog names has its
            # type, so it is masked as a binary result's column is (its rule, or the
            # detectors over text-like values); a column it cannot name is passed only when
            # a whole-value rule covers it (unresolved_columns = "mask" and the statement
            # mentions masked data). Anything else is refused, never passed unread.
            suspect = unresolved and info.mentions
            if unresolved and not (suspect and self.conn.unresolved == "mask"):
                self._log_refused("binary COPY of unnamed columns")
                metrics.MASK_REFUSED.labels(self.conn.connection).inc()
                return error_response(
                    "ERROR", "42501", "binary COPY of columns the gateway cannot name is not "
                    "allowed while masking applies",
                    hint="use FORMAT text or csv, or COPY table (columns) TO STDOUT")
            # a column the gateway cannot name has no type either (COPY sends none): masked
            # whole it becomes NULL, valid in every type -- `****` as an int4 read 707406378,
            # and an int8 reader fails on its 4 bytes
            plan = self._plan([c._replace(format=1, type_oid=c.type_oid or _UNTYPED)
                               for c in cols], suspect, "COPY")
            return None if isinstance(plan, RowPlan) and plan.passthrough else \
                plan if isinstance(plan, bytes) else _BinaryCopy(plan, self)
        plan = self._plan([Column(c.schema, c.table, c.column, 0, 0) for c in cols],
                          unresolved and info.mentions, "COPY", redact=redact)
        if isinstance(plan, bytes) or plan.passthrough:
            return None if not isinstance(plan, bytes) else plan
        return _TextCopy(plan, spec, self)

    def _copy_origins(self, info: StatementInfo, ncols: int) -> Optional[list[Column]]:
        """Columns of an ncols-wide COPY (query) TO STDOUT named as a RowDescription of the
        query would name them: a plain column of a table, or of a view followed to its base
        column (Catalog.source), keeps that column; anything else (an expression, a column
        this cannot follow) is Column(None) and left to lineage. With several COPY (query) of
        that width in one text, a position keeps a column only where every one of them names
        one (the strictest rule among them). None: no position named."""
        if len(info.sql) > LINEAGE_MAX:
            return None                 # not read on the event loop (see LINEAGE_MAX)
        try:
            raws = pglast.parse_sql(info.sql.decode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 -- unreadable: lineage decides alone
            return None
        found: Optional[list] = None
        for raw in raws:
            st = raw.stmt
            if not isinstance(st, pglast.ast.CopyStmt) or st.is_from or st.query is None or \
                    st.filename is not None or st.is_program:
                continue
            try:
                outs = _query_origins(st.query, self.catalog)
            except Exception:  # noqa: BLE001 -- a shape not foreseen: lineage decides alone
                outs = None
            if outs is None:
                found = [None] * ncols          # its width is not known: it may be this one
                continue
            if len(outs) != ncols:
                continue
            found = outs if found is None else [
                a | b if a is not None and b is not None else None for a, b in zip(found, outs)]
        if not found or all(o is None for o in found):
            return None
        cols = []
        for srcs in found:
            if srcs is None:
                cols.append(Column(None, None, None, 0, 0))
                continue
            src = self.conn.masked_source(srcs) or min(srcs)
            cols.append(Column(src[0], src[1], src[2], 0, 0))
        return cols

    def _copy_columns(self, cands, spec: CopySpec, ncols: int) -> list[Column]:
        """Columns of COPY table [(cols)]. A name given without a schema may denote several
        tables (the session's search_path is not known here): each position takes a
        candidate's masked column wherever one has it -- over-masking is the safe error."""
        rule = self.conn.engine.column_rule
        best: list[Column] | None = None
        for rel in cands:
            if spec.columns is not None:
                byname = {c.lower(): (c, t) for c, t in rel.columns.values()}
                seq = [byname.get(c.lower()) for c in spec.columns]
                if any(x is None for x in seq):
                    continue
            else:
                seq = [rel.columns[a] for a in sorted(rel.columns)]
            if len(seq) != ncols:
                continue
            cols = [Column(rel.schema, rel.name, c, t, 0) for c, t in seq]
            if best is None:
                best = cols
            else:
                best = [n if rule(n.schema, n.table, n.column) is not None
                        and rule(b.schema, b.table, b.column) is None else b
                        for b, n in zip(best, cols)]
        return best or []

    def _plan(self, cols: list[Column], suspect: bool, what: str, detectors: bool = True,
              redact: bool = False):
        conn = self.conn
        unresolved_rule = None
        if suspect and conn.unresolved == "block":
            self._log_refused(what)
            metrics.MASK_REFUSED.labels(conn.connection).inc()
            return error_response(
                "ERROR", "42501",
                "result refused by hoopwire: it reads a masked column through an expression",
                hint="select the column itself (it is returned masked) or ask for "
                     "unresolved_columns = \"mask\" on this connection")
        if (suspect and conn.unresolved == "mask") or redact:
            # redact: lineage found a value computed from a masked column (see _by_lineage)
            unresolved_rule = conn.unresolved_rule
        # binary COPY (detectors=False): values are typed binary; only column rules apply
        return self.engine.row_plan([to_column(c) for c in cols], unresolved_rule=unresolved_rule,
                                    detect=detectors, plan_type=DataRowPlan)

    def _log_refused(self, what: str) -> None:
        event(log, "result refused by masking", logging.WARNING, connection=self.conn.connection,
              database=self.database, what=what, policy=self.conn.unresolved)

    def result_done(self, plan) -> int:
        """Count what a finished result masked (metrics); the number of masked values."""
        counts = plan.take_counts()
        total = 0
        if counts:
            conn = self.conn.connection
            for name, n in counts.items():
                if name.startswith("column:"):
                    metrics.MASKED_VALUES.labels(conn, "column", name[7:]).inc(n)
                else:
                    metrics.MASKED_VALUES.labels(conn, "detector", name).inc(n)
                self.masked_total += n
                total += n
        return total

    # -- free text ------------------------------------------------------------------------------

    def fields(self, msg: bytes, sql: Optional[bytes] = None):
        """ErrorResponse / NoticeResponse answering the statement `sql` (None: not known):
        the message with its text fields masked, or None when nothing changed.

        While column rules apply, the text is scrubbed first (hoopwire/pg/errortext.py): a
        message whose shape is not known to carry no data becomes a generic text with its
        SQLSTATE; detail, hint, context and internal query go unless their shape is known.
        Then the detectors run over what is left."""
        parts = msg[5:].split(b"\0")
        by = {p[:1]: p[1:] for p in parts if p}
        prefix = self.marker_prefix
        if prefix is not None and prefix in msg and _marker_error(by, prefix):
            # the server's answer to the marker statement a blocked statement was replaced by:
            # the relay puts the gateway's own error in its place (Relay._rewrite_error), and
            # it quotes nothing but the marker -- no server text to withhold or to count
            return None
        changed = False
        if self.conn.has_columns:
            kept = scrub(msg[:1], by, sql)
            if kept != by:
                changed = True
                metrics.MASKED_VALUES.labels(self.conn.connection, "column",
                                             "error-text").inc()
                order = dict.fromkeys([p[:1] for p in parts if p] + list(kept))
                parts = [k + kept[k] for k in order if k in kept]
        engine = self.engine         # once per message: it depends on the client encoding
        out = []
        for p in parts:
            if not p:
                continue
            code, value = p[:1], p[1:]
            if code[0] in _TEXT_FIELDS and engine.scanner is not None:
                nv, counts = engine.mask_text(value)
                if nv is not value and nv != value:
                    value, changed = nv.replace(b"\0", b" "), True
                    self._count(counts)
            out.append(code + value)
        if not changed:
            return None
        body = b"\0".join(out) + b"\0\0"
        return m.message(msg[:1], body)

    def notification(self, msg: bytes):
        """NotificationResponse: the payload through the detectors, or None."""
        engine = self.engine
        if engine.scanner is None:
            return None
        body = msg[5:]
        if len(body) < 6:
            return None
        chan_end = body.find(b"\0", 4)
        pay_end = body.find(b"\0", chan_end + 1)
        if chan_end < 0 or pay_end < 0:
            return None
        payload = body[chan_end + 1:pay_end]
        new, counts = engine.mask_text(payload)
        if new is payload or new == payload:
            return None
        self._count(counts)
        body = body[:chan_end + 1] + new.replace(b"\0", b" ") + b"\0"
        return m.message(b"A", body)

    def _count(self, counts: dict) -> None:
        for name, n in counts.items():
            metrics.MASKED_VALUES.labels(self.conn.connection, "detector", name).inc(n)
            self.masked_total += n

    # -- catalog --------------------------------------------------------------------------------

    def _need(self, oids) -> Optional[set[int]]:
        """The relations the catalog must read first, or None when it can answer now."""
        cat = self.catalog
        if not cat.fresh():
            return set(oids)
        missing = {o for o in oids if not cat.knows(o)}
        return missing or None

    def _hold(self, oids: set[int]):
        """HOLD the result until the catalog has `oids`. One lookup task per session: a hold
        that comes while it runs -- the relay judging the next result inside the resume that
        ended the last wait -- is taken by the same task's next round, never left waiting."""
        self._wanted |= oids
        self._again = True
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._lookups())
        return HOLD

    async def _lookups(self) -> None:
        try:
            while self._again:
                self._again = False
                oids, self._wanted = self._wanted, set()
                try:
                    # the whole wait has one bound: the side connection's connect and its
                    # three reads each have connect_timeout, and a read by another session
                    # may be under way on the same lock
                    await asyncio.wait_for(self._place(oids), self.conn.timeout * 4)
                except (CatalogError, asyncio.TimeoutError) as e:
                    reason = str(e) or f"no answer within {self.conn.timeout * 4:g} s"
                    event(log, "masking catalog unavailable", logging.ERROR,
                          connection=self.conn.connection, database=self.database,
                          error=reason)
                    # the held result is refused when it is judged again; the session goes on
                    self._failure = reason
                if self.relay is None or self.relay.is_closed:
                    return
                self.relay.resume_upstream()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("masking catalog lookup failed")
            if self.relay is not None:
                self.relay.shutdown("internal_error", error_response(
                    "FATAL", "XX000", "internal error in the gateway"))
        finally:
            self._task = None

    async def _place(self, oids: set[int]) -> None:
        cat = self.catalog
        # a relation newer than the last read (or a read past its ttl): a read that starts
        # after this moment, not one that may have started before the relation existed
        ticket = cat.ask() if any(o not in cat.relations for o in oids) or not cat.fresh() \
            else 0
        await cat.load(ticket)
        for o in oids:
            # gone between the result and the read (dropped, or created in a transaction the
            # side connection cannot see yet): placed with no named columns -> unresolved
            cat.place(o)

    def _refusal(self):
        """The error that refuses a result the catalog could not be read for, once."""
        self._failure = None          # logged with its reason when it happened
        metrics.MASK_REFUSED.labels(self.conn.connection).inc()
        return error_response(
            "ERROR", "58000", "result withheld by hoopwire: the catalog it masks results by "
            "could not be read (the gateway's log says why)",
            hint="the statement ran on the server; retry it once the gateway can read the "
                 "catalog again")


class _TextCopy:
    """COPY TO STDOUT in text or CSV format: one CopyData per row (the server sends them so)."""

    __slots__ = ("plan", "spec", "masker", "header")

    def __init__(self, plan: RowPlan, spec: CopySpec, masker: SessionMasker):
        self.plan, self.spec, self.masker = plan, spec, masker
        self.header = spec.header and spec.csv

    def data(self, msg: bytes):
        if self.header:
            self.header = False      # the column names line
            return None
        s = self.spec
        line = msg[5:]
        new = self.plan.mask_copy_line(line, s.csv, s.delimiter, s.null, s.quote, s.escape)
        if new is line:
            return None
        return m.copy_data(new)

    def done(self) -> int:
        return self.masker.result_done(self.plan)


class _BinaryCopy:
    """Binary COPY: a signature header, then per row int16 count + (int32 length, bytes)
    values -- the body of a DataRow -- and an int16 -1 trailer."""

    __slots__ = ("plan", "masker", "started")

    SIGNATURE = b"PGCOPY\n\xff\r\n\x00"

    def __init__(self, plan: RowPlan, masker: SessionMasker):
        self.plan, self.masker, self.started = plan, masker, False

    def data(self, msg: bytes):
        body = msg[5:]
        head = b""
        if not self.started:
            self.started = True
            if not body.startswith(self.SIGNATURE) or len(body) < 19:
                raise MaskRowError("binary COPY data without its signature")
            ext = struct.unpack_from("!I", body, 15)[0]
            cut = 19 + ext
            head, body = body[:cut], body[cut:]
        if not body or body == b"\xff\xff":
            return None
        new = self.plan.rewrite(m.data_row_body(body))
        if new is None:
            return None
        body = head + new[5:]
        return m.copy_data(body)

    def done(self) -> int:
        return self.masker.result_done(self.plan)


class _Origins:
    """One FROM item of a COPY (query) as _query_origins sees it: its visible name, the schema
    written, and per relation the name may denote (a name without a schema may denote one in
    each schema) its columns in order with the source the catalog gives each; cands None:
    what the item holds is not known (a subquery, a function, a relation not read)."""

    __slots__ = ("name", "schema", "cands")

    def __init__(self, name: str, schema: Optional[str], cands: Optional[list]):
        self.name, self.schema, self.cands = name, schema, cands

    def has(self, col: str) -> Optional[bool]:
        """Whether the item has `col`: True, False, or None (not known, or only some of the
        relations the name may denote have it)."""
        if self.cands is None:
            return None
        got = {any(n == col for n, _s in c) for c in self.cands}
        return got.pop() if len(got) == 1 else None

    def origin(self, col: str) -> Optional[frozenset]:
        """The sources `col` may have (one per relation the name may denote); None where one
        of them is an expression (a view's computed column)."""
        out = set()
        for c in self.cands or ():
            for n, src in c:
                if n == col:
                    if src is None:
                        return None
                    out.add(src)
        return frozenset(out) or None

    def star(self) -> Optional[list]:
        if not self.cands or len({tuple(n for n, _s in c) for c in self.cands}) != 1:
            return None
        return [self.origin(n) for n, _s in self.cands[0]]


def _query_origins(q, catalog: Catalog) -> Optional[list]:
    """Per output of a COPY's query, the source column PostgreSQL would name in its
    RowDescription (a frozenset of candidates, see _Origins) or None; None overall when the
    outputs cannot be counted. Only the shapes a RowDescription names plain columns of are
    followed here -- one SELECT over tables and views, joined without USING or an alias; a
    set operation, a CTE, VALUES or a subquery's columns name none (lineage masks them by
    what they read, `****` where that is a column kept in part)."""
    if not isinstance(q, pglast.ast.SelectStmt) or q.op != pglast.enums.SetOperation.SETOP_NONE \
            or q.valuesLists or q.withClause is not None:
        return None
    entries: list[_Origins] = []
    if not all(_from_origins(item, catalog, entries) for item in q.fromClause or ()):
        return None
    outs: list = []
    for rt in q.targetList or ():
        val = rt.val
        if not isinstance(val, pglast.ast.ColumnRef):
            outs.append(None)
            continue
        names = [f.sval if isinstance(f, pglast.ast.String) else None for f in val.fields]
        if isinstance(val.fields[-1], pglast.ast.A_Star):
            chosen = entries if len(names) == 1 else _qualified(entries, names[:-1])
            if chosen is None:
                return None
            for e in chosen:
                star = e.star()
                if star is None:
                    return None
                outs.extend(star)
            continue
        if None in names:
            outs.append(None)
        elif len(names) > 1:
            chosen = _qualified(entries, names[:-1])
            outs.append(chosen[0].origin(names[-1]) if chosen and
                        chosen[0].has(names[-1]) else None)
        else:
            has = [e.has(names[0]) for e in entries]
            outs.append(entries[has.index(True)].origin(names[0])
                        if None not in has and has.count(True) == 1 else None)
    return outs


def _qualified(entries: list, qual: list) -> Optional[list]:
    """The one FROM item `qual` (rel, schema.rel or db.schema.rel) names, as a list; None."""
    if None in qual:
        return None
    schema = qual[-2] if len(qual) >= 2 else None
    got = [e for e in entries if e.name == qual[-1] and (schema is None or e.schema == schema)]
    return got if len(got) == 1 else None


def _from_origins(item, catalog: Catalog, entries: list) -> bool:
    """Add a FROM item's _Origins to `entries`; False when the item's shape is not followed
    here (a join with USING, NATURAL or an alias renames or merges columns)."""
    ast = pglast.ast
    if isinstance(item, ast.JoinExpr):
        if item.alias is not None or item.usingClause or item.isNatural:
            return False
        return _from_origins(item.larg, catalog, entries) and \
            _from_origins(item.rarg, catalog, entries)
    if isinstance(item, ast.RangeVar):
        alias = item.alias
        cands = None
        if alias is None or not alias.colnames:
            cands = []
            for rel in catalog.relations_named(item.schemaname, item.relname):
                if rel.placeholder:
                    cands = None
                    break
                cands.append([(n, catalog.source(rel.oid, a))
                              for a, (n, _t) in sorted(rel.columns.items())])
            cands = cands or None
        entries.append(_Origins(alias.aliasname if alias is not None else item.relname,
                                item.schemaname if alias is None else None, cands))
        return True
    alias = getattr(item, "alias", None)
    entries.append(_Origins(alias.aliasname if alias is not None else "", None, None))
    return True


def _marker_error(by: dict, prefix: bytes) -> bool:
    """Whether an ErrorResponse's fields are exactly the server's syntax error for a marker
    statement (`<prefix>[r]<n>` alone: ext/hoopwire/pg/_relay.pxi): no field but the fixed ones
    and a message quoting the marker alone, so it cannot carry a value."""
    if by.get(b"C") != b"42601" or any(k in by for k in (b"D", b"H", b"W", b"q", b"p")):
        return False
    m_ = by.get(b"M", b"")
    head = b'syntax error at or near "' + prefix
    if not m_.startswith(head) or not m_.endswith(b'"'):
        return False
    tail = m_[len(head):-1]
    tail = tail[1:] if tail[:1] == b"r" else tail
    return tail.isdigit()


def _fit(outs, n: int):
    """A statement's outputs (lineage.Statement.outputs) laid over an n-column result: n
    frozensets, or None when the shape cannot be that result's."""
    if outs is None:
        return [frozenset((lin.UNKNOWN,))] * n
    spreads = [o for o in outs if isinstance(o, lin.Spread)]
    if not spreads:
        return list(outs) if len(outs) == n else None
    fixed = len(outs) - len(spreads)
    if fixed > n:
        return None
    if len(spreads) > 1:
        every = frozenset().union(*(o.sources if isinstance(o, lin.Spread) else o for o in outs))
        return [every] * n
    out = []
    for o in outs:
        out.extend([o.sources] * (n - fixed) if isinstance(o, lin.Spread) else [o])
    return out


class WriteGuard:
    """The relay's policy while column rules apply. Masking reads statement text (what it
    mentions, its lineage), so the relay must judge text as it does for guardrails -- which
    also ends a session whose client encoding could hide a quote from the lexer. With
    masked_writes = "refuse" (`refuse`), a statement that stores a masked value where the
    session can read it back (INSERT ... SELECT ssn, UPDATE ... SET x = ssn, CREATE TABLE AS,
    COPY ... TO a file, set_config(..., ssn, ...)) is blocked like a guardrail block -- 42501,
    logged, recorded as blocked -- before it reaches the server; every other statement goes on
    to the guardrails (`inner`, None when there are none)."""

    __slots__ = ("inner", "masker", "refuse")

    def __init__(self, inner, masker: "SessionMasker", refuse: bool = True):
        self.inner, self.masker, self.refuse = inner, masker, refuse

    @property
    def approves(self) -> bool:
        return getattr(self.inner, "approves", False)

    @property
    def empty(self) -> bool:
        return False

    def check(self, sql: bytes):
        if _DB_WORD.search(sql) is not None:
            self.masker.conn.database_statement(sql)
        if not self.refuse:
            return self.inner.check(sql) if self.inner is not None else None
        try:
            verdict = self.masker.write_verdict(sql)
        except Exception:  # noqa: BLE001 -- a lineage bug must not crash the session
            log.exception("masked-write check failed")
            # nor let the statement through unjudged: refused, the session goes on
            verdict = self.masker._refuse_write(
                "the gateway could not check this statement for masked writes", "unread")
        if verdict is not None:
            return verdict
        return self.inner.check(sql) if self.inner is not None else None


# RowDescriptions a session keeps parsed, with the plan of the last result that had one
_SHAPES = 256


class _Shape:
    """One RowDescription as the session saw it: its fields, the relations it names, and the
    plan its rows had when neither an expression nor a mention of masked data was involved."""

    __slots__ = ("fields", "oids", "has_expr", "plan_key", "plan", "known_cat", "known_gen")

    def __init__(self, fields):
        self.fields = fields
        self.oids = [o for _n, o, _a, _t, _f in fields if o]
        self.has_expr = len(self.oids) < len(fields)
        self.plan_key = None
        self.plan = None
        self.known_cat = None     # the catalog, and its generation, that knew every oid
        self.known_gen = -1


def _row_description(msg: bytes):
    """[(name, table oid, attnum, type oid, format)] of a RowDescription, or None if malformed."""
    try:
        n = struct.unpack_from("!h", msg, 5)[0]
        pos, out = 7, []
        for _ in range(n):
            end = msg.index(b"\0", pos)
            name = msg[pos:end]
            oid, attnum, typ, _len, _mod, fmt = struct.unpack_from("!IhIhih", msg, end + 1)
            out.append((name, oid, attnum, typ, fmt))
            pos = end + 19
        if pos != len(msg):
            return None
        return out
    except (struct.error, ValueError):
        return None
