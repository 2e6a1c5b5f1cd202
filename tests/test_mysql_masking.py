"""MySQL masking: column rules through aliases, expressions, UNION, views and joins, detectors,
ERR texts, character sets, metadata statements, and the writes that would get around it.

The planning tests run against the real MariaDB of tests/mysqlfixtures.py: each statement runs on
the server (PyMySQL, raw bytes), its real column definitions go through the masker as the relay
hands them over, and its real rows through the RowPlan the masker returns (the span API). The
catalog reads information_schema over a side connection -- PyMySQL in a thread here, which only
tests may use (the gateway's side connection is hoopwire/mysql/upstream.py's login).

End-to-end tests through the gateway (clients, mariadb-dump, SQLAlchemy reflection) are at the
end; they need H1's gateway fixture (tests/mysqlgw.py).
"""

from __future__ import annotations

try:
    # mysql-connector's C extension links its own OpenSSL 3.5 (libssl.so.3 needing
    # OPENSSL_3.3.0); once hashlib/hmac have loaded the system's libcrypto.so.3 (3.0) -- the
    # masking engine's keyed strategies do -- it can no longer be imported in this process.
    # Loaded first, its OpenSSL serves both.
    import _mysql_connector  # noqa: F401
except ImportError:
    pass

import asyncio
import os
import re
import shutil
import subprocess
import time

import pymysql
import pytest

from hoopwire._mask import MASKED_NULL, RowPlan
from hoopwire.config import MaskConfig
from hoopwire.masking.engine import MaskEngine
from hoopwire.mysql import kinds
from hoopwire.mysql.catalog import Catalog, CatalogError
from hoopwire.mysql.masker import (ConnectionMasking, MaskRefused, SessionMasker, WriteGuard)

DB = "h4mask"
SSN1, SSN2 = "123-45-6789", "987-65-4321"
USERS = [(1, "Ada", SSN1, "ada@example.com"), (2, "Alan", SSN2, "alan@example.org")]
RO_USER, RO_PASSWORD = "h4ro", "h4ro-secret"

SETUP = f"""
DROP DATABASE IF EXISTS {DB};
CREATE DATABASE {DB} CHARACTER SET utf8mb4;
USE {DB};
CREATE TABLE users (id int PRIMARY KEY, name varchar(64), ssn char(11), email varchar(100),
                    note varbinary(200), pic blob, salary decimal(10,2), born date, doc json);
INSERT INTO users VALUES
  (1, 'Ada', '{SSN1}', 'ada@example.com', 'mail ada@example.com', 'x', 10.5, '1990-01-01',
   '{{"a":1}}'),
  (2, 'Alan', '{SSN2}', 'alan@example.org', NULL, NULL, 20, '1912-06-23', NULL);
CREATE TABLE items (id int PRIMARY KEY, name varchar(64), uid int);
INSERT INTO items VALUES (1, 'apple', 1), (2, 'pear', 2);
CREATE TABLE sink (id int AUTO_INCREMENT PRIMARY KEY, v varchar(200));
CREATE VIEW v_plain AS SELECT id, ssn AS s, name FROM users;
CREATE VIEW v_expr AS SELECT id, UPPER(ssn) AS u, name FROM users;
CREATE VIEW v_nested AS SELECT s AS t, name FROM v_plain;
CREATE ALGORITHM=TEMPTABLE VIEW v_temp AS SELECT ssn, name FROM users;
CREATE VIEW v_safe AS SELECT id, name FROM users;
DROP USER IF EXISTS {RO_USER}@'%';
CREATE USER {RO_USER}@'%' IDENTIFIED BY '{RO_PASSWORD}';
GRANT SELECT ON {DB}.* TO {RO_USER}@'%';
"""

RULES = [MaskConfig(columns=(f"{DB}.users.ssn",), strategy="redact")]


# --------------------------------------------------------------------------------------------
# the side connection tests use (PyMySQL in a worker thread) and helpers

class ThreadSide:
    """A catalog side connection: one PyMySQL connection, each query in a worker thread."""

    def __init__(self, server, user="app", password=None):
        self.conn = pymysql.connect(host=server.host, port=server.port, user=user,
                                    password=password or server.passwords.get(user),
                                    connect_timeout=5, read_timeout=10, autocommit=True)

    async def query(self, sql: str):
        def run():
            with self.conn.cursor() as cur:
                cur.execute(sql)
                return [tuple(None if v is None else str(v) for v in r) for r in cur.fetchall()]
        return await asyncio.to_thread(run)

    def close(self):
        self.conn.close()


@pytest.fixture(scope="module")
def db(mariadb):
    mariadb.sql(SETUP)
    mariadb.sql(f"GRANT ALL ON {DB}.* TO app@'%'")
    yield mariadb
    mariadb.sql(f"DROP DATABASE IF EXISTS {DB}; DROP USER IF EXISTS {RO_USER}@'%'")


def run(coro):
    return asyncio.run(coro)


def masking(server, rules=RULES, detectors=(), *, unresolved="mask", user="app", password=None,
            masked_writes="refuse", load=True):
    extra = [MaskConfig(detectors=tuple(detectors))] if detectors else []
    engine = MaskEngine(list(rules) + extra, [])

    async def connect():
        return await asyncio.to_thread(ThreadSide, server, user, password)
    conn = ConnectionMasking(engine, unresolved=unresolved, connect=connect, connection="t",
                             timeout=5, masked_writes=masked_writes)
    if load:
        async def ready():
            await conn.ready()
        run(ready())
    return conn


def client(server, user="app", password=None, schema=DB, **kw):
    """A raw PyMySQL connection: values as the bytes the server sent."""
    return pymysql.connect(host=server.host, port=server.port, user=user,
                           password=password or server.passwords.get(user), database=schema,
                           use_unicode=False, conv={}, autocommit=True, charset="utf8mb4",
                           client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS, **kw)


def _coldefs(fields):
    return [((f.db or b"").decode() if isinstance(f.db, bytes) else (f.db or ""),
             f.table_name or "", f.org_table or "", f.name or "", f.org_name or "",
             f.charsetnr, f.length, f.type_code, f.flags, f.scale) for f in fields]


def results(conn, sql: str):
    """[(column definitions as the relay hands them, rows of raw values)] for every result set
    `sql` answers with."""
    out = []
    with conn.cursor() as cur:
        cur.execute(sql)
        while True:
            if conn._result is not None and getattr(conn._result, "fields", None):
                out.append((_coldefs(conn._result.fields), [list(r) for r in cur.fetchall()]))
            if not cur.nextset():
                break
    return out


def apply(plan, rows):
    """The rows as a client gets them through `plan` (None: passed as they are)."""
    if plan is None:
        return rows
    out = []
    for row in rows:
        data, spans = b"", []
        for v in row:
            if v is None:
                spans.append((len(data), -1))
            else:
                spans.append((len(data), len(v)))
                data += v
        got = plan.mask_spans(data, spans)
        if got is None:
            out.append(list(row))
            continue
        out.append([v if g is None else (None if g is MASKED_NULL else g)
                    for v, g in zip(row, got)])
    return out


