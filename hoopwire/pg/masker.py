"""Masking of what a PostgreSQL session returns: the Python half of the relay's result tracking.

The relay (hoopwire.pg._wire, ext/hoopwire/pg/_results.pxi) follows every result the upstream sends and asks
this module, once per result set, how its rows are to be rewritten; the rows themselves go
through the RowPlan in Cython. Here:

* RowDescription -> RowPlan: each column's source (table OID, attribute number) is named through
  the Catalog, views followed, and matched against the column rules; other columns go to the
  detectors. A description naming a relation the catalog has not read answers HOLD: the relay
  stops reading the upstream, the catalog is read, and the same message is judged again.
* unresolved columns (expressions: `upper(ssn)`, `ssn || ''`) when the statement mentions a
  masked column, the table it lives in or a view over it: `detect` leaves them to the detectors,
  `mask` masks every unresolved column of the result, `block` refuses the result.
* COPY TO STDOUT: the statement names the table and columns (or a query: unresolved); text and
  CSV rows are masked line by line; binary COPY is masked by column rules or refused.
* ErrorResponse / NoticeResponse text fields and NotificationResponse payloads: detectors, and
  the values of a `Key (col)=(value)` detail when col is masked; a not-null violation's
  `Failing row contains (...)` is withheld whenever the table has a masked column.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import struct
from dataclasses import dataclass
from typing import Optional

from hoopwire import metrics
from hoopwire._mask import MaskRowError, RowPlan
from hoopwire.pg._wire import HOLD, error_response
from hoopwire._sqlnorm import normalize_statements
from hoopwire.logs import event
from hoopwire.masking.engine import Column, MaskEngine, MaskRule
from hoopwire.masking.strategies import Strategy
from hoopwire.pg.catalog import Catalog, CatalogError

log = logging.getLogger("hoopwire.pg.masking")

__all__ = ["ConnectionMasking", "SessionMasker", "StatementInfo", "CopySpec", "parse_copy"]

_STMT_CACHE = 2048
_IDENT = re.compile(rb'[a-z_\x80-\xff][a-z0-9_$\x80-\xff]*|"(?:[^"]|"")*"')
_DDL = (b"CREATE", b"ALTER", b"DROP", b"COMMENT", b"GRANT", b"REVOKE", b"SECURITY", b"IMPORT",
        b"REFRESH", b"SELECT INTO")
_TEXT_FIELDS = frozenset(b"MDHWq")       # message, detail, hint, context, internal query
_KEY_DETAIL = re.compile(rb"^(Key \((.*?)\)=\()(.*)(\) (?:already exists|is (?:not present|still "
                         rb"referenced)[^\n]*|conflicts with[^\n]*)\.?)$", re.S)
_QUOTED = re.compile(rb'"(?:[^"]|"")*"')
_FAILING_ROW = re.compile(rb"^Failing row contains \(.*\)\.?$", re.S)
_UNRESOLVED = "unresolved"
# statements whose rows come from a statement or cursor named earlier, whose text we do not see
_OPAQUE_READS = (b"execute", b"fetch", b"move")


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


@dataclass(frozen=True)
class StatementInfo:
    mentions: bool                          # names a masked column, its table or a view over it
    copies: tuple[CopySpec, ...] = ()       # COPY TO STDOUT statements, in order


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
    be read comes back as COPY (query) in text format: unresolved, detectors only."""
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
            return None
        table, i = at(i)[1].decode("utf-8", "replace"), i + 1
        if at(i) == ("p", b"."):
            schema, table, i = table, at(i + 1)[1].decode("utf-8", "replace"), i + 2
        if at(i) == ("p", b"("):
            cols, i = [], i + 1
            while i < len(toks) and at(i) != ("p", b")"):
                if at(i)[0] == "word":
                    cols.append(at(i)[1].decode("utf-8", "replace"))
                i += 1
            columns, i = tuple(cols), i + 1
    if at(i) != ("word", b"to") or at(i + 1) != ("word", b"stdout"):
        return None
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


# --------------------------------------------------------------------------------------------

