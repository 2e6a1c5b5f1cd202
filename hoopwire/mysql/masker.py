"""Masking of what a MySQL / MariaDB session returns: the Python half of the relay's results.

The relay (hoopwire.mysql._wire) asks this module once per statement text (`statement`) and
once per result set (`result_plan`) how rows are to be rewritten; the rows themselves go
through a neutral RowPlan (hoopwire._mask) in Cython. Here:

* column definitions -> RowPlan. A definition's (schema, org_table, org_name) is taken when a
  rule masks it (it can only over-mask); otherwise it is NOT trusted, because a derived table
  or CTE alias stands in for a table name and a view reports itself (hoopwire/mysql/catalog.py
  says how): when the statement mentions a masked column, a table or view holding one, a user
  routine or a relation of copied values, column lineage (hoopwire/mysql/lineage.py, over the
  catalog's tables and view definitions) decides every column -- reads a masked column: that
  rule; placed and reads none: passed (detectors aside); not placeable: unresolved_columns
  (`mask` masks it whole, `detect` leaves it to the detectors, `block` refuses the result).
  A statement that mentions none of those cannot read masked data: its columns go to the
  detectors. Results whose rows come from text the gateway never saw (EXECUTE of a prepared
  statement, CALL, HANDLER, SHOW PROCESSLIST, SHOW WARNINGS...) are unresolved.
* metadata statements (SHOW CREATE TABLE, SHOW COLUMNS, DESCRIBE, EXPLAIN ...) answer with the
  schema, not the rows: detectors only, so the CLI, mariadb-dump and ORM reflection work.
* ERR texts: while column rules apply, every quoted run of a message that the statement's own
  text does not hold is replaced (`Duplicate entry '123-45-6789' for key 'ssn'` is the classic
  way to read a value through an error), then the detectors run over what is left.
* WriteGuard refuses statements that store a masked value where the session can read it back
  (INSERT ... SELECT ssn, UPDATE t SET x = ssn, CREATE TABLE ... AS SELECT, SELECT ... INTO
  @v / OUTFILE, SET @v = (SELECT ssn ...), `@v := ssn`), schema changes that move a masked
  column away from the names rules match (ALTER / RENAME of its table), and dynamic SQL whose
  text the gateway cannot see (EXECUTE IMMEDIATE of an expression, PREPARE FROM @var), unless
  masked_writes = "allow".
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from dataclasses import dataclass
from typing import Optional

from hoopwire import metrics
from hoopwire._mask import RowPlan
from hoopwire.logs import event
from hoopwire.masking.engine import Column, MaskEngine, MaskRule, glob_regex
from hoopwire.masking.strategies import Strategy
from hoopwire.mysql import lineage as lin
from hoopwire.mysql.catalog import SYSTEM_SCHEMAS, Catalog, CatalogError
from hoopwire.mysql.kinds import column_kind, is_string
from hoopwire.mysql._sqllex import mask_literals, statement_views
from hoopwire.mysql._wire import ColumnDefs
from hoopwire.mysql.packets import err_packet
from hoopwire.policy.rules import Verdict

log = logging.getLogger("hoopwire.mysql.masking")

__all__ = ["ConnectionMasking", "SessionMasker", "StatementInfo", "MaskRefused", "WriteGuard",
           "NO_INFO", "CatalogError"]

_STMT_CACHE = 2048
# result plans a session keeps (statement, result number, column definitions, protocol): a
# prepared statement's every execute and a repeated text reuse one; 256 covers an application's
# working set of statements, a plan is a few hundred bytes
_PLAN_CACHE = 256
# a result naming a relation the catalog does not hold starts a read at most this often (s): a
# read of a 300-relation server took 30 ms; derived tables' aliases look the same as new tables
_UNKNOWN_REREAD = 5.0
# how long the statement after this session's own DDL waits for the catalog read that DDL
# asks for (SessionMasker.pending_read). A read of the PyMySQL suite's schema took 55 ms on a
# loaded 2-core machine; 2 s bounds the stall on a slow server, after which the fail-safe
# (a relation the catalog lacks is masked whole) answers as it did before the wait
_DDL_READ_WAIT = 2.0
_UNRESOLVED = "unresolved"
# (schema, table, column) names a result showed that the catalog contradicted, with when first
# seen: an application's handful of derived-table aliases; bounded against made-up names
_UNSURE_MAX = 4096
# Longest text lineage reads: sqlglot parses at about 0.3-1.2 ms per short statement here, and
# grows with the text (a 30 KiB SELECT of 1+1+... took 180 ms). Longer texts are unplaceable
# (their result columns are unresolved) and their writes are judged by words alone.
LINEAGE_MAX = 32 * 1024

# relations whose rows are copies of column values (statistics) or of other sessions' statement
# texts: naming one is a mention, and whatever reads them is unresolved
_OPAQUE_RELS = frozenset({
    ("mysql", "column_stats"), ("information_schema", "column_statistics"),
    ("information_schema", "processlist"), ("mysql", "general_log"), ("mysql", "slow_log"),
    ("performance_schema", "events_statements_current"),
    ("performance_schema", "events_statements_history"),
    ("performance_schema", "events_statements_history_long"),
    ("performance_schema", "threads"), ("performance_schema", "prepared_statements_instances"),
})
# and lineage's own list (InnoDB full-text index words, open transactions' statements, session
# variables...): one set of relations judged alike in both places
_OPAQUE_RELS = _OPAQUE_RELS | frozenset(getattr(lin, "_OPAQUE_RELS", ()))
_OPAQUE_WORDS = frozenset(n for _s, n in _OPAQUE_RELS) | {"load_file", "processlist"}

# --------------------------------------------------------------------------------------------
# statement text: words, statements, and what each statement is

# One token at a time, under one of the four readings of the session's sql_mode (the relay's
# mode is not known here, and a text read under all four cannot hide a word from the server's):
# strings with or without backslash escapes, "..." a string or (ANSI_QUOTES) an identifier.
# Comments are skipped except executable ones (`/*!`, `/*M!`), whose text the server runs.
#
# Word characters: ASCII letters, digits, _ and $, and non-ASCII except U+00A0 (a space to a
# latin1 connection) and U+FFFD (what a byte that is not UTF-8 decodes to here): either would
# glue `ssn\xa0FROM` into one word the server reads as two
_WORD = r"[0-9A-Za-z_$\u0080-\u009f\u00a1-\ufffc\ufffe-\U0010ffff]"
_TOK = {}
for _mode in range(4):
    _sq = r"'(?:[^'\\]|\\.|'')*(?:'|\Z)" if not _mode & 1 else r"'(?:[^']|'')*(?:'|\Z)"
    _dq = r'"(?:[^"\\]|\\.|"")*(?:"|\Z)' if not _mode & 1 else r'"(?:[^"]|"")*(?:"|\Z)'
    _TOK[_mode] = re.compile(
        r"(?P<exec>/\*M?!\d*)|(?P<cend>\*/)"
        r"|(?P<com>/\*.*?(?:\*/|\Z)|#[^\n]*|--(?:[ \t\r\f\v][^\n]*|\n|\Z))"
        r"|(?P<bq>`(?:[^`]|``)*(?:`|\Z))|(?P<sq>" + _sq + r")|(?P<dq>" + _dq + r")"
        r"|(?P<word>" + _WORD + r"+)|(?P<assign>:=)|(?P<semi>;)|(?P<p>\S)",
        re.S)
_ANY_WORD = re.compile(_WORD + "+")
_QUOTED = re.compile(r"`((?:[^`]|``)+)`|'((?:[^'\\]|\\.|'')+)'|\"((?:[^\"\\]|\\.|\"\")+)\"", re.S)

# statements that store, or change the schema: judged by WriteGuard
_STORE_FIRST = frozenset({"insert", "replace", "update", "delete", "set", "do"})
_DDL_FIRST = frozenset({"create", "alter", "rename", "drop", "truncate"})
_DYNAMIC_FIRST = frozenset({"execute", "prepare", "call", "handler"})
_META_FIRST = frozenset({"show", "describe", "desc", "explain"})
# SHOW forms whose rows are not the schema: other sessions' statement texts (PROCESSLIST,
# EXPLAIN FOR, ENGINE INNODB STATUS), logged row images (BINLOG / RELAYLOG EVENTS), messages
# that quote values (WARNINGS, ERRORS, a replica's last SQL error), profiles of statements
_SHOW_ROWS = frozenset({"processlist", "full", "engine", "binlog", "relaylog", "explain",
                        "analyze", "warnings", "errors", "profile", "profiles", "slave",
                        "replica", "all", "innodb", "count"})


# what follows EXPLAIN / DESCRIBE when it explains a statement rather than describing a table
_EXPLAINED = frozenset({"select", "insert", "update", "delete", "replace", "with", "table",
                        "values", "format", "extended", "partitions", "analyze"})
_USER_VAR = re.compile(r"(?<![@\w])@(?!@)")
# the first words that give a statement's info a flag (metadata, opaque, ddl, warnings)
_FLAG_WORDS = frozenset({"show", "describe", "desc", "explain", "use", "execute", "prepare",
                         "call", "handler", "create", "alter", "rename", "drop", "truncate"})
# words that make a statement worth tokenizing for WriteGuard even when it names nothing masked
_WRITE_WORDS = frozenset({"prepare", "execute", "diagnostics"})


def _words(text: str) -> set[str]:
    """Every word of the text, lower-cased -- in literals and comments too (a mention there can
    only widen what is followed) -- and quoted names whole (`my table`)."""
    words = {w.lower() for w in _ANY_WORD.findall(text)}
    if "`" in text or '"' in text or "'" in text:
        for mt in _QUOTED.finditer(text):
            words.add(next(g for g in mt.groups() if g is not None).lower())
    return words


def _tokens(text: str, mode: int):
    """(kind, value) of the code tokens of `text` under one sql_mode reading."""
    for mt in _TOK[mode].finditer(text):
        kind = mt.lastgroup
        if kind in ("com", "exec", "cend"):
            continue
        val = mt.group(kind)
        if kind == "bq":
            yield "word", val[1:].rstrip("`").replace("``", "`").lower()
        elif kind == "dq" and mode & 2:
            yield "word", val[1:].rstrip('"').replace('""', '"').lower()
        elif kind in ("sq", "dq"):
            yield "str", val
        elif kind == "word":
            yield "word", val.lower()
        else:
            yield kind, val


@dataclass
class _Stmt:
    first: str
    words: list[str]
    star: bool            # `SELECT *` / `t.*`: every column of the relations it names
    assign: bool          # `@v := expr`
    into: bool            # SELECT ... INTO
    literal: Optional[str]  # PREPARE s FROM '...' / EXECUTE IMMEDIATE '...': that text


def _modes(text: str) -> tuple[int, ...]:
    """The sql_mode readings that can differ for this text: without a backslash the two
    escape rules read it alike, without a double quote the two quote rules do (most
    statements: one reading)."""
    nbe = (0, 1) if "\\" in text else (0,)
    ansi = (0, 2) if '"' in text else (0,)
    return tuple(a | b for a in nbe for b in ansi)


def _statements(text: str, mode: int) -> list[_Stmt]:
    out: list[_Stmt] = []
    words: list[str] = []
    star = assign = into = False
    kinds: list[str] = []
    literal = None

    def close():
        if words or star or assign:
            first = words[0] if words else ""
            # PREPARE s FROM '...' / EXECUTE IMMEDIATE '...': the text it runs is this one
            # literal, which WriteGuard reads as a statement of its own
            lit = None
            if kinds and kinds[-1] == "str" and kinds.count("str") == 1 and (
                    (first == "prepare" and len(kinds) == 4) or
                    (first == "execute" and len(kinds) == 3)):
                lit = literal
            out.append(_Stmt(first, list(words), star, assign, into, lit))

    for kind, val in _tokens(text, mode):
        if kind == "semi":
            close()
            words, star, assign, into, kinds = [], False, False, False, []
            continue
        kinds.append(kind)
        if kind == "str":
            literal = _unquote(val, mode)
        if kind == "word":
            words.append(val)
            if val == "into" and words[0] not in ("insert", "replace"):
                into = True
        elif kind == "assign":
            assign = True
        elif kind == "p" and val == "*":
            # `SELECT *`, `t.*`, `SELECT SQL_NO_CACHE *`, and multiplication alike: a write
            # flagged by a star alone is cleared by lineage when it copies nothing masked
            star = True
    close()
    return out


def _unquote(lit: str, mode: int) -> str:
    """The text of a string literal as the server reads it (under this reading's mode)."""
    q, body = lit[0], lit[1:]
    if body.endswith(q):
        body = body[:-1]
    body = body.replace(q + q, q)
    if not mode & 1:
        body = re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r", "0": "\0",
                                            "Z": "\x1a", "b": "\b"}.get(m.group(1), m.group(1)),
                      body, flags=re.S)
    return body