def through(conn_masking, server, sql: str, *, schema=DB, binary=False, user="app",
            password=None, index=None):
    """The result sets of `sql` as they leave the gateway: [(names, rows)]."""
    masker = SessionMasker(conn_masking, schema)
    info = masker.statement(sql.encode())
    with client(server, user, password, schema) as c:
        got = []
        for i, (cols, rows) in enumerate(results(c, sql)):
            if index is not None and i != index:
                continue
            plan = masker.result_plan(info, i, cols, binary)
            assert plan is None or isinstance(plan, RowPlan)
            got.append(([c[3] for c in cols], apply(plan, rows)))
            masker.result_done(plan)
    return got


def values(res):
    return [v for _names, rows in res for row in rows for v in row]


def leaks(res, secrets=(SSN1, SSN2)):
    flat = b"|".join(v if isinstance(v, bytes) else str(v).encode() for v in values(res))
    return [s for s in secrets if s.encode() in flat or s.upper().encode() in flat]


# --------------------------------------------------------------------------------------------
# kinds

def test_kinds_map_types_to_neutral_kinds():
    from hoopwire._mask import K_JSON, K_OTHER, K_STR
    T = kinds.T
    for t in (T.VARCHAR, T.VAR_STRING, T.STRING, T.BLOB, T.TINY_BLOB, T.LONG_BLOB, T.ENUM, T.SET):
        assert kinds.column_kind(t, 45, False) == K_STR
        assert kinds.column_kind(t, 63, True) == K_STR       # binary strings: raw bytes
    assert kinds.column_kind(T.JSON, 63, False) == K_JSON
    for t in (T.LONG, T.LONGLONG, T.NEWDECIMAL, T.DATE, T.DATETIME, T.BIT, T.GEOMETRY,
              T.DOUBLE, T.TIME, T.YEAR):
        assert kinds.column_kind(t, 63, False) == K_OTHER
        assert kinds.column_kind(t, 63, True) == K_OTHER


# --------------------------------------------------------------------------------------------
# column rules through what hides a column's name

@pytest.mark.parametrize("sql", [
    "SELECT ssn AS x, name FROM users u ORDER BY id",
    "SELECT UPPER(ssn), name FROM users ORDER BY id",
    "SELECT CONCAT(ssn, ''), name FROM users ORDER BY id",
    "SELECT GROUP_CONCAT(ssn), 'k' FROM users",
    "SELECT JSON_OBJECT('s', ssn), name FROM users ORDER BY id",
    "SELECT name, ssn FROM users UNION SELECT name, name FROM items",
    "SELECT name FROM items UNION ALL SELECT ssn FROM users",
    # a derived table named like a real table, whose real column `name` has no rule
    "SELECT name FROM (SELECT ssn AS name FROM users) AS items",
    "SELECT x FROM (SELECT ssn AS x FROM users LIMIT 5) d",
    "WITH c AS (SELECT ssn AS k FROM users) SELECT k FROM c",
    "SELECT (SELECT ssn FROM users WHERE id = 1) AS q",
    "SELECT s FROM v_plain", "SELECT u FROM v_expr", "SELECT t FROM v_nested",
    "SELECT ssn FROM v_temp", "SELECT * FROM v_plain",
    "SELECT i.name, u.ssn FROM items i JOIN users u ON u.id = i.uid",
    "SELECT REVERSE(ssn) FROM `users`", "SELECT `ssn` FROM `h4mask`.`users`",
    "SELECT /*!50000 ssn */ FROM users",
    "SELECT SUBSTRING(ssn, 1, 3), LENGTH(ssn) FROM users",
    # the session's sql_mode decides what a double quote is: every reading is followed
    "SET SESSION sql_mode = 'ANSI_QUOTES'; SELECT UPPER(\"ssn\"), name FROM users",
    "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'; SELECT 'a\\', UPPER(ssn), '' FROM users",
    "SELECT ssn FROM users PROCEDURE ANALYSE()",
    "SELECT LAG(ssn) OVER (ORDER BY id), name FROM users",
    # the plan of a statement over masked data: MariaDB writes a const table's value into it
    "EXPLAIN FORMAT=JSON SELECT i.name FROM items i JOIN users u ON u.id = 1 WHERE i.name = u.ssn",
    "ANALYZE FORMAT=JSON SELECT i.name FROM items i JOIN users u ON u.id = 1 WHERE i.name = u.ssn",
    "SELECT CAST(ssn AS BINARY) FROM users", "SELECT HEX(ssn) FROM users",
])
def test_masked_through_aliases_expressions_unions_views(db, sql):
    conn = masking(db)
    res = through(conn, db, sql)
    assert not leaks(res), (sql, res)
    hexed = [v for v in values(res) if v and re.fullmatch(rb"(?:[0-9A-F]{2})+", v)]
    assert all(bytes.fromhex(h.decode()).decode("latin1") not in (SSN1, SSN2) for h in hexed)


def test_what_reads_no_masked_column_passes_untouched(db):
    conn = masking(db)
    for sql, want in [
        ("SELECT COUNT(*) FROM users", [[b"2"]]),
        ("SELECT name FROM users ORDER BY id", [[b"Ada"], [b"Alan"]]),
        ("SELECT i.name, u.name FROM items i JOIN users u ON u.id = i.uid ORDER BY i.id",
         [[b"apple", b"Ada"], [b"pear", b"Alan"]]),
        ("SELECT name FROM v_safe ORDER BY id", [[b"Ada"], [b"Alan"]]),
        ("SELECT UPPER(name) FROM users ORDER BY id", [[b"ADA"], [b"ALAN"]]),
        ("SELECT id, name FROM v_plain ORDER BY id", [[b"1", b"Ada"], [b"2", b"Alan"]]),
    ]:
        res = through(conn, db, sql)
        assert res[0][1] == want, sql


def test_count_filtered_by_a_masked_column_is_masked(db):
    # a prefix oracle: how many ssn start with '1' -- reads ssn (lineage's definition)
    conn = masking(db)
    res = through(conn, db, "SELECT COUNT(*) FROM users WHERE ssn LIKE '1%'")
    assert res[0][1] == [[None]]


def test_multi_statement_results_take_their_own_statement(db):
    conn = masking(db)
    res = through(conn, db, "SELECT name FROM items ORDER BY id; SELECT UPPER(ssn) FROM users")
    assert res[0][1] == [[b"apple"], [b"pear"]]
    assert not leaks(res) and res[1][1][0] == [b"****"]


