"""Statement kinds: what each statement of a Query or Parse is, read by PostgreSQL's own parser.

The guardrail packs are patterns over a normalised text; a kind rule (`allow_kinds` on a
`[[connection.guardrail]]`) instead asks PostgreSQL's grammar (pglast = libpg_query, the server's
parser as a library) what the statement *is*, and refuses every statement whose kinds are not all
in the allow-list:

    kinds = CLASSIFIER.classify(b"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x")
    # frozenset({'select', 'delete_no_where'})

A statement has one main kind and may add more: the data-modifying statements it runs (a
`WITH … (DELETE …)`, `EXPLAIN ANALYZE`, `PREPARE … AS`, `DECLARE … CURSOR FOR`, `COPY (…) TO`,
`CREATE TABLE … AS`) and the dangers it carries (`alter_type_using`, `set_role`, `copy_program`,
…). A message with several statements has the union. Text the parser refuses is `unparsed`.

The kinds are the user-facing vocabulary of `allow_kinds`: KINDS below, with `ddl` as the one
alias (every ddl_* kind). Functions are not looked into: `SELECT f()` is a select whatever f does.

Parsing costs about 12 us for a short statement (parse to JSON + orjson; pglast's Python node
objects cost 100 us, hence the JSON), so the answers are cached in a bounded LRU keyed by the
normalised statement (hoopwire._sqlnorm's code view: comments and whitespace folded, string
literals replaced, and numbers too): statements that differ only in their constants share one
parse.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

import orjson
from pglast import parser as _pg

from hoopwire._sqlnorm import statement_views

__all__ = ["KINDS", "ALIASES", "StatementClassifier", "CLASSIFIER", "kinds_of", "literal_form"]

# name -> what it is (the README's table is written from this)
KINDS: dict[str, str] = {
    "select": "SELECT, VALUES, TABLE (a query; functions it calls are not looked into)",
    "insert": "INSERT (ON CONFLICT DO UPDATE adds update)",
    "update": "UPDATE with a WHERE clause",
    "update_no_where": "UPDATE with no WHERE, or a WHERE with no column, parameter or call in it",
    "delete": "DELETE with a WHERE clause",
    "delete_no_where": "DELETE with no WHERE, or a WHERE with no column, parameter or call in it",
    "merge": "MERGE",
    "update_pg_settings": "UPDATE pg_settings (a SET by another name)",
    "ddl_create": "CREATE … (tables, indexes, views, types, schemas, functions, …), SELECT INTO",
    "ddl_alter": "ALTER … (not ALTER ROLE / ALTER SYSTEM), COMMENT ON, SECURITY LABEL",
    "ddl_drop": "DROP …, DROP OWNED",
    "ddl_truncate": "TRUNCATE",
    "alter_type_using": "ALTER TABLE … ALTER COLUMN … TYPE … USING expr (runs expr per row)",
    "create_schema_authorization": "CREATE SCHEMA … AUTHORIZATION role (owned by another role)",
    "create_function": "CREATE [OR REPLACE] FUNCTION / PROCEDURE",
    "role": "CREATE / ALTER / DROP ROLE, USER, GROUP; ALTER ROLE … SET",
    "set": "SET, SET LOCAL, SET TRANSACTION",
    "reset": "RESET, RESET ALL, DISCARD",
    "set_role": "SET [LOCAL] ROLE, SET SESSION AUTHORIZATION and their RESET (with set/reset)",
    "show": "SHOW",
    "alter_system": "ALTER SYSTEM",
    "copy_to": "COPY … TO",
    "copy_from": "COPY … FROM",
    "copy_file": "COPY to or from a file on the server (with copy_to/copy_from)",
    "copy_program": "COPY to or from a program on the server (with copy_to/copy_from)",
    "do": "DO (an anonymous code block)",
    "call": "CALL",
    "transaction": "BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION, …",
    "prepare": "PREPARE … AS (with the kinds of the statement prepared)",
    "execute": "EXECUTE of a prepared statement",
    "deallocate": "DEALLOCATE",
    "declare": "DECLARE … CURSOR FOR (with the kinds of its query)",
    "fetch": "FETCH, MOVE",
    "close": "CLOSE",
    "grant": "GRANT (privileges or roles), ALTER DEFAULT PRIVILEGES … GRANT",
    "revoke": "REVOKE, ALTER DEFAULT PRIVILEGES … REVOKE",
    "vacuum": "VACUUM, ANALYZE",
    "explain": "EXPLAIN (EXPLAIN ANALYZE adds the kinds of the statement it runs)",
    "other": "everything else: LOCK, LISTEN/NOTIFY, CLUSTER, REINDEX, REFRESH, LOAD, CHECKPOINT, …",
    "unparsed": "text PostgreSQL's parser refuses",
}
DDL = frozenset(("ddl_create", "ddl_alter", "ddl_drop", "ddl_truncate"))
ALIASES: dict[str, frozenset[str]] = {"ddl": DDL}

# statement node -> its main kind, where the name alone does not say (see _main_kind)
_BY_NODE = {
    "SelectStmt": "select", "InsertStmt": "insert", "MergeStmt": "merge",
    "TruncateStmt": "ddl_truncate", "IndexStmt": "ddl_create", "ViewStmt": "ddl_create",
    "RuleStmt": "ddl_create", "DefineStmt": "ddl_create", "CompositeTypeStmt": "ddl_create",
    "ImportForeignSchemaStmt": "ddl_create", "RenameStmt": "ddl_alter",
    "CommentStmt": "ddl_alter", "SecLabelStmt": "ddl_alter", "ReassignOwnedStmt": "ddl_alter",
    "DropOwnedStmt": "ddl_drop", "DropStmt": "ddl_drop",
    "CreateRoleStmt": "role", "AlterRoleStmt": "role", "AlterRoleSetStmt": "role",
    "DropRoleStmt": "role", "AlterSystemStmt": "alter_system", "VariableShowStmt": "show",
    "DiscardStmt": "reset", "DoStmt": "do", "CallStmt": "call", "TransactionStmt": "transaction",
    "ExecuteStmt": "execute", "DeallocateStmt": "deallocate", "FetchStmt": "fetch",
    "ClosePortalStmt": "close", "VacuumStmt": "vacuum", "ExplainStmt": "explain",
    "PrepareStmt": "prepare", "DeclareCursorStmt": "declare",
}
# expressions that make a WHERE depend on the row (or on something not known from the text)
_VARYING = frozenset(("ColumnRef", "ParamRef", "FuncCall", "SubLink", "CurrentOfExpr"))
_FALSE = frozenset(("false", "off", "0", "no", "f", "n"))
_SETTINGS = ("pg_settings",)
_NESTED = ('"InsertStmt"', '"UpdateStmt"', '"DeleteStmt"', '"MergeStmt"', '"intoClause"',
           '"onConflictClause"')
_ROLE_SETTINGS = frozenset(("role", "session_authorization"))
# A number in the cache key: no kind depends on a numeric constant (WHERE 1 = 2 is as constant
# as WHERE 1 = 1, EXPLAIN (ANALYZE 0) is taken to run), so `id = 7` and `id = 8` share an entry.
# Not a digit inside an identifier (t1, a high-bit letter before it) nor a $1.
_NUMBER = re.compile(rb"(?<![A-Za-z0-9_$\x80-\xff])[0-9][0-9A-Za-z_.]*")


def _walk(node):
    """Every dict in a parse tree (JSON form), depth first."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            yield n
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)


