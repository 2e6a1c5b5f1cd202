"""Column lineage: which source columns each output column of a statement reads.

A RowDescription names a source only for a plain column; `upper(ssn)`, `ssn || ''`,
`string_agg(ssn, ',')`, `row_to_json(u)` or `UNION ALL SELECT ssn` name none. This module reads
the statement with PostgreSQL's own grammar (pglast: libpg_query) and follows every output back
to the columns it reads -- through aliases, subqueries, CTEs (recursive ones to a fixpoint), set
operations, LATERAL, joins, views (their definition from the catalog, parsed the same way) and
whole-row references -- so that the masker can mask exactly what reads masked data and leave
everything else as the server sent it.

What "reads" means here is the conservative answer to "could this output differ if the masked
column held other values": an output reads every column in its own expression, and every column
that decides *which* rows or groups exist at its query level -- WHERE, JOIN ... ON / USING,
GROUP BY, HAVING, DISTINCT, ORDER BY, LIMIT, window clauses, and a set-returning function's
arguments. `SELECT count(*) FROM users WHERE ssn LIKE '1%'` therefore reads ssn: that count is
a prefix oracle on the masked column (the property test in tests/test_pg_lineage.py checks
exactly this definition against the server). The number of rows a result has is never hidden.

What cannot be followed is UNKNOWN (an "unplaceable" source): relations the catalog does not
hold, functions a user defined (their body may read anything), built-ins that run SQL text or
read server state (`query_to_xml`, `current_setting`, `lo_get`), statistics views that copy
column values (`pg_stats`), set-returning functions of unknown shape, dynamic SQL.

Writes are reported too: (target column or None, sources) for every value a statement stores
(INSERT, UPDATE SET, MERGE, CREATE TABLE AS / SELECT INTO, COPY TO a file or program, and the
built-ins that keep a value where the session can read it back: `set_config`, `lo_from_bytea`...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

from pglast import ast, parse_sql
from pglast.enums import SetOperation

__all__ = ["UNKNOWN", "CODE", "Spread", "Rel", "Resolver", "Statement", "analyze", "LineageError"]

Src = tuple[str, str, str]                  # (schema, table, column)
UNKNOWN: Src = ("", "", "?")                # a source that cannot be placed
# what code the gateway cannot read stores: a DO block, a function or procedure body, a trigger
# or a rule runs statements whose text never passes the gateway (dynamic SQL builds names the
# mention check cannot see: `EXECUTE 'SELECT s' || 'sn ...'`), so it is a write of anything
CODE: Src = ("", "", "<code>")
_CODE_SET = frozenset((CODE,))
CURSOR = "<cursor>"     # ("", CURSOR, name): the rows a cursor chose (WHERE CURRENT OF name)
_NONE: frozenset = frozenset()
_UNKNOWN_SET = frozenset((UNKNOWN,))
_MAX_DEPTH = 24                             # views over views, nested subqueries


class LineageError(Exception):
    """The statement cannot be read (a parse error, or nesting past _MAX_DEPTH)."""


@dataclass(frozen=True)
class Spread:
    """Output columns whose number is not known from the text (`SELECT * FROM f()`): as many
    as the RowDescription has left over, each reading `sources`."""
    sources: frozenset


@dataclass
class Rel:
    """A relation as the catalog knows it."""
    schema: str
    name: str
    columns: list[str]
    view_sql: Optional[str] = None          # a user view's (or matview's) definition
    opaque: bool = False                    # values copied from elsewhere: pg_stats


class Resolver(Protocol):
    def lineage_relations(self, schema: Optional[str], name: str) -> list[Rel]: ...
    def user_function(self, name: str) -> bool: ...


@dataclass
class Statement:
    """One statement of the text. kind: rows (outputs describe its result), copy (COPY ... TO
    STDOUT: outputs are its columns), declare / prepare (outputs are what `name` will return),
    execute / fetch (rows from `name`), none (no result, or one with no column data)."""
    kind: str
    outputs: Optional[list] = None          # [frozenset | Spread]; None: not known
    name: str = ""
    writes: list = field(default_factory=list)     # [(target Src | None, frozenset)]
    names: Optional[list] = None            # output names where the text fixes them, else None


# Built-ins that read data they are not given (SQL text, a regclass, server state).
_READS_ELSEWHERE = frozenset((
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml",
    "cursor_to_xmlschema", "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
    "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema", "database_to_xml",
    "database_to_xmlschema", "database_to_xml_and_xmlschema", "ts_stat", "ts_rewrite",
    "current_setting", "lo_get", "loread", "lo_export", "pg_read_file", "pg_read_binary_file",
    "dblink", "dblink_get_result", "dblink_fetch", "pg_stat_statements"))
# Built-ins that keep a value where the session (or anyone) can read it back later.
_STORES = frozenset((
    "set_config", "lo_from_bytea", "lo_put", "lowrite", "pg_notify", "pg_logical_emit_message",
    "dblink_exec", "dblink_send_query", "dblink",
    # state a later statement reads back: a sequence's value, a large object's OID and length,
    # an advisory lock's key (pg_locks.objid), the random generator's seed
    "setval", "lo_create", "lo_import", "lo_truncate", "lo_truncate64", "lo_lseek",
    "lo_lseek64", "setseed", "pg_advisory_lock", "pg_advisory_lock_shared",
    "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared", "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared"))
# Set-returning built-ins whose rows are a function of their arguments alone.
_PURE_SRF = frozenset((
    "generate_series", "generate_subscripts", "unnest", "regexp_matches", "regexp_split_to_table",
    "string_to_table", "json_array_elements", "json_array_elements_text", "jsonb_array_elements",
    "jsonb_array_elements_text", "json_each", "json_each_text", "jsonb_each", "jsonb_each_text",
    "json_object_keys", "jsonb_object_keys", "json_to_record", "json_to_recordset",
    "jsonb_to_record", "jsonb_to_recordset", "json_populate_record", "json_populate_recordset",
    "jsonb_populate_record", "jsonb_populate_recordset", "jsonb_path_query", "ts_parse",
    "ts_debug", "ts_token_type", "pg_get_keywords", "pg_options_to_table"))
# Relations whose values are copies of other columns' values.
_OPAQUE_RELS = frozenset(("pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic",
                          "pg_statistic_ext_data", "pg_stat_statements"))
# System columns every table has: they carry no user data
_SYSTEM_COLUMNS = frozenset(("ctid", "xmin", "xmax", "cmin", "cmax", "tableoid", "oid"))


# --------------------------------------------------------------------------------------------
# scopes

class _Entry:
    """One FROM item as its query level sees it."""

    __slots__ = ("alias", "schema", "cols", "opaque", "hidden")

    def __init__(self, alias: str, cols: Optional[list], opaque=_NONE, schema: str = ""):
        self.alias = alias
        self.schema = schema
        self.cols = cols            # [(name, frozenset)], None: unknown shape
        self.opaque = opaque        # what any column of an unknown-shape item reads
        self.hidden = False         # inside a join with an alias: not visible by its own name

    def column(self, name: str) -> Optional[frozenset]:
        if self.cols is None:
            return None
        found = None
        for n, s in self.cols:
            if n == name:
                found = s if found is None else found | s
        return found

    def whole(self) -> frozenset:
        if self.cols is None:
            return self.opaque
        out = set(self.opaque)
        for _n, s in self.cols:
            out |= s
        return frozenset(out)

    def star(self) -> list:
        """[(name, frozenset | Spread)] of `alias.*`."""
        if self.cols is None:
            return [(None, Spread(self.opaque))]
        return list(self.cols)


class _Scope:
    __slots__ = ("entries", "parent", "ctes", "star_items", "jctx", "target")

    def __init__(self, parent: Optional["_Scope"], ctes: dict):
        self.entries: list[_Entry] = []
        self.parent = parent
        self.ctes = ctes
        self.star_items: list = []          # [(name, outputs)] per FROM item, for `*`
        self.jctx: frozenset = _NONE        # what decides which rows the FROM list yields
        self.target: Optional[_Entry] = None    # the table a DML statement writes


def _name(node) -> str:
    return node.sval if isinstance(node, ast.String) else ""


def _funcname(fc) -> str:
    return _name(fc.funcname[-1]).lower() if fc.funcname else ""


# --------------------------------------------------------------------------------------------

class _Analyzer:

    def __init__(self, resolver: Resolver, depth: int = 0, views: Optional[dict] = None):
        self.r = resolver
        self.depth = depth
        self.views = views if views is not None else {}     # (schema, name) -> outputs
        self.writes: list = []
        self.names_of: dict = {}                            # id(SelectStmt) -> output names

    def output_names(self, q) -> list:
        return _output_names(q, self.names_of)

    # -- statements ---------------------------------------------------------------------------

    def statement(self, node) -> Statement:
        if isinstance(node, ast.SelectStmt):
            outs = self.query(node, None, {})
            if node.intoClause is not None:
                self._write_all(outs)
                return Statement("none", writes=self.writes)
            names = self.names_of.get(id(node))
            return Statement("rows", outs, writes=self.writes,
                             names=[_certain(n) for n in names] if names else None)
        if isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
            outs = self.dml(node, None, {})
            return Statement("rows" if outs is not None else "none", outs, writes=self.writes)
        if isinstance(node, ast.CopyStmt):
            if node.is_from:
                return Statement("none")
            if node.query is not None:
                outs = self.dml_or_query(node.query, None, {})
            else:
                entry = self.relation(node.relation, None, {})
                outs = [o for _n, o in entry.star()]
                if node.attlist:
                    outs = [entry.column(_name(a)) or _UNKNOWN_SET for a in node.attlist]
            if node.filename is not None or node.is_program:
                self._write_all(outs)
                return Statement("none", writes=self.writes)
            return Statement("copy", outs, writes=self.writes)
        if isinstance(node, ast.CreateTableAsStmt):
            outs = self.dml_or_query(node.query, None, {})
            self._write_all(outs)
            return Statement("none", writes=self.writes)
        if isinstance(node, ast.DeclareCursorStmt):
            outs = self.dml_or_query(node.query, None, {})
            return Statement("declare", outs, name=node.portalname, writes=self.writes)
        if isinstance(node, ast.PrepareStmt):
            inner = _Analyzer(self.r, self.depth, self.views).statement(node.query)
            outs = inner.outputs if inner.kind in ("rows", "copy") else None
            return Statement("prepare", outs, name=node.name, writes=inner.writes)
        if isinstance(node, ast.ExecuteStmt):
            for p in node.params or ():
                self.expr(p, _Scope(None, {}), set())     # stores inside the arguments
            return Statement("execute", name=node.name, writes=self.writes)
        if isinstance(node, ast.FetchStmt):
            return Statement("none" if node.ismove else "fetch", name=node.portalname or "")
        if isinstance(node, ast.ExplainStmt):
            # EXPLAIN ANALYZE runs the statement (its writes count); the plan holds no values
            self.statement(node.query)
            return Statement("rows", [Spread(_NONE)], writes=self.writes)
        if isinstance(node, ast.CallStmt):
            srcs: set = set()
            self.expr(node.funccall, _Scope(None, {}), srcs)
            if srcs:
                self.writes.append((None, frozenset(srcs)))    # a procedure may keep them
            return Statement("rows", [Spread(_UNKNOWN_SET)], writes=self.writes)
        if isinstance(node, ast.VariableShowStmt):
            return Statement("rows", [Spread(_NONE)])
        if isinstance(node, (ast.DoStmt, ast.CreateFunctionStmt, ast.CreateTrigStmt,
                             ast.RuleStmt, ast.CreateEventTrigStmt, ast.ClusterStmt)) or (
                isinstance(node, ast.RenameStmt) and node.relation is None):
            # CLUSTER puts rows in an index's order (ctid then shows a masked column's order);
            # a schema renamed moves every table in it away from the names rules match
            self.writes.append((None, _CODE_SET))
            return Statement("none", writes=self.writes)
        if isinstance(node, (ast.RenameStmt, ast.AlterObjectSchemaStmt)):
            # column rules match names: a masked column, or its table, renamed or moved to
            # another schema is no longer masked -- the values are moved out of their rule
            entry = self.relation(node.relation, None, {})
            col = getattr(node, "subname", None)
            srcs = (entry.column(col) or _UNKNOWN_SET) if col else entry.whole()
            self.writes.append((None, srcs))
            return Statement("none", writes=self.writes)
        if isinstance(node, ast.AlterTableStmt) and node.relation is not None:
            # a generated column stores an expression over the row
            scope = _Scope(None, {})
            scope.entries.append(self.relation(node.relation, None, {}))
            for cmd in node.cmds or ():
                d = cmd.def_
                if isinstance(d, ast.ColumnDef):
                    for con in d.constraints or ():
                        srcs: set = set()
                        self.expr(con.raw_expr, scope, srcs)
                        if srcs:
                            self.writes.append((None, frozenset(srcs)))
            return Statement("none", writes=self.writes)
        if isinstance(node, ast.IndexStmt) and node.whereClause is not None:
            # a partial index counts the rows its predicate holds for (pg_class.reltuples)
            scope = _Scope(None, {})
            scope.entries.append(self.relation(node.relation, None, {}))
            srcs = set()
            self.expr(node.whereClause, scope, srcs)
            if srcs:
                self.writes.append((None, frozenset(srcs)))
            return Statement("none", writes=self.writes)
            self.writes.append((None, _CODE_SET))
            return Statement("none", writes=self.writes)
        if isinstance(node, ast.ViewStmt):
            # a temporary view lives in the session's own schema, which the catalog's side
            # connection never sees: what it reads could not be followed when it is selected
            v = node.view
            if v.relpersistence == "t" or (v.schemaname or "").startswith("pg_temp"):
                self._write_all(self.dml_or_query(node.query, None, {}))
            return Statement("none", writes=self.writes)
        # anything else (DDL, DO, NOTIFY with its literal payload...) returns no rows
        return Statement("none")

    def _write_all(self, outs) -> None:
        for o in outs or [_UNKNOWN_SET]:
            s = o.sources if isinstance(o, Spread) else o
            if s:
                self.writes.append((None, s))

    def dml_or_query(self, node, parent, ctes):
        if isinstance(node, ast.SelectStmt):
            return self.query(node, parent, ctes)
        if isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
            return self.dml(node, parent, ctes)
        return None

    # -- queries --------------------------------------------------------------------------

    def _down(self):
        if self.depth >= _MAX_DEPTH:
            raise LineageError("nested too deep to follow")

    def with_clause(self, wc, ctes: dict, parent) -> dict:
        if wc is None:
            return ctes
        ctes = dict(ctes)
        for cte in wc.ctes:
            name = cte.ctename
            aliases = [_name(a) for a in cte.aliascolnames or ()]
            q = cte.ctequery
            if wc.recursive and isinstance(q, ast.SelectStmt) and q.op != SetOperation.SETOP_NONE:
                # the non-recursive branch gives the shape; the whole query is read again with
                # the CTE bound to what it reads so far, until that stops growing
                first = self.query(q.larg, parent, ctes) or []
                cols = self._named(first, q.larg, aliases)
                for _ in range(8):
                    ctes[name] = cols
                    outs = self.query(q, parent, ctes)
                    new = self._named(outs, q.larg, aliases) if outs is not None else None
                    if new is None or len(new) != len(cols):
                        cols = None
                        break
                    new = [(n, s | o) for (n, s), (_m, o) in zip(new, cols)]
                    if new == cols:
                        break
                    cols = new
                else:
                    cols = None
                ctes[name] = cols
            else:
                outs = self.dml_or_query(q, parent, ctes)
                ctes[name] = self._named(outs, q, aliases) if outs is not None else None
        return ctes

    def _named(self, outs, q, aliases):
        if outs is None or any(isinstance(o, Spread) for o in outs):
            return None
        names = self.output_names(q)
        if len(names) != len(outs):
            names = [f"?column{i}?" for i in range(len(outs))]
        for i, a in enumerate(aliases[:len(outs)]):
            names[i] = a
        return list(zip(names, outs))

    def query(self, node, parent: Optional[_Scope], ctes: dict):
        """Outputs of a SELECT (or VALUES, or a set operation): [frozenset | Spread] or None."""
        self._down()
        self.depth += 1
        try:
            return self._query(node, parent, ctes)
        finally:
            self.depth -= 1

    def _query(self, node, parent, ctes):
        ctes = self.with_clause(node.withClause, ctes, parent)
        if node.op != SetOperation.SETOP_NONE:
            left = self.query(node.larg, parent, ctes)
            right = self.query(node.rarg, parent, ctes)
            if left is None or right is None or len(left) != len(right) or \
                    any(isinstance(o, Spread) for o in left + right):
                return None
            outs = [a | b for a, b in zip(left, right)]
            self.names_of[id(node)] = self.output_names(node.larg)
            if not node.all or node.op != SetOperation.SETOP_UNION or node.sortClause or \
                    node.limitCount is not None or node.limitOffset is not None:
                # duplicates removed, rows kept or dropped, ordered or cut by whole rows:
                # every column decides whether (and where) a row appears
                every = frozenset().union(*outs)
                outs = [every for _ in outs]
            return outs
        scope = _Scope(parent, ctes)
        if node.valuesLists:
            cols: list[set] = []
            for row in node.valuesLists:
                for i, e in enumerate(row):
                    while len(cols) <= i:
                        cols.append(set())
                    self.expr(e, scope, cols[i])
            return [frozenset(c) for c in cols]
        for item in node.fromClause or ():
            self.from_item(item, scope)
        ctx: set = set()
        outs: list = []
        names: list = []
        for rt in node.targetList or ():
            val = rt.val
            if isinstance(val, ast.ColumnRef) and isinstance(val.fields[-1], ast.A_Star):
                for n, o in self.star(val, scope):
                    outs.append(o)
                    names.append(n)
                continue
            srcs: set = set()
            self.expr(val, scope, srcs, ctx)
            outs.append(frozenset(srcs))
            names.append(rt.name or (_name(val.fields[-1]) if isinstance(val, ast.ColumnRef)
                                     else None))
        for clause in (node.whereClause, node.havingClause, node.limitCount, node.limitOffset):
            if clause is not None:
                self.expr(clause, scope, ctx)
        for w in node.windowClause or ():
            self.expr(w, scope, ctx)
        for group in (node.groupClause, node.sortClause, node.distinctClause):
            for g in group or ():
                self._by_output(g, scope, ctx, outs, names)
        if node.distinctClause:
            for o in outs:          # DISTINCT (ON) keeps one row of each group
                ctx |= o.sources if isinstance(o, Spread) else o
        ctx |= scope.jctx
        if ctx and node.lockingClause:
            # FOR UPDATE / SHARE marks the rows it chose (xmax, pg_locks): one bit per row
            self.writes.append((None, frozenset(ctx)))
        if ctx:
            c = frozenset(ctx)
            outs = [Spread(o.sources | c) if isinstance(o, Spread) else o | c for o in outs]
        self.names_of[id(node)] = names
        return outs

    def _by_output(self, g, scope, ctx, outs, names) -> None:
        """A GROUP BY / ORDER BY / DISTINCT ON item: an output's number or name, or an
        expression over the FROM items."""
        node = g.node if isinstance(g, ast.SortBy) else g
        if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer):
            i = node.val.ival - 1
            if 0 <= i < len(outs):
                o = outs[i]
                ctx |= o.sources if isinstance(o, Spread) else o
            return
        if isinstance(node, ast.ColumnRef) and len(node.fields) == 1 and \
                isinstance(node.fields[0], ast.String):
            n = node.fields[0].sval
            if n in names:
                o = outs[names.index(n)]
                ctx |= o.sources if isinstance(o, Spread) else o
                found = self.column(node, scope, strict=True)
                if found is not None:
                    ctx |= found
                return
        if node is not None:
            self.expr(node, scope, ctx)

    def star(self, ref, scope: _Scope) -> list:
        """[(name, frozenset | Spread)] of `*` or `alias.*`."""
        fields = ref.fields
        if len(fields) == 1:
            outs = []
            for item in scope.star_items:
                outs.extend(item)
            return outs
        qual = [_name(f) for f in fields[:-1]]
        entry = self.find_entry(qual, scope)
        return entry.star() if entry is not None else [(None, Spread(_UNKNOWN_SET))]

    # -- FROM ---------------------------------------------------------------------------------

    def from_item(self, item, scope: _Scope) -> list:
        """Add one top-level FROM item's entries to `scope`, and its `*` outputs to the
        scope's star list (items inside a join are added by _join, through _from)."""
        star = self._from(item, scope)
        scope.star_items.append(star)
        return star

    def _from(self, item, scope: _Scope) -> list:
        if isinstance(item, ast.RangeVar):
            entry = self.relation(item, scope.parent, scope.ctes)
            scope.entries.append(entry)
            return entry.star()
        if isinstance(item, ast.RangeSubselect):
            parent = scope if item.lateral else scope.parent
            sub = self.dml_or_query(item.subquery, parent, scope.ctes)
            entry = self._sub_entry(sub, item.subquery, item.alias)
            scope.entries.append(entry)
            return entry.star()
        if isinstance(item, ast.RangeFunction):
            srcs: set = set()
            for pair in item.functions or ():
                fc = pair[0] if isinstance(pair, (list, tuple)) else pair
                if not isinstance(fc, ast.FuncCall) or _funcname(fc) not in _PURE_SRF:
                    srcs.add(UNKNOWN)
                self.expr(fc, scope, srcs)
            first = item.functions[0][0] if item.functions else None
            alias = item.alias.aliasname if item.alias is not None else (
                _funcname(first) if isinstance(first, ast.FuncCall) else "")
            srcs = frozenset(srcs)
            # unknown width; any column name reads its arguments (all it is made of, for a
            # pure SRF), and how many rows it gives decides every output at this level
            scope.entries.append(_Entry(alias, None, srcs))
            scope.jctx = scope.jctx | srcs
            return [(None, Spread(srcs))]
        if isinstance(item, ast.RangeTableSample):
            star = self._from(item.relation, scope)
            srcs: set = set()
            for a in item.args or ():
                self.expr(a, scope, srcs)
            scope.jctx = scope.jctx | frozenset(srcs)
            return star
        if isinstance(item, ast.JoinExpr):
            return self._join(item, scope)
        # XMLTABLE, JSON_TABLE: functions of the expressions they are given
        srcs = set()
        self.expr(item, scope, srcs)
        alias = getattr(item, "alias", None)
        entry = _Entry(alias.aliasname if alias is not None else "", None, frozenset(srcs))
        scope.entries.append(entry)
        scope.jctx = scope.jctx | entry.opaque
        return [(None, Spread(entry.opaque))]

    def _join(self, j, scope: _Scope) -> list:
        first = len(scope.entries)
        left = self._from(j.larg, scope)
        mid = len(scope.entries)
        right = self._from(j.rarg, scope)
        lentries, rentries = scope.entries[first:mid], scope.entries[mid:]
        ctx: set = set()
        if j.quals is not None:
            self.expr(j.quals, scope, ctx)
        using = [_name(u) for u in j.usingClause or ()]
        if j.isNatural:
            lnames = {n for e in lentries if e.cols for n, _s in e.cols}
            rnames = {n for e in rentries if e.cols for n, _s in e.cols}
            using = sorted(lnames & rnames)
        star = left + right
        if using:
            merged = []
            for u in using:
                s = set()
                for e in lentries + rentries:
                    c = e.column(u)
                    s |= c if c is not None else e.opaque | _UNKNOWN_SET
                merged.append(frozenset(s))
                ctx |= s
            lcols = [(n, s) for e in lentries if e.cols for n, s in e.cols if n not in using]
            rcols = [(n, s) for e in rentries if e.cols for n, s in e.cols if n not in using]
            if all(e.cols is not None for e in lentries + rentries):
                star = list(zip(using, merged)) + lcols + rcols
            else:
                star = [(None, Spread(frozenset().union(
                    *merged, *(o.sources if isinstance(o, Spread) else o for _n, o in star))))]
            if j.join_using_alias is not None:
                scope.entries.append(_Entry(j.join_using_alias.aliasname,
                                            list(zip(using, merged))))
        if ctx:
            scope.jctx = scope.jctx | frozenset(ctx)
        if j.alias is not None:
            star = list(star)
            cols = []
            for e in scope.entries[first:]:
                e.hidden = True
                cols.extend(e.cols or [])
            names = [_name(c) for c in j.alias.colnames or ()]
            cols = [(names[i] if i < len(names) else n, s) for i, (n, s) in enumerate(cols)]
            scope.entries.append(_Entry(j.alias.aliasname, cols if all(
                e.cols is not None for e in scope.entries[first:]) else None,
                frozenset().union(*(e.whole() for e in scope.entries[first:]))))
        return star

    def _sub_entry(self, outs, q, alias) -> _Entry:
        name = alias.aliasname if alias is not None else ""
        if outs is None:
            return _Entry(name, None, _UNKNOWN_SET)
        if any(isinstance(o, Spread) for o in outs):
            srcs = frozenset().union(*(o.sources if isinstance(o, Spread) else o for o in outs))
            return _Entry(name, None, srcs)
        names = self.output_names(q)
        if len(names) != len(outs):
            names = [None] * len(outs)
        if alias is not None:
            for i, c in enumerate(alias.colnames or ()):
                if i < len(names):
                    names[i] = _name(c)
        return _Entry(name, [(n or f"?column{i}?", s) for i, (n, s) in enumerate(zip(names, outs))])

    def relation(self, rv, parent, ctes) -> _Entry:
        alias = rv.alias.aliasname if rv.alias is not None else rv.relname
        colnames = [_name(c) for c in (rv.alias.colnames or ())] if rv.alias is not None else []
        cols = None
        opaque = _NONE
        if rv.schemaname is None and rv.relname in ctes:
            cols = ctes[rv.relname]
            if cols is None:
                opaque = _UNKNOWN_SET
        else:
            cols, opaque = self._catalog_columns(rv.schemaname, rv.relname)
        if cols is not None and colnames:
            cols = [(colnames[i] if i < len(colnames) else n, s) for i, (n, s) in enumerate(cols)]
        return _Entry(alias, cols, opaque, rv.schemaname or "")

    def _catalog_columns(self, schema, name):
        if name in _OPAQUE_RELS:
            return None, _UNKNOWN_SET
        rels = self.r.lineage_relations(schema, name)
        if not rels:
            return None, _UNKNOWN_SET
        merged: list = []
        for rel in rels:
            cols = self._rel_columns(rel)
            if cols is None:
                return None, _UNKNOWN_SET
            for i, (n, s) in enumerate(cols):
                if i < len(merged):
                    m, t = merged[i]
                    merged[i] = (m, t | s) if m == n else (m, t | s | _UNKNOWN_SET)
                else:
                    merged.append((n, s))
        return merged, _NONE

    def _rel_columns(self, rel: Rel):
        if rel.opaque:
            return None
        if rel.view_sql is None:
            return [(c, frozenset(((rel.schema, rel.name, c),))) for c in rel.columns]
        key = (rel.schema, rel.name)
        if key in self.views:
            outs = self.views[key]
        else:
            self.views[key] = None          # a cycle reads as unknown
            try:
                self._down()
                stmts = parse_sql(rel.view_sql)
                sub = _Analyzer(self.r, self.depth + 1, self.views)
                outs = sub.query(stmts[0].stmt, None, {}) if len(stmts) == 1 and \
                    isinstance(stmts[0].stmt, ast.SelectStmt) else None
            except Exception:  # noqa: BLE001 -- a definition we cannot read: unknown
                outs = None
            self.views[key] = outs
        if outs is None or len(outs) != len(rel.columns) or \
                any(isinstance(o, Spread) for o in outs):
            return None
        return list(zip(rel.columns, outs))

    # -- names --------------------------------------------------------------------------------

    def find_entry(self, qual: list[str], scope) -> Optional[_Entry]:
        rel = qual[-1]
        schema = qual[-2] if len(qual) >= 2 else None
        s = scope
        while s is not None:
            for e in reversed(s.entries):
                if e.hidden:
                    continue
                if e.alias == rel and (schema is None or e.schema in ("", schema)):
                    return e
                if rel in ("old", "new", "excluded") and getattr(s, "target", None) is e:
                    return e
            s = s.parent
        return None

    def column(self, ref, scope, strict=False) -> Optional[frozenset]:
        """The sources of a column reference; None when nothing in scope has it (strict), or
        UNKNOWN."""
        fields = ref.fields
        names = [_name(f) for f in fields]
        if len(names) == 1:
            col = names[0]
            s = scope
            found: Optional[frozenset] = None
            while s is not None:
                opaque: Optional[set] = None
                for e in s.entries:
                    if e.hidden:
                        continue
                    c = e.column(col)
                    if c is not None:
                        found = c if found is None else found | c
                    elif e.cols is None:
                        opaque = (opaque or set()) | e.opaque
                if found is not None:
                    return found
                if opaque is not None:
                    # not a known column here: the unknown-shape items may have it
                    return frozenset(opaque)
                for e in reversed(s.entries):     # a relation's name as a value: its row
                    if not e.hidden and e.alias == col:
                        return e.whole()
                s = s.parent
            if col in _SYSTEM_COLUMNS:
                return _NONE
            return None if strict else _UNKNOWN_SET
        entry = self.find_entry(names[:-1], scope)
        if entry is None:
            # `t.col.field` (a composite's field) or a name we do not know
            entry = self.find_entry(names[:-2], scope) if len(names) >= 3 else None
            if entry is not None:
                return entry.column(names[-2]) or entry.whole()
            return None if strict else _UNKNOWN_SET
        c = entry.column(names[-1])
        if c is not None:
            return c
        if names[-1] in _SYSTEM_COLUMNS:
            return _NONE
        return entry.whole() if entry.cols is None else (None if strict else _UNKNOWN_SET)

    # -- expressions --------------------------------------------------------------------------

    def expr(self, node, scope, out: set, ctx: Optional[set] = None) -> None:
        """Add what `node` reads to `out`; a set-returning call's inputs also to `ctx` (they
        decide the number of rows)."""
        if node is None:
            return
        if isinstance(node, (list, tuple)):
            for n in node:
                self.expr(n, scope, out, ctx)
            return
        if isinstance(node, ast.ColumnRef):
            if isinstance(node.fields[-1], ast.A_Star):
                for _n, o in self.star(node, scope):
                    out |= o.sources if isinstance(o, Spread) else o
            else:
                out |= self.column(node, scope)
            return
        if isinstance(node, ast.SubLink):
            sub = self.dml_or_query(node.subselect, scope, scope.ctes)
            if sub is None:
                out.add(UNKNOWN)
            else:
                for o in sub:
                    out |= o.sources if isinstance(o, Spread) else o
            self.expr(node.testexpr, scope, out)
            return
        if isinstance(node, ast.FuncCall):
            name = _funcname(node)
            srcs: set = set()
            for part in (node.args, node.agg_order, node.agg_filter, node.over):
                self.expr(part, scope, srcs, ctx)
            user = self.r.user_function(name) or (
                len(node.funcname) > 1 and
                _name(node.funcname[-2]) not in ("pg_catalog", "information_schema"))
            if (user or name in _STORES) and srcs - _UNKNOWN_SET:
                # a user's function may keep what it is given (INSERT, set_config, a temp
                # table): its masked arguments are stored as a built-in store's are
                self.writes.append((None, frozenset(srcs)))
            if name in _READS_ELSEWHERE or user:
                srcs.add(UNKNOWN)
            if ctx is not None and (name in _PURE_SRF or UNKNOWN in srcs):
                ctx |= srcs
            out |= srcs
            return
        if isinstance(node, ast.CurrentOfExpr):
            # the row is the one a cursor stands on: it reads what chose the cursor's rows,
            # known to the session (SessionMasker.write_verdict), not to this text
            out.add(("", CURSOR, node.cursor_name or ""))
            return
        if isinstance(node, (ast.A_Const, ast.ParamRef, ast.TypeName, ast.SQLValueFunction)):
            return
        if isinstance(node, ast.Node):
            for attr in node:
                v = getattr(node, attr)
                if isinstance(v, (ast.Node, list, tuple)):
                    self.expr(v, scope, out, ctx)

    # -- writes -------------------------------------------------------------------------------

    def dml(self, node, parent, ctes):
        """INSERT / UPDATE / DELETE / MERGE: records what it writes; its RETURNING outputs."""
        self._down()
        ctes = self.with_clause(node.withClause, ctes, parent)
        scope = _Scope(parent, ctes)
        target = self.relation(node.relation, parent, ctes)
        scope.entries.append(target)
        scope.target = target
        scope.star_items.append(target.star())
        tname = lambda c: (target.schema or "", node.relation.relname, c)   # noqa: E731
        tcols = [n for n, _s in target.cols] if target.cols is not None else None
        # what decides which rows are written (WHERE, FROM / USING joins, ON CONFLICT ... WHERE,
        # MERGE's ON and WHEN ... AND): a write that happens to some rows and not others stores
        # one bit per row -- `UPDATE t SET flag = true WHERE ssn LIKE '1%'`, or the xmin and
        # ctid any write changes -- so those columns are written too, into no column masked
        cond: set = set()
        if isinstance(node, ast.InsertStmt):
            if node.selectStmt is not None:
                src = self.query(node.selectStmt, parent, ctes)
                names = [rt.name for rt in node.cols] if node.cols else tcols
                for i, o in enumerate(src or [_UNKNOWN_SET]):
                    s = o.sources if isinstance(o, Spread) else o
                    col = names[i] if names is not None and i < len(names) and \
                        not isinstance(o, Spread) else None
                    if s:
                        self.writes.append((tname(col) if col else None, s))
            occ = node.onConflictClause
            if occ is not None:
                self._assign(occ.targetList, scope, tname)
                self.expr(occ.whereClause, scope, cond)
                if occ.infer is not None:
                    self.expr(occ.infer.whereClause, scope, cond)
        elif isinstance(node, ast.UpdateStmt):
            for item in node.fromClause or ():
                self.from_item(item, scope)
            self._assign(node.targetList, scope, tname)
            self.expr(node.whereClause, scope, cond)
        elif isinstance(node, ast.DeleteStmt):
            for item in node.usingClause or ():
                self.from_item(item, scope)
            self.expr(node.whereClause, scope, cond)
        elif isinstance(node, ast.MergeStmt):
            self.from_item(node.sourceRelation, scope)
            self.expr(node.joinCondition, scope, cond)
            for w in node.mergeWhenClauses or ():
                self.expr(w.condition, scope, cond)
                self._assign(w.targetList, scope, tname)
                for i, v in enumerate(w.values or ()):
                    s: set = set()
                    self.expr(v, scope, s)
                    rt = w.targetList[i] if w.targetList and i < len(w.targetList) else None
                    col = rt.name if rt is not None else (
                        tcols[i] if tcols is not None and i < len(tcols) else None)
                    if s:
                        self.writes.append((tname(col) if col else None, frozenset(s)))
        cond |= scope.jctx
        if cond:
            self.writes.append((None, frozenset(cond)))
        rc = getattr(node, "returningClause", None)
        exprs = rc.exprs if rc is not None else getattr(node, "returningList", None)
        if not exprs:
            return None
        outs = []
        for rt in exprs:
            val = rt.val
            if isinstance(val, ast.ColumnRef) and isinstance(val.fields[-1], ast.A_Star):
                outs.extend(o for _n, o in self.star(val, scope))
                continue
            s = set()
            self.expr(val, scope, s)
            outs.append(frozenset(s))
        if cond:        # the rows RETURNING gives are the rows the conditions chose
            c = frozenset(cond)
            outs = [Spread(o.sources | c) if isinstance(o, Spread) else o | c for o in outs]
        return outs

    def _assign(self, targets, scope, tname) -> None:
        for rt in targets or ():
            if rt.val is None:
                continue
            s: set = set()
            self.expr(rt.val, scope, s)
            if s:
                multi = isinstance(rt.val, ast.MultiAssignRef)
                self.writes.append((None if multi else tname(rt.name), frozenset(s)))