def test_computed_values_of_a_partially_masked_column_are_redacted(db):
    """partial keeps the last 4 characters of the column itself; a value computed from it would
    be an oracle (SUBSTRING(ssn, k, 4) shows any four), so it is redacted whole."""
    rules = [MaskConfig(columns=(f"{DB}.users.ssn",), strategy="partial", keep=4)]
    conn = masking(db, rules)
    (_, rows), = through(conn, db, "SELECT ssn FROM users WHERE id = 1")
    assert rows[0][0].endswith(b"6789") and not rows[0][0].startswith(b"123")
    (_, rows), = through(conn, db, "SELECT SUBSTRING(ssn, 1, 8) FROM users WHERE id = 1")
    assert rows == [[b"****"]]


def test_string_and_binary_values_whole_masked_kinds(db):
    """numbers and dates masked whole become NULL (K_OTHER); strings and JSON keep their type."""
    rules = [MaskConfig(columns=(f"{DB}.users.*",), strategy="redact")]
    conn = masking(db, rules)
    res = through(conn, db, "SELECT id, name, salary, born, doc, pic FROM users WHERE id = 1")
    # MariaDB's JSON is a LONGTEXT (a string: K_STR); MySQL 8's type 245 would be '"****"'
    assert res[0][1] == [[None, b"****", None, None, b"****", b"****"]]


# --------------------------------------------------------------------------------------------
# unresolved columns: detect / mask / block, and what makes a column unresolved

def test_hidden_view_definition_is_unresolved(db):
    # h4ro has SELECT only: information_schema.VIEWS shows it no definition
    conn = masking(db, user=RO_USER, password=RO_PASSWORD)
    assert conn.catalog.view_definition(DB, "v_expr") is None
    res = through(conn, db, "SELECT u, name FROM v_expr ORDER BY id", user=RO_USER,
                  password=RO_PASSWORD)
    assert not leaks(res)
    assert res[0][1][0][0] == b"****"
    blocking = masking(db, unresolved="block", user=RO_USER, password=RO_PASSWORD)
    with pytest.raises(MaskRefused) as e:
        through(blocking, db, "SELECT u FROM v_expr", user=RO_USER, password=RO_PASSWORD)
    assert e.value.errno == 1227 and e.value.packet[3] == 0
    assert e.value.packet[4] == 0xFF and len(e.value.packet) - 4 == \
        int.from_bytes(e.value.packet[:3], "little")


def test_unresolved_policies(db):
    # a user variable: session state lineage cannot place
    sql = "SELECT COALESCE(@nothing, 'v'), ssn FROM users ORDER BY id"
    for policy, want in (("mask", b"****"), ("detect", b"v")):
        conn = masking(db, unresolved=policy)
        res = through(conn, db, sql)
        assert res[0][1][0][0] == want, policy
        assert res[0][1][0][1] == b"****"
    with pytest.raises(MaskRefused):
        through(masking(db, unresolved="block"), db, sql)


def test_statistics_tables_copy_values_and_are_masked(db):
    # MariaDB's engine-independent statistics keep each column's min and max VALUE
    db.sql(f"ANALYZE TABLE {DB}.users PERSISTENT FOR ALL")
    rows = db.sql(f"SELECT min_value FROM mysql.column_stats WHERE db_name = '{DB}' "
                  "AND table_name = 'users' AND column_name = 'ssn'")
    assert rows and rows[0][0] in (SSN1, SSN1.encode())        # the leak is real
    db.sql(f"GRANT SELECT ON mysql.column_stats TO app@'%'")
    try:
        conn = masking(db)
        res = through(conn, db, "SELECT column_name, min_value, max_value FROM "
                      f"mysql.column_stats WHERE db_name = '{DB}'")
        assert not leaks(res)
    finally:
        db.sql(f"REVOKE SELECT ON mysql.column_stats FROM app@'%'")


def test_relation_the_catalog_has_not_read_is_unresolved_then_read(db):
    conn = masking(db)
    db.sql(f"CREATE OR REPLACE VIEW {DB}.v_late AS SELECT CONCAT(ssn, '') AS c FROM {DB}.users")
    try:
        assert not conn.catalog.knows(DB, "v_late")
        res = through(conn, db, "SELECT c FROM v_late")      # made after the catalog's read
        assert not leaks(res)

        async def later():
            conn.catalog.refresh_soon()
            deadline = time.monotonic() + 30            # a hang guard (was 100 x 0.05 s)
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if conn.catalog.knows(DB, "v_late"):
                    return True
        assert run(later())
        assert not leaks(through(conn, db, "SELECT c FROM v_late"))
    finally:
        db.sql(f"DROP VIEW IF EXISTS {DB}.v_late")


# --------------------------------------------------------------------------------------------
# metadata statements answer (the CLI, mariadb-dump, reflection); rows of other texts do not

@pytest.mark.parametrize("sql", [
    "SHOW CREATE TABLE users", "DESCRIBE users", "SHOW COLUMNS FROM users", "SHOW FULL TABLES",
    "SHOW INDEX FROM users", "SHOW TABLE STATUS", "SHOW CREATE VIEW v_plain",
    "EXPLAIN SELECT name FROM items", "SHOW DATABASES",
    f"SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{DB}' "
    "AND TABLE_NAME = 'users' ORDER BY ORDINAL_POSITION",
])
def test_metadata_statements_answer_unmasked(db, sql):
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    info = masker.statement(sql.encode())
    with client(db) as c:
        for i, (cols, rows) in enumerate(results(c, sql)):
            plan = masker.result_plan(info, i, cols, False)
            assert apply(plan, rows) == rows, sql


def test_plan_of_a_statement_over_masked_data_is_not_metadata(db):
    conn = masking(db)
    res = through(conn, db, "EXPLAIN SELECT ssn FROM users")
    assert all(v in (None, b"****") for v in values(res))


def test_show_warnings_message_is_masked_code_kept(db):
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    with client(db) as c:
        results(c, "SELECT ssn + 0 FROM users")      # 1292 Truncated incorrect DOUBLE value: '...'
        sql = "SHOW WARNINGS"
        (cols, rows), = results(c, sql)
    assert any(SSN1.encode() in (r[2] or b"") for r in rows)        # the leak is real
    plan = masker.result_plan(masker.statement(sql.encode()), 0, cols, False)
    got = apply(plan, rows)
    assert not any(SSN1.encode() in (r[2] or b"") for r in got)
    assert got[0][0] == b"Warning" and got[0][1] == b"1292"


def test_show_processlist_info_is_masked(db):
    conn = masking(db)
    res = through(conn, db, "SHOW FULL PROCESSLIST")
    names = res[0][0]
    info_col = names.index("Info")
    assert all(row[info_col] in (None, b"****") for row in res[0][1])


# --------------------------------------------------------------------------------------------
# detectors on text and binary string values, ERR texts

def test_detectors_on_text_and_binary_strings(db):
    conn = masking(db, rules=(), detectors=("EMAIL",))
    res = through(conn, db, "SELECT email, note, name FROM users WHERE id = 1")
    email, note, name = res[0][1][0]
    assert b"ada@example.com" not in email and b"ada@example.com" not in note
    assert note.startswith(b"mail ") and name == b"Ada"