class ConnectionMasking:
    """The masking of one configured connection: engine, catalogs (one per database), and the
    names whose mention makes an unresolved column suspect."""

    def __init__(self, engine: MaskEngine, *, unresolved: str, binary_copy: str, connect,
                 connection: str, catalog_ttl: float = 60.0, timeout: float = 10.0):
        self.engine = engine
        self.unresolved = unresolved
        self.binary_copy = binary_copy
        self.connection = connection
        self._connect = connect                  # async (database) -> Upstream
        self.catalog_ttl = catalog_ttl
        self.timeout = timeout
        self.catalogs: dict[str, Catalog] = {}
        self._names: dict[str, frozenset[bytes]] = {}
        self._stmt_cache: dict[tuple[str, bytes], StatementInfo] = {}
        self.has_columns = bool(engine.rules)
        # column-part globs of the rules: an identifier matching one is a mention even when
        # the catalog has not seen the column yet
        self._col_globs = []
        for r in engine.rules:
            for g in r.globs:
                col = g.rsplit(".", 1)[-1].lower()
                self._col_globs.append(re.compile(fnmatch.translate(col).encode(), re.S))
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
        self._names[cat.database] = frozenset(names)
        self._stmt_cache.clear()

    def statement(self, database: str, sql: bytes) -> StatementInfo:
        key = (database, sql)
        info = self._stmt_cache.get(key)
        if info is not None:
            return info
        try:
            pieces = normalize_statements(sql, True)
        except Exception:  # noqa: BLE001 -- unreadable text: assume the worst
            pieces = []
            info = StatementInfo(True)
        if not pieces and info is None:
            info = NO_INFO
        if info is None:
            names = self._names.get(database, frozenset())
            mentions = False
            copies = []
            for piece in pieces:
                if not mentions and self.has_columns:
                    for mt in _IDENT.finditer(piece):
                        w = mt.group(0)
                        if w[:1] == b'"':
                            w = w[1:-1].replace(b'""', b'"')
                        if w in names or any(g.match(w) for g in self._col_globs):
                            mentions = True
                            break
                if not mentions and self.has_columns and piece.startswith(_OPAQUE_READS):
                    mentions = True      # rows of a statement or cursor declared earlier
                if piece[:4] == b"copy":
                    spec = parse_copy(piece)
                    if spec is not None:
                        copies.append(spec)
            info = StatementInfo(mentions, tuple(copies)) if (mentions or copies) else NO_INFO
        if len(self._stmt_cache) >= _STMT_CACHE:
            self._stmt_cache.clear()
        self._stmt_cache[key] = info
        return info