def _has(node, names: frozenset[str]) -> bool:
    return any(not names.isdisjoint(d) for d in _walk(node))


def _is_settings(rel: dict) -> bool:
    return rel.get("relname") in _SETTINGS and rel.get("schemaname") in (None, "pg_catalog")


def _write_kind(name: str, body: dict) -> str:
    """update / update_no_where / update_pg_settings, delete / delete_no_where."""
    if name == "UpdateStmt" and _is_settings(body.get("relation", {})):
        return "update_pg_settings"
    base = "update" if name == "UpdateStmt" else "delete"
    where = body.get("whereClause")
    if where is None or not _has(where, _VARYING):
        return base + "_no_where"   # WHERE true, WHERE 1 = 1, WHERE NOT false
    return base


def _runs(node, out: set[str]) -> None:
    """The data-modifying statements anywhere in `node` (CTEs, INSERT … SELECT, …)."""
    for d in _walk(node):
        for name in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            body = d.get(name)
            if body is None:
                continue
            if name == "InsertStmt":
                out.add("insert")
                occ = body.get("onConflictClause")
                if occ and occ.get("action") == "ONCONFLICT_UPDATE":
                    out.add("update")
            elif name == "MergeStmt":
                out.add("merge")
            else:
                out.add(_write_kind(name, body))
        body = d.get("SelectStmt")
        if body is not None and body.get("intoClause") is not None:
            out.add("ddl_create")   # SELECT … INTO creates a table