# Statement texts are analysed once per *shape*: the text with every literal and number replaced
# (the dialect's lexer, hoopwire.mysql._sqllex.mask_literals), so `... WHERE id=5012` and
# `... WHERE id=17` share their analysis, lineage and write verdict -- measured on sysbench's
# text-mode point select with a rule on a column it never returns: 740 us/tx of proxy CPU with
# the raw text as the key (every new literal a miss: tokenize, then sqlglot for the column
# without a rule: 820 in a rerun), 92 with this key, 67 without a rule (bench/sysbench_compare.py,
# 3 rounds, load average 5-7). What a literal's value can change, the shape must not hide:
# * where literals begin and end: a text the lexer calls ambiguous (a backslash in a literal, a
#   double quote, versioned comments, 0xA0 ...) can have another shape under another sql_mode
#   or server -- `SELECT 'a\', CONCAT(ssn) AS v -- ', 2` is `SELECT ?, ?` under the default
#   mode and reads ssn under NO_BACKSLASH_ESCAPES. Those keep their exact text as the key.
# * a literal that IS a statement: PREPARE ... FROM '...', EXECUTE IMMEDIATE '...' (CALL of a
#   routine that runs its argument): exact text.
# * a number that is a position: `GROUP BY 2` / `ORDER BY 1` reads an output column (and to
#   lineage a bare `HAVING 2` does too). Texts with BY, HAVING or QUALIFY keep their numbers
#   in the key (from the lexer's code view, where they stand as written, strings as '?').
# Case is kept (the shape is the text as written): `users` and `Users` are two tables on a
# server with lower_case_table_names = 0. The session's schema is part of the lineage and write
# keys; the catalog's reads clear every cache (ConnectionMasking._names_from).
_NUMBER = re.compile(rb"(?<![\w$.])\.?[0-9](?:[\w.]|(?<=[eE])[-+])*")