def test_character_set_hiding_values_from_detectors_is_refused(db):
    conn = masking(db, rules=(), detectors=("EMAIL",))
    masker = SessionMasker(conn, DB)
    with client(db) as c:
        results(c, "SET character_set_results = utf16")
        (cols, rows), = results(c, "SELECT email FROM users")
    assert b"a\x00@" in rows[0][0] or b"\x00@" in rows[0][0]     # UTF-16: not ASCII bytes
    with pytest.raises(MaskRefused) as e:
        masker.result_plan(masker.statement(b"SELECT email FROM users"), 0, cols, False)
    assert "utf16" in e.value.message


def _server_error(server, sql, user="app"):
    with client(server, user) as c:
        try:
            results(c, sql)
        except pymysql.MySQLError as e:
            return e.args[0], e.args[1].encode() if isinstance(e.args[1], str) else e.args[1]
    raise AssertionError(f"{sql} did not fail")


@pytest.mark.parametrize("sql", [
    # the classic ways a value leaves through an error text
    "SELECT EXTRACTVALUE(1, CONCAT(0x7e, (SELECT ssn FROM users WHERE id = 1)))",
    "SELECT COUNT(*), CONCAT((SELECT ssn FROM users WHERE id = 1), FLOOR(RAND(0)*2)) x "
    "FROM information_schema.COLUMNS GROUP BY x",
    "SELECT UPDATEXML(1, CONCAT(0x7e, (SELECT ssn FROM users WHERE id = 1)), 1)",
])
def test_error_texts_lose_values(db, sql):
    errno, msg = _server_error(db, sql)
    assert SSN1.encode()[:8] in msg                                 # the leak is real
    masker = SessionMasker(masking(db), DB)
    out = masker.error_message(msg, errno, sql.encode())
    assert out is not None and SSN1.encode()[:8] not in out, out


def test_error_texts_that_carry_no_value_are_kept(db):
    masker = SessionMasker(masking(db), DB)
    for sql in ("SELECT nosuch FROM users", "SELEC 1", "SELECT * FROM nosuch_table"):
        errno, msg = _server_error(db, sql)
        assert masker.error_message(msg, errno, sql.encode()) is None, msg


def test_detectors_in_error_text(db):
    masker = SessionMasker(masking(db, rules=(), detectors=("EMAIL",)), DB)
    errno, msg = _server_error(db, "SELECT * FROM `ada@example.com`")
    out = masker.error_message(msg, errno, None)
    assert out is not None and b"ada@example.com" not in out


# --------------------------------------------------------------------------------------------
# writes that would store a masked value where the session reads it back

REFUSED_WRITES = [
    # SET STATEMENT ... FOR runs the statement after FOR (red team: a wrapped rename of the
    # masked table switched its rule off for everyone)
    "SET STATEMENT max_statement_time=0 FOR ALTER TABLE users RENAME TO users9",
    "SET STATEMENT max_statement_time=0 FOR RENAME TABLE users TO users9",
    "SET STATEMENT max_statement_time=0, sql_mode='' FOR INSERT INTO sink (v) SELECT ssn FROM users",
    "INSERT INTO sink (v) SELECT ssn FROM users",
    "INSERT INTO sink (v) SELECT * FROM users",
    "INSERT INTO sink SELECT SQL_NO_CACHE * FROM users",
    "INSERT INTO sink SELECT u.* FROM users u",
    "REPLACE INTO sink (v) SELECT UPPER(ssn) FROM users",
    "UPDATE sink SET v = (SELECT ssn FROM users WHERE id = 1)",
    "UPDATE sink s JOIN users u ON u.id = s.id SET s.v = u.ssn",
    "CREATE TABLE stolen AS SELECT ssn FROM users",
    "CREATE TEMPORARY TABLE stolen AS SELECT * FROM users",
    "CREATE VIEW stolen AS SELECT ssn AS x FROM users",
    "SELECT ssn INTO @v FROM users WHERE id = 1",
    "SELECT ssn FROM users WHERE id = 1 INTO @v",
    "SELECT @v := ssn FROM users",
    "SET @v = (SELECT ssn FROM users WHERE id = 1)",
    "SELECT ssn FROM users INTO OUTFILE '/tmp/h4-stolen'",
    "SELECT s INTO @v FROM v_plain LIMIT 1",
    "INSERT INTO sink (v) SELECT u FROM v_expr",
    "DELETE FROM sink WHERE v IN (SELECT ssn FROM users)",
    "RENAME TABLE users TO users2",
    "ALTER TABLE users CHANGE ssn tax_id char(11)",
    "ALTER TABLE users RENAME COLUMN ssn TO tax_id",
    "EXECUTE IMMEDIATE CONCAT('SELECT s', 'sn INTO @v FROM users LIMIT 1')",
    "PREPARE p FROM @q",
    "PREPARE p FROM 'INSERT INTO sink (v) SELECT ssn FROM users'",
    "SELECT 1 /*! , ssn INTO @v */ FROM users LIMIT 1",
    "INSERT INTO sink (v) SELECT `ssn` FROM `users`",
    # NO_BACKSLASH_ESCAPES: the string ends at \\' and `INTO @v` is code
    "SELECT ssn, 'a\\' INTO @v FROM users LIMIT 1 -- '",
    "SELECT 'x' AS a; INSERT INTO sink (v) SELECT ssn FROM users",
    "GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT",
    "ALTER TABLE users ADD COLUMN c2 char(11) AS (ssn) VIRTUAL",
    "CREATE TRIGGER tr AFTER INSERT ON sink FOR EACH ROW SET @v = (SELECT ssn FROM users LIMIT 1)",
    "CREATE EVENT ev ON SCHEDULE EVERY 1 DAY DO INSERT INTO sink (v) SELECT ssn FROM users",
    "INSERT INTO sink SET v = (SELECT ssn FROM users LIMIT 1)",
    "INSERT INTO sink (v) VALUES ((SELECT ssn FROM users LIMIT 1))",
    # a filter on a masked column chooses the rows written: an oracle
    "UPDATE users SET name = 'x' WHERE ssn LIKE '1%'",
    "DELETE FROM users WHERE ssn LIKE '9%'",
    # a masked column copied into a column that is not masked, in the same table
    "UPDATE users SET name = ssn WHERE id = 1",
    "INSERT INTO users (id, name) SELECT id + 10, ssn FROM users",
    "INSERT INTO sink (v) SELECT ssn FROM users ON DUPLICATE KEY UPDATE v = VALUES(v)",
]
ALLOWED_STATEMENTS = [
    "SELECT ssn FROM users", "SELECT UPPER(ssn) FROM users",
    "UPDATE users SET name = 'Ada L.' WHERE id = 1",
    "INSERT INTO sink (v) VALUES ('hello')", "INSERT INTO sink (v) SELECT name FROM users",
    "SELECT name INTO @n FROM users WHERE id = 1", "SET @a = 1", "SET NAMES utf8mb4",
    "CREATE TABLE scratch (id int)", "DROP TABLE IF EXISTS scratch",
    "SELECT 'ssn' AS label FROM items",
    # lineage shows no masked value stored: literals into a masked column, a masked column
    # overwritten whole
    "INSERT INTO users (id, name, ssn) VALUES (3, 'Eve', '111-22-3333')",
    "UPDATE users SET ssn = '000-00-0000' WHERE id = 2",
    "UPDATE users SET ssn = NULL, name = 'x' WHERE id = 2",
    "UPDATE users SET salary = salary * 2 WHERE id = 1",
    "INSERT INTO sink (v) SELECT COUNT(*) FROM users",
]