def _analyzes(explain: dict) -> bool:
    for o in explain.get("options") or ():
        el = o.get("DefElem", {})
        if el.get("defname") == "analyze":
            arg = el.get("arg")
            if arg is None:
                return True
            value = arg.get("String", {}).get("sval")
            if value is None:
                b = arg.get("Boolean")
                if b is not None:
                    return bool(b.get("boolval"))
                return True     # anything else: assume it runs
            return value.lower() not in _FALSE
    return False


def _statement_kinds(stmt: dict, out: set[str], nested: bool = True) -> None:
    """Add the kinds of one statement to `out`. `nested`: the tree may hold a write or an
    INTO below the top (a substring test on the parser's JSON says; walking a tree costs
    60 us for a short SELECT, the test well under one)."""
    (name, body), = stmt.items()
    kind = _BY_NODE.get(name)
    if kind is None:
        if name in ("UpdateStmt", "DeleteStmt"):
            kind = _write_kind(name, body)
        elif name == "CreateFunctionStmt":
            out.add("create_function")
            kind = "ddl_create"
        elif name == "CreateSchemaStmt":
            if body.get("authrole") is not None:
                out.add("create_schema_authorization")
            kind = "ddl_create"
        elif name == "CreateTableAsStmt":
            if nested:
                _runs(body.get("query"), out)
            kind = "ddl_create"
        elif name == "AlterTableStmt":
            for c in body.get("cmds") or ():
                cmd = c.get("AlterTableCmd", {})
                if cmd.get("subtype") == "AT_AlterColumnType" and \
                        cmd.get("def", {}).get("ColumnDef", {}).get("raw_default") is not None:
                    out.add("alter_type_using")
            kind = "ddl_alter"
        elif name == "VariableSetStmt":
            kind = "reset" if body.get("kind", "").startswith("VAR_RESET") else "set"
            if body.get("name") in _ROLE_SETTINGS:
                out.add("set_role")
        elif name == "CopyStmt":
            kind = "copy_from" if body.get("is_from") else "copy_to"
            if body.get("is_program"):
                out.add("copy_program")
            elif body.get("filename") is not None:
                out.add("copy_file")
            if nested:
                _runs(body.get("query"), out)
        elif name in ("GrantStmt", "GrantRoleStmt"):
            kind = "grant" if body.get("is_grant") else "revoke"
        elif name == "AlterDefaultPrivilegesStmt":
            kind = "grant" if body.get("action", {}).get("is_grant") else "revoke"
        elif name.startswith("Create"):
            kind = "ddl_create"
        elif name.startswith("Alter"):
            kind = "ddl_alter"
        elif name.startswith("Drop"):
            kind = "ddl_drop"
        else:
            kind = "other"
    elif kind == "explain":
        if _analyzes(body):
            _statement_kinds(body["query"], out, nested)
    elif kind in ("prepare", "declare"):
        _statement_kinds(body["query"], out, nested)
    out.add(kind)
    if kind in ("select", "insert", "update", "update_no_where", "delete", "delete_no_where",
                "merge", "update_pg_settings"):
        if nested:
            _runs(stmt, out)