def text_key(sql: bytes):
    """The key a statement text's analysis is cached under: ("s", shape) or ("b", shape,
    numbers) when literals cannot change the answer, else the text itself."""
    try:
        code, _full, ambiguous = statement_views(sql)
        if ambiguous:
            return sql
        shape = mask_literals(sql)
    except Exception:  # noqa: BLE001 -- the lexer never raises on text; if it did: exact
        return sql
    # substrings, not words (a regex search cost 3 us a text): a name holding one only makes
    # the key more exact
    low = shape.lower()
    if "prepare" in low or "execute" in low or "call" in low:
        return sql
    if "by" in low or "having" in low or "qualify" in low:
        return ("b", shape, tuple(_NUMBER.findall(b";".join(code))))
    return ("s", shape)


@dataclass(frozen=True)
class StatementInfo:
    mentions: bool = False       # names masked data (see ConnectionMasking._names_from)
    sql: bytes = b""             # kept for lineage while column rules apply
    metadata: bool = False       # every statement is a SHOW / DESCRIBE / EXPLAIN of the schema
    opaque: bool = False         # some statement's rows come from text the gateway cannot see
    warnings: bool = False       # SHOW WARNINGS / ERRORS: Level and Code are not data
    ddl: bool = False            # changes the schema: the catalog is read again after it
    key: object = None           # text_key(sql): the lineage cache's key


NO_INFO = StatementInfo()


class MaskRefused(Exception):
    """A result set (or statement) refused by masking; the relay sends `packet` -- a whole ERR
    packet with sequence id 0 -- in its place and the session goes on."""

    def __init__(self, errno: int, sqlstate: str, message: str):
        super().__init__(message)
        self.errno, self.sqlstate, self.message = errno, sqlstate, message
        payload = err_packet(errno, sqlstate, message)
        self.packet = len(payload).to_bytes(3, "little") + b"\x00" + payload


# ER_SPECIFIC_ACCESS_DENIED_ERROR: "Access denied; you need ... privilege": a refusal by policy
ERRNO_REFUSED, STATE_REFUSED = 1227, "42000"
# ER_UNKNOWN_ERROR: the gateway could not do its part (the catalog cannot be read)
ERRNO_UNAVAILABLE, STATE_UNAVAILABLE = 1105, "HY000"


# --------------------------------------------------------------------------------------------

