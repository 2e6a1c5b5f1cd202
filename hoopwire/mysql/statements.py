"""Statement kinds for MySQL and MariaDB: what each statement of a COM_QUERY or COM_STMT_PREPARE
is, for `allow_kinds` rules (hoopwire/policy/engine.py).

    kinds = CLASSIFIER.classify(b"DELETE FROM t")          # frozenset({'delete_no_where'})

A keyword classifier over the lexer's code view (hoopwire/mysql/_sqllex.pyx), not a parser.
Why not sqlglot's MySQL dialect: its tokenizer takes `/*! ... */` for a comment, so
`/*!DROP*/ TABLE t` would read as TABLE t, a select, while the server drops the table; and it
reads one sql_mode. The code view is the text the server runs (executable comment bodies are
code, literals are '?', names are bare), split at `;`, under every reading the guardrails scan
(sql_mode, server, version: a message the lexer calls ambiguous gets the kinds of every
reading). What a statement is shows in its first words; the rest only matters for a WHERE.

It fails closed: a statement whose first word it does not know is `unparsed`, which no
allow-list names unless it says so. The kinds use PostgreSQL's names (hoopwire/pg/statements.py)
where they mean the same, so a rule's allow_kinds reads the same on both protocols.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

from hoopwire.mysql._sqllex import UNREADABLE, statement_views

__all__ = ["KINDS", "ALIASES", "StatementClassifier", "CLASSIFIER", "kinds_of"]

# name -> what it is (the README's table is written from this)
KINDS: dict[str, str] = {
    "select": "SELECT, VALUES, TABLE, WITH ... SELECT, DO expr (functions it calls are not "
              "looked into)",
    "insert": "INSERT, REPLACE (REPLACE adds delete; ON DUPLICATE KEY UPDATE adds update)",
    "update": "UPDATE with a WHERE clause (also multi-table)",
    "update_no_where": "UPDATE with no WHERE, or a WHERE with no column, variable, parameter or "
                       "call in it",
    "delete": "DELETE with a WHERE clause (also multi-table)",
    "delete_no_where": "DELETE with no WHERE, or a WHERE with no column, variable, parameter or "
                       "call in it",
    "ddl_create": "CREATE TABLE / INDEX / VIEW / DATABASE / SEQUENCE / SERVER ..., CREATE TABLE "
                  "... SELECT",
    "ddl_alter": "ALTER TABLE / DATABASE / VIEW / SEQUENCE ..., RENAME TABLE",
    "ddl_drop": "DROP TABLE / DATABASE / VIEW / INDEX / routine ...; also (with ddl_alter) "
                "ALTER TABLE ... DROP a column, key, constraint or partition, DISCARD "
                "TABLESPACE, ENGINE = BLACKHOLE, and (with ddl_create) CREATE OR REPLACE TABLE",
    "ddl_truncate": "TRUNCATE; also (with ddl_alter) ALTER TABLE ... TRUNCATE PARTITION",
    "create_function": "CREATE [OR REPLACE] FUNCTION / PROCEDURE / TRIGGER / EVENT / PACKAGE, "
                       "ALTER FUNCTION / PROCEDURE / EVENT",
    "role": "CREATE / ALTER / DROP / RENAME USER and ROLE, SET PASSWORD, SET DEFAULT ROLE",
    "set": "SET (variables, NAMES, CHARACTER SET, TRANSACTION, STATEMENT ... FOR adds the "
           "statement's kinds)",
    "set_role": "SET ROLE (with set)",
    "show": "SHOW, DESCRIBE / DESC / EXPLAIN of a table, HELP",
    "use": "USE (a schema switch)",
    "call": "CALL",
    "do": "BEGIN NOT ATOMIC ... END (MariaDB's anonymous block)",
    "transaction": "BEGIN, START TRANSACTION, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, XA, "
                   "LOCK / UNLOCK TABLES",
    "prepare": "PREPARE (with the kinds of its text when that is a literal)",
    "execute": "EXECUTE, EXECUTE IMMEDIATE (with the kinds of its text when that is a literal)",
    "deallocate": "DEALLOCATE / DROP PREPARE",
    "grant": "GRANT",
    "revoke": "REVOKE",
    "vacuum": "ANALYZE / OPTIMIZE / CHECK / REPAIR / CHECKSUM TABLE",
    "explain": "EXPLAIN / DESCRIBE of a statement (with that statement's kinds: MariaDB's "
               "ANALYZE and MySQL's EXPLAIN ANALYZE run it)",
    "load_data": "LOAD DATA / LOAD XML (with server_file unless LOCAL)",
    "server_file": "a file on the server read or written: SELECT ... INTO OUTFILE / DUMPFILE, "
                   "LOAD DATA INFILE (not LOCAL), LOAD_FILE()",
    "other": "everything else the server knows: FLUSH, KILL, HANDLER, INSTALL PLUGIN, "
             "SHUTDOWN, replication, BINLOG, CACHE INDEX, ...",
    "unparsed": "a statement whose first word the classifier does not know",
}
DDL = frozenset(("ddl_create", "ddl_alter", "ddl_drop", "ddl_truncate"))
ALIASES: dict[str, frozenset[str]] = {"ddl": DDL}

_TOKEN = re.compile(rb"'\?'|`[^`]*`|[a-z_$\x80-\xff][a-z0-9_$\x80-\xff]*|[0-9][0-9a-z_.]*"
                    rb"|@@?[a-z0-9_$.]*|\S")
_CODE_OBJECTS = frozenset((b"function", b"procedure", b"trigger", b"event", b"package"))
_USERS = frozenset((b"user", b"role"))
# the words CREATE and ALTER name an object by
_OBJECTS = _CODE_OBJECTS | _USERS | frozenset((
    b"table", b"view", b"index", b"database", b"schema", b"sequence", b"server", b"tablespace",
    b"logfile", b"instance", b"resource", b"spatial", b"fulltext", b"unique"))
_CONSTANT_WORDS = frozenset((b"true", b"false", b"not", b"and", b"or", b"xor", b"null", b"is",
                             b"unknown", b"in", b"between", b"like", b"div", b"mod"))
_WHERE_END = frozenset((b"order", b"limit", b"returning", b"group", b"having", b"window",
                        b"for", b"lock", b"into"))
_SIMPLE = {
    b"select": "select", b"values": "select", b"table": "select", b"do": "select",
    b"truncate": "ddl_truncate", b"rename": "ddl_alter", b"call": "call", b"use": "use",
    b"show": "show", b"help": "show", b"commit": "transaction", b"rollback": "transaction",
    b"savepoint": "transaction", b"release": "transaction", b"xa": "transaction",
    b"lock": "transaction", b"unlock": "transaction", b"start": None, b"deallocate": "deallocate",
    b"grant": "grant", b"revoke": "revoke", b"optimize": "vacuum", b"check": "vacuum",
    b"repair": "vacuum", b"checksum": "vacuum",
    b"flush": "other", b"kill": "other", b"handler": "other", b"install": "other",
    b"uninstall": "other", b"shutdown": "other", b"restart": "other", b"purge": "other",
    b"reset": "other", b"change": "other", b"stop": "other", b"binlog": "other",
    b"cache": "other", b"backup": "other", b"signal": "other", b"resignal": "other",
    b"get": "other", b"clone": "other", b"import": "other",
}


def _tokens(stmt: bytes) -> list[bytes]:
    return _TOKEN.findall(stmt)


def _top_level(tokens: list[bytes], start: int = 0):
    """(index, token) of the tokens outside parentheses, from `start`."""
    depth = 0
    for i in range(start, len(tokens)):
        t = tokens[i]
        if t == b"(":
            depth += 1
        elif t == b")":
            depth = max(0, depth - 1)
        elif depth == 0:
            yield i, t


def _bounded(tokens: list[bytes], start: int) -> bool:
    """Whether a top-level WHERE after `start` depends on the row: a column, variable,
    parameter or call in its condition (WHERE 1, WHERE true, WHERE 'x' = 'x' do not)."""
    where = next((i for i, t in _top_level(tokens, start) if t == b"where"), None)
    if where is None:
        return False
    depth = 0
    for t in tokens[where + 1:]:
        if t == b"(":
            depth += 1
            continue
        if t == b")":
            depth -= 1
            continue
        if depth == 0 and t in _WHERE_END:
            break
        if t == b"?" or t.startswith(b"@") or t.startswith(b"`"):
            return True
        if (t[:1].isalpha() or t[:1] in (b"_", b"$") or t[0] >= 0x80) and \
                t not in _CONSTANT_WORDS:
            return True
    return False


def _write_kinds(tokens: list[bytes], i: int, out: set[str]) -> None:
    """DELETE / UPDATE starting at tokens[i]."""
    name = "delete" if tokens[i] == b"delete" else "update"
    out.add(name if _bounded(tokens, i + 1) else name + "_no_where")


def _table_losses(tokens: list[bytes], i: int, w: bytes, out: set[str]) -> None:
    """CREATE / ALTER TABLE at tokens[i] that drops or empties something is also ddl_drop /
    ddl_truncate, as the destructive-ddl pack reads it (hoopwire/mysql/packs.py): an allow_kinds
    list with ddl_alter and no ddl_drop does not let ALTER TABLE t DROP COLUMN c through."""
    if w == b"create":
        if tokens[i + 1:i + 3] == [b"or", b"replace"]:
            out.add("ddl_drop")                  # MariaDB drops the table it replaces
        return
    prev = b""
    for _, t in _top_level(tokens, i + 1):
        if prev == b"drop" and t != b"default":
            out.add("ddl_drop")                  # a column, key, constraint, partition
        elif prev == b"truncate" and t == b"partition":
            out.add("ddl_truncate")
        elif prev == b"discard" or (prev == b"engine" and t == b"blackhole") or \
                (prev == b"=" and t == b"blackhole"):
            out.add("ddl_drop")                  # a tablespace's rows, every row
        prev = t


def _kinds_at(tokens: list[bytes], i: int, out: set[str], depth: int = 0) -> None:
    """The kinds of the statement starting at tokens[i]."""
    while i < len(tokens) and tokens[i] == b"(":
        i += 1                                   # (SELECT ...) UNION ...
    if i >= len(tokens) or depth > 8:
        out.add("unparsed")
        return
    w = tokens[i]
    nxt = tokens[i + 1] if i + 1 < len(tokens) else b""
    if i + 2 < len(tokens) and tokens[i + 1] == b":" and w[:1].isalpha():
        return _kinds_at(tokens, i + 2, out, depth + 1)     # label: BEGIN ...
    if w in (b"delete", b"update"):
        _write_kinds(tokens, i, out)
    elif w in (b"insert", b"replace"):
        out.add("insert")
        if w == b"replace":
            out.add("delete")
        rest = [t for _, t in _top_level(tokens, i + 1)]
        if any(rest[k:k + 3] == [b"duplicate", b"key", b"update"] for k in range(len(rest))):
            out.add("update")
    elif w == b"with":
        # WITH [RECURSIVE] name AS (...), ... <statement>: the first top-level statement word
        for j, t in _top_level(tokens, i + 1):
            if t in (b"select", b"update", b"delete", b"insert", b"replace", b"table", b"values"):
                return _kinds_at(tokens, j, out, depth + 1)
        out.add("unparsed")
    elif w in (b"explain", b"describe", b"desc", b"analyze"):
        j = i + 1
        while j < len(tokens) and tokens[j] in (b"extended", b"partitions", b"analyze",
                                                 b"format", b"=", b"json", b"tree",
                                                 b"traditional", b"verbose"):
            j += 1
        if j < len(tokens) and tokens[j] in (b"select", b"insert", b"update", b"delete",
                                             b"replace", b"with", b"table", b"values", b"("):
            out.add("explain")
            return _kinds_at(tokens, j, out, depth + 1)
        if w == b"analyze" and j < len(tokens) and tokens[j] in (b"table", b"no_write_to_binlog",
                                                                 b"local"):
            out.add("vacuum")
        elif w == b"explain" and j < len(tokens) and tokens[j] == b"for":
            out.add("explain")                     # EXPLAIN FOR CONNECTION n
        else:
            out.add("show")                        # DESCRIBE t
    elif w in (b"create", b"alter"):
        # what it creates or alters: the first object word (DEFINER = user@host, OR REPLACE,
        # ALGORITHM = ..., SQL SECURITY ... may come before it; a name that is a keyword is
        # `_name` in the code view, so it is never taken for one)
        what = next((t for t in tokens[i + 1:i + 16] if t in _OBJECTS), b"")
        if what in _CODE_OBJECTS:
            out.add("create_function")
        elif what in _USERS:
            out.add("role")
        else:
            out.add("ddl_create" if w == b"create" else "ddl_alter")
            if what == b"table":
                _table_losses(tokens, i, w, out)
    elif w == b"drop":
        if nxt in _USERS:
            out.add("role")
        elif nxt == b"prepare":
            out.add("deallocate")
        else:
            out.add("ddl_drop")
    elif w == b"rename" and nxt in _USERS:
        out.add("role")
    elif w == b"set":
        j = i + 1
        if nxt in (b"password",) or (nxt == b"default" and i + 2 < len(tokens)
                                     and tokens[i + 2] == b"role"):
            out.add("role")
        elif nxt == b"role":
            out.update(("set", "set_role"))
        elif nxt == b"statement":
            out.add("set")
            for k, t in _top_level(tokens, j):
                if t == b"for":
                    return _kinds_at(tokens, k + 1, out, depth + 1)
            out.add("unparsed")
        else:
            out.add("set")
    elif w == b"begin":
        out.add("do" if nxt == b"not" else "transaction")
    elif w == b"start":
        out.add("transaction" if nxt == b"transaction" else "other")   # START SLAVE ...
    elif w == b"load":
        out.add("load_data" if nxt in (b"data", b"xml") else "other")   # LOAD INDEX INTO CACHE
        if nxt in (b"data", b"xml") and b"local" not in tokens[i:i + 5]:
            out.add("server_file")
    elif w == b"prepare":
        out.add("prepare")
    elif w == b"execute":
        out.add("execute")
    elif w in _SIMPLE and _SIMPLE[w] is not None:
        out.add(_SIMPLE[w])
    else:
        out.add("unparsed")
    if w in (b"select", b"with", b"values", b"table", b"do", b"("):
        rest = tokens[i:]
        if any(rest[k] == b"into" and rest[k + 1] in (b"outfile", b"dumpfile")
               for k in range(len(rest) - 1)):
            out.add("server_file")
    if b"load_file" in tokens:
        out.add("server_file")


def kinds_of(stmts: list[bytes]) -> frozenset[str]:
    """The kinds of code-view statements (one message's, every reading)."""
    out: set[str] = set()
    for stmt in stmts:
        if stmt == UNREADABLE or not stmt:
            out.add("unparsed")
            continue
        _kinds_at(_tokens(stmt), 0, out)
    return frozenset(out)


class StatementClassifier:
    """What the policy engine calls (hoopwire/policy/engine.py): `names` are the words an
    allow_kinds list may hold; classify(sql) the kinds of a message's statements. Answers are
    cached by the message's bytes in a bounded LRU (one lexer pass, a few µs, per miss)."""

    def __init__(self, cache_size: int = 4096):
        self.names: dict[str, frozenset[str]] = {k: frozenset((k,)) for k in KINDS}
        self.names.update(ALIASES)
        self._cache: OrderedDict[bytes, frozenset[str]] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()

    def classify(self, sql: bytes) -> frozenset[str]:
        sql = bytes(sql)
        with self._lock:
            hit = self._cache.get(sql)
            if hit is not None:
                self._cache.move_to_end(sql)
                return hit
        code, _, ambiguous = statement_views(sql)
        if ambiguous:
            code = code + statement_views(sql, alternate=True)[0]
        kinds = kinds_of(code) if code else frozenset(("unparsed",))
        with self._lock:
            self._cache[sql] = kinds
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return kinds

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


CLASSIFIER = StatementClassifier()
