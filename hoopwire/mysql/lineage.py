"""Column lineage for MySQL / MariaDB: which base columns each output column of a statement reads.

A column definition names its source (org_table, org_name) only for a plain column, and even
then it can be made up: `SELECT x FROM (SELECT ssn AS x FROM users) AS users` arrives as
users.x, a view's column as the view's. `UPPER(ssn)`, `CONCAT(ssn, '')`, `GROUP_CONCAT(ssn)`,
`JSON_OBJECT('s', ssn)` and `UNION ... SELECT ssn` name nothing. This module reads the statement
with sqlglot's MySQL dialect and follows every output back to the base columns it reads --
through aliases, derived tables, CTEs (recursive ones to a fixpoint), set operations, joins
(USING and NATURAL in the server's column order), scalar subqueries, window functions and views
(their definition, when the caller can give it) -- so that the masker masks exactly what reads
masked data.

"Reads" is the definition hoopwire/pg/lineage.py uses: an output reads every column of its own
expression and every column that decides which rows or groups exist at its level (WHERE, ON,
USING, GROUP BY, HAVING, DISTINCT, ORDER BY, LIMIT, window clauses), so that
`SELECT COUNT(*) FROM users WHERE ssn LIKE '1%'` -- a prefix oracle -- reads ssn. `COUNT(*)`
alone and literals read nothing.

sqlglot is not MySQL's grammar, so the text is first put through a lexer with the server's rules
(below, `_lex`) and handed to sqlglot only in a form both read the same way: comments dropped,
executable comments (`/*! ... */`, `/*M!NNNNNN ... */`, which the server runs) opened up in every
reading the server's version allows, string literals re-quoted without backslash escapes (the
session's NO_BACKSLASH_ESCAPES decides what the original meant), double quotes turned into
backticks under ANSI_QUOTES, `--` that is not a comment split apart. Whatever the lexer or
sqlglot cannot read, and whatever reads state the text does not show -- user variables,
LAST_INSERT_ID(), stored functions, sequences, LOAD_FILE, tables of query texts or statistics
-- is unplaceable: None, and the masker applies `unresolved_columns`.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Callable, Optional

import sqlglot
from sqlglot import exp
from sqlglot.dialects.mysql import MySQL

__all__ = ["output_sources", "write_sources", "NO_BACKSLASH_ESCAPES", "ANSI_QUOTES"]

log = logging.getLogger("hoopwire.mysql.lineage")
# sqlglot logs a warning for every statement it keeps as an opaque Command (CALL, EXECUTE ...);
# those come back as None here, and a log line per statement would flood the gateway's log
logging.getLogger("sqlglot").setLevel(logging.ERROR)

NO_BACKSLASH_ESCAPES = 1        # mode bits, as hoopwire/mysql/dialect.py and hoopwire._sqlnorm
ANSI_QUOTES = 2

Src = tuple[str, str, str]
Tables = Callable[[str, str], Optional[list]]
Views = Callable[[str, str], Optional[str]]
_UNKNOWN: Src = ("", "", "?")
_UNKNOWN_SET = frozenset((_UNKNOWN,))
_NONE: frozenset = frozenset()
_MAX_DEPTH = 24                 # nested subqueries, views over views
_MAX_VARIANTS = 6               # readings of one statement's versioned executable comments


class _Unreadable(Exception):
    """The text (or one statement of it) cannot be read the way the server reads it."""


class _Text(str):
    """One reading's text for sqlglot, with the names double quotes made (`dq`, lower-cased)."""
    dq: frozenset = frozenset()