class ConnectionMasking:
    """The masking of one configured connection: engine, the catalog, and the names whose
    mention makes a result worth following by lineage."""

    def __init__(self, engine: MaskEngine, *, unresolved: str, connect, connection: str,
                 catalog_ttl: float = 60.0, timeout: float = 10.0,
                 masked_writes: str = "refuse"):
        self.engine = engine
        self.unresolved = unresolved
        self.masked_writes = masked_writes
        self.connection = connection
        self.has_columns = bool(engine.rules)
        self.catalog = Catalog(connect, ttl=catalog_ttl, timeout=timeout,
                               on_load=self._names_from, name=connection)
        self.unresolved_rule = MaskRule(-1, _UNRESOLVED, ("*",), Strategy("redact", 0, b"-"))
        # words (lower-cased) that mention masked data: columns, and besides them the tables
        # and views holding one, user routines and relations of copied values
        self._col_words: frozenset[str] = frozenset()
        self._names: frozenset[str] = frozenset(_OPAQUE_WORDS)
        self._masked_tables: frozenset[str] = frozenset()
        # column-part globs of the rules: a word matching one is a masked column's name even
        # before the catalog has seen the column
        self._col_globs = []
        for r in engine.rules:
            for g in r.globs:
                col = g.rsplit(".", 1)[-1].lower()
                self._col_globs.append(re.compile(fnmatch.translate(col), re.S))
        self._glob_memo: dict[str, bool] = {}
        # rules whose table or column the catalog does not hold, widened (see _orphans_from):
        # [(regex of schema.table.column, the rule)], the widened globs, and a memo of matches
        self._orphans: list[tuple[re.Pattern, MaskRule]] = []
        self._orphan_globs: frozenset[str] = frozenset()
        self._orphan_memo: dict[tuple, Optional[MaskRule]] = {}
        # per rule index: a (schema, table, column) the engine itself resolves to that rule,
        # which a Column for a widened match carries (the engine knows only configured globs)
        self._anchors: dict[int, tuple[str, str, str]] = {}
        for r in engine.rules:
            for g in r.globs:
                parts = g.replace("*", "").replace("?", "_").rsplit(".", 2)
                parts = [""] * (3 - len(parts)) + parts
                if engine.column_rule(*parts) is not None:
                    self._anchors.setdefault(r.index, tuple(parts))
        # names the catalog contradicted -> when first seen (monotonic; see unsure)
        self._unsure: dict[tuple, float] = {}
        self._stmt_cache: dict[object, StatementInfo] = {}      # by text_key
        self._exact: dict[bytes, StatementInfo] = {}             # by text: no lexing
        self._write_cache: dict[tuple, Optional[str]] = {}      # (schema, text_key)
        self._write_exact: dict[tuple, Optional[str]] = {}      # (schema, text)
        self._last_key: tuple = (None, None)     # (text, text_key): WriteGuard's, then ours
        self._lineage: dict[tuple, tuple] = {}       # (schema, key) -> (sources, missing)
        # bumped by every catalog read: sessions' result plans made before it are not reused
        self.generation = 0
        # MASKED_VALUES' labelled counters by rule or detector name: labels() was 12 Python
        # calls of a masked point select's 19 (bench/mysql_call_profile.py); names come from
        # the configuration, so this stays small
        self._counters: dict[str, object] = {}

    def counter(self, name: str):
        """The MASKED_VALUES counter of a plan's count name ("column:<rule>" or a detector)."""
        if name.startswith("column:"):
            return metrics.MASKED_VALUES.labels(self.connection, "column", name[7:])
        return metrics.MASKED_VALUES.labels(self.connection, "detector", name)

    @property
    def active(self) -> bool:
        return self.engine.scanner is not None or self.has_columns

    def close(self) -> None:
        self.catalog.close()

    async def ready(self) -> None:
        """Read the catalog if it is not fresh (a session's start waits for it, as PostgreSQL's
        does): column rules need its tables, detectors its character sets. Raises
        CatalogError."""
        if self.active and not self.catalog.fresh():
            await self.catalog.load()

    def _names_from(self, cat: Catalog) -> None:
        """Masked columns, the relations holding them and every view that reads one (through
        views, to any depth, by lineage over their definitions)."""
        self._orphans_from(cat)
        rule = self.column_rule
        cols: set[str] = set()
        tables: set[str] = set()
        for rel in cat.relations.values():
            if rel.is_view:
                continue
            for c in rel.columns:
                if rule(rel.schema, rel.name, c) is not None:
                    cols.add(c.lower())
                    tables.add(rel.name.lower())
        names = set(cols) | tables | _OPAQUE_WORDS
        # a view is followed by lineage; one whose definition the stored user cannot see, or
        # that lineage cannot read, may hold anything: its name and columns are mentions
        for rel in cat.relations.values():
            if not rel.is_view or rel.schema.lower() in SYSTEM_SCHEMAS:
                continue
            outs = None
            if rel.view_sql and len(rel.view_sql) <= LINEAGE_MAX:
                try:
                    got = lin.output_sources(rel.view_sql, rel.schema, cat.columns,
                                             views=cat.view_definition)
                    outs = got[0] if got and len(got) == 1 else None
                except Exception:  # noqa: BLE001 -- a view lineage cannot read is unresolved
                    outs = None
            if outs is None or len(outs) != len(rel.columns):
                names.add(rel.name.lower())
                cols.update(c.lower() for c in rel.columns)
                continue
            for c, srcs in zip(rel.columns, outs):
                # reads a masked column, copied values, or a relation lineage could not open
                # (a view whose definition is hidden, one the read does not hold)
                if srcs is None or self.masked_source(srcs) is not None or any(
                        self._opaque_source(s) or (lambda r: r is None or r.is_view)(
                            cat.relation(s[0], s[1])) for s in srcs):
                    names.add(rel.name.lower())
                    cols.add(c.lower())
                    tables.add(rel.name.lower())
        if names - _OPAQUE_WORDS:
            # a stored routine may read anything (`CALL p()`, `SELECT f()` name no column)
            names |= cat.routines
        self._col_words = frozenset(cols)
        self._masked_tables = frozenset(tables)
        self._names = frozenset(names | cols)
        self._stmt_cache.clear()
        self._exact.clear()
        self._write_cache.clear()
        self._write_exact.clear()
        self._lineage.clear()
        self.generation += 1

    def _orphans_from(self, cat: Catalog) -> None:
        """Rules naming a table the catalog does not hold, or a table without the rule's
        column. A table renamed outside the gateway (RENAME TABLE users TO people, two names
        swapped, a column renamed) takes its values away from the names rules match, and the
        next read shows the new name as a table without rules: its ssn passed in clear. Such
        a rule is widened until the names are back: to the rule's column in every table of
        its schema (`app.*.ssn`) and, when its table is there without the column, to every
        column of that table (`app.users.*`). Only rules whose table part is a plain name:
        `*` spans dots, so a glob's table cannot be told. A rule for a table not made yet
        masks more than it meant to: the warning in the log says which."""
        orphans: list[tuple[re.Pattern, MaskRule]] = []
        globs: list[str] = []
        for r in self.engine.rules:
            for g in r.globs:
                parts = g.split(".")
                if len(parts) != 3 or "*" in parts[1] or "?" in parts[1]:
                    continue
                sg, tg, cg = parts
                srx = re.compile(glob_regex(sg) + r"\Z", re.I | re.S)
                crx = re.compile(glob_regex(cg) + r"\Z", re.I | re.S)
                rels = [rel for rel in cat.relations.values()
                        if rel.name.lower() == tg.lower() and srx.match(rel.schema)]
                if not rels:
                    wide = [f"{sg}.*.{cg}"]
                elif not any(crx.match(c) for rel in rels for c in rel.columns):
                    wide = [f"{sg}.{tg}.*", f"{sg}.*.{cg}"]
                else:
                    continue
                for w in wide:
                    if w not in globs:
                        globs.append(w)
                        orphans.append((re.compile(glob_regex(w) + r"\Z", re.I | re.S), r))
        for w in globs:
            if w not in self._orphan_globs:
                event(log, "mask rule names a table or column the server does not have",
                      logging.WARNING, connection=self.connection, masking=w,
                      why="renamed or not made yet: its rule masks these names until it is "
                          "found again")
        self._orphans = orphans
        self._orphan_globs = frozenset(globs)
        self._orphan_memo.clear()

    def column_rule(self, schema: str, table: str, column: str) -> Optional[MaskRule]:
        """The rule masking schema.table.column: the engine's (configured globs), else that of
        a widened rule (_orphans_from)."""
        r = self.engine.column_rule(schema, table, column)
        if r is not None or not self._orphans:
            return r
        key = (schema, table, column)
        try:
            return self._orphan_memo[key]
        except KeyError:
            pass
        name = f"{schema}.{table}.{column}"
        found = next((rule for rx, rule in self._orphans if rx.match(name)), None)
        if len(self._orphan_memo) >= 8192:
            self._orphan_memo.clear()
        self._orphan_memo[key] = found
        return found

    def rule_column(self, src, kind: int) -> Optional[Column]:
        """A Column the engine's row plan masks by src's rule (column_rule(*src) is not None);
        None when it cannot be named so (the caller masks it whole)."""
        if self.engine.column_rule(*src) is not None:
            return Column(*src, kind)
        r = self.column_rule(*src)
        anchor = self._anchors.get(r.index) if r is not None else None
        return Column(*anchor, kind) if anchor is not None else None

    def unsure(self, key: tuple) -> bool:
        """Whether the catalog's picture of `key` (a name a result showed that it does not
        hold) may predate the server's: no read has begun since the name was first seen.
        Then what the catalog says of it is not trusted (a rename made outside); once a read
        has begun after, the name is the catalog's to judge (a derived table's alias)."""
        first = self._unsure.get(key)
        if first is None:
            if len(self._unsure) >= _UNSURE_MAX:
                self._unsure.clear()
            first = self._unsure[key] = time.monotonic()
        return first >= self.catalog.read_from

    def _opaque_source(self, src) -> bool:
        return (src[0].lower(), src[1].lower()) in _OPAQUE_RELS

    def _is_masked_word(self, w: str) -> bool:
        if w in self._col_words:
            return True
        if not self._col_globs:
            return False
        got = self._glob_memo.get(w)
        if got is None:
            got = any(g.match(w) for g in self._col_globs)
            if len(self._glob_memo) >= 8192:       # words a client made up: bounded
                self._glob_memo.clear()
            self._glob_memo[w] = got
        return got

    # -- statements -------------------------------------------------------------------------

    def statement(self, sql: bytes) -> StatementInfo:
        if not self.has_columns:
            return NO_INFO            # detectors alone read values, never the statement
        # the exact text first (a prepared statement's, a repeated one: one lookup), then its
        # shape (a new literal: two lexer passes, about 2 us, instead of 100-700 us of analysis)
        info = self._exact.get(sql)
        if info is not None:
            return info
        key = self.key_of(sql)
        info = self._stmt_cache.get(key)
        if info is None:
            info = self._analyse(sql, key)
            if len(self._stmt_cache) >= _STMT_CACHE:
                self._stmt_cache.clear()
            self._stmt_cache[key] = info
        # texts by the thousand (a new literal each) fill this one, not the shapes' cache
        if len(self._exact) >= _STMT_CACHE:
            self._exact.clear()
        self._exact[sql] = info
        return info

    def key_of(self, sql: bytes):
        """text_key(sql), remembered for the next call: the relay's policy check (WriteGuard)
        and its masker.statement ask for the same text one after the other."""
        last = self._last_key
        if last[0] == sql:
            return last[1]
        key = text_key(sql)
        self._last_key = (sql, key)
        return key

    def _analyse(self, sql: bytes, key) -> StatementInfo:
        """What the statement text is (see StatementInfo); the same for every text of its key."""
        text = sql.decode("utf-8", "replace")
        words = _words(text)
        # a user variable holds whatever was put there -- by a statement WriteGuard let through
        # or one it never judged (`GET DIAGNOSTICS ... @m = MESSAGE_TEXT` after a warning that
        # quotes a value): reading one is a mention, and lineage cannot place it
        mentions = bool(words & self._names) or any(self._is_masked_word(w) for w in words) \
            or _USER_VAR.search(text) is not None
        if not mentions and not words & _FLAG_WORDS:
            # nothing masked named, and no word that could start a statement of another kind:
            # no tokenizing (about 15 us instead of 110 for a statement not seen before)
            return StatementInfo(False, sql, key=key)
        try:
            readings = [_statements(text, mode) for mode in _modes(text)]
        except Exception:  # noqa: BLE001 -- unreadable text: assume the worst
            log.exception("statement text could not be read")
            readings = None
        if readings is None:
            info = StatementInfo(True, sql, opaque=True, key=key)
        else:
            every = [st for r in readings for st in r]
            metadata = bool(every) and all(_metadata(st, mentions) for st in every)
            warnings = metadata is False and bool(every) and all(
                st.first == "show" and len(st.words) > 1 and st.words[1] in ("warnings", "errors")
                for st in every)
            opaque = any(st.first in _DYNAMIC_FIRST or
                         (st.first in _META_FIRST and not _metadata(st, mentions)) or
                         (st.first == "use" and len(readings[0]) > 1)
                         for st in every)
            ddl = any(st.first in _DDL_FIRST for st in every)
            info = StatementInfo(mentions, sql, metadata, opaque, warnings, ddl, key)
        return info

    def lineage(self, schema: Optional[str], sql: bytes, key=None) -> Optional[list]:
        """output_sources of `sql` over the catalog, cached until the catalog's next read under
        (schema, `key`: the text's text_key, which every text of one shape shares)."""
        return self.lineage_of(schema, sql, key)[0]

    def lineage_of(self, schema: Optional[str], sql: bytes, key=None) -> tuple:
        """(lineage as `lineage` gives it, the (schema, table) names, lower-cased, that the
        statement reads and the catalog does not hold)."""
        key = (schema, sql if key is None else key)
        try:
            return self._lineage[key]
        except KeyError:
            pass
        got = None
        missing: set = set()
        if len(sql) <= LINEAGE_MAX:
            cat = self.catalog

            def tables(s, t):
                cols = cat.columns(s, t)
                if cols is None:
                    missing.add(((s or "").lower(), t.lower()))
                return cols
            try:
                got = lin.output_sources(sql.decode("utf-8", "replace"), schema, tables,
                                         views=cat.view_definition)
            except Exception:  # noqa: BLE001 -- never a crashed session over lineage
                log.exception("lineage failed")
                got = None
        if len(self._lineage) >= _STMT_CACHE:
            self._lineage.clear()
        entry = self._lineage[key] = (got, frozenset(missing))
        return entry

    def masked_source(self, sources) -> Optional[tuple[str, str, str]]:
        """The source among `sources` whose rule masks the most (null, redact, hash, format,
        partial; the first configured among equals), or None when none is masked."""
        rule = self.column_rule
        best, rank = None, None
        for src in sources:
            r = rule(*src)
            if r is None:
                continue
            k = (_STRICT.get(r.strategy.name, 9), r.index)
            if rank is None or k < rank:
                best, rank = src, k
        return best