class _Inner:
    approves = False

    def __init__(self):
        self.seen = []

    def check(self, sql, *a, **kw):
        self.seen.append(sql)
        return None


@pytest.mark.parametrize("sql", REFUSED_WRITES)
def test_masked_writes_refused(db, sql):
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    inner = _Inner()
    guard = WriteGuard(inner, masker, refuse=True)
    verdict = guard.check(sql.encode())
    assert verdict is not None and verdict.action == "block" and verdict.rule == "masked-write", sql
    assert inner.seen == []            # refused before the guardrails (and the server) see it
    # masked_writes = "allow": the guardrails judge it, masking does not
    allow = WriteGuard(inner, masker, refuse=False)
    assert allow.check(sql.encode()) is None and inner.seen == [sql.encode()]


@pytest.mark.parametrize("sql", ALLOWED_STATEMENTS)
def test_ordinary_statements_not_refused(db, sql):
    masker = SessionMasker(masking(db), DB)
    assert WriteGuard(None, masker).check(sql.encode()) is None, sql


def test_the_refused_writes_do_leak_on_the_server(db):
    """Why WriteGuard exists: run on the server as the gateway's upstream user, a copy into a
    table puts the clear value where a plain SELECT -- no masked column in it -- reads it back."""
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    with client(db) as c:
        try:
            results(c, "INSERT INTO sink (v) SELECT ssn FROM users")
            (cols, rows), = results(c, "SELECT v FROM sink")
            plan = masker.result_plan(masker.statement(b"SELECT v FROM sink"), 0, cols, False)
            assert [SSN1.encode()] in apply(plan, rows)      # only WriteGuard stops this one
            # a copy into a variable: reading a variable is unresolved as well (belt and braces)
            results(c, "SELECT ssn INTO @v FROM users WHERE id = 1")
            (cols, rows), = results(c, "SELECT @v")
            assert rows == [[SSN1.encode()]]
            plan = masker.result_plan(masker.statement(b"SELECT @v"), 0, cols, False)
            assert apply(plan, rows) == [[b"****"]]
        finally:
            results(c, "DELETE FROM sink")


def test_variable_filled_by_get_diagnostics_is_masked(db):
    """A warning quotes a value; GET DIAGNOSTICS copies it into a variable WriteGuard never
    sees being set (when masked_writes = "allow"): reading a user variable is unresolved."""
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    with client(db) as c:
        results(c, "SELECT ssn + 0 FROM users")
        results(c, "GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT")
        (cols, rows), = results(c, "SELECT @m")
    assert SSN1.encode() in rows[0][0]                               # the leak is real
    got = apply(masker.result_plan(masker.statement(b"SELECT @m"), 0, cols, False), rows)
    assert SSN1.encode() not in (got[0][0] or b"")


# --------------------------------------------------------------------------------------------
# the catalog

def test_catalog_reads_tables_views_and_collations(db):
    conn = masking(db)
    cat = conn.catalog
    assert cat.columns(DB, "users")[:3] == ["id", "name", "ssn"]
    assert cat.columns(DB.upper(), "USERS") == cat.columns(DB, "users")
    assert "users" in cat.view_definition(DB, "v_plain")
    assert cat.view_definition(DB, "users") is None
    assert cat.columns("information_schema", "COLUMNS")            # system schemas too
    assert cat.ascii_safe(45) and not cat.ascii_safe(54)            # utf8mb4 / utf16
    assert DB in cat.schemas and "users" in cat.schemas[DB]


def test_catalog_read_is_bounded(db):
    """A server that accepts and never answers (the login waits), and a side connection whose
    query never answers: each read ends in CatalogError within two attempts of `timeout`."""
    import socket

    from hoopwire.mysql.upstream import connect_upstream
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)                                    # the kernel accepts; nobody answers
    port = listener.getsockname()[1]

    async def silent_server():
        return await connect_upstream("127.0.0.1", port, user="app", password="x",
                                      database=None, capabilities=0, timeout=60)

    class Silent:
        async def query(self, sql):
            await asyncio.sleep(3600)

        def close(self):
            pass

    async def silent_query():
        return Silent()

    async def took(connect):
        cat = Catalog(connect, timeout=0.3)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(CatalogError):
            await cat.load()
        cat.close()
        return loop.time() - t0
    try:
        for connect in (silent_server, silent_query):
            # two attempts of 0.3 s, not 60 s (the bound only tells them apart; 2 s was
            # 1.4 s of slack for a loaded machine)
            assert run(took(connect)) < 20
    finally:
        listener.close()


def test_no_catalog_no_results_while_column_rules_apply(db):
    async def refuse():
        raise OSError("connection refused")
    engine = MaskEngine(RULES, [])
    conn = ConnectionMasking(engine, unresolved="mask", connect=refuse, connection="t",
                             timeout=1)
    with pytest.raises(CatalogError):
        run(conn.ready())
    masker = SessionMasker(conn, DB)
    with client(db) as c:
        (cols, rows), = results(c, "SELECT name FROM items")
    with pytest.raises(MaskRefused) as e:
        masker.result_plan(masker.statement(b"SELECT name FROM items"), 0, cols, False)
    assert e.value.errno == 1105


def test_derived_table_aliases_do_not_read_the_catalog_per_query(db):
    """A derived table's alias arrives as an org_table the catalog does not hold, like a new
    table: at most one read per _UNKNOWN_REREAD seconds, not one per result."""
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    sql = "SELECT x FROM (SELECT name AS x FROM items) d"
    with client(db) as c:
        (cols, rows), = results(c, sql)
    assert cols[0][2] == "d"

    async def go():
        before = conn.catalog.lookups
        for _ in range(20):
            assert apply(masker.result_plan(masker.statement(sql.encode()), 0, cols, False),
                         rows) == rows
            await asyncio.sleep(0.02)
        return conn.catalog.lookups - before
    assert run(go()) <= 1


