"""hoopwire.mysql._sqllex, MySQL/MariaDB's lexer for guardrails, against the real server.

The server is the reference. Statements are generated (hypothesis) from values in every
quoting style, separated by comments, line comments and executable comments (run or not by
this MariaDB, by version), under each sql_mode (NO_BACKSLASH_ESCAPES, ANSI_QUOTES); MariaDB
runs them and its answer -- how many result sets, how many columns, which values -- is compared
with what the lexer's full view says the statements are. A lexer that ends a string, a name or
a comment where the server does not gives other columns or other values.

And the property the guardrails rest on: whatever this server, in whatever sql_mode, reads in a
text is among the statements statement_views gives for it (the first reading, plus the other
readings when it says the text is ambiguous) -- with no knowledge of the session's mode.
"""

from __future__ import annotations

import re

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopwire.mysql import charsets
from hoopwire.mysql._sqllex import (KEYWORDS, MODE_ANSI_QUOTES, MODE_MSSQL,
                                    MODE_NO_BACKSLASH_ESCAPES, UNREADABLE, mask_literals, normalize, normalize_statements,
                                    split_statements, statement_views, views_as)

NBE, ANSI, MSSQL = MODE_NO_BACKSLASH_ESCAPES, MODE_ANSI_QUOTES, MODE_MSSQL
# (MariaDB's sql_mode MSSQL turns ANSI_QUOTES on with it, and [name] quotes a name)
MODES = (0, NBE, ANSI, NBE | ANSI, MSSQL | ANSI)
SQL_MODE = {0: "", NBE: "NO_BACKSLASH_ESCAPES", ANSI: "ANSI_QUOTES",
            NBE | ANSI: "NO_BACKSLASH_ESCAPES,ANSI_QUOTES", MSSQL | ANSI: "MSSQL"}


def code(sql: bytes, mode: int = 0) -> list[bytes]:
    return statement_views(sql, mode=mode)[0]


def every_reading(sql: bytes, full: bool = False) -> set[bytes]:
    """What a guardrail scans, as the engine asks for it (no mode known): the first reading and,
    when ambiguous, every other one."""
    c, f, ambiguous = statement_views(sql, full)
    out = set(f if full else c)
    if ambiguous:
        c2, f2, _ = statement_views(sql, full, standard_conforming_strings=False)
        out |= set(f2 if full else c2)
    return out


# -- the lexical rules, one case each ------------------------------------------------------------

CASES = [
    # comments
    (b"SELECT 1 # drop table t\n, 2", [b"select 1 , 2"]),
    (b"SELECT 1 -- drop\n, 2", [b"select 1 , 2"]),
    (b"SELECT 1 --\tx\n, 2", [b"select 1 , 2"]),
    (b"SELECT 1--1", [b"select 1- -1"]),                       # --1 is minus minus one
    (b"SELECT 1 --x", [b"select 1 - -x"]),
    (b"SELECT 1 --", [b"select 1"]),                           # -- at the very end: a comment
    (b"SELECT 1 /* a /* b */ , 2", [b"select 1 , 2"]),         # not nested: first */ ends it
    (b"DR/**/OP TABLE t", [b"dr op table t"]),
    (b"SELECT 1 #x\0, 2", [b"select 1 \0, 2"]),               # a NUL ends a # comment
    # executable comments: the body is code
    (b"/*!DROP*/ TABLE t", [b"drop table t"]),
    (b"/*!50000DROP*/ TABLE t", [b"drop table t"]),
    (b"/*!100100 DROP TABLE t */", [b"drop table t"]),
    (b"/*M!DROP TABLE t*/", [b"drop table t"]),
    (b"/*M!100100DROP TABLE t*/", [b"drop table t"]),
    (b"DROP/*M!*/ TABLE t", [b"drop table t"]),
    (b"SELECT 1 /*! , '*/' */ , 2", [b"select 1 , '?' , 2"]),  # */ in a string: not the end
    (b"SELECT 1 /*! , 2 /* c */ , 3 */", [b"select 1 , 2 , 3"]),
    (b"SELECT 1 */ 2", [b"select 1 */ 2"]),                   # */ outside any comment
    # strings
    (b"SELECT 'it''s', \"a\"\"b\", 'a\\'b'", [b"select '?', '?', '?'"]),
    (b"SELECT '\\\\' , 'x'", [b"select '?' , '?'"]),
    (b"SELECT _utf8mb4'x', N'y', n'z', X'41', x'42', B'01', b'1'",
     [b"select _utf8mb4 '?', '?', '?', '?', '?', '?', '?'"]),
    (b"SELECT 'unterminated ; drop table t", [b"select '?'"]),
    # names
    (b"SELECT `drop`, `select`, `Load_File`('x'), `a b`, `a``b`",
     [b"select `_drop`, `_select`, load_file('?'), `_a_b`, `_a_b`"]),
    (b"SELECT 1abc, 1e5, 1e+5x, 0x1F, 0xZZ, .5, 1.5e-3, $a, a$b",
     [b"select 1abc, 1e5, 1e+5 x, 0x1f, 0xzz, .5, 1.5e-3, $a, a$b"]),
    (b"SELECT t.`drop`, @`x`, @@session.sql_mode", [b"select t.`_drop`, @x, @@session.sql_mode"]),
    # statements
    (b"SELECT 1; SELECT ';'; # ;\nSELECT 2;;", [b"select 1", b"select '?'", b"select 2"]),
    (b"  /* only a comment */ ; -- and this\n", []),
    (b"SELECT 1 /*! ; DROP TABLE t */", [b"select 1", b"drop table t */"]),
]