# how much of a value a strategy lets through, least first (for an output reading several)
_STRICT = {"null": 0, "redact": 1, "hash": 2, "format": 3, "partial": 4}


def _metadata(st: _Stmt, mentions: bool) -> bool:
    """SHOW / DESCRIBE / EXPLAIN whose answer is the schema or a plan, not rows. The plan of a
    statement that mentions masked data is not: MariaDB writes a const table's values into it
    (`EXPLAIN FORMAT=JSON ... JOIN users u ON u.id = 1 WHERE i.name = u.ssn` shows
    `i.name = '123-45-6789'` as the attached condition)."""
    if st.first in ("describe", "desc", "explain"):
        if len(st.words) > 1 and st.words[1] in ("for", "analyze"):
            return False
        return not (mentions and len(st.words) > 1 and st.words[1] in _EXPLAINED)
    if st.first != "show":
        return False
    if len(st.words) > 2 and st.words[1] == "full":
        return st.words[2] != "processlist"          # SHOW FULL TABLES / COLUMNS
    return len(st.words) > 1 and st.words[1] not in _SHOW_ROWS


# MySQL character set names -> the measure names hoopwire.masking.strategies.chars_of knows
# (its names are PostgreSQL's): `partial` keeps characters as the client counts them
_MEASURE = {"utf8": "UTF8", "utf8mb3": "UTF8", "utf8mb4": "UTF8", "ascii": "SQL_ASCII",
            "binary": "SQL_ASCII", "latin1": "LATIN1", "latin2": "LATIN2", "latin5": "LATIN5",
            "latin7": "LATIN7", "cp1250": "WIN1250", "cp1251": "WIN1251", "cp1256": "WIN1256",
            "cp1257": "WIN1257", "koi8r": "KOI8R", "koi8u": "KOI8U"}