class _CallbackFailed(Exception):
    """tables() or views() raised: the caller's error, given back to it as it was."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


# --------------------------------------------------------------------------------------------
# the lexer: MySQL's lexical rules, and a text sqlglot reads the same way

_PLAIN = re.compile(r"[^'\"`#\-/*;]+")
_WS_CTRL = frozenset(chr(c) for c in range(33)) | {"\x7f"}     # my_isspace / my_iscntrl
_ESC = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "%": "\\%",
        "_": "\\_"}
_DIGITS = re.compile(r"\d*")
_PAREN = re.compile(r"\s*\(")
_CALL = re.compile(r"([A-Za-z0-9_$\x80-\U0010ffff]+)\s*\(")


class _Piece:
    """A run of normalised text; cond is None, or the (mariadb_only, version) of the
    executable comment it was written in."""
    __slots__ = ("text", "cond", "code", "opens", "dq")

    def __init__(self, text: str, cond, code: bool, opens: bool = False,
                 dq: Optional[str] = None):
        self.text = text
        self.cond = cond
        self.code = code            # outside strings and quoted names (for the call check)
        self.opens = opens          # an executable comment starts here
        self.dq = dq                # a name written in double quotes (ANSI_QUOTES), lower


def _lex(sql: str, mode: int, mariadb: Optional[bool]) -> list[list[_Piece]]:
    """The statements of `sql` as pieces. Raises _Unreadable where the server's reading is not
    certain: an unterminated string or comment, a comment inside an executable one, `;` inside
    an executable comment, a version of six digits or more when the server's kind is not
    known (MariaDB reads six digits, MySQL five)."""
    nbe = bool(mode & NO_BACKSLASH_ESCAPES)
    ansi = bool(mode & ANSI_QUOTES)
    stmts: list[list[_Piece]] = []
    cur: list[_Piece] = []
    cond = None                     # the executable comment we are in
    cond_end = -1                   # where a reader that skips it would end it
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "'" or (c == '"' and not ansi):
            i, text = _string(sql, i, c, nbe)
            cur.append(_Piece("'" + text.replace("\\", "\\\\").replace("'", "''") + "'",
                              cond, False))
        elif c == "`" or c == '"':
            j = i + 1
            parts = []
            while True:
                k = sql.find(c, j)
                if k < 0:
                    raise _Unreadable("unterminated quoted name")
                parts.append(sql[j:k])
                if k + 1 < n and sql[k + 1] == c:
                    parts.append(c)
                    j = k + 2
                    continue
                i = k + 1
                break
            name = "".join(parts)
            cur.append(_Piece("`" + name.replace("`", "``") + "`", cond, False,
                              dq=name.lower() if c == '"' else None))
            if _PAREN.match(sql, i):
                # a quoted name called as a function: MariaDB may run a stored function of
                # that name -- not one sqlglot's reading would know
                cur.append(_Piece("", "quoted-call", True))
        elif c == "#" or (c == "-" and sql.startswith("--", i) and
                          (i + 2 >= n or sql[i + 2] in _WS_CTRL)):
            if cond is not None:
                raise _Unreadable("a line comment inside an executable comment")
            k = sql.find("\n", i)
            i = n if k < 0 else k + 1
            cur.append(_Piece(" ", None, True))
        elif c == "/" and sql.startswith("/*", i):
            if cond is not None:
                raise _Unreadable("a comment inside an executable comment")
            end = sql.find("*/", i + 2)
            if end < 0:
                raise _Unreadable("unterminated comment")
            m_only = sql.startswith("M!", i + 2)
            if m_only or sql.startswith("!", i + 2):
                j = i + (4 if m_only else 3)
                digits = _DIGITS.match(sql, j).group()
                if len(digits) >= 6:
                    if not mariadb and not m_only:
                        # MariaDB reads six digits; MySQL five, or six in later releases
                        raise _Unreadable("a six-digit version, not known to be MariaDB")
                    version, j = int(digits[:6]), j + 6
                elif len(digits) == 5:
                    version, j = int(digits), j + 5
                else:
                    version = None
                if "/*" in sql[j:end]:
                    raise _Unreadable("a comment inside an executable comment")
                cond = (m_only, version)
                cond_end = end
                cur.append(_Piece(" ", cond, True, opens=True))
                i = j
            else:
                cur.append(_Piece(" ", None, True))
                i = end + 2
        elif c == "*" and cond is not None and sql.startswith("*/", i):
            if i != cond_end:
                # a string in the body hides the first `*/`: a server that skips the comment
                # ends it elsewhere than one that runs it
                raise _Unreadable("executable comment ends differently when skipped")
            cur.append(_Piece(" ", cond, True))
            cond = None
            i += 2
        elif c == ";":
            if cond is not None:
                raise _Unreadable("`;` inside an executable comment")
            if any(p.text.strip() for p in cur):
                stmts.append(cur)
            cur = []
            i += 1
        elif c == "-":
            # `--` not followed by a space is two minus signs to the server, a comment to sqlglot
            cur.append(_Piece("- " if sql.startswith("--", i) else "-", cond, True))
            i += 1
        else:
            m = _PLAIN.match(sql, i)
            j = m.end() if m else i + 1
            cur.append(_Piece(sql[i:j], cond, True))
            i = j
    if cond is not None:
        raise _Unreadable("unterminated executable comment")
    if any(p.text.strip() for p in cur):
        stmts.append(cur)
    return stmts


_SPACE = _Piece(" ", None, True)


def _string(sql: str, i: int, q: str, nbe: bool) -> tuple[int, str]:
    """The string literal quoted by `q` at i: (end, its value)."""
    out = []
    j, n = i + 1, len(sql)
    while j < n:
        c = sql[j]
        if c == q:
            if j + 1 < n and sql[j + 1] == q:
                out.append(q)
                j += 2
                continue
            return j + 1, "".join(out)
        if c == "\\" and not nbe:
            if j + 1 >= n:
                break
            e = sql[j + 1]
            out.append(_ESC.get(e, e))
            j += 2
            continue
        out.append(c)
        j += 1
    raise _Unreadable("unterminated string")


def _runs(cond, mariadb: bool, version: int) -> bool:
    """Whether a server runs an executable comment. Measured on MariaDB 10.11: `/*!v` with
    50700 <= v < 100000 is MySQL-only to MariaDB and skipped (`/*!80000 ...` does not run,
    `/*!50699 ...` does); `/*M!v` has no such gap; MySQL never runs `/*M!`."""
    m_only, v = cond
    if m_only and not mariadb:
        return False
    if mariadb and not m_only and v is not None and 50700 <= v < 100000:
        return False
    return v is None or version >= v


def _variants(pieces: list[_Piece], mariadb: Optional[bool],
              version: Optional[int]) -> list[list[_Piece]]:
    """The readings of one statement the servers it may run on give it: the pieces of the
    executable comments each runs."""
    conds = {p.cond for p in pieces if p.cond is not None and p.cond != "quoted-call"}
    if not conds:
        return [pieces]
    kinds = [mariadb] if mariadb is not None else [True, False]
    if version is not None:
        versions = [version]
    else:
        vs = sorted({v for _m, v in conds if v is not None})
        versions = [0] + vs + [10 ** 7]
    seen, out = set(), []
    for k in kinds:
        for v in versions:
            key = frozenset(c for c in conds if _runs(c, k, v))
            if key in seen:
                continue
            seen.add(key)
            # a comment that does not run still separates the tokens around it
            out.append([p if p.cond is None or p.cond == "quoted-call" or p.cond in key
                        else _SPACE for p in pieces
                        if p.cond is None or p.cond == "quoted-call" or p.cond in key or
                        p.opens])
    if len(out) > _MAX_VARIANTS:
        raise _Unreadable("too many readings of versioned executable comments")
    return out


# --------------------------------------------------------------------------------------------
# names

# MySQL and MariaDB built-in functions whose result is a function of their arguments (and of
# nothing a session can set from data). An unqualified call of one of these names is always
# the built-in (a stored function of the same name must be called as db.name()). Any other
# name called is a stored or loadable function whose body may read anything: unplaceable.
_BUILTINS = frozenset("""
abs acos adddate add_months addtime aes_decrypt aes_encrypt any_value area asbinary ascii asin
astext aswkb aswkt atan atan2 avg benchmark bin bin_to_uuid binlog_gtid_pos bit_and bit_count
bit_length bit_or bit_xor boundary buffer cast ceil ceiling centroid char char_length
character_length charset chr coalesce coercibility collation column_add column_check
column_create column_delete column_exists column_get column_json column_list compress concat
concat_ws connection_id contains conv convert convert_tz convexhull cos cot count crc32 crc32c
crosses cume_dist curdate current_date current_role current_time current_timestamp current_user
curtime database date date_add date_format date_sub datediff day dayname dayofmonth dayofweek
dayofyear decode decode_histogram decode_oracle default degrees dense_rank des_decrypt
des_encrypt dimension disjoint elt encode encrypt endpoint envelope equals exp export_set
exteriorring extract extractvalue field find_in_set first_value floor format format_bytes
format_pico_time found_rows from_base64 from_days from_unixtime geomcollfromtext
geomcollfromwkb geometrycollection geometrycollectionfromtext geometrycollectionfromwkb
geometryfromtext geometryfromwkb geometryn geometrytype geomfromtext geomfromwkb get_format
glength greatest group_concat hex hour if ifnull inet6_aton inet6_ntoa inet_aton inet_ntoa
insert instr interiorringn intersects interval is_ipv4 is_ipv4_compat is_ipv4_mapped is_ipv6
is_uuid isclosed isempty isnull isring issimple json_array json_array_append json_array_insert
json_array_intersect json_arrayagg json_compact json_contains json_contains_path json_depth
json_detailed json_equals json_exists json_extract json_insert json_keys json_length
json_loose json_merge json_merge_patch json_merge_preserve json_normalize json_object
json_object_filter_keys json_object_to_array json_objectagg json_overlaps json_pretty
json_query json_quote json_remove json_replace json_schema_valid json_search json_set
json_type json_unquote json_valid json_value lag last_day last_value lcase lead least left
length lengthb linefromtext linefromwkb linestring linestringfromtext linestringfromwkb ln
localtime localtimestamp locate log log10 log2 lower lpad ltrim makedate maketime make_set
match max md5 median microsecond mid min minute mlinefromtext mlinefromwkb mod month
monthname months_between mpointfromtext mpointfromwkb mpolyfromtext mpolyfromwkb
multilinestring multilinestringfromtext multilinestringfromwkb multipoint multipointfromtext
multipointfromwkb multipolygon multipolygonfromtext multipolygonfromwkb name_const
natural_sort_key now nth_value ntile nullif numgeometries numinteriorrings numpoints nvl nvl2
oct octet_length old_password ord overlaps password percent_rank percentile_cont
percentile_disc period_add period_diff pi point pointfromtext pointfromwkb pointn
pointonsurface polyfromtext polyfromwkb polygon polygonfromtext polygonfromwkb position pow
power quarter quote radians rand random_bytes rank regexp_instr regexp_like regexp_replace
regexp_substr repeat replace reverse right round row_count row_number rownum rpad rtrim
schema sec_to_time second session_user sformat sha sha1 sha2 sign sin sleep soundex space
sqrt srid st_area st_asbinary st_asgeojson st_astext st_aswkb st_aswkt st_boundary st_buffer
st_centroid st_collect st_contains st_convexhull st_crosses st_difference st_dimension
st_disjoint st_distance st_distance_sphere st_endpoint st_envelope st_equals st_exteriorring
st_geohash st_geomcollfromtext st_geomcollfromwkb st_geometrycollectionfromtext
st_geometrycollectionfromwkb st_geometryfromtext st_geometryfromwkb st_geometryn
st_geometrytype st_geomfromgeojson st_geomfromtext st_geomfromwkb st_interiorringn
st_intersection st_intersects st_isclosed st_isempty st_isring st_issimple st_isvalid
st_latfromgeohash st_length st_linefromtext st_linefromwkb st_linestringfromtext
st_linestringfromwkb st_longfromgeohash st_mlinefromtext st_mpointfromtext st_mpointfromwkb
st_mpolyfromtext st_mpolyfromwkb st_multilinestringfromtext st_multipointfromtext
st_multipointfromwkb st_multipolygonfromtext st_multipolygonfromwkb st_numgeometries
st_numinteriorrings st_numpoints st_overlaps st_pointfromgeohash st_pointfromtext
st_pointfromwkb st_pointn st_pointonsurface st_polyfromtext st_polyfromwkb
st_polygonfromtext st_polygonfromwkb st_relate st_simplify st_srid st_startpoint
st_symdifference st_touches st_union st_validate st_within st_x st_y startpoint std stddev
stddev_pop stddev_samp str_to_date strcmp subdate substr substring substring_index subtime
sum sys_guid sysdate system_user tan time time_format time_to_sec timediff timestamp
timestampadd timestampdiff to_base64 to_char to_date to_days to_number to_seconds touches
trim trim_oracle trunc truncate ucase uncompress uncompressed_length unhex unix_timestamp
updatexml upper user utc_date utc_time utc_timestamp uuid uuid_short uuid_to_bin uuid_v4
uuid_v7 var_pop var_samp variance version week weekday weekofyear weight_string within x y
year yearweek row exists values grouping
""".split())
# Built-ins that return session state a previous statement may have set from data:
# LAST_INSERT_ID(expr) keeps expr for a later LAST_INSERT_ID(); sequences keep SETVAL's value
_STATEFUL = frozenset(("last_insert_id", "nextval", "lastval", "setval", "load_file",
                       "get_lock", "is_used_lock", "is_free_lock", "release_lock",
                       "master_pos_wait", "master_gtid_wait", "old_value"))
# Names that are followed by `(` without being a call
_NOT_CALLS = frozenset("""
in exists values using over as and or not on from join select where into key index partition
partitions columns against any all some with row if interval when then else by having limit is
like regexp rlike between xor div mod binary distinct union except intersect table lateral
collate case
recursive case char varchar decimal numeric float double int integer signed unsigned dec real
bit enum set time datetime timestamp year varbinary nchar nvarchar json point polygon
linestring geometry use force ignore fields lines for window rows range match convert cast
""".split())

# sqlglot knows these names (from other dialects) as typed functions: MySQL does not, so a call
# of one is a stored function that sqlglot would misread as the other dialect's built-in
_SQLGLOT_ONLY = frozenset(
    n.lower() for n in MySQL.Parser.FUNCTIONS) - _BUILTINS - _STATEFUL - frozenset((
        "json_arrayagg", "json_objectagg", "group_concat")) - _NOT_CALLS
# System variables a client's driver or tool reads at connect time, holding no table data
_SAFE_SYSVARS = frozenset("""
version version_comment version_compile_os version_compile_machine version_malloc_library
version_ssl_library sql_mode autocommit auto_increment_increment auto_increment_offset
character_set_client character_set_connection character_set_results character_set_server
character_set_database character_set_system character_set_filesystem collation_connection
collation_server collation_database max_allowed_packet net_buffer_length lower_case_table_names
time_zone system_time_zone tx_isolation transaction_isolation tx_read_only
transaction_read_only wait_timeout interactive_timeout license init_connect performance_schema
query_cache_size query_cache_type net_write_timeout net_read_timeout session_track_schema
session_track_state_change session_track_system_variables session_track_transaction_info
have_ssl have_openssl hostname port socket server_id protocol_version sql_select_limit
default_storage_engine storage_engine max_execution_time max_statement_time
innodb_version in_transaction sql_auto_is_null sql_safe_updates group_concat_max_len
default_week_format div_precision_increment lc_messages lc_time_names old_passwords
explicit_defaults_for_timestamp tmp_table_size max_heap_table_size read_only
innodb_read_only super_read_only gtid_mode enforce_gtid_consistency log_bin binlog_format
""".split())

# Relations whose values are copies of other columns' values or of statement texts (literals
# included): reading any of their columns is unplaceable
_OPAQUE_SCHEMAS = frozenset(("sys",))
_OPAQUE_RELS = frozenset((
    ("information_schema", "processlist"), ("information_schema", "innodb_trx"),
    ("information_schema", "innodb_locks"), ("information_schema", "innodb_ft_index_table"),
    ("information_schema", "innodb_ft_index_cache"), ("information_schema", "innodb_ft_deleted"),
    ("information_schema", "innodb_ft_being_deleted"), ("information_schema",
                                                       "innodb_buffer_page"),
    ("information_schema", "column_statistics"), ("information_schema", "optimizer_trace"),
    ("information_schema", "user_variables"), ("information_schema", "query_cache_info"),
    ("information_schema", "global_variables"), ("information_schema", "session_variables"),
    ("mysql", "column_stats"), ("mysql", "general_log"), ("mysql", "slow_log"),
    ("performance_schema", "events_statements_current"),
    ("performance_schema", "events_statements_history"),
    ("performance_schema", "events_statements_history_long"),
    ("performance_schema", "events_statements_summary_by_digest"),
    ("performance_schema", "prepared_statements_instances"),
    ("performance_schema", "threads"), ("performance_schema", "data_locks"),
    ("performance_schema", "user_variables_by_thread"),
    ("performance_schema", "variables_by_thread"),
    ("performance_schema", "session_variables"), ("performance_schema", "global_variables")))


def _ident(node) -> str:
    if node is None:
        return ""
    if isinstance(node, exp.Identifier):
        return node.this
    if isinstance(node, str):
        return node
    return node.name


def _arg(node, name):
    """node.args[name] under sqlglot's spelling (`from_`/`with_` in 30.x, `from` before)."""
    v = node.args.get(name + "_")
    return v if v is not None else node.args.get(name)