def test_ddl_reads_the_catalog_again(db):
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    gen = conn.catalog.generation

    async def go():
        info = masker.statement(b"CREATE TABLE h4tmp (ssn char(11))")
        assert info.ddl
        db.sql(f"CREATE TABLE {DB}.h4tmp (ssn char(11))")
        # the server's answer to the DDL starts a read (the relay calls answered for a DDL's
        # answer, then holds the next statement on pending_read until the read lands)
        masker.answered(info)
        deadline = time.monotonic() + 30                # a hang guard (was 100 x 0.05 s)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if conn.catalog.generation > gen:
                return True
    try:
        assert run(go())
        assert conn.catalog.knows(DB, "h4tmp")
    finally:
        db.sql(f"DROP TABLE IF EXISTS {DB}.h4tmp")


# --------------------------------------------------------------------------------------------
# statement shapes and result plans: analysed once, reused while nothing they depend on changed

def test_new_literals_reuse_the_shape_analysis_not_its_text(db):
    """Text-mode clients send new literals in every statement (sysbench: 740 us/tx of proxy
    CPU when each one was analysed anew): one analysis per shape -- and its masking still
    right for the text that comes second."""
    from hoopwire.mysql import masker as m
    conn = masking(db)
    calls = []
    real = m.lin.output_sources

    def counting(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)
    m.lin.output_sources = counting
    try:
        for i in (1, 2):
            res = through(conn, db, f"SELECT CONCAT(ssn), name FROM users WHERE id = {i}")
            assert not leaks(res) and res[0][1][0][1] in (b"Ada", b"Alan"), res
        res = through(conn, db, "SELECT CONCAT(ssn), name FROM users WHERE name = 'Alan'")
        assert not leaks(res) and res[0][1] == [[b"****", b"Alan"]]
    finally:
        m.lin.output_sources = real
    assert len(calls) == 2, calls          # one per shape: `id = ?` and `name = ?`
    a = conn.statement(b"SELECT name FROM users WHERE id = 7")
    assert conn.statement(b"SELECT name FROM users WHERE id = 8") is a
    # case is part of the shape (two tables on a case-sensitive server), so are numbers after
    # BY (output positions), and texts whose literal is a statement are never shared
    assert conn.statement(b"SELECT name FROM USERS WHERE id = 8") is not a
    for one, two in [(b"SELECT name FROM users ORDER BY 1", b"SELECT name FROM users ORDER BY 2"),
                     (b"PREPARE s FROM 'SELECT 1'", b"PREPARE s FROM 'SELECT ssn FROM users'")]:
        assert m.text_key(one) != m.text_key(two)


def test_positional_order_by_is_not_shared_between_numbers(db):
    """`ORDER BY 2` reads the second output: the name column below is chosen and ordered by
    ssn (with LIMIT, which ssn is smallest). A shape that dropped the number would reuse the
    `ORDER BY 1` analysis, where name reads only name."""
    conn = masking(db)
    res = through(conn, db, "SELECT CONCAT(name), CONCAT(ssn) FROM users ORDER BY 1 LIMIT 1")
    assert res[0][1] == [[b"Ada", b"****"]]
    res = through(conn, db, "SELECT CONCAT(name), CONCAT(ssn) FROM users ORDER BY 2 LIMIT 1")
    assert res[0][1] == [[b"****", b"****"]]


# Under NO_BACKSLASH_ESCAPES this reads ssn (`'a\'` is a string, `-- ', 2` a comment); under
# the default mode it is two constants: `'a\', CONCAT(ssn) AS v -- '` and 2. Its literal-free
# shape under the default mode is that of INNOCENT's, which reads nothing.
AMBIGUOUS = "SELECT 'a\\', CONCAT(ssn) AS v -- ', 2\n FROM users WHERE id = 1"
INNOCENT = "SELECT 'b', 2 FROM users WHERE id = 1"


def test_ambiguous_text_never_shares_a_shape_in_process(db):
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    with client(db, init_command="SET sql_mode = 'NO_BACKSLASH_ESCAPES'") as c:
        for sql in (INNOCENT, AMBIGUOUS):
            info = masker.statement(sql.encode())
            (cols, rows), = results(c, sql)
            got = apply(masker.result_plan(info, 0, cols, False), rows)
    assert len(got[0]) == 2 and SSN1.encode() not in got[0][1], got


def test_result_plans_reused_and_dropped_on_catalog_read(db):
    """A prepared statement's executes reuse its plan (96 us/tx of proxy CPU for sysbench's
    point select when it was rebuilt per execute) -- until the catalog is read again: the view
    below is redefined to read ssn, and its column definitions stay the same."""
    db.sql(f"CREATE OR REPLACE VIEW {DB}.v_h7 AS SELECT id, CAST(name AS CHAR(40)) AS a "
           f"FROM {DB}.users")
    try:
        conn = masking(db)
        masker = SessionMasker(conn, DB)
        # (a view's alias would arrive as org_table "v", a name the catalog does not hold:
        # such plans are made anew each time, while the read they ask for is under way)
        sql = "SELECT v_h7.a, u.ssn FROM v_h7 JOIN users u ON u.id = v_h7.id WHERE u.id = 1"
        info = masker.statement(sql.encode())       # as the relay keeps it for a prepared one
        with client(db) as c:
            (cols, rows), = results(c, sql)
        plan = masker.result_plan(info, 0, cols, True)
        assert apply(plan, rows) == [[b"Ada", b"****"]]
        assert masker.result_plan(info, 0, cols, True) is plan
        assert masker.result_plan(info, 0, cols, False) is not plan
        db.sql(f"CREATE OR REPLACE VIEW {DB}.v_h7 AS SELECT id, CAST(ssn AS CHAR(40)) AS a "
               f"FROM {DB}.users")
        with client(db) as c:
            (cols2, rows), = results(c, sql)
        assert cols2 == cols
        conn.catalog.invalidate()                  # as a DDL statement or the TTL does
        run(conn.catalog.load())
        got = apply(masker.result_plan(info, 0, cols, True), rows)
        assert got == [[b"****", b"****"]], got
        # a new default schema: lineage places unqualified names there
        p1 = masker.result_plan(info, 0, cols, True)
        masker.schema_changed("other")
        masker.schema_changed(DB)
        assert masker.result_plan(info, 0, cols, True) is not p1
    finally:
        db.sql(f"DROP VIEW IF EXISTS {DB}.v_h7")


# --------------------------------------------------------------------------------------------
# binary protocol: what a prepared statement's rows get

def test_binary_protocol_plan_nulls_numbers_and_masks_strings(db):
    rules = [MaskConfig(columns=(f"{DB}.users.*",), strategy="redact")]
    conn = masking(db, rules)
    masker = SessionMasker(conn, DB)
    sql = b"SELECT id, ssn, born FROM users WHERE id = ?"
    with client(db) as c:
        (cols, _rows), = results(c, "SELECT id, ssn, born FROM users WHERE id = 1")
    plan = masker.result_plan(masker.statement(sql), 0, cols, True)
    # binary row values: int32 little-endian, lenenc string body, date (4 bytes after length)
    got = plan.mask_spans(b"\x01\x00\x00\x00" + SSN1.encode() + b"\xc6\x07\x01\x01",
                          [(0, 4), (4, 11), (15, 4)])
    assert got[0] is MASKED_NULL and got[1] == b"****" and got[2] is MASKED_NULL