def _certain(name: Optional[str]) -> Optional[str]:
    """A name the server reports as written (an alias, a column's name), cut as the server cuts
    it (NAMEDATALEN 64); None for one it makes up (`upper`, `?column?`) or spells in the
    client's encoding."""
    if name is None or name.startswith("?") or not name.isascii():
        return None
    return name[:63]


def _output_names(q, known: dict) -> list:
    """Column names a query's result has (for CTEs and subqueries referred to by name)."""
    while isinstance(q, ast.SelectStmt) and q.op != SetOperation.SETOP_NONE:
        q = q.larg
    if id(q) in known:
        return list(known[id(q)])
    if isinstance(q, ast.SelectStmt) and q.valuesLists:
        return [f"column{i + 1}" for i in range(len(q.valuesLists[0]))]
    targets = q.targetList if isinstance(q, ast.SelectStmt) else (
        (q.returningClause.exprs if getattr(q, "returningClause", None) is not None else ())
        if q is not None else ())
    names = []
    for rt in targets or ():
        v = rt.val
        if rt.name:
            names.append(rt.name)
        elif isinstance(v, ast.ColumnRef) and isinstance(v.fields[-1], ast.A_Star):
            return []           # widths known only after expansion: positional names
        elif isinstance(v, ast.ColumnRef):
            names.append(_name(v.fields[-1]))
        elif isinstance(v, ast.FuncCall):
            names.append(_funcname(v))
        elif isinstance(v, ast.TypeCast) and isinstance(v.arg, ast.ColumnRef):
            names.append(_name(v.arg.fields[-1]))
        else:
            names.append("?column?")
    return names


def analyze(sql: str, resolver: Resolver) -> list[Statement]:
    """Every statement of `sql`, in order. Raises LineageError when the text cannot be read."""
    try:
        stmts = parse_sql(sql)
    except Exception as e:  # noqa: BLE001 -- pglast.parser.ParseError and friends
        raise LineageError(f"cannot parse: {e}") from None
    views: dict = {}
    out = []
    for raw in stmts:
        try:
            out.append(_Analyzer(resolver, 0, views).statement(raw.stmt))
        except LineageError:
            raise
        except RecursionError:
            raise LineageError("nested too deep to follow") from None
    return out