# --------------------------------------------------------------------------------------------
# scopes

class _Entry:
    """One FROM item as its query level sees it: alias, and [(lower name, sources)]."""
    __slots__ = ("alias", "schema", "cols", "hidden", "base")

    def __init__(self, alias: str, cols: Optional[list], schema: str = "", base=None):
        self.alias = alias
        self.schema = schema
        self.cols = cols                # None: a shape lineage cannot know
        self.hidden = False
        self.base = base                # (schema, table) of a base table, for writes

    def column(self, name: str) -> Optional[frozenset]:
        if self.cols is None:
            return _UNKNOWN_SET
        key = name.lower()
        found = None
        unnamed = None
        for n, s in self.cols:
            if n == key:
                found = s if found is None else found | s
            elif n is None:
                unnamed = s if unnamed is None else unnamed | s
        if found is None and unnamed is not None:
            # a derived column named by its expression's text (`UPPER(ssn)`), which only the
            # server spells: it is one of these
            return unnamed
        return found

    def whole(self) -> frozenset:
        if self.cols is None:
            return _UNKNOWN_SET
        return frozenset().union(*(s for _n, s in self.cols))


class _Scope:
    __slots__ = ("entries", "parent", "ctes", "aliases", "star")

    def __init__(self, parent: Optional["_Scope"], ctes: dict):
        self.entries: list[_Entry] = []
        self.parent = parent
        self.ctes = ctes
        self.aliases: list = []          # [(lower name, sources)] of the select list so far
        self.star: list = []             # [(lower name, sources)] of `*`, None: unknown width