def test_binary_rows_through_mysql_connector_prepared_cursor(db):
    """A real binary-protocol result: mysql-connector's prepared cursor (COM_STMT_EXECUTE)."""
    import mysql.connector as mysql_connector
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    cnx = mysql_connector.connect(host=db.host, port=db.port, user="app",
                                  password=db.passwords["app"], database=DB, use_pure=True)
    try:
        cur = cnx.cursor(prepared=True)
        cur.execute("SELECT UPPER(ssn), name FROM users WHERE id = %s", (1,))
        rows = cur.fetchall()
        desc = cur.description
    finally:
        cnx.close()
    assert rows[0][0] in (SSN1, SSN1.encode())                    # the value on the wire
    # the column definitions the server sent for the prepare, as the relay decodes them
    with client(db) as c:
        (cols, _), = results(c, "SELECT UPPER(ssn), name FROM users WHERE id = 1")
    assert [d[0] for d in desc] == [c[3] for c in cols]
    plan = masker.result_plan(
        masker.statement(b"SELECT UPPER(ssn), name FROM users WHERE id = ?"), 0, cols, True)
    v0 = rows[0][0] if isinstance(rows[0][0], bytes) else rows[0][0].encode()
    v1 = rows[0][1] if isinstance(rows[0][1], bytes) else rows[0][1].encode()
    got = plan.mask_spans(v0 + v1, [(0, len(v0)), (len(v0), len(v1))])
    assert got[0] == b"****" and got[1] is None


# --------------------------------------------------------------------------------------------
# client tools' metadata through the masker: the queries they really send

def _general_log(server, fn):
    """The statements `fn` sends to the server (its general log, as root)."""
    server.sql("SET GLOBAL log_output = 'TABLE'; SET GLOBAL general_log = 1; "
               "TRUNCATE mysql.general_log")
    try:
        fn()
    finally:
        server.sql("SET GLOBAL general_log = 0")
    rows = server.sql("SELECT command_type, CONVERT(argument USING utf8mb4) FROM "
                      "mysql.general_log WHERE user_host LIKE 'app[app]%' ORDER BY event_time")
    return [a for t, a in rows if t == "Query"]


def _replay(server, conn, queries, schema=DB):
    """Each query through the masker, with its real results: the values changed per query."""
    changed = {}
    masker = SessionMasker(conn, schema)
    with client(server) as c:
        for q in queries:
            info = masker.statement(q.encode())
            try:
                res = results(c, q)
            except pymysql.MySQLError:
                continue
            for i, (cols, rows) in enumerate(res):
                got = apply(masker.result_plan(info, i, cols, False), rows)
                if got != rows:
                    changed[q] = (cols, rows, got)
    return changed


def test_sqlalchemy_reflection_answers_unmasked(db):
    import sqlalchemy
    url = f"mysql+pymysql://app:{db.passwords['app']}@{db.host}:{db.port}/{DB}"

    def reflect():
        eng = sqlalchemy.create_engine(url)
        try:
            md = sqlalchemy.MetaData()
            md.reflect(eng, views=True)
            insp = sqlalchemy.inspect(eng)
            for t in ("users", "items", "sink"):
                insp.get_columns(t)
                insp.get_pk_constraint(t)
                insp.get_indexes(t)
                insp.get_foreign_keys(t)
        finally:
            eng.dispose()
    queries = _general_log(db, reflect)
    assert any("SHOW CREATE TABLE" in q.upper() for q in queries)
    changed = _replay(db, masking(db), queries)
    assert changed == {}, list(changed)