def kinds_of(sql: str) -> frozenset[str]:
    """The kinds of every statement in `sql`, uncached; {'unparsed'} if the parser refuses it."""
    try:
        js = _pg.parse_sql_json(sql)
        tree = orjson.loads(js)
    except Exception:   # ParseError, and whatever else the C parser may raise: never a traceback
        return frozenset(("unparsed",))
    # (a string literal holding these words only costs a walk: the test errs towards walking)
    nested = any(w in js for w in _NESTED)
    out: set[str] = set()
    for raw in tree.get("stmts", ()):
        _statement_kinds(raw["stmt"], out, nested)
    return frozenset(out)


def _backslash_reading(sql: str) -> str | None:
    """`sql` as a server with standard_conforming_strings off reads it: every '…' literal that
    holds a backslash written E'…'. One literal at a time, re-scanning after each, since where
    the next literal starts depends on where this one ends. None if the scanner refuses it."""
    pos = 0
    for _ in range(sql.count("\\") + 1):
        try:
            tokens = _pg.scan(sql)
        except Exception:
            return None
        for t in tokens:
            if t.start < pos or t.name != "SCONST":
                continue
            text = sql[t.start:t.end + 1]
            if text.startswith("'") and "\\" in text:
                sql = sql[:t.start] + "E" + sql[t.start:]
                pos = t.start + 1
                break
        else:
            return sql
    return sql


class StatementClassifier:
    """What the policy engine calls (see hoopwire.policy.engine): `names` are the words an
    allow-list may hold, each standing for a set of kinds; `classify(sql)` gives a message's
    kinds. One per process, shared by every connection; thread safe."""

    def __init__(self, cache_size: int = 4096):
        self.names: dict[str, frozenset[str]] = {k: frozenset((k,)) for k in KINDS}
        self.names.update(ALIASES)
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, frozenset[str]] = OrderedDict()
        self._lock = threading.Lock()
        self.parses = 0       # cache misses, for tests and the benchmark

    def classify(self, sql: bytes) -> frozenset[str]:
        # latin-1 maps every byte to one character: the parser sees the same ASCII structure
        # the server sees in any ASCII-compatible encoding (bytes >= 0x80 are identifier or
        # literal characters to it), and no decoding can fail
        code, _, ambiguous = statement_views(sql, False)
        if ambiguous:
            # a '…' literal holds a backslash: with standard_conforming_strings off the server
            # would read another statement. Judge both readings, and cache neither.
            text = sql.decode("latin-1")
            self.parses += 1
            kinds = kinds_of(text)
            other = _backslash_reading(text)
            return kinds | (kinds_of(other) if other is not None else {"unparsed"})
        return self._by_code(sql, code)

    def classify_shape(self, sql: bytes, code: list) -> frozenset[str]:
        """classify, for a text whose statement_shape the caller has made (so not ambiguous):
        its code pieces, integers written 0 or 1, give the same cache key as the text's own,
        and the lexer does not run a second time (the guardrail engine, on a shape it has not
        judged yet)."""
        return self._by_code(sql, code)

    def _by_code(self, sql: bytes, code: list) -> frozenset[str]:
        key = _NUMBER.sub(b"0", b"\0".join(code))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        self.parses += 1
        kinds = kinds_of(sql.decode("latin-1"))
        if "unparsed" not in kinds and self.cache_size:
            # only what parsed is cached: the same shape with a bad literal elsewhere (E'\xff')
            # is the server's to refuse, but a bad one first must not refuse the good ones
            with self._lock:
                self._cache[key] = kinds
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return kinds

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    @staticmethod
    def literal_form(sql: bytes) -> bytes | None:
        return literal_form(sql)


CLASSIFIER = StatementClassifier()