def _find(qual: str, schema: str, scope: Optional[_Scope]) -> Optional[_Entry]:
    # table aliases compared without case: lower_case_table_names decides on the server, and
    # matching more entries only unions more sources
    q = qual.lower()
    s = scope
    while s is not None:
        hits = [e for e in s.entries if not e.hidden and e.alias.lower() == q and
                (not schema or e.schema.lower() in ("", schema.lower()))]
        if len(hits) == 1:
            return hits[0]
        if hits:
            return _Entry(qual, [(None, frozenset().union(*(e.whole() for e in hits)))])
        s = s.parent
    return None


# --------------------------------------------------------------------------------------------
# the analyzer

class _Analyzer:

    def __init__(self, default_schema: Optional[str], tables: Tables, views: Optional[Views],
                 depth: int = 0, view_cache: Optional[dict] = None):
        self.default_schema = default_schema
        self.tables = tables
        self.views = views
        self.depth = depth
        self.view_cache = view_cache if view_cache is not None else {}
        self.writes: list = []      # [(target Src | None, frozenset)] a statement stores
        # names the text wrote in double quotes under ANSI_QUOTES: one no table in sight has
        # reads nothing in this reading (see column)
        self.dq: frozenset = _NONE

    # -- statements ---------------------------------------------------------------------------

    def statement(self, node) -> Optional[list]:
        """[frozenset] per output column (UNKNOWN inside where unplaceable), [] for a
        statement without a result set, None when its result cannot be placed."""
        if isinstance(node, (exp.Select, exp.SetOperation, exp.Subquery)):
            if node.find(exp.Into) is not None:
                return []           # SELECT ... INTO @v / OUTFILE: an OK, no rows
            return [s for _n, s in self.query(node, None, {})]
        if isinstance(node, (exp.Insert, exp.Update, exp.Delete)):
            return None if node.args.get("returning") else []
        if isinstance(node, (exp.Set, exp.Use, exp.Create, exp.Drop, exp.Alter,
                             exp.TruncateTable, exp.Transaction, exp.Commit, exp.Rollback,
                             exp.Grant, exp.Revoke, exp.LoadData)):
            return []
        # SHOW, DESCRIBE / EXPLAIN, CALL, EXECUTE, HANDLER, ANALYZE and what sqlglot keeps as
        # an opaque Command: rows lineage cannot place (SHOW's come with information_schema
        # names in their column definitions)
        return None

    def stores(self, node) -> Optional[list]:
        """[(target (schema, table, column) | None, frozenset)] of what `node` keeps where a
        later statement can read it -- a table's column, a user variable, a file, session
        state -- with the columns that chose the rows it keeps; None when that cannot be told
        (CALL, PREPARE, triggers and routines, ALTER, what sqlglot cannot read)."""
        if isinstance(node, (exp.Select, exp.SetOperation, exp.Subquery)):
            outs = self.query(node, None, {})
            if node.find(exp.Into) is not None:
                self.writes.extend((None, src) for _n, src in outs)
            return self.writes
        if isinstance(node, exp.Insert):
            return self._insert(node)
        if isinstance(node, (exp.Update, exp.Delete)):
            return self._update_delete(node)
        if isinstance(node, exp.Create):
            kind = str(node.args.get("kind") or "").upper()
            q = node.expression
            if isinstance(q, (exp.Select, exp.SetOperation, exp.Subquery)):
                self.writes.extend((None, src) for _n, src in self.query(q, None, {}))
                return self.writes
            if q is None and kind in ("TABLE", "INDEX", "DATABASE", "SCHEMA"):
                return self.writes
            return None
        if isinstance(node, exp.Set):
            scope = _Scope(None, {})
            for item in node.expressions:
                eq = item.this if isinstance(item, exp.SetItem) else item
                if not isinstance(eq, (exp.EQ, exp.PropertyEQ)):
                    return None
                srcs: set = set()
                self.expr(eq.expression, scope, srcs)
                self.writes.append((None, frozenset(srcs)))
            return self.writes
        if isinstance(node, (exp.Use, exp.Drop, exp.Transaction, exp.Commit, exp.Rollback,
                             exp.Show, exp.Describe, exp.TruncateTable, exp.Grant,
                             exp.Revoke)):
            return self.writes
        return None

    def _insert(self, node: exp.Insert) -> Optional[list]:
        target = node.this
        named = None
        if isinstance(target, exp.Schema):
            named = [_ident(c) for c in target.expressions]
            target = target.this
        if not isinstance(target, exp.Table):
            return None
        scope = _Scope(None, {})
        entry = self.relation(target, scope)
        if entry.cols is None:
            return None
        tcols = named or [n for n, _s in entry.cols]
        q = node.expression
        if isinstance(q, exp.Values):
            outs = self.query(q, None, {})
        elif isinstance(q, (exp.Select, exp.SetOperation, exp.Subquery)):
            outs = self.query(q, None, {})
        else:
            return None
        every: set = set()
        for i, (_n, src) in enumerate(outs):
            col = tcols[i] if i < len(tcols) else None
            self.writes.append((self._target(entry, col), src))
            every |= src
        conflict = node.args.get("conflict")
        if conflict is not None:
            # ON DUPLICATE KEY UPDATE: VALUES(col) is any inserted value
            scope.entries.append(entry)
            for eq in conflict.expressions or ():
                if not isinstance(eq, exp.EQ) or not isinstance(eq.this, exp.Column):
                    return None
                srcs: set = set(every)
                self.expr(eq.expression, scope, srcs)
                self.writes.append((self._target(entry, eq.this.name), frozenset(srcs)))
        return self.writes

    def _update_delete(self, node) -> Optional[list]:
        if _arg(node, "from") is not None or node.args.get("using"):
            return None
        scope = _Scope(None, {})
        ctx: set = set()
        self.from_list([node.this], [], scope, ctx)
        self.expr(node.args.get("where"), scope, ctx)
        order = node.args.get("order")
        for o in (order.expressions if order is not None else ()):
            self.expr(o, scope, ctx)
        self.expr(node.args.get("limit"), scope, ctx)
        c = frozenset(ctx)
        if isinstance(node, exp.Update):
            for eq in node.expressions:
                if not isinstance(eq, exp.EQ) or not isinstance(eq.this, exp.Column):
                    return None
                col = eq.this
                if col.table:
                    entry = _find(col.table, col.text("db"), scope)
                else:
                    hits = [e for e in scope.entries
                            if e.cols is not None and e.column(col.name) is not None]
                    entry = hits[0] if len(hits) == 1 else None
                srcs: set = set()
                self.expr(eq.expression, scope, srcs)
                self.writes.append((self._target(entry, col.name), frozenset(srcs) | c))
        # which rows are written (or deleted) is one bit per row, kept in the table
        if c:
            self.writes.append((None, c))
        return self.writes

    @staticmethod
    def _target(entry: Optional[_Entry], col: Optional[str]) -> Optional[Src]:
        if entry is None or entry.base is None or col is None:
            return None
        return (entry.base[0], entry.base[1], col)

    # -- queries ------------------------------------------------------------------------------

    def query(self, node, parent: Optional[_Scope], ctes: dict) -> list:
        """[(lower name or None, frozenset)] of a query expression."""
        if self.depth >= _MAX_DEPTH:
            raise _Unreadable("nested too deep")
        self.depth += 1
        try:
            return self._query(node, parent, ctes)
        finally:
            self.depth -= 1

    def _query(self, node, parent, ctes) -> list:
        ctes = self.with_clause(_arg(node, "with"), ctes, parent)
        if isinstance(node, exp.Subquery):
            outs = self.query(node.this, parent, ctes)
            return self._ordered(node, outs, parent, ctes)
        if isinstance(node, exp.SetOperation):
            left = self.query(node.this, parent, ctes)
            right = self.query(node.expression, parent, ctes)
            if len(left) != len(right):
                raise _Unreadable("set operation arms differ in width")
            outs = [(a[0], a[1] | b[1]) for a, b in zip(left, right)]
            if not isinstance(node, exp.Union) or node.args.get("distinct") is not False:
                # duplicates removed or rows kept by comparing whole rows: every column
                # decides whether a row appears
                every = frozenset().union(*(s for _n, s in outs))
                outs = [(n, every) for n, _s in outs]
            return self._ordered(node, outs, parent, ctes)
        if isinstance(node, exp.Select):
            return self.select(node, parent, ctes)
        if isinstance(node, exp.Values):
            scope = _Scope(parent, ctes)
            cols: list = []
            for row in node.expressions:
                items = row.expressions if isinstance(row, exp.Tuple) else [row]
                for i, e in enumerate(items):
                    while len(cols) <= i:
                        cols.append(set())
                    self.expr(e, scope, cols[i])
            return [(None, frozenset(c)) for c in cols]
        raise _Unreadable(f"not a query: {type(node).__name__}")

    def _ordered(self, node, outs, parent, ctes) -> list:
        """ORDER BY / LIMIT on a set operation or a parenthesised query: with a LIMIT, the
        order decides which rows exist."""
        order, limit = node.args.get("order"), node.args.get("limit")
        if order is None and limit is None and node.args.get("offset") is None:
            return outs
        ctx: set = set()
        scope = _Scope(parent, ctes)
        scope.entries.append(_Entry("", list(outs)))
        scope.aliases = list(outs)
        if order is not None:
            for o in order.expressions:
                self._by_output(o.this if isinstance(o, exp.Ordered) else o, scope, ctx, outs)
        for part in (limit, node.args.get("offset")):
            self.expr(part, scope, ctx)
        every = frozenset().union(*(s for _n, s in outs)) if limit is not None else _NONE
        c = frozenset(ctx) | every
        return [(n, s | c) for n, s in outs]

    def with_clause(self, w, ctes: dict, parent) -> dict:
        if w is None:
            return ctes
        ctes = dict(ctes)
        recursive = bool(w.args.get("recursive"))
        for cte in w.expressions:
            name = cte.alias.lower()
            alias_cols = [_ident(c).lower() for c in
                          (cte.args["alias"].columns if cte.args.get("alias") else [])]
            q = cte.this
            if recursive and isinstance(q, exp.SetOperation):
                # the anchor gives the shape; the whole query is read again with the CTE bound
                # to what it reads so far, until that stops growing
                cols = self._named(self.query(self._anchor(q), parent, ctes), alias_cols)
                for _ in range(10):
                    ctes[name] = cols
                    new = self._named(self.query(q, parent, ctes), alias_cols)
                    if len(new) != len(cols):
                        raise _Unreadable("recursive CTE changes width")
                    new = [(n, s | o) for (n, s), (_m, o) in zip(new, cols)]
                    if new == cols:
                        break
                    cols = new
                else:
                    raise _Unreadable("recursive CTE does not settle")
                ctes[name] = cols
            else:
                if recursive:
                    ctes.pop(name, None)
                ctes[name] = self._named(self.query(q, parent, ctes), alias_cols)
        return ctes

    @staticmethod
    def _anchor(q):
        while isinstance(q, exp.SetOperation):
            q = q.this
        return q

    @staticmethod
    def _named(outs, alias_cols) -> list:
        if alias_cols:
            if len(alias_cols) != len(outs):
                raise _Unreadable("column list width")
            return [(a, s) for a, (_n, s) in zip(alias_cols, outs)]
        return list(outs)

    def select(self, node: exp.Select, parent, ctes) -> list:
        scope = _Scope(parent, ctes)
        ctx: set = set()
        first_write = len(self.writes)
        frm = _arg(node, "from")
        if frm is not None:
            items = [frm.this] + list(frm.expressions or ())
            joins = list(node.args.get("joins") or ())
            scope.star = self.from_list(items, joins, scope, ctx)
        elif node.args.get("joins"):
            raise _Unreadable("joins without FROM")
        outs: list = []
        for e in node.expressions:
            if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and
                                           isinstance(e.this, exp.Star)):
                cols = self.star(e, scope)
                outs.extend(cols)
                scope.aliases.extend(cols)
                continue
            srcs: set = set()
            if isinstance(e, exp.Alias):
                self.expr(e.this, scope, srcs)
                name = e.alias.lower()
            else:
                self.expr(e, scope, srcs)
                name = e.name.lower() if isinstance(e, exp.Column) else None
            outs.append((name, frozenset(srcs)))
            scope.aliases.append((name, frozenset(srcs)))
        self.expr(node.args.get("where"), scope, ctx)
        group = node.args.get("group")
        if group is not None:
            for g in group.expressions:
                self._by_output(g, scope, ctx, outs)
            for part in ("rollup", "cube", "grouping_sets"):
                for g in group.args.get(part) or ():
                    self.expr(g, scope, ctx)
        having = node.args.get("having")
        if having is not None:
            self._by_output(having.this, scope, ctx, outs)
        qualify = node.args.get("qualify")
        if qualify is not None:
            self._by_output(qualify.this, scope, ctx, outs)
        for w in node.args.get("windows") or ():
            self.expr(w, scope, ctx)
        order = node.args.get("order")
        if order is not None:
            # the order of rows ranks the values it sorts by, and decides what a LIMIT keeps
            for o in order.expressions:
                self._by_output(o.this if isinstance(o, exp.Ordered) else o, scope, ctx, outs)
        for part in ("limit", "offset"):
            self.expr(node.args.get(part), scope, ctx)
        if node.args.get("distinct") is not None:
            for _n, s in outs:
                ctx |= s
        if ctx:
            c = frozenset(ctx)
            outs = [(n, s | c) for n, s in outs]
            # `@x := expr` keeps the value of the rows the filters chose
            self.writes[first_write:] = [(t, w | c) for t, w in self.writes[first_write:]]
        return outs

    def _by_output(self, node, scope: _Scope, ctx: set, outs: list) -> None:
        """A GROUP BY / HAVING / ORDER BY item: an output's number, a select alias or a column
        (both where the name is both), or an expression over them."""
        if isinstance(node, exp.Literal) and not node.is_string:
            try:
                i = int(node.this) - 1
            except ValueError:
                return
            if 0 <= i < len(outs):
                ctx |= outs[i][1]
            return
        self.expr(node, scope, ctx, aliases=True)

    def star(self, e, scope: _Scope) -> list:
        if isinstance(e, exp.Star):
            if scope.star is None:
                raise _Unreadable("`*` over a relation of unknown shape")
            if not scope.star:
                raise _Unreadable("`*` without FROM")
            return list(scope.star)
        entry = _find(e.table, e.text("db"), scope)
        if entry is None or entry.cols is None:
            raise _Unreadable("`t.*` of an unknown relation")
        return list(entry.cols)

    # -- FROM ---------------------------------------------------------------------------------

    def from_list(self, items: list, joins: list, scope: _Scope, ctx: set) -> Optional[list]:
        """Enter the FROM items and joins into `scope`; the columns of `*` in the server's
        order. Commas bind looser than JOIN: `a, b JOIN c USING (x)` joins b and c."""
        groups: list = []               # [(entries, star)] per comma-separated group
        for item in items:
            groups.append(self.from_item(item, scope, ctx))
        for j in joins:
            right = self.from_item(j.this, scope, ctx)
            comma = not any(j.args.get(k) for k in ("kind", "side", "method", "on", "using")) \
                and "pivots" not in j.args
            if comma or not groups:
                groups.append(right)
                continue
            groups[-1] = self.join(groups[-1], right, j, scope, ctx)
        star: Optional[list] = []
        for _entries, s in groups:
            if s is None or star is None:
                star = None
            else:
                star.extend(s)
        return star

    def from_item(self, item, scope: _Scope, ctx: set):
        """([entries], star columns or None)."""
        if isinstance(item, exp.Table) and not item.args.get("joins"):
            if isinstance(item.this, exp.Identifier):
                entry = self.relation(item, scope)
                scope.entries.append(entry)
                return [entry], (list(entry.cols) if entry.cols is not None else None)
            raise _Unreadable(f"table expression {type(item.this).__name__}")
        if isinstance(item, exp.Table):         # `(a JOIN b ...)`, parsed as a table with joins
            return self._nested(item, scope, ctx)
        if isinstance(item, exp.Subquery):
            inner = item.this
            if isinstance(inner, exp.Table) and inner.args.get("joins"):
                return self._nested(inner, scope, ctx)
            if item.args.get("lateral") or isinstance(item.parent, exp.Lateral):
                raise _Unreadable("LATERAL")
            outs = self.query(inner, scope.parent, scope.ctes)
            alias = item.args.get("alias")
            cols = [_ident(c).lower() for c in (alias.columns if alias is not None else [])]
            outs = self._named(outs, cols)
            outs = self._ordered(item, outs, scope.parent, scope.ctes)
            entry = _Entry(item.alias or "", list(outs))
            scope.entries.append(entry)
            return [entry], list(outs)
        raise _Unreadable(f"FROM item {type(item).__name__}")

    def _nested(self, table: exp.Table, scope: _Scope, ctx: set):
        first = table.copy()
        first.set("joins", None)
        entries, star = self.from_item(first, scope, ctx)
        group = (entries, star)
        for j in table.args.get("joins") or ():
            right = self.from_item(j.this, scope, ctx)
            group = self.join(group, right, j, scope, ctx)
        return group

    def join(self, left, right, j: exp.Join, scope: _Scope, ctx: set):
        lentries, lstar = left
        rentries, rstar = right
        entries = lentries + rentries
        on = j.args.get("on")
        if on is not None:
            self.expr(on, scope, ctx)
        using = [_ident(u).lower() for u in (j.args.get("using") or ())]
        natural = (j.args.get("method") or "").upper() == "NATURAL"
        if natural:
            if lstar is None or rstar is None:
                raise _Unreadable("NATURAL JOIN of a relation of unknown shape")
            rnames = {n for n, _s in rstar}
            using = []
            for n, _s in lstar:
                if n in rnames and n not in using:
                    using.append(n)
        if not using:
            star = None if lstar is None or rstar is None else lstar + rstar
            return entries, star
        if lstar is None or rstar is None:
            raise _Unreadable("USING with a relation of unknown shape")
        if (j.args.get("side") or "").upper() == "RIGHT":
            # the server turns a RIGHT JOIN into a LEFT JOIN of the swapped tables: the right
            # table's columns come first (measured on MariaDB 10.11)
            lstar, rstar = rstar, lstar
        merged = []
        for u in using:
            s = frozenset().union(*(src for n, src in lstar + rstar if n == u))
            if not s and not any(n == u for n, _s in lstar + rstar):
                raise _Unreadable("USING column not in both relations")
            merged.append((u, s))
            ctx |= s
        star = merged + [(n, s) for n, s in lstar if n not in using] + \
            [(n, s) for n, s in rstar if n not in using]
        return entries, star

    def relation(self, t: exp.Table, scope: _Scope) -> _Entry:
        name = t.name
        schema = t.text("db")
        alias = t.alias or name
        if not schema and name.lower() in scope.ctes:
            cols = scope.ctes[name.lower()]
            return _Entry(alias, list(cols))
        schema = schema or self.default_schema
        if not schema:
            raise _Unreadable("no schema selected")
        if schema.lower() in _OPAQUE_SCHEMAS or (schema.lower(), name.lower()) in _OPAQUE_RELS:
            return _Entry(alias, None, schema)
        if name.lower() == "dual" and not t.text("db"):
            return _Entry(alias, [], schema)
        try:
            cols = self.tables(schema, name)
        except Exception as e:  # noqa: BLE001 -- the catalog's failure is its caller's to judge
            raise _CallbackFailed(e) from None
        if cols is None:
            raise _Unreadable(f"unknown table {schema}.{name}")
        view = self._view(schema, name, cols) if self.views is not None else None
        if view is not None:
            return _Entry(alias, view, schema)
        return _Entry(alias, [(c.lower(), frozenset(((schema, name, c),))) for c in cols],
                      schema, (schema, name))

    def _view(self, schema: str, name: str, cols: list) -> Optional[list]:
        key = (schema, name)
        if key in self.view_cache:
            got = self.view_cache[key]
            if got is False:
                raise _Unreadable("view refers to itself")
            return got
        try:
            text = self.views(schema, name)
        except Exception as e:  # noqa: BLE001
            raise _CallbackFailed(e) from None
        if not text:
            self.view_cache[key] = None
            return None
        self.view_cache[key] = False
        stmts = _read(text, 0, True, None)
        if len(stmts) != 1:
            raise _Unreadable("view definition")
        sub = _Analyzer(schema, self.tables, self.views, self.depth + 1, self.view_cache)
        outs = []
        for v in stmts[0]:
            node = _parse(v)
            if not isinstance(node, (exp.Select, exp.SetOperation, exp.Subquery)):
                raise _Unreadable("view definition")
            outs.append(sub.query(node, None, {}))
        if len({len(o) for o in outs}) != 1 or len(outs[0]) != len(cols):
            raise _Unreadable("view width")
        got = [(c.lower(), frozenset().union(*(o[i][1] for o in outs)))
               for i, c in enumerate(cols)]
        self.view_cache[key] = got
        return got

    # -- expressions --------------------------------------------------------------------------

    def column(self, col: exp.Column, scope: _Scope, aliases: bool = False,
               strict: bool = True) -> frozenset:
        name = col.name
        table = col.table
        if table:
            entry = _find(table, col.text("db"), scope)
            if entry is None:
                return _UNKNOWN_SET
            got = entry.column(name)
            return got if got is not None else _UNKNOWN_SET
        key = name.lower()
        s = scope
        while s is not None:
            found: Optional[frozenset] = None
            for e in s.entries:
                if e.hidden:
                    continue
                c = e.column(name) if e.cols is not None else None
                if c is not None:
                    found = c if found is None else found | c
                elif e.cols is None:
                    found = (found or _NONE) | _UNKNOWN_SET
            if aliases and s is scope:
                # GROUP BY / HAVING / ORDER BY: a select alias of that name too
                for n, src in s.aliases:
                    if n == key:
                        found = src if found is None else found | src
            if found is not None:
                return found
            s = s.parent
        # a select alias of an enclosing query (MariaDB lets a subquery in the select list
        # name one)
        s = scope
        while s is not None:
            hits = [src for n, src in s.aliases if n == key]
            if hits:
                return frozenset().union(*hits)
            s = s.parent
        if strict and key in self.dq:
            # every table in sight is known and none has it (an unknown one would have
            # answered _UNKNOWN above): under ANSI_QUOTES `SELECT "abc" FROM users` is the
            # server's ER_BAD_FIELD_ERROR, or the name is no column where it stands (a
            # character set's) -- no column is read; the other reading has it as a string.
            # Taken as unplaceable, every `"..."` next to a masked table was masked whole.
            return _NONE
        return _UNKNOWN_SET

    def expr(self, node, scope: _Scope, out: set, aliases: bool = False) -> None:
        """Add what `node` reads to `out`."""
        if node is None:
            return
        if isinstance(node, list):
            for n in node:
                self.expr(n, scope, out, aliases)
            return
        if isinstance(node, exp.Column):
            if isinstance(node.this, exp.Star):
                entry = _find(node.table, node.text("db"), scope)
                out |= entry.whole() if entry is not None else _UNKNOWN_SET
            else:
                out |= self.column(node, scope, aliases)
            return
        if isinstance(node, (exp.Select, exp.SetOperation, exp.Subquery)):
            for _n, s in self.query(node, scope, scope.ctes):
                out |= s
            return
        if isinstance(node, (exp.Literal, exp.Null, exp.Boolean, exp.DataType, exp.Star,
                             exp.Placeholder)):
            return
        if isinstance(node, exp.Parameter):             # @x: what a statement stored
            out.add(_UNKNOWN)
            return
        if isinstance(node, exp.SessionParameter):      # @@x
            if node.name.lower() not in _SAFE_SYSVARS:
                out.add(_UNKNOWN)
            return
        if isinstance(node, exp.PropertyEQ) and isinstance(node.this, exp.Parameter):
            srcs: set = set()
            self.expr(node.expression, scope, srcs, aliases)     # @x := expr is expr
            self.writes.append((None, frozenset(srcs)))         # ... and keeps it in @x
            out |= srcs
            return
        if isinstance(node, exp.Anonymous):
            fname = node.name.lower()
            srcs = set()
            self.expr(list(node.expressions), scope, srcs, aliases)
            if fname not in _BUILTINS or fname in _STATEFUL:
                srcs.add(_UNKNOWN)
                if fname in _STATEFUL or fname not in _BUILTINS:
                    # LAST_INSERT_ID(x), SETVAL, GET_LOCK(x) keep x where a later statement
                    # reads it; a stored function may keep its arguments anywhere
                    if srcs - _UNKNOWN_SET:
                        self.writes.append((None, frozenset(srcs - _UNKNOWN_SET)))
            out |= srcs
            return
        if isinstance(node, exp.Dot):                   # db.fn(...) and other chains
            srcs = set()
            for child in node.iter_expressions():
                if isinstance(child, exp.Anonymous):
                    self.expr(list(child.expressions), scope, srcs, aliases)
            if srcs - _UNKNOWN_SET:
                self.writes.append((None, frozenset(srcs - _UNKNOWN_SET)))
            out |= srcs
            out.add(_UNKNOWN)
            return
        if isinstance(node, (exp.Var, exp.Identifier)):
            # a name sqlglot took as a keyword: if a column of that name is in sight, count it
            got = self.column(exp.Column(this=exp.to_identifier(node.name)), scope,
                              strict=False)
            if got is not _UNKNOWN_SET:
                out |= got
            return
        if isinstance(node, exp.Alias):
            self.expr(node.this, scope, out, aliases)
            return
        if isinstance(node, exp.Table):
            out.add(_UNKNOWN)
            return
        for child in node.iter_expressions():
            self.expr(child, scope, out, aliases)