class SessionMasker:
    """Per session: called by the relay's result tracking (ext/hoopwire/mysql/_results.pxi)."""

    # the relay may remember this masker's plans and statement readings (see __init__)
    plan_memo = True

    def __init__(self, conn: ConnectionMasking, schema: Optional[str]):
        self.conn = conn
        self.schema = schema or None       # the session's default schema (USE / COM_INIT_DB)
        self.relay = None                  # set by the session once the relay exists
        self.masked_total = 0
        self._ddl_seen = False
        # result plans by (statement info, result number, protocol, column definitions), valid
        # for one catalog generation, schema and connection masking: a prepared statement's
        # executes and a repeated text reuse theirs (sysbench's prepared point select: 96 us/tx
        # of proxy CPU with the plan rebuilt per execute). Per session, not shared: a RowPlan
        # counts what it masks until result_done takes the counts.
        # The relay remembers a plan of this cache next to its statement (PlanMemo in
        # ext/hoopwire/mysql/_wire.pxd) and uses it while `_plans` is still the same dict and
        # the catalog generation `_plans_gen`: so the cache is never emptied in place, it is
        # replaced. `plan_kept`: whether the last result_plan's answer is in the cache.
        self._plans: dict[tuple, tuple] = {}
        self._plans_gen = -1
        self._cacheable = True
        self.plan_kept = False

    def rebind(self, conn: Optional[ConnectionMasking]) -> None:
        """A reload changed the connection's masking: from the next result on, use it. A reload
        that removes masking leaves an open session masking by its last rules (relaxing a
        running session is not worth a half-followed result)."""
        if conn is not None:
            self.conn = conn
            self._plans = {}

    @property
    def catalog(self) -> Catalog:
        return self.conn.catalog

    @property
    def engine(self) -> MaskEngine:
        """The connection's engine: the recorder masks a failed statement's error text with it
        (without it, every failed statement of a masking session was lost from the audit)."""
        return self.conn.engine

    def schema_changed(self, schema: Optional[str]) -> None:
        """The server accepted COM_INIT_DB or USE: lineage places unqualified names there."""
        if (schema or None) != self.schema:
            self._plans = {}
        self.schema = schema or None

    # -- statements -------------------------------------------------------------------------

    def answered(self, info: StatementInfo) -> None:
        """The server has answered a statement; after a DDL the catalog is read again now,
        while the client reads the answer (pending_read waits for that read)."""
        if info.ddl and self.conn.active:
            self.catalog.refresh_soon()

    def pending_read(self) -> Optional[asyncio.Future]:
        """After this session's DDL, before its next statement is planned: a future done once
        the catalog read that DDL calls for has landed (or _DDL_READ_WAIT has passed); None
        when there is nothing to wait for. The relay holds the statement until then: without
        the wait, a table the session has just made is unknown to the catalog for the tens of
        milliseconds a read takes, and every row read from it comes back masked whole (29-39
        tests of PyMySQL's and mysqlclient's suites did, through a mask rule on another table)."""
        if not self._ddl_seen or not self.conn.active:
            return None
        self._ddl_seen = False
        cat = self.catalog
        cat.refresh_soon()
        task = cat.reading()
        if task is None:
            return None
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(*_: object) -> None:
            if not fut.done():
                fut.set_result(None)
        timer = loop.call_later(_DDL_READ_WAIT, done)
        task.add_done_callback(lambda _t: (timer.cancel(), done()))
        return fut

    def statement(self, sql: bytes) -> StatementInfo:
        # Every statement of a masking session comes here: written for few Python calls (it
        # made 6, and the relay's catalog-hold and answered calls 2 more, of the 19 a sysbench
        # text-mode statement made over an identity-only gateway; mysql_call_profile.py).
        conn = self.conn
        if not conn.has_columns:
            return NO_INFO            # detectors alone read values, never the statement
        # Catalog.fresh(), inlined. (After this session's DDL the relay has already held this
        # statement for the read the DDL's answer started: pending_read, and _catalog_hold in
        # ext/hoopwire/mysql/_relay.pxi.)
        cat = conn.catalog
        if cat.stale or time.monotonic() - cat.loaded_at >= cat.ttl:
            cat.refresh_soon()
        info = conn._exact.get(sql)         # a prepared statement's or a repeated text
        if info is None:
            info = conn.statement(sql)
        if info.ddl:
            self._ddl_seen = True
        return info

    # -- result sets ------------------------------------------------------------------------

    def result_plan(self, info: StatementInfo, index: int, columns: list, binary: bool):
        """A RowPlan for the rows of result set `index` of the statement `info`, None when no
        column needs anything; raises MaskRefused when the result must not reach the client."""
        conn = self.conn
        if conn.generation != self._plans_gen:
            self._plans = {}
            self._plans_gen = conn.generation
        if not conn.has_columns and conn.engine.scanner is None:
            self.plan_kept = True     # (any result of this connection masking: None)
            return None               # (conn.active without the property's call)
        info = info or NO_INFO
        # Every input of _result_plan is in the key or clears the cache: the statement (id(info)
        # here, and the entry holds info so the id is not reused), result number, protocol and
        # column definitions here; catalog generation (above), schema (schema_changed) and
        # connection masking (rebind); results judged by a catalog that is unloaded or unsure
        # are not cached (_cacheable). The relay's definitions come as ColumnDefs, keyed by
        # their raw bytes and decoded only on a miss (a guarded point select spent 19% of its
        # samples in libpython building and hashing the tuples); tests pass lists of tuples.
        defs = type(columns) is ColumnDefs
        key = (id(info), index, binary, columns.raw if defs else tuple(columns))
        hit = self._plans.get(key)
        if hit is not None and hit[0] is info:     # the entry holds info: its id is not reused
            self.plan_kept = True
            return hit[1]
        self.plan_kept = False
        if defs:
            columns = list(columns)
        self._cacheable = conn.catalog.loaded
        plan = self._result_plan(info, index, columns, binary)
        if self._cacheable:
            if len(self._plans) >= _PLAN_CACHE:
                self._plans = {}
            self._plans[key] = (info, plan)
            self.plan_kept = True
        return plan

    def _result_plan(self, info: StatementInfo, index: int, columns: list, binary: bool):
        conn = self.conn
        cat = self.catalog
        engine = conn.engine
        rule = conn.column_rule
        if conn.has_columns and not cat.loaded:
            raise self._refused("the catalog it masks results by could not be read (the "
                                "gateway's log says why)", unavailable=True)
        measure = None
        cols: list[Optional[Column]] = []
        pending: list[int] = []          # columns lineage decides
        # columns whose definition the catalog contradicts while it may be older than the
        # server's names (see ConnectionMasking.unsure): of a relation it does not hold
        # (`unknown`: lineage may still place them, a derived table's alias) or one it holds
        # without that column (`contradicted`: lineage would place them by the old columns --
        # two tables swapped names outside, and `SELECT *` of the one now holding ssn matched
        # the other's width)
        unknown: set[int] = set()
        contradicted: set[int] = set()
        follow = info.mentions or info.opaque
        for i, c in enumerate(columns):
            schema, _table, org_table, name, org_name, charset, _len, typ, _flags, _dec = c
            kind = column_kind(typ, charset, binary)
            if is_string(typ) and charset != 63:
                if not (cat.ascii_safe(charset) or (not cat.loaded and charset in _ASCII_SAFE_IDS)):
                    raise self._refused(
                        f"its character set ({cat.charset(charset) or charset}) hides values "
                        "from the gateway's detectors; use character_set_results = utf8mb4")
                if measure is None:
                    measure = cat.charset(charset)
            if conn.has_columns and org_table:
                # a view's computed column and a TEMPTABLE view's come without a schema: the
                # session's default is the likely one (a rule matched there can only over-mask)
                where = schema or self.schema or ""
                if org_name and rule(where, org_table, org_name) is not None:
                    col = conn.rule_column((where, org_table, org_name), kind)
                    if col is not None:
                        cols.append(col)                                    # the fast path
                        continue
                    contradicted.add(i)         # a widened rule without an anchor: whole
                if (where.lower(), org_table.lower()) in _OPAQUE_RELS:
                    follow = True
                else:
                    rel = cat.relation(where, org_table)
                    # (a TEMPTABLE view's column comes with no schema, the base table's
                    # name and the view's column name: not a contradiction, lineage's)
                    if rel is None or (org_name and schema and not rel.has_column(org_name)):
                        # a derived table's or CTE's alias -- or a relation the last read did
                        # not see (made or renamed since, by this session or another one, or
                        # outside the gateway): lineage decides, what it cannot place is
                        # unresolved, and the catalog is read again
                        follow = True
                        # judged again next time: the read it asks for may not be due yet
                        self._cacheable = False
                        if conn.unsure((where.lower(), org_table.lower(),
                                        (org_name or "").lower())):
                            (unknown if rel is None else contradicted).add(i)
                            # a read that begins after now settles it (until then this is
                            # masked: a derived table aliased as a real table, too)
                            cat.refresh_soon(min_age=_UNKNOWN_REREAD)
                        elif schema:
                            cat.refresh_soon(min_age=_UNKNOWN_REREAD)
            if info.warnings and name in ("Level", "Code"):
                cols.append(Column("", "", "", kind))        # fixed words and numbers
                continue
            cols.append(None)
            pending.append(i)
        if (pending and not follow and conn.has_columns and not info.metadata and info.sql
                and any(not columns[i][2] for i in pending)):
            # an expression over a relation the catalog does not hold names nothing masked
            # to the words (`SELECT CONCAT(x, '') FROM v` of a view made outside over ssn):
            # which relations it reads is lineage's (once per statement shape and catalog
            # read: 0.3-1.2 ms of sqlglot), and one missing since no read began is followed
            missing = conn.lineage_of(self.schema, info.sql, info.key)[1]
            if missing:
                self._cacheable = False
                follow = any(conn.unsure(m + ("",)) for m in missing)
        unresolved = redact = False
        if pending:
            if not conn.has_columns or info.metadata or not follow:
                for i in pending:
                    cols[i] = Column("", "", "", _kind(columns[i], binary))   # detectors
            else:
                sources, missing = self._sources(info, index, len(columns))
                # the statement reads a relation the catalog does not hold, and no read has
                # begun since it was first seen: what lineage cannot place is masked
                # whatever unresolved_columns says (fail safe: a table renamed or a view
                # made outside the gateway is not an expression it cannot follow)
                stale = any(conn.unsure(m + ("",)) for m in missing)
                if missing:
                    self._cacheable = False
                    cat.refresh_soon(min_age=_UNKNOWN_REREAD)
                for i in pending:
                    kind = _kind(columns[i], binary)
                    if i in contradicted:
                        # lineage would answer from the catalog's old columns: masked whole
                        # (not refused under "block": nothing says it reads masked data)
                        cols[i] = Column(None, None, None, kind)
                        redact = True
                        continue
                    srcs = sources[i] if sources is not None else None
                    col, u, r = self._by_sources(srcs, kind)
                    cols[i] = col
                    unresolved |= u
                    redact |= r or (u and (stale or i in unknown))
        if unresolved and conn.unresolved == "block":
            self._log_refused("result")
            raise self._refused("it reads a masked column through something the gateway "
                                "cannot follow (select the column itself: it is returned "
                                "masked; or ask for unresolved_columns = \"mask\")")
        unresolved_rule = None
        if (unresolved and conn.unresolved == "mask") or redact:
            unresolved_rule = conn.unresolved_rule
        if measure is not None:
            engine = engine.for_encoding(_MEASURE.get(measure.lower(), "MULE_INTERNAL"))
        plan = engine.row_plan(cols, unresolved_rule=unresolved_rule, plan_type=RowPlan)
        return None if plan.passthrough else plan

    def _sources(self, info: StatementInfo, index: int, n: int) -> tuple:
        """(per column of an n-column result of `info`'s text, the sources it reads (None: not
        placeable), or None when no statement of the text fits; the relations it names that
        the catalog does not hold). Without a statement of unknown
        shape (CALL, EXECUTE, SHOW), result k is the k-th statement that returns rows (one
        result set each; an error ends the text); otherwise every fitting statement is a
        candidate and a column reads what it reads in any of them."""
        if info.opaque or not info.sql:
            return None, frozenset()
        stmts, missing = self.conn.lineage_of(self.schema, info.sql, info.key)
        if stmts is None or any(s is None for s in stmts):
            return None, missing
        rows = [s for s in stmts if s]
        if index < len(rows) and len(rows[index]) == n:
            return rows[index], missing
        fitting = [s for s in rows if len(s) == n]
        if not fitting:
            return None, missing
        if len(fitting) == 1:
            return fitting[0], missing
        return [None if any(s[i] is None for s in fitting)
                else frozenset().union(*(s[i] for s in fitting)) for i in range(n)], missing

    def _by_sources(self, srcs, kind: int):
        """(Column, unplaceable, redact) for a column reading `srcs` (None: unplaceable)."""
        conn = self.conn
        if srcs is None:
            return Column(None, None, None, kind), True, False
        cat = self.catalog
        unplaced = False
        for s in srcs:
            if conn._opaque_source(s):
                unplaced = True
            else:
                rel = cat.relation(s[0], s[1])
                # a view lineage did not open (its definition is hidden) or a relation the
                # catalog does not hold: what it reads is not known
                if rel is None or rel.is_view:
                    unplaced = True
        masked = conn.masked_source(srcs)
        if masked is not None:
            r = conn.column_rule(*masked)
            col = conn.rule_column(masked, kind) if r.strategy.name in ("null", "redact") \
                else None
            if col is not None:
                return col, False, False
            # a value computed from the column under a strategy that keeps part of it (partial,
            # hash, format) would be an oracle: `SUBSTR(ssn, k, 4)` shows any four characters
            return Column(None, None, None, kind), False, True
        if unplaced:
            return Column(None, None, None, kind), True, False
        return Column("", "", "", kind), False, False               # placed: no rule

    def _refused(self, why: str, unavailable: bool = False) -> MaskRefused:
        metrics.MASK_REFUSED.labels(self.conn.connection).inc()
        if unavailable:
            return MaskRefused(ERRNO_UNAVAILABLE, STATE_UNAVAILABLE,
                               f"result withheld by hoopwire: {why}")
        return MaskRefused(ERRNO_REFUSED, STATE_REFUSED, f"result refused by hoopwire: {why}")

    def _log_refused(self, what: str) -> None:
        event(log, "result refused by masking", logging.WARNING, connection=self.conn.connection,
              schema=self.schema or "", what=what, policy=self.conn.unresolved)

    def result_done(self, plan) -> int:
        """Count what a finished result masked (metrics); the number of masked values."""
        if plan is None:
            return 0
        counts = plan.take_counts()
        total = 0
        if counts:
            counters = self.conn._counters
            for name, n in counts.items():
                counter = counters.get(name)
                if counter is None:
                    counter = counters[name] = self.conn.counter(name)
                counter.inc(n)
                total += n
            self.masked_total += total
        return total

    # -- free text ----------------------------------------------------------------------------

    def error_message(self, msg: bytes, errno: Optional[int] = None,
                      sql: Optional[bytes] = None) -> Optional[bytes]:
        """An ERR (or warning) text with what may carry a value masked, or None when nothing
        changed. While column rules apply, every quoted run ('...', `...`, "...") whose text
        the statement (`sql`, when the relay passes it) does not hold is replaced by '****' --
        `Duplicate entry '123-45-6789' for key 'ssn'`, `Truncated incorrect DOUBLE value:
        '...'`, `XPATH syntax error: '~...'` are how values leave through errors -- except in
        shapes whose quoted words come from the catalog or the login. Then the detectors."""
        conn = self.conn
        if not conn.active or not msg:
            return None
        out = msg
        changed = 0
        if conn.has_columns and not _KEPT.match(msg):
            text = sql or b""
            schema = (self.schema or "").encode()

            def sub(mt):
                nonlocal changed
                inner = mt.group(0)[1:-1]
                # a name the statement wrote (`Table 'app.nosuch' doesn't exist`: the server
                # qualifies it with the session's schema)
                if inner and all(p in text or p == schema
                                 for p in inner.split(b".") if p):
                    return mt.group(0)
                if _CATALOG_RUN.match(msg) and mt.start() >= _CATALOG_RUN.match(msg).end(1):
                    return mt.group(0)
                changed += 1
                q = mt.group(0)[:1]
                return q + b"****" + q
            out = _RUN.sub(sub, msg)
            if changed:
                metrics.MASKED_VALUES.labels(conn.connection, "column", "error-text").inc()
        engine = conn.engine
        if engine.scanner is not None:
            new, counts = engine.mask_text(out)
            if new is not out and new != out:
                out = new
                for name, n in counts.items():
                    metrics.MASKED_VALUES.labels(conn.connection, "detector", name).inc(n)
                    self.masked_total += n
                changed += 1
        return out if changed else None

    # -- writes -------------------------------------------------------------------------------

    def write_verdict(self, sql: bytes):
        """A Verdict refusing a statement that stores a masked value where the session can
        read it back (masked_writes = "refuse"), or None."""
        conn = self.conn
        if not conn.has_columns:
            return None
        exact = conn._write_exact
        key = (self.schema, sql)           # lineage places unqualified names in the schema
        try:
            why = exact[key]
        except KeyError:
            # a new literal in a known shape: the shape's verdict (literals change neither
            # which words are code nor what lineage reads; see text_key)
            cache = conn._write_cache
            shaped = (self.schema, conn.key_of(sql))
            try:
                why = cache[shaped]
            except KeyError:
                why = self._judge_write(sql.decode("utf-8", "replace"))
                if len(cache) >= _STMT_CACHE:
                    cache.clear()
                cache[shaped] = why
            if len(exact) >= _STMT_CACHE:
                exact.clear()
            exact[key] = why
        return self._refuse_write(why) if why is not None else None

    def _judge_write(self, text: str) -> Optional[str]:
        conn = self.conn
        words = _words(text)
        # most statements name nothing a write could copy and run no text the gateway cannot
        # see: one set intersection, no tokenizing
        if not (words & conn._masked_tables or words & _WRITE_WORDS or
                any(conn._is_masked_word(w) for w in words)):
            return None
        found = None
        for mode in _modes(text):
            for st in _statements(text, mode):
                got = self._stores_masked(st)
                if got is None:
                    continue
                why, kind = got
                if kind != "store":
                    return why          # dynamic SQL, a schema change, warnings: by words
                found = found or why
        if found is not None and self._lineage_clears(text):
            return None
        return found

    def _lineage_clears(self, text: str) -> bool:
        """Whether lineage shows that a write the words flagged stores no masked value: every
        value it keeps (and every filter choosing the rows it writes) reads no masked column
        -- `INSERT INTO users (id, ssn) VALUES (3, '111-22-3333')` -- or goes into a column
        masked whole as well (`UPDATE users SET ssn = '000-00-0000' WHERE id = 2`). Anything
        lineage cannot place, or a text it cannot read, does not clear."""
        conn = self.conn
        if len(text) > LINEAGE_MAX or not hasattr(lin, "write_sources"):
            return False
        cat = self.catalog
        try:
            stmts = lin.write_sources(text, self.schema, cat.columns, views=cat.view_definition)
        except Exception:  # noqa: BLE001 -- not cleared: the words' verdict stands
            log.exception("write lineage failed")
            return False
        if stmts is None:
            return False
        for writes in stmts:
            if writes is None:
                return False
            for target, sources in writes:
                if sources is None:
                    return False
                for src in sources:
                    rel = cat.relation(src[0], src[1])
                    if conn._opaque_source(src) or rel is None or rel.is_view:
                        return False
                if conn.masked_source(sources) is not None and not self._target_masked(target):
                    return False
        return True

    def _target_masked(self, target) -> bool:
        """The target column is masked whole (null, redact): whatever is stored there reads
        back as `****`. A rule that keeps part of the value (partial, hash, format) does not
        count: `UPDATE users SET ssn = SUBSTR(ssn, 1, 5)` shows other characters under
        partial(keep=2)."""
        if target is None:
            return False
        schema, table, col = target
        r = self.conn.column_rule(schema or self.schema or "", table, col)
        return r is not None and r.strategy.name in ("null", "redact")

    def _stores_masked(self, st: _Stmt, depth: int = 0) -> Optional[tuple[str, str]]:
        conn = self.conn
        first = st.first
        if first == "set" and st.words[1:2] == ["statement"] and "for" in st.words:
            # SET STATEMENT var = value [, ...] FOR <statement>: MariaDB runs the statement
            # after FOR, so that is the one judged (a wrapped RENAME of a masked table was let
            # through and switched its column rule off for every session)
            rest = st.words[st.words.index("for") + 1:]
            first = rest[0] if rest else first
        if first == "with":
            # WITH ... UPDATE / DELETE / INSERT (MySQL 8): the statement after the CTEs
            first = next((w for w in st.words[1:] if w in _STORE_FIRST), first)
        masked = [w for w in st.words if conn._is_masked_word(w)]
        holding = [w for w in st.words if w in conn._masked_tables]
        copies = bool(masked) or (st.star and bool(holding))
        if first in ("prepare", "execute") and st.literal is not None and depth < 2:
            # the text it runs is in the literal: judged as a statement of its own
            for mode in range(4):
                for inner in _statements(st.literal, mode):
                    got = self._stores_masked(inner, depth + 1)
                    if got is not None:
                        return got[0], "dynamic"      # judged by its words alone
            return None
        if first == "execute" and len(st.words) > 1 and st.words[1] == "immediate":
            return ("dynamic SQL (EXECUTE IMMEDIATE of an expression), whose text it cannot see",
                    "dynamic")
        if first == "prepare":
            return ("a statement prepared from a variable, whose text the gateway cannot see",
                    "dynamic")
        if first in _DDL_FIRST and first not in ("drop", "truncate") and (masked or holding):
            return (f"a schema change to {(masked or holding)[0]!r}, which holds masked data "
                    "(a renamed table or column moves it away from the names rules match)", "ddl")
        if first == "get" and "diagnostics" in st.words[:3]:
            # the last statement's warnings quote values (`Truncated incorrect DOUBLE value:
            # '123-45-6789'`): SHOW WARNINGS is masked, a copy in a variable would not be
            return ("the text of the last statement's warnings, which may quote masked values",
                    "diagnostics")
        stores = first in _STORE_FIRST or st.into or st.assign
        if stores and copies:
            return (f"the masked column {masked[0]!r}" if masked else
                    f"every column of {holding[0]!r}, which holds masked data"), "store"
        return None

    def _refuse_write(self, what: str):
        event(log, "masked write refused", logging.WARNING, connection=self.conn.connection,
              schema=self.schema or "", reads=what)
        metrics.MASK_REFUSED.labels(self.conn.connection).inc()
        return Verdict(action="block", rule="masked-write", matched=("masked-write",),
                       message=f"it may store {what} where it could be read back unmasked "
                               "(masked_writes = \"refuse\" while column rules apply; a filter "
                               "that chooses the rows a write touches counts)")