class SessionMasker:
    """Per session: called by the relay's result tracking (ext/hoopwire/pg/_results.pxi)."""

    def __init__(self, conn: ConnectionMasking, database: str):
        self.conn = conn
        self.database = database
        self.catalog = conn.catalog(database)
        self.relay = None                 # set by the session once the relay exists
        self._task: asyncio.Task | None = None
        self._wanted: set[int] = set()     # relations the held result waits for
        self._again = False                # a hold came in: the lookup task goes round again
        self._failure: str | None = None   # why the catalog could not be read (see _refusal)
        self.masked_total = 0

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
        return self.conn.statement(self.database, sql)

    def command_complete(self, tag: bytes) -> None:
        if tag.startswith(_DDL):
            self.catalog.invalidate()

    # -- result sets ---------------------------------------------------------------------------

    def row_description(self, msg: bytes, info: StatementInfo):
        """RowPlan for the rows that follow, HOLD (catalog being read), or an ErrorResponse
        (bytes) refusing the result."""
        fields = _row_description(msg)
        if fields is None:
            raise MaskRowError("malformed RowDescription from the upstream")
        if self._failure is not None:
            return self._refusal()
        oids = [o for _n, o, _a, _t, _f in fields if o]
        # a result that names no relation, of a statement that mentions nothing masked, needs
        # no catalog (`SELECT 1` goes on while the catalog cannot be read)
        need = self._need(oids) if oids or info.mentions else None
        if need is not None:
            return self._hold(need)
        cols, unresolved = [], False
        for _name, oid, attnum, typ, fmt in fields:
            src = self.catalog.source(oid, attnum) if oid else None
            if src is None:
                unresolved = True
                cols.append(Column(None, None, None, typ, fmt))
            else:
                cols.append(Column(src[0], src[1], src[2], typ, fmt))
        return self._plan(cols, unresolved and info.mentions, "result")

    def copy_out(self, msg: bytes, spec: Optional[CopySpec], info: StatementInfo):
        """The masker for a COPY TO STDOUT's rows (None: pass them as they are), HOLD, or an
        ErrorResponse refusing it."""
        if len(msg) < 8:
            raise MaskRowError("malformed CopyOutResponse from the upstream")
        overall = msg[5]
        ncols = struct.unpack_from("!h", msg, 6)[0]
        if spec is None:
            spec = CopySpec(binary=overall == 1)
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
        if overall == 1:
            if self.conn.binary_copy == "refuse":
                self._log_refused("binary COPY")
                return error_response("ERROR", "42501", "binary COPY is not allowed through "
                                      "the gateway while masking applies (use text or CSV format)")
            plan = self._plan([c._replace(format=1) for c in cols],
                              unresolved and info.mentions, "COPY", detectors=False)
            return None if isinstance(plan, RowPlan) and plan.passthrough else \
                plan if isinstance(plan, bytes) else _BinaryCopy(plan, self)
        plan = self._plan([Column(c.schema, c.table, c.column, 0, 0) for c in cols],
                          unresolved and info.mentions, "COPY")
        if isinstance(plan, bytes) or plan.passthrough:
            return None if not isinstance(plan, bytes) else plan
        return _TextCopy(plan, spec, self)

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

    def _plan(self, cols: list[Column], suspect: bool, what: str, detectors: bool = True):
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
        if suspect and conn.unresolved == "mask":
            unresolved_rule = conn.unresolved_rule
        # binary COPY (detectors=False): values are typed binary; only column rules apply
        return self.engine.row_plan(cols, unresolved_rule=unresolved_rule, detect=detectors)

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

    def fields(self, msg: bytes):
        """ErrorResponse / NoticeResponse: masked text fields, or None when nothing changed."""
        parts = msg[5:].split(b"\0")
        by = {p[:1]: p[1:] for p in parts if p}
        changed = False
        out = []
        # A data exception quotes the value it could not take -- `SELECT password::int` answers
        # `invalid input syntax for type integer: "s3cret"`, and a JSON error's context shows
        # the text -- so while column rules apply, its quoted values and context are withheld.
        data_error = self.conn.has_columns and by.get(b"C", b"")[:2] == b"22"
        engine = self.engine         # once per message: it depends on the client encoding
        for p in parts:
            if not p:
                continue
            code, value = p[:1], p[1:]
            if data_error and code in (b"M", b"D", b"W"):
                nv = _QUOTED.sub(b'"****"', value) if code != b"W" else b"(withheld by hoopwire)"
                if nv != value:
                    value, changed = nv, True
                    metrics.MASKED_VALUES.labels(self.conn.connection, "column",
                                                 "error-detail").inc()
            if code == b"D" and self.conn.has_columns:
                nv = self._detail(value, by)
                if nv is not value:
                    value, changed = nv, True
            if code[0] in _TEXT_FIELDS and engine.scanner is not None:
                nv, counts = engine.mask_text(value)
                if nv is not value and nv != value:
                    value, changed = nv.replace(b"\0", b" "), True
                    self._count(counts)
            out.append(code + value)
        if not changed:
            return None
        body = b"\0".join(out) + b"\0\0"
        return msg[:1] + struct.pack("!I", len(body) + 4) + body

    def _detail(self, value: bytes, by: dict) -> bytes:
        schema = by.get(b"s", b"").decode("utf-8", "replace")
        table = by.get(b"t", b"").decode("utf-8", "replace")
        mt = _KEY_DETAIL.match(value)
        if mt is not None:
            cols = [c.strip().strip('"') for c in mt.group(2).decode("utf-8", "replace").split(",")]
            if any(self._masked(schema, table, c) for c in cols):
                metrics.MASKED_VALUES.labels(self.conn.connection, "column", "error-detail").inc()
                return mt.group(1) + b"****" + mt.group(4)
            return value
        if _FAILING_ROW.match(value) and self._table_masked(schema, table):
            metrics.MASKED_VALUES.labels(self.conn.connection, "column", "error-detail").inc()
            return b"Failing row contains (****)."
        return value

    def _masked(self, schema: str, table: str, col: str) -> bool:
        if table:
            return self.conn.engine.column_rule(schema or "*", table, col) is not None or (
                not schema and any(self.conn.engine.column_rule(r.schema, r.name, col)
                                   for r in self.catalog.relations_named(None, table)))
        # no table named: any rule whose column part matches
        return any(g.match(col.lower().encode()) for g in self.conn._col_globs)

    def _table_masked(self, schema: str, table: str) -> bool:
        if not table:
            return True
        rels = self.catalog.relations_named(schema or None, table)
        if not rels:
            return True     # not known: withhold
        return any(self.conn.engine.column_rule(r.schema, r.name, c) is not None
                   for r in rels for c, _t in r.columns.values())

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
        return b"A" + struct.pack("!I", len(body) + 4) + body

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
        return b"d" + struct.pack("!I", len(new) + 4) + new

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
        new = self.plan.rewrite(b"D" + struct.pack("!I", len(body) + 4) + body)
        if new is None:
            return None
        body = head + new[5:]
        return b"d" + struct.pack("!I", len(body) + 4) + body

    def done(self) -> int:
        return self.masker.result_done(self.plan)


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