def test_mariadb_dump_masks_data_keeps_schema(db):
    assert shutil.which("mariadb-dump"), "mariadb-dump (Debian package mariadb-client) is missing"

    def dump():
        r = subprocess.run(["mariadb-dump", "-h", db.host, "-P", str(db.port), "-u", "app",
                            f"-p{db.passwords['app']}", "--skip-ssl", DB, "users", "items"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    queries = _general_log(db, dump)
    changed = _replay(db, masking(db), queries)
    # only the data of users changes, and only its ssn column
    assert len(changed) == 1, list(changed)
    (q, (cols, rows, got)), = changed.items()
    assert "users" in q and "SELECT" in q.upper()
    ssn = [c[3] for c in cols].index("ssn")
    assert all(r[ssn] == b"****" for r in got)
    assert [r[:ssn] for r in got] == [r[:ssn] for r in rows]


# --------------------------------------------------------------------------------------------
# end to end through the gateway (H1's listener, H2's relay): real clients with a token

from helpers import Gateway  # noqa: E402
from mysqlgw import (connector_connect, mysql_cli, mysql_gateway_config,  # noqa: E402
                     mysql_gateway_env, mysqlclient_connect, pymysql_connect)


def _gateway(db, idp, pki, **conn):
    cfg = mysql_gateway_config(db, idp, pki, database=DB, mask=[
        {"columns": [f"{DB}.users.ssn"], "strategy": "redact"},
        {"columns": [f"{DB}.users.born"], "strategy": "redact"},
        {"detectors": ["EMAIL"], "strategy": "redact"}], **conn)
    return Gateway(cfg, env=mysql_gateway_env(db))


@pytest.fixture(scope="module")
def maskgw(db, idp, pki):
    with _gateway(db, idp, pki) as g:
        g.pki = pki
        yield g


def _rows(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return [list(r) for r in cur.fetchall()]


def _flat(rows):
    return "|".join(str(v) for r in rows for v in r)


def test_e2e_pymysql_text_rows(maskgw, idp):
    conn = pymysql_connect(maskgw, idp.token(), database=DB)
    try:
        for sql in ["SELECT ssn AS x, name FROM users u", "SELECT UPPER(ssn), COUNT(*) FROM users",
                    "SELECT CONCAT(ssn, ''), GROUP_CONCAT(ssn) FROM users GROUP BY ssn",
                    "SELECT JSON_OBJECT('s', ssn) FROM users",
                    "SELECT name FROM users UNION SELECT ssn FROM users",
                    "SELECT name FROM (SELECT ssn AS name FROM users) AS items",
                    "SELECT u FROM v_expr", "SELECT t FROM v_nested", "SELECT * FROM v_temp"]:
            got = _flat(_rows(conn, sql))
            assert SSN1 not in got and SSN2 not in got and SSN1.upper() not in got, (sql, got)
        assert _rows(conn, "SELECT COUNT(*) FROM users") == [[2]]
        assert _rows(conn, "SELECT name FROM users ORDER BY id") == [["Ada"], ["Alan"]]
        # detectors on a text and a binary (VARBINARY) string
        email, note = _rows(conn, "SELECT email, note FROM users WHERE id = 1")[0]
        assert "ada@example.com" not in email and b"ada@example.com" not in note
    finally:
        conn.close()


def test_e2e_binary_rows_prepared(maskgw, idp):
    """COM_STMT_EXECUTE rows (binary protocol): mysql-connector's prepared cursor, pure Python
    and its C extension."""
    for pure in (True, False):
        conn = connector_connect(maskgw, idp.token(), database=DB, pure=pure)
        try:
            cur = conn.cursor(prepared=True)
            cur.execute("SELECT id, UPPER(ssn), ssn, name, born, salary FROM users "
                        "WHERE id = %s", (1,))
            (row,) = cur.fetchall()
            vals = [v.decode() if isinstance(v, (bytes, bytearray)) else v for v in row]
            assert vals[0] == 1 and vals[1] == "****" and vals[2] == "****" and vals[3] == "Ada"
            # a masked DATE in a binary row leaves as NULL (its NULL-bitmap bit set)
            assert vals[4] is None and float(vals[5]) == 10.5
            cur.close()
        finally:
            conn.close()


def test_e2e_mysqlclient(maskgw, idp):
    conn = mysqlclient_connect(maskgw, idp.token(), database=DB)
    try:
        got = _rows(conn, "SELECT REVERSE(ssn), name FROM users ORDER BY id")
        assert [r[1] for r in got] == ["Ada", "Alan"] and all(r[0] == "****" for r in got)
    finally:
        conn.close()


def test_e2e_errors_and_refused_writes(maskgw, idp):
    conn = pymysql_connect(maskgw, idp.token(), database=DB)
    try:
        with pytest.raises(pymysql.MySQLError) as e:
            _rows(conn, "SELECT EXTRACTVALUE(1, CONCAT(0x7e, (SELECT ssn FROM users LIMIT 1)))")
        assert SSN1[:7] not in str(e.value) and SSN2[:7] not in str(e.value)
        for sql in ("INSERT INTO sink (v) SELECT ssn FROM users",
                    "SELECT ssn INTO @v FROM users LIMIT 1",
                    "GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT"):
            with pytest.raises(pymysql.MySQLError) as e:
                _rows(conn, sql)
            assert "masked-write" in str(e.value) or "masked" in str(e.value), str(e.value)
        # the session goes on, and nothing was copied
        assert _rows(conn, "SELECT COUNT(*) FROM sink") == [[0]]
        # the plan of a statement over masked data carries a const table's value
        got = _flat(_rows(conn, "EXPLAIN FORMAT=JSON SELECT i.name FROM items i JOIN users u "
                                "ON u.id = 1 WHERE i.name = u.ssn"))
        assert SSN1 not in got
        # the detectors over an error's text
        with pytest.raises(pymysql.MySQLError) as e:
            _rows(conn, "SELECT * FROM `ada@example.com`")
        assert "ada@example.com" not in str(e.value) and e.value.args[0] == 1146
        # a warning quoting the value
        _rows(conn, "SELECT ssn + 0 FROM users")
        assert SSN1 not in _flat(_rows(conn, "SHOW WARNINGS"))
    finally:
        conn.close()


def test_e2e_character_set_results_utf16_refused(maskgw, idp):
    conn = pymysql_connect(maskgw, idp.token(), database=DB)
    try:
        _rows(conn, "SET character_set_results = utf16")
        with pytest.raises(pymysql.MySQLError) as e:
            _rows(conn, "SELECT email FROM users")
        assert e.value.args[0] == 1227
        _rows(conn, "SET character_set_results = utf8mb4")
        assert _rows(conn, "SELECT name FROM users WHERE id = 1") == [["Ada"]]
    finally:
        conn.close()


def test_e2e_cli_show_describe_and_dump(maskgw, idp, db):
    token = idp.token()
    r = mysql_cli(maskgw, token, "-e", "SHOW CREATE TABLE users; DESCRIBE users; "
                  "SELECT ssn FROM users", database=DB)
    assert r.returncode == 0, r.stderr
    assert "CREATE TABLE `users`" in r.stdout and "char(11)" in r.stdout
    assert SSN1 not in r.stdout and "****" in r.stdout
    dump = shutil.which("mariadb-dump") or shutil.which("mysqldump")
    host, port = maskgw.address("my")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL")}
    env["MYSQL_PWD"] = token
    r = subprocess.run([dump, "--no-defaults", f"--host={host}", f"--port={port}", "--user=agent",
                        "--protocol=TCP", f"--ssl-ca={maskgw.pki.ca_pem}",
                        "--ssl-verify-server-cert", DB, "users", "items"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "CREATE TABLE `users`" in r.stdout and "INSERT INTO `users` VALUES" in r.stdout
    assert SSN1 not in r.stdout and "'****'" in r.stdout
    assert "(1,'apple',1)" in r.stdout


def test_e2e_sqlalchemy_reflection(maskgw, idp):
    import sqlalchemy
    host, port = maskgw.address("my")
    eng = sqlalchemy.create_engine(
        f"mysql+pymysql://agent:{idp.token()}@{host}:{port}/{DB}",
        connect_args={"ssl": {"ca": maskgw.pki.ca_pem}})
    try:
        md = sqlalchemy.MetaData()
        md.reflect(eng, views=True)
        users = md.tables["users"]
        assert [c.name for c in users.columns][:4] == ["id", "name", "ssn", "email"]
        assert str(users.c.ssn.type).startswith("CHAR")
        with eng.connect() as c:
            rows = c.execute(sqlalchemy.select(users.c.name, users.c.ssn)
                             .order_by(users.c.id)).all()
        assert [tuple(r) for r in rows] == [("Ada", "****"), ("Alan", "****")]
    finally:
        eng.dispose()


def test_e2e_unresolved_block_refuses_the_result_only(db, idp, pki):
    with _gateway(db, idp, pki, unresolved_columns="block") as g:
        g.pki = pki
        conn = pymysql_connect(g, idp.token(), database=DB)
        try:
            with pytest.raises(pymysql.MySQLError) as e:
                _rows(conn, "SELECT COALESCE(@x, ssn) FROM users")
            assert e.value.args[0] == 1227
            assert _rows(conn, "SELECT ssn FROM users WHERE id = 1") == [["****"]]
        finally:
            conn.close()


def test_e2e_ambiguous_text_never_shares_a_shape(maskgw, idp):
    """Through the gateway, with the session under NO_BACKSLASH_ESCAPES: a statement whose
    default-mode shape equals a harmless one's, run after it, still has ssn masked."""
    conn = pymysql_connect(maskgw, idp.token(), database=DB)
    try:
        _rows(conn, "SET sql_mode = 'NO_BACKSLASH_ESCAPES'")
        assert _rows(conn, INNOCENT) == [["b", 2]]
        got = _rows(conn, AMBIGUOUS)
        assert len(got[0]) == 2 and SSN1 not in _flat(got), got
    finally:
        conn.close()