# collations every server has whose character sets show ASCII as ASCII (utf8mb3/utf8mb4 general,
# bin and unicode, latin1): enough to judge results before the catalog's first read (or without
# one); any other id waits for information_schema's answer
_ASCII_SAFE_IDS = frozenset({8, 33, 45, 46, 47, 48, 83, 255, *range(192, 216), *range(224, 248)})


def _kind(c, binary: bool) -> int:
    return column_kind(c[7], c[5], binary)


# quoted runs of an error text; a value may hold the other quotes, never its own unescaped
_RUN = re.compile(rb"'[^']*'|`[^`]*`|\"[^\"]*\"")
# texts with no value in them: our own refusals, access denied (names from the login), the
# syntax error (it quotes the client's own statement: kept only when the text holds it -- see
# error_message; here only the fixed texts)
_KEPT = re.compile(rb"(?:result (?:refused|withheld) by hoopwire|statement blocked by hoopwire"
                   rb"|Access denied for user|Query execution was interrupted|No database selected"
                   rb"|Query was empty)")
# shapes whose quoted words after group 1 name catalog objects (a column, a key, a constraint)
_CATALOG_RUN = re.compile(rb"(Data too long for column |Column |Field |Out of range value for "
                          rb"column |Cannot (?:add or update a child|delete or update a parent)"
                          rb" row: |Duplicate entry '[^']*' for key )")