# -- pg_dump's computed set_config ------------------------------------------------------------
# pg_dump 15.14+ (and 13.22+, 14.19+, 16.10+, 17.6+) runs
#   SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings
#   WHERE name = 'restrict_nonsystem_relation_kind'
# The session-tampering pack refuses every set_config whose setting name is not a literal; this
# one's name is pinned by its WHERE to a literal, so the packs may judge it as the statement it
# amounts to, SELECT set_config('restrict_nonsystem_relation_kind', ..., false).
PG_DUMP_SETTINGS = frozenset(("restrict_nonsystem_relation_kind",))
_FUNC_KEYS = frozenset(("funcname", "args", "funcformat", "location"))
_SELECT_KEYS = frozenset(("targetList", "fromClause", "whereClause", "limitOption", "op"))


def _is_column(node: dict, name: str) -> bool:
    fields = node.get("ColumnRef", {}).get("fields")
    return fields == [{"String": {"sval": name}}]


def _literal_form_of(sel: dict) -> tuple[list[str], str, str] | None:
    """(function name, setting, value) if `sel` is exactly pg_dump's statement."""
    if not _SELECT_KEYS.issuperset(sel) or sel.get("op") != "SETOP_NONE" or \
            sel.get("limitOption") != "LIMIT_OPTION_DEFAULT":
        return None
    targets, source, where = sel.get("targetList"), sel.get("fromClause"), sel.get("whereClause")
    if not targets or len(targets) != 1 or not source or len(source) != 1 or where is None:
        return None
    target = targets[0].get("ResTarget", {})
    if set(target) - {"val", "location"}:
        return None
    call = target.get("val", {}).get("FuncCall")
    if call is None or not _FUNC_KEYS.issuperset(call) or \
            call.get("funcformat") != "COERCE_EXPLICIT_CALL":
        return None
    fn = [p.get("String", {}).get("sval") for p in call.get("funcname", ())]
    if fn not in (["set_config"], ["pg_catalog", "set_config"]):
        return None
    args = call.get("args") or []
    if len(args) != 3 or not _is_column(args[0], "name"):
        return None
    value = args[1].get("A_Const", {}).get("sval", {}).get("sval")
    local = args[2].get("A_Const")
    if value is None or local is None or set(local) != {"boolval", "location"} or \
            local["boolval"] != {}:    # false: set for the session, as pg_dump does
        return None
    rel = source[0].get("RangeVar", {})
    if set(rel) - {"relname", "schemaname", "inh", "relpersistence", "location"} or \
            not _is_settings(rel) or rel.get("inh") is not True:
        return None
    cmp = where.get("A_Expr", {})
    if cmp.get("kind") != "AEXPR_OP" or cmp.get("name") != [{"String": {"sval": "="}}] or \
            not _is_column(cmp.get("lexpr", {}), "name"):
        return None
    setting = cmp.get("rexpr", {}).get("A_Const", {}).get("sval", {}).get("sval")
    if setting not in PG_DUMP_SETTINGS:
        return None
    return fn, setting, value


def literal_form(sql: bytes) -> bytes | None:
    """For pg_dump's `SELECT set_config(name, '<v>', false) FROM pg_settings WHERE name =
    '<setting>'` (one statement, exactly that shape, a setting in PG_DUMP_SETTINGS): the same
    call with the name written as a literal, for the packs to judge. None for anything else,
    and for text whose reading depends on standard_conforming_strings."""
    low = sql.lower()
    if b"pg_settings" not in low or b"set_config" not in low:
        return None
    code, _, ambiguous = statement_views(sql, False)
    if ambiguous or len(code) != 1:
        return None
    try:
        tree = orjson.loads(_pg.parse_sql_json(sql.decode("latin-1")))
    except Exception:
        return None
    stmts = tree.get("stmts", ())
    if len(stmts) != 1:
        return None
    sel = stmts[0]["stmt"].get("SelectStmt")
    found = _literal_form_of(sel) if sel is not None else None
    if found is None:
        return None
    fn, setting, value = found
    quoted = value.replace("'", "''")
    return f"SELECT {'.'.join(fn)}('{setting}', '{quoted}', false)".encode("latin-1")