@pytest.mark.parametrize("sql,expected", CASES)
def test_code_view(sql, expected):
    assert code(sql) == expected
    # the code view is stable: lexed again it gives itself
    for stmt in expected:
        assert normalize(stmt) == stmt or b"*/" in stmt


def test_modes():
    # NO_BACKSLASH_ESCAPES: 'a\' ends the string; b', "x" ; DROP TABLE t; -- ' follows
    nbe = code(b"SELECT 'a\\' , 1 ; DROP TABLE t; -- '", NBE)
    assert nbe == [b"select '?' , 1", b"drop table t"]
    assert code(b"SELECT 'a\\' , 1 ; DROP TABLE t; -- '") == [b"select '?'"]
    # ANSI_QUOTES: "..." is a name, with no backslash escapes
    assert code(b'SELECT "a\\" ; DROP TABLE t; -- "', ANSI) == [b"select `_a_`", b"drop table t"]
    assert code(b'SELECT "a\\" ; DROP TABLE t; -- "') == [b"select '?'"]
    assert code(b'SELECT "load_file"(1)', ANSI) == [b"select load_file(1)"]
    # MariaDB's sql_mode MSSQL: [...] is a name, ]] a ], no backslash escapes
    assert code(b"SELECT 1 AS [x'] ; DROP TABLE t; -- ']", MSSQL) == [b"select 1 as `_x_`",
                                                                     b"drop table t"]
    assert code(b"SELECT 1 AS [x'] ; DROP TABLE t; -- ']") == [b"select 1 as ['?']"]
    assert code(b"SELECT [a]]b], [drop], [load_file](1)", MSSQL) == [
        b"select `_a_b`, `_drop`, load_file(1)"]


def test_ambiguous_and_other_readings():
    for sql in (b"SELECT 'a\\' , 1 ; DROP TABLE t; -- '", b'SELECT "a\\" ; DROP TABLE t; -- "',
                b"SELECT 1 /*!99999 ' */ ; DROP TABLE t; -- '",
                b"SELECT 1 /*M! ' */ ; DROP TABLE t; -- '",
                b"DELETE FROM t /*!50701 WHERE id = 1 */",
                b"SELECT 1 /*!500001 , 2 */",
                b"SELECT 1 AS [x'] ; DROP TABLE t; -- ']"):
        c, _, ambiguous = statement_views(sql)
        assert ambiguous, sql
        others = statement_views(sql, standard_conforming_strings=False)[0]
        assert any(b"drop table t" == s for s in others) or b"delete from t" in others or \
            b"select 1 , 2" in c + others, (sql, c, others)
    assert statement_views(b"SELECT 'plain', `x` FROM t WHERE a = 1")[2] is False
    assert statement_views(b"SELECT 'plain'", alternate=True)[0] == []


def test_versions_are_thresholds():
    # MariaDB runs /*!50000 (< 50700) and skips /*!50701 (MySQL-5.7 range): a DELETE with no
    # WHERE, which neither "all run" nor "none run" shows
    sql = b"/*!50000 DELETE FROM t */ /*!50701 WHERE id = 1 */"
    assert views_as(sql, server="mariadb", version=101119)[0] == [b"delete from t"]
    assert views_as(sql, server="mysql", version=80036)[0] == [b"delete from t where id = 1"]
    assert views_as(sql, server="mysql", version=50600)[0] == [b"delete from t"]
    assert b"delete from t" in every_reading(sql)
    # more distinct versions than the lexer follows: the unreadable statement, blocked
    many = b"SELECT 1 " + b" ".join(b"/*!%d , %d */" % (60000 + k, k) for k in range(40))
    assert UNREADABLE in statement_views(many, alternate=True)[0]