class WriteGuard:
    """The relay's policy while column rules apply. Masking reads statement text (what it
    mentions, its lineage), so the relay judges text as it does for guardrails. With
    masked_writes = "refuse" (`refuse`), a statement that stores a masked value where the
    session can read it back is blocked like a guardrail block -- logged, recorded as blocked,
    ERR to the client -- before it reaches the server; every other statement goes on to the
    guardrails (`inner`, None when there are none)."""

    __slots__ = ("inner", "masker", "refuse")

    def __init__(self, inner, masker: SessionMasker, refuse: bool = True):
        self.inner, self.masker, self.refuse = inner, masker, refuse

    @property
    def approves(self) -> bool:
        return getattr(self.inner, "approves", False)

    @property
    def empty(self) -> bool:
        return False

    def check(self, sql: bytes, *args, **kw):
        if self.refuse:
            try:
                verdict = self.masker.write_verdict(sql)
            except Exception:  # noqa: BLE001 -- a bug here must not crash the session ...
                log.exception("masked-write check failed")
                # ... nor let the statement through unjudged: refused, the session goes on
                verdict = self.masker._refuse_write(
                    "anything: the gateway could not check this statement (its log says why)")
            if verdict is not None:
                return verdict
        return self.inner.check(sql, *args, **kw) if self.inner is not None else None

    def passes_whole_shape(self, sql: bytes) -> bool:
        """Whether this answers None for every text of `sql`'s shape, having just answered
        None for `sql` (the MySQL relay's statement memo asks): the write verdicts are cached
        by (schema, text_key), shape-wide already, so the guardrails (`inner`) decide."""
        inner = self.inner
        if inner is None:
            return True
        passes = getattr(inner, "passes_whole_shape", None)
        return passes is not None and passes(sql)

    def __getattr__(self, name):
        # anything else the relay reads of a policy (statement views, caches) is the inner one's
        inner = object.__getattribute__(self, "inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