# --------------------------------------------------------------------------------------------
# entry points

def _read(sql: str, mode: int, mariadb: Optional[bool], version: Optional[int]) -> list:
    """Per statement: its readings (texts sqlglot reads as the server does). Raises
    _Unreadable."""
    out = []
    for pieces in _lex(sql, mode, mariadb):
        texts = []
        for v in _variants(pieces, mariadb, version):
            if any(p.cond == "quoted-call" for p in v):
                texts.append(None)
                continue
            code = " ".join(p.text for p in v if p.code)
            if any(m.group(1).lower() in _SQLGLOT_ONLY for m in _CALL.finditer(code)):
                texts.append(None)      # a stored function sqlglot would read as another's
                continue
            text = _Text("".join(p.text for p in v))
            text.dq = frozenset(p.dq for p in v if p.dq is not None)
            texts.append(text)
        out.append(texts)
    return out


def _parse(text: Optional[str]):
    if text is None:
        raise _Unreadable("a call lineage cannot follow")
    got = _parse_cached(text)
    if isinstance(got, _Unreadable):
        raise got
    return got


@functools.lru_cache(maxsize=256)
def _parse_cached(text: str):
    """sqlglot's tree of one statement, or the _Unreadable it gives: parsing is most of the
    cost (0.2-1.3 ms a short statement, 30-40 ms per KiB of a long one), and output_sources and
    write_sources of one text parse the same readings. The analysis never changes a tree."""
    try:
        nodes = sqlglot.parse(text, read="mysql")
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError) as e:
        return _Unreadable(f"parse: {type(e).__name__}")
    nodes = [n for n in nodes if n is not None]
    if len(nodes) != 1:
        return _Unreadable("not one statement")
    return nodes[0]