def test_hispace():
    # 0xA0 is a space for a latin1 client: DROP\xa0TABLE is DROP TABLE there
    sql = b"DROP\xa0TABLE t"
    assert code(sql) == [b"drop\xa0table t"]
    assert statement_views(sql)[2]
    assert b"drop table t" in every_reading(sql)
    assert views_as(b"SELECT 1 --\xa0x", hispace=True)[0] == [b"select 1"]
    sql = b"SELECT 1;\xa0TRUNCATE t"
    assert statement_views(sql)[2] and b"truncate t" in every_reading(sql)


def test_mask_literals_and_capsule():
    assert mask_literals(b"SELECT * FROM t WHERE a='x' AND b=5 /*! AND c=\"y\" */ -- z") == \
        "SELECT * FROM t WHERE a=? AND b=? AND c=?"
    assert mask_literals(b"SELECT `ssn` FROM t WHERE ssn = X'41' # 123") == \
        "SELECT `ssn` FROM t WHERE ssn = ?"
    assert type(mask_literals.c_dialect).__name__ == "PyCapsule"


def test_split_statements():
    assert split_statements(b"SELECT ';' ; /* ; */ SELECT 2 ; ") == [b"SELECT ';' ", b" /* ; */ SELECT 2 "]
    assert normalize_statements(b"SELECT 1;SELECT 2") == [b"select 1", b"select 2"]


def test_bad_input_never_raises():
    for sql in (b"", b"'", b'"', b"`", b"/*", b"/*!", b"/*!5", b"/*!50000", b"/*M!", b"\\",
                b"'\\", b"#", b"--", b"-", b"\xff\xfe\x00", b"X'", b"N'", b"_utf8'", b"*/*/"):
        for mode in MODES:
            statement_views(sql, True, mode=mode)
            statement_views(sql, True, mode=mode, alternate=True)
            mask_literals(sql, mode=mode)
            split_statements(sql, mode=mode)
    with pytest.raises(TypeError):
        statement_views("SELECT 1")