def _statement_sources(readings: list, default_schema, tables, views) -> Optional[list]:
    """One statement's outputs over all its readings: unioned per column when they agree on
    the width, None otherwise."""
    got = None
    for text in readings:
        try:
            a = _Analyzer(default_schema, tables, views)
            a.dq = getattr(text, "dq", _NONE)
            outs = a.statement(_parse(text))
        except (_Unreadable, RecursionError):
            return None
        except _CallbackFailed as e:
            raise e.error from None
        except Exception as e:  # noqa: BLE001 -- a shape this module does not know: unplaced
            log.warning("lineage: statement not followed (%s)", type(e).__name__)
            return None
        if outs is None:
            return None
        if got is None:
            got = outs
        elif len(got) != len(outs):
            return None
        else:
            got = [a | b for a, b in zip(got, outs)]
    return [None if _UNKNOWN in s else s for s in got]


def write_sources(sql: str, default_schema: Optional[str], tables: Tables, *,
                  mode: Optional[int] = None, version: Optional[int] = None,
                  mariadb: Optional[bool] = None,
                  views: Optional[Views] = None) -> Optional[list]:
    """Per statement of `sql`: None when what it stores cannot be told, else a list of
    (target (schema, table, column) or None, frozenset of sources or None) -- every value the
    statement keeps where a later statement can read it (INSERT / UPDATE targets, user
    variables, SELECT ... INTO, CREATE ... AS SELECT, LAST_INSERT_ID(x) ...), and (None, the
    columns that chose which rows were written or deleted). A source set of None: it reads
    something lineage cannot place. Arguments as output_sources."""
    readings = _readings(sql, mode, mariadb, version)
    if readings is None:
        return None
    out = []
    for texts in readings:
        got: Optional[list] = []
        for text in texts:
            try:
                a = _Analyzer(default_schema, tables, views)
                w = a.stores(_parse(text))
            except (_Unreadable, RecursionError):
                w = None
            except _CallbackFailed as e:
                raise e.error from None
            except Exception as e:  # noqa: BLE001
                log.warning("lineage: writes not followed (%s)", type(e).__name__)
                w = None
            if w is None:
                got = None
                break
            got.extend((t, None if _UNKNOWN in src else src) for t, src in w)
        out.append(got)
    return out