# -- against the real server ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(mariadb):
    conn = mariadb.connect("root", client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
                           charset="utf8mb4")
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION()")     # 10.11.19-MariaDB-...; the handshake's has 5.5.5-
        version = cur.fetchone()[0]
    major, minor, patch = (int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", version).groups())
    yield conn, major * 10000 + minor * 100 + patch
    conn.close()


def run(conn, sql: bytes, mode: int):
    """The result sets the server returns for sql under mode: a list of rows (one row each
    here), or None when it refuses the text."""
    with conn.cursor() as cur:
        cur.execute(f"SET SESSION sql_mode = '{SQL_MODE[mode]}'")
        out = []
        try:
            cur.execute(sql)
            out.append(cur.fetchall())
            while cur.nextset():
                out.append(cur.fetchall())
        except pymysql.err.MySQLError:
            # drain whatever is left so the connection stays usable
            try:
                while cur.nextset():
                    pass
            except pymysql.err.MySQLError:
                pass
            return None
        return out


_STR = {0: re.compile(rb"""\s*(?:_[a-z0-9]+\s+)?'((?:[^'\\]|''|\\.)*)'""", re.S),
        NBE: re.compile(rb"""\s*(?:_[a-z0-9]+\s+)?'((?:[^']|'')*)'""", re.S)}
_OTHER = re.compile(rb"""\s*(?:(?P<hx>x'[0-9a-f]*')|(?P<bits>b'[01]*')|(?P<num>[0-9]+))""")
# the end of a value: a comma or the end, after an alias the text may have left (a name that
# followed a comment the server skipped)
_COMMA = re.compile(rb"\s*(?:(?:as\s+)?(?:[a-z_$\x80-\xff][a-z0-9_$\x80-\xff]*|`[^`]*`)\s*)?(?:,|$)")


def predicted_row(stmt: bytes, mode: int) -> list[bytes] | None:
    """The values of `select v, v, ...` in the full view (written back as the lexer writes
    literals; string literals side by side are one value, as in SQL), as bytes; None if it is
    not such a list."""
    if not stmt.startswith(b"select "):
        return None
    pos, values = 7, []
    string = _STR[mode & NBE]
    while pos < len(stmt):
        m = string.match(stmt, pos)
        if m:
            parts = []
            while m:
                s = m[1].replace(b"''", b"'")
                parts.append(s if mode & NBE else s.replace(b"\\\\", b"\\"))
                pos = m.end()
                m = string.match(stmt, pos)
            values.append(b"".join(parts))
        else:
            m = _OTHER.match(stmt, pos)
            if not m:
                return None
            if m["hx"]:
                values.append(bytes.fromhex(m["hx"][2:-1].decode()))
            elif m["bits"]:
                bits = m["bits"][2:-1]
                values.append(int(bits, 2).to_bytes((len(bits) + 7) // 8, "big") if bits else b"")
            else:
                values.append(m["num"])
            pos = m.end()
        m = _COMMA.match(stmt, pos)
        if not m:
            return None
        pos = m.end()
    return values


def as_bytes(v) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    return str(v).encode()


# the bytes a literal's contents are drawn from: every character that ends or starts something
CONTENT = st.lists(st.sampled_from(["a", "Z", "'", '"', "\\", "`", "#", "-", "--", " ", "*", "[", "]",
                                    "/", "*/", "/*", "/*!", ";", "!", "\n", "5", "é", "%",
                                    "_", "0", "n", "\t"]), max_size=8).map("".join)


@st.composite
def value(draw, mode: int) -> str:
    """A value written in one of the quoting styles `mode` reads as a string."""
    text = draw(CONTENT)
    styles = ["'", "N'", "_utf8mb4'", "X", "int"] + ([] if mode & ANSI else ['"'])
    style = draw(st.sampled_from(styles))
    if style == "int":
        return str(draw(st.integers(0, 99999)))
    if style == "X":
        return "X'" + text.encode().hex() + "'"
    quote = '"' if style == '"' else "'"
    body = []
    for ch in text:
        if ch == quote:
            body.append(draw(st.sampled_from([quote + quote] + ([] if mode & NBE else ["\\" + quote]))))
        elif ch == "\\":
            body.append("\\" if mode & NBE else "\\\\")
        else:
            body.append(ch)
    prefix = style[:-1] if style in ("N'", "_utf8mb4'") else ""
    return prefix + quote + "".join(body) + quote


@st.composite
def gap(draw) -> str:
    """Something between two items that the server skips."""
    text = draw(CONTENT)
    kind = draw(st.sampled_from(["space", "block", "hash", "dashes", "none"]))
    if kind == "block":
        return " /* " + text.replace("*", "") + "*/ "     # (a space: /*! would run)
    if kind == "hash":
        return " #" + text.replace("\n", "") + "\n"
    if kind == "dashes":
        return " -- " + text.replace("\n", "") + "\n"
    if kind == "none":
        return ""
    return " "


# executable comment markers, run or skipped by MariaDB 10.11 (checked by the test itself)
MARKERS = ["/*!", "/*!50000", "/*!50701", "/*!99999", "/*!100000", "/*!110000", "/*M!",
           "/*M!50701", "/*M!999999", "/*!40101 "]


@st.composite
def aliased(draw, mode: int) -> str:
    """A value, sometimes with an alias quoted in backticks (or double quotes under
    ANSI_QUOTES) holding the same awkward characters."""
    v = draw(value(mode))
    if draw(st.integers(0, 3)):
        return v
    text = draw(CONTENT).replace("\x00", "") or "a"
    quote = draw(st.sampled_from(["`"] + (['"'] if mode & ANSI else []) + (["["] if mode & MSSQL else [])))
    close = "]" if quote == "[" else quote
    return v + " AS " + quote + text.replace(close, close + close) + close


@st.composite
def select(draw, mode: int) -> str:
    items = [draw(aliased(mode))]
    sql = "SELECT " + items[0]
    for _ in range(draw(st.integers(0, 4))):
        g = draw(gap())
        if draw(st.booleans()):
            marker = draw(st.sampled_from(MARKERS))
            inner = draw(st.sampled_from([" ", "", "\n", " /* c */ ", "/*'*/", " # '\n"]))
            sql += g + marker + inner + ", " + draw(value(mode)) + draw(
                st.sampled_from([" ", " /* c */ ", ""])) + "*/"
        else:
            sql += g + "," + draw(gap()) + draw(aliased(mode))
    return sql


@st.composite
def message(draw, mode: int) -> bytes:
    # half the texts are written for another sql_mode than the one they run under: their
    # literals end elsewhere than their writer meant, which is where a lexer can go wrong
    writer = draw(st.sampled_from((mode, mode) + MODES))
    stmts = draw(st.lists(select(writer), min_size=1, max_size=3))
    return ";".join(stmts).encode("utf-8")


def check_against_server(conn, version: int, sql: bytes, mode: int) -> bool:
    """Compare the server's answer to `sql` with the lexer's reading as this server: the full
    view holds one statement per result set, and each, run on its own, gives the same values
    (a statement that is a plain list of literals must also read as those literals). False
    when the server refused the text (nothing to compare)."""
    got = run(conn, sql, mode)
    if got is None:
        return False
    _, full = views_as(sql, True, mode=mode, server="mariadb", version=version)
    assert len(got) == len(full), (sql, mode, got, full)
    for rows, stmt in zip(got, full):
        again = run(conn, stmt, mode)
        assert again is not None and len(again) == 1, (sql, mode, stmt)
        assert [[as_bytes(v) for v in row] for row in again[0]] == \
            [[as_bytes(v) for v in row] for row in rows], (sql, mode, rows, stmt, again)
        predicted = predicted_row(stmt, mode)
        if predicted is not None:
            assert [as_bytes(v) for v in rows[0]] == predicted, (sql, mode, rows, stmt)
    # what the guardrails scan holds what this server read, whatever the session's mode
    code_as_server = views_as(sql, mode=mode, server="mariadb", version=version)[0]
    scanned = every_reading(sql)
    assert set(code_as_server) <= scanned, (sql, mode, code_as_server, scanned)
    return True


@pytest.mark.parametrize("mode", MODES, ids=lambda m: SQL_MODE[m] or "default")
def test_differential_against_mariadb(server, mode):
    conn, version = server
    compared = []

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(sql=message(mode))
    def one(sql):
        compared.append(check_against_server(conn, version, sql, mode))

    one()
    # most generated texts are valid SQL: the comparison is not vacuous
    assert sum(compared) >= len(compared) // 3, (sum(compared), len(compared))


TRICKY = [
    b"SELECT 1 /*!99999 ' */ , 2 -- '",
    b"SELECT 1 /*!50701 , 'a*/' */ , 3",
    b"SELECT 1 /*!99999 , 2 /* x */ , 3 */ , 4",
    b"SELECT 1 /*!50000 , 2 /* x */ , 3 */ , 4",
    b"SELECT 1 /*M!999999 , 2 */ , 3",
    b"SELECT 1 /*!1000001 */",
    b"SELECT 'a\\'b' , 'c' -- '",
    b"SELECT 'a\\\\' , 'c'",
    b"SELECT \"a\\\"b\" , 'c'",
    b"SELECT 1 --\x01 x\n , 2",
    b"SELECT 1 #\r, 3\n , 2",
    b"SELECT 1 -- \r, 3\n , 2",
    b"SELECT 1 /*!, 2 */ /*!, 3 */",
    b"SELECT 1 /*!, 2 /*!, 3 */ , 4",
    b"SELECT X'4142' , B'0100001' , N'x'",
    b"SELECT 1;SELECT ';' ; SELECT 2 # ;\n",
]


@pytest.mark.parametrize("sql", TRICKY)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: SQL_MODE[m] or "default")
def test_tricky_against_mariadb(server, sql, mode):
    conn, version = server
    check_against_server(conn, version, sql, mode)


def test_keywords_hold_the_servers(mariadb):
    words = {r[0].lower().encode() for r in mariadb.sql("SELECT WORD FROM information_schema.KEYWORDS")}
    assert len(words) > 600
    assert words <= KEYWORDS, sorted(words - KEYWORDS)[:20]


def test_quoted_native_function_is_called(mariadb):
    # why a quoted plain name is written bare: the server calls `load_file`(...) as LOAD_FILE
    assert mariadb.sql("SELECT `version`() = version()") == [(1,)]


def test_whitespace_bytes_match_the_server(mariadb):
    """Every byte the server skips as whitespace between two tokens is one the lexer skips (or,
    for 0xA0 / 0xFF, one whose other reading it tries), for every safe client charset."""
    names = [r[0] for r in mariadb.sql("SELECT CHARACTER_SET_NAME FROM information_schema.CHARACTER_SETS")]
    for cs in sorted(set(names) & charsets.SAFE_CHARSETS):
        conn = mariadb.connect("root", charset="utf8mb4")
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET NAMES {cs}")
                for b in list(range(1, 0x80)) + list(range(0x80, 0x100)):
                    if b in (0x23, 0x2E, 0x3B, 0x2D, 0x2B, 0x2A, 0x2F, 0x25, 0x26, 0x7C, 0x5E,
                             0x3C, 0x3E, 0x3D, 0x21):
                        continue        # an operator or a comment between 7 and AS x
                    sql = b"SELECT 7" + bytes((b,)) + b"AS x"
                    try:
                        cur.execute(sql)
                        cur.fetchall()
                        server_space = True
                    except pymysql.err.MySQLError:
                        server_space = False
                    ours = [b"select 7 as x"] == normalize_statements(sql) or (
                        b"select 7 as x" in every_reading(sql))
                    if server_space:
                        assert ours, (cs, hex(b))
        finally:
            conn.close()


def test_unsafe_charsets_from_the_server(mariadb):
    """The allow-list agrees with what the server says of each character set: a multibyte one
    is unsafe when some character of it has a byte below 0x80 after its first; a single-byte one
    when 0x20-0x7E are not ASCII; and the server refuses ucs2/utf16/utf32 for clients."""
    rows = mariadb.sql("SELECT CHARACTER_SET_NAME, MAXLEN FROM information_schema.CHARACTER_SETS")
    unsafe = set()
    ascii_hex = bytes(range(0x20, 0x7F)).hex().upper()
    for cs, maxlen in rows:
        if cs in ("ucs2", "utf16", "utf16le", "utf32"):
            unsafe.add(cs)
            continue
        if maxlen == 1:
            got = mariadb.sql(f"SELECT HEX(CONVERT(_{cs} X'{ascii_hex}' USING utf8mb4))")[0][0]
            if got != ascii_hex:
                unsafe.add(cs)
            continue
        # two-byte characters: any lead byte with a trailing byte in 0x00-0x7F
        probes = ", ".join(f"CHAR_LENGTH(CONVERT(X'{lead:02X}{trail:02X}' USING {cs}))"
                           for lead in range(0x80, 0x100) for trail in (0x5C, 0x60, 0x27, 0x22, 0x40))
        lengths = mariadb.sql(f"SELECT {probes}")[0]
        if any(n == 1 for n in lengths):
            unsafe.add(cs)
    names = {cs for cs, _ in rows}
    assert unsafe == names & charsets.UNSAFE_CHARSETS, (unsafe, names & charsets.UNSAFE_CHARSETS)
    assert (names - unsafe) <= charsets.SAFE_CHARSETS, sorted(names - unsafe - charsets.SAFE_CHARSETS)
    assert not (charsets.SAFE_CHARSETS & charsets.UNSAFE_CHARSETS)
    # and the collation ids: every id the server has below 256 maps to its character set
    for cid, cs in mariadb.sql("SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS "
                               "WHERE ID IS NOT NULL AND ID < 256"):
        assert charsets.charset_of(cid) == cs, (cid, cs)
        assert charsets.safe_collation(cid) == (cs not in unsafe), (cid, cs)
    assert not charsets.safe_collation(0) and not charsets.safe_collation(254)
    assert charsets.safe_collation(255) and charsets.safe_charset("UTF8MB4")
    assert not charsets.safe_charset("gbk") and not charsets.safe_charset(None)


# -- the fuzz harness's properties (fuzz/fuzz_mysql_lexer.py), here without atheris -------------

def _harness():
    import importlib.util
    import pathlib
    import sys
    path = pathlib.Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_mysql_lexer.py"
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("fuzz_mysql_lexer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, path.parent / "corpus" / "fuzz_mysql_lexer"


def test_fuzz_harness_corpus_and_generated():
    harness, corpus = _HARNESS
    inputs = [p.read_bytes() for p in sorted(corpus.iterdir())]
    assert len(inputs) >= 10
    import random
    rnd = random.Random(20)
    for _ in range(400):
        n = rnd.randrange(1, 20)
        inputs.append(bytes([rnd.randrange(256) | 1] + [rnd.randrange(64) for _ in range(n)]))
    for data in inputs:
        harness.test_one_input(data)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=40))
def test_fuzz_harness_hypothesis(data):
    _HARNESS[0].test_one_input(data)


_HARNESS = _harness()