def _readings(sql: str, mode, mariadb, version) -> Optional[list]:
    readings: Optional[list] = None
    for m in _modes(sql, mode):
        try:
            stmts = _read(sql, m, mariadb, version)
        except _Unreadable:
            return None
        if readings is None:
            readings = stmts
        elif len(readings) != len(stmts):
            return None         # the modes split the text differently
        else:
            readings = [a + b for a, b in zip(readings, stmts)]
    return readings or []


def _modes(sql: str, mode: Optional[int]) -> list[int]:
    """The sql_mode bits to read `sql` under: the session's, or every combination that can
    change its reading when the caller does not know it (a text without `"` reads the same with
    ANSI_QUOTES or without, one without a backslash the same with NO_BACKSLASH_ESCAPES)."""
    if mode is not None:
        return [mode & (NO_BACKSLASH_ESCAPES | ANSI_QUOTES)]
    bits = (ANSI_QUOTES if '"' in sql else 0) | (NO_BACKSLASH_ESCAPES if "\\" in sql else 0)
    return sorted({m & bits for m in range(4)})


def output_sources(sql: str, default_schema: Optional[str], tables: Tables, *,
                   mode: Optional[int] = None, version: Optional[int] = None,
                   mariadb: Optional[bool] = None,
                   views: Optional[Views] = None) -> Optional[list]:
    """Per statement of `sql`: [] for one that returns no result set, None for one whose
    result cannot be placed, else per output column the frozenset of (schema, table, column)
    it reads, or None for a column that cannot be placed. None for a text that cannot be
    read at all.

    tables(schema, table) -> column names in order, or None (unknown table: unplaceable).
    views(schema, table) -> the view's definition (information_schema.VIEWS.VIEW_DEFINITION) or
    None for a base table; without it a view's columns are sources of their own.
    mode: the session's sql_mode bits (NO_BACKSLASH_ESCAPES, ANSI_QUOTES); None (not known):
    every reading they allow, unioned per column. version (e.g. 101119) and mariadb: the
    server's, for versioned executable comments; None -> every reading.
    An exception raised by tables() or views() reaches the caller unchanged (a catalog that
    cannot be read is the masker's to judge); anything else goes wrong -> unplaceable.

    Sources name the schema and table as the statement (or default_schema) spells them and
    the column as tables() does."""
    readings = _readings(sql, mode, mariadb, version)
    if readings is None:
        return None
    return [_statement_sources(r, default_schema, tables, views) for r in readings]
