"""Guardrails on the MySQL path: the MySQL dialect's packs compiled by the policy engine, against
the evasions a client holding a valid token would try, in-process and end to end through the
gateway in front of the real MariaDB with real drivers.

A blocked statement must never reach the upstream: each end-to-end test that expects a block
also checks that the upstream did not do it (the table and its rows are still there).
"""

from __future__ import annotations

import uuid

import pymysql
import pytest

from hoopwire.config import GuardrailConfig
from hoopwire.mysql.dialect import DIALECT
from hoopwire.mysql.packs import PACKS
from hoopwire.policy import PolicyEngine
from hoopwire.pg.packs import PACKS as PG_PACKS

ALL_PACKS = tuple(PACKS)


def engine(*rules: GuardrailConfig) -> PolicyEngine:
    rules = DIALECT.implied_guardrails(tuple(rules))
    return PolicyEngine(rules, views=DIALECT.statement_views, classifier=DIALECT.classifier(rules),
                        packs=DIALECT.packs)


@pytest.fixture(scope="module")
def policy():
    return engine(*(GuardrailConfig(name=p, pack=p) for p in ALL_PACKS)).for_groups(frozenset())


@pytest.fixture(scope="module")
def each_pack():
    """One policy per pack alone (and the implied rules): which pack catches what."""
    return {p: engine(GuardrailConfig(name=p, pack=p)).for_groups(frozenset()) for p in ALL_PACKS}


def rule_of(policy, sql: bytes):
    v = policy.check(sql)
    return v.rule if v is not None and v.action == "block" else None


# (the pack that must block, the statement): evasions a client with a valid token would try
CAUGHT = [
    ("destructive-ddl", b"CREATE OR REPLACE TABLE victim (x int)"),
    ("destructive-ddl", b"create or replace table victim like items"),
    ("destructive-ddl", b"DROP TABLE t"),
    ("destructive-ddl", b"drop table if exists t"),
    ("destructive-ddl", b"DROP/**/TABLE t"),
    ("destructive-ddl", b"/*!DROP*/ TABLE t"),
    ("destructive-ddl", b"/*!50000DROP*/ TABLE t"),
    ("destructive-ddl", b"/*!100100 DROP TABLE t */"),
    ("destructive-ddl", b"/*M!DROP TABLE t*/"),
    ("destructive-ddl", b"DROP/*M!*/ TABLE t"),
    ("destructive-ddl", b"DROP/*!*/TABLE t"),
    ("destructive-ddl", b"SELECT 1 # comment\n; DROP TABLE t"),
    ("destructive-ddl", b"SELECT 1 -- comment\n;DROP TABLE t"),
    ("destructive-ddl", b"SELECT 1 --x\n;DROP TABLE t"),
    ("destructive-ddl", b"SELECT 1;DROP TABLE t"),
    ("destructive-ddl", b"SELECT '\\'; DROP TABLE t; -- '"),          # \' escapes in mode 0
    ("destructive-ddl", b"SELECT 'a\\' ; DROP TABLE t; -- '"),        # NO_BACKSLASH_ESCAPES
    ("destructive-ddl", b'SELECT "a\\" ; DROP TABLE t; -- "'),        # ANSI_QUOTES
    ("destructive-ddl", b"SELECT `a\\` ; DROP TABLE t; -- `"),        # backslash in a name
    ("destructive-ddl", b"SELECT 1 AS [x'] ; DROP TABLE t; -- ']"),   # MariaDB's MSSQL mode
    ("destructive-ddl", b"SELECT 1 /*!99999 ' */ ; DROP TABLE t; -- '"),  # a comment on MariaDB
    ("destructive-ddl", b"SELECT 1 /*M! ' */ ; DROP TABLE t; -- '"),      # a comment on MySQL
    ("destructive-ddl", b"SELECT 1 /*!50701 ' */ ; DROP TABLE t; -- '"),  # MariaDB skips 50700+
    ("destructive-ddl", b"dRoP\n\t\x0b\x0cTaBlE t"),
    ("destructive-ddl", b"DROP\xa0TABLE t"),                           # latin1: 0xA0 is a space
    ("destructive-ddl", b"SELECT 1;\xa0TRUNCATE t"),                  # ... also before a word
    ("destructive-ddl", b"SELECT 1;\xffTRUNCATE t"),                  # cp852: 0xFF
    ("destructive-ddl", b"TRUNCATE t"),
    ("destructive-ddl", b"TRUNCATE TABLE t"),
    ("destructive-ddl", b"ALTER TABLE t DROP COLUMN c"),
    ("destructive-ddl", b"ALTER TABLE t DROP c"),
    ("destructive-ddl", b"ALTER TABLE t DROP `c`"),
    ("destructive-ddl", b"ALTER TABLE t DROP PRIMARY KEY"),
    ("destructive-ddl", b"DROP DATABASE app"),
    ("destructive-ddl", b"PREPARE s FROM 'DROP TABLE t'"),
    ("destructive-ddl", b"PREPARE s FROM \"DROP TABLE t\""),
    ("destructive-ddl", b"EXECUTE IMMEDIATE 'DROP TABLE t'"),
    ("destructive-ddl", b"EXECUTE IMMEDIATE 'PREPARE x FROM ''DROP TABLE t'''"),
    ("destructive-ddl", b"BEGIN NOT ATOMIC DROP TABLE t; END"),
    ("destructive-ddl", b"BEGIN NOT ATOMIC EXECUTE IMMEDIATE 'DROP TABLE t'; END"),
    ("unbounded-write", b"DELETE FROM t"),
    ("unbounded-write", b"DELETE LOW_PRIORITY QUICK IGNORE FROM t"),
    ("unbounded-write", b"DELETE FROM t LIMIT 10"),
    ("unbounded-write", b"DELETE t FROM t JOIN u ON t.id = u.id"),
    ("unbounded-write", b"UPDATE t SET a = 1"),
    ("unbounded-write", b"UPDATE t SET a = (SELECT 1 FROM u WHERE u.id = 2)"),
    ("unbounded-write", b"DELETE FROM t WHERE 1"),
    ("unbounded-write", b"DELETE FROM t WHERE 1=1"),
    ("unbounded-write", b"DELETE FROM t WHERE true"),
    ("unbounded-write", b"DELETE FROM t /*!50701 WHERE id = 1 */"),        # MariaDB skips it
    ("unbounded-write", b"/*!50000 DELETE FROM t */ /*!50701 WHERE id = 1 */"),
    ("unbounded-write", b"DELETE FROM t /*M! WHERE id = 1 */"),            # MySQL skips it
    ("unbounded-write", b"ANALYZE DELETE FROM t"),
    ("unbounded-write", b"WITH x AS (SELECT 1) DELETE FROM t"),
    ("privilege-changes", b"GRANT ALL ON *.* TO app"),
    ("privilege-changes", b"REVOKE SELECT ON app.* FROM app"),
    ("privilege-changes", b"CREATE USER evil IDENTIFIED BY 'x'"),
    ("privilege-changes", b"ALTER USER app IDENTIFIED BY 'x'"),
    ("privilege-changes", b"SET PASSWORD FOR app = PASSWORD('x')"),
    ("privilege-changes", b"CREATE DEFINER = root@localhost VIEW v AS SELECT 1"),
    ("privilege-changes", b"UPDATE mysql.global_priv SET priv = '{}' WHERE user = 'app'"),
    ("privilege-changes", b"INSERT INTO `mysql`.`user` VALUES (1)"),
    ("privilege-changes", b"FLUSH PRIVILEGES"),
    ("server-side-io", b"SELECT LOAD_FILE('/etc/passwd')"),
    ("server-side-io", b"SELECT `load_file`('/etc/passwd')"),
    ("server-side-io", b"SELECT load_file /**/ ('/etc/passwd')"),
    ("server-side-io", b"SELECT * FROM t INTO OUTFILE '/tmp/x'"),
    ("server-side-io", b"SELECT 'x' INTO DUMPFILE '/tmp/x'"),
    ("server-side-io", b"LOAD DATA INFILE '/etc/passwd' INTO TABLE t"),
    ("server-side-io", b"LOAD DATA LOW_PRIORITY INFILE '/etc/passwd' INTO TABLE t"),
    ("server-side-io", b"INSTALL PLUGIN x SONAME 'x.so'"),
    ("server-side-io", b"INSTALL SONAME 'ha_connect'"),
    ("server-side-io", b"CREATE FUNCTION sys_exec RETURNS INT SONAME 'lib.so'"),
    ("server-side-io", b"SET GLOBAL general_log = 1"),
    ("server-side-io", b"SET @@global.general_log = 1"),
    ("server-side-io", b"SET PERSIST max_connections = 1"),
    ("server-side-io", b"SET @a = 1, GLOBAL general_log = 1"),
    ("server-side-io", b"CREATE TABLE t (a int) ENGINE=CONNECT TABLE_TYPE=DOS FILE_NAME='/etc/passwd'"),
    ("server-side-io", b"CREATE SERVER s FOREIGN DATA WRAPPER mysql OPTIONS (HOST 'x')"),
    ("procedural-code", b"CREATE PROCEDURE p() BEGIN SELECT 1; END"),
    ("procedural-code", b"CREATE OR REPLACE FUNCTION f() RETURNS INT RETURN 1"),
    ("procedural-code", b"CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET @x = 1"),
    ("procedural-code", b"CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO SELECT 1"),
    ("procedural-code", b"BEGIN NOT ATOMIC SELECT 1; END"),
    ("procedural-code", b"PREPARE s FROM @sql"),
    ("procedural-code", b"PREPARE s FROM CONCAT('DR', 'OP TABLE t')"),
    ("procedural-code", b"EXECUTE IMMEDIATE CONCAT('DR', 'OP TABLE t')"),
    ("session-tampering", b"SET ROLE admin"),
    ("session-tampering", b"SET SESSION session_track_system_variables = ''"),
    ("session-tampering", b"SET session_track_state_change = OFF"),
    ("session-tampering", b"SET NAMES gbk"),
    ("session-tampering", b"SET NAMES 'sjis'"),
    ("session-tampering", b"SET NAMES `big5`"),
    ("session-tampering", b"SET CHARACTER SET cp932"),
    ("session-tampering", b"SET character_set_client = gbk"),
    ("session-tampering", b"SET @@session.character_set_client = 'gbk'"),
    ("session-tampering", b"SET character_set_client = 28"),                  # gbk's id
    ("session-tampering", b"SET character_set_client = @cs"),
    ("session-tampering", b"SET character_set_client = CONCAT('gb', 'k')"),
    ("session-tampering", b"SET STATEMENT character_set_client = gbk FOR SELECT 1"),
    ("session-tampering", b"/*!40101 SET NAMES gbk */"),
    ("server-admin", b"SHUTDOWN"),
    ("server-admin", b"HANDLER t OPEN"),
    ("server-admin", b"FLUSH TABLES"),
    ("server-admin", b"RESET MASTER"),
    ("server-admin", b"PURGE BINARY LOGS BEFORE NOW()"),
    ("server-admin", b"CHANGE MASTER TO MASTER_HOST = 'x'"),
    ("server-admin", b"STOP SLAVE"),
    ("server-admin", b"SET sql_log_bin = 0"),
]

NEAR_MISSES = [
    b"SELECT 'drop table t' AS s",
    b"SELECT `drop`, truncate_at FROM t",
    b"SELECT * FROM dropbox",
    b"SELECT 'a\\'b', 'c''d', \"e\" FROM t WHERE x = 'delete from t'",
    b"SELECT 1 # DROP TABLE t",
    b"SELECT 1 -- DROP TABLE t",
    b"SELECT /* TRUNCATE t */ 1",
    b"SELECT 1 /*!40101 , 2 */",
    b"DELETE FROM t WHERE id = 99",
    b"DELETE FROM t WHERE id = ?",
    b"UPDATE t SET a = 1 WHERE id = 99",
    b"UPDATE t JOIN u ON t.id = u.id SET t.a = 1 WHERE u.b = 2",
    b"INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = 1",
    b"SELECT * FROM t FOR UPDATE",
    b"CREATE TABLE t2 (id int, FOREIGN KEY (id) REFERENCES t (id) ON DELETE CASCADE)",
    b"ALTER TABLE t ALTER COLUMN c DROP DEFAULT",
    b"LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t",
    b"SET NAMES utf8mb4",
    b"SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'",
    b"SET character_set_client = utf8mb4",
    b"SET NAMES latin1",
    b"SET sql_mode = 'ANSI_QUOTES,NO_BACKSLASH_ESCAPES'",
    b"SET autocommit = 0",
    b"SET @global = 1",
    b"SELECT @@global.max_connections",
    b"SHOW GRANTS",
    b"SHOW VARIABLES LIKE 'character_set%'",
    b"PREPARE s FROM 'SELECT * FROM t WHERE id = ?'",
    b"EXECUTE s USING @id",
    b"CALL p(1)",
    b"KILL QUERY 12",
    b"SELECT sleep(0)",
    b"USE app",
]


@pytest.mark.parametrize("rule,sql", CAUGHT, ids=[c[1][:50].decode("latin1") for c in CAUGHT])
def test_packs_catch(policy, each_pack, rule, sql):
    # a SET STATEMENT ... FOR wrapper is refused as such by every rule set, whatever it wraps
    wrapped = sql.lower().startswith(b"set statement")
    assert rule_of(each_pack[rule], sql) in ((rule, "set-statement-for") if wrapped else (rule,)), sql
    assert rule_of(policy, sql) is not None, sql


@pytest.mark.parametrize("sql", NEAR_MISSES, ids=[s[:50].decode("latin1") for s in NEAR_MISSES])
def test_near_misses_pass(policy, sql):
    assert policy.check(sql) is None, (sql, policy.check(sql))


def test_pack_names_match_postgres():
    """A configuration's pack = "..." works on both protocols where the meaning is the same."""
    assert set(PG_PACKS) <= set(PACKS)
    assert set(PACKS) - set(PG_PACKS) == {"server-admin"}


def test_implied_rules():
    """Every MySQL rule set -- even one with no pack -- refuses an unsafe client charset and
    what the lexer cannot read; an empty one has none (no guardrails, nothing inspected)."""
    assert DIALECT.implied_guardrails(()) == ()
    pol = engine(GuardrailConfig(name="mine", patterns=(r"\bbilling\.",))).for_groups(frozenset())
    assert pol.check(b"SET NAMES gbk").rule == "unsafe-client-charset"
    assert pol.check(b"SET character_set_client = 'big5'").rule == "unsafe-client-charset"
    assert pol.check(b"SET NAMES utf8mb4") is None
    many = b"SELECT 1 " + b" ".join(b"/*!%d , %d */" % (60000 + k, k) for k in range(40))
    assert pol.check(many).rule == "unreadable-statement"
    assert pol.check(b"SELECT 1 /*!40101 , 2 */ /*!50503 , 3 */") is None
    assert pol.check(b"SELECT * FROM billing.x").rule == "mine"
    # with session-tampering on, its own patterns cover the charset
    rules = DIALECT.implied_guardrails((GuardrailConfig(name="s", pack="session-tampering"),))
    assert [r.name for r in rules] == ["s", "unreadable-statement", "set-statement-for"]


@pytest.mark.parametrize("sql", [
    b"SET STATEMENT max_statement_time=0 FOR TRUNCATE victim",
    b"SET STATEMENT max_statement_time=0 FOR DELETE FROM victim",
    b"set  statement\n sql_mode='' FOR UPDATE victim SET note='x'",
    b"/*!SET*/ STATEMENT max_statement_time=0 FOR ALTER TABLE victim DROP COLUMN note",
    b"SELECT 1; SET STATEMENT max_statement_time=0 FOR CREATE PROCEDURE p2() SELECT 1",
])
def test_set_statement_for_is_refused(sql):
    """MariaDB runs the statement after FOR, where patterns anchored at a statement's start do
    not look (the red team's bypass of unbounded-write and destructive-ddl): every rule set
    refuses the wrapper, a pack-free one included."""
    pol = engine(GuardrailConfig(name="mine", patterns=(r"\bbilling\.",))).for_groups(frozenset())
    assert pol.check(sql).rule == "set-statement-for", sql


def test_user_patterns_see_executable_comments():
    pol = engine(GuardrailConfig(name="no-sleep", patterns=(r"\bsleep\s*\(",))).for_groups(
        frozenset())
    assert pol.check(b"SELECT /*!50000 sleep(10) */").rule == "no-sleep"
    assert pol.check(b"SELECT `sleep`(10)").rule == "no-sleep"
    assert pol.check(b"SELECT 'sleep(10)'") is None


def test_allow_kinds():
    rules = (GuardrailConfig(name="read-only", allow_kinds=("select", "show", "set")),)
    pol = engine(*rules).for_groups(frozenset())
    assert pol.check(b"SELECT 1") is None
    assert pol.check(b"SHOW TABLES") is None
    for sql in (b"/*!DROP*/ TABLE t", b"SELECT 1; DELETE FROM t WHERE id = 1",
                b"SELECT 'a\\' ; DELETE FROM t; -- '", b"frobnicate", b"PREPARE s FROM 'DROP TABLE t'",
                b"SELECT * FROM t INTO OUTFILE '/tmp/x'", b"SELECT LOAD_FILE('/etc/passwd')"):
        v = pol.check(sql)
        assert v is not None and v.rule == "read-only" and v.action == "block", sql
    assert "unparsed" in pol.check(b"frobnicate").kinds
    assert "server_file" in pol.check(b"SELECT LOAD_FILE('/etc/passwd')").kinds


# -- end to end: the gateway in front of the real MariaDB -----------------------------------------

E2E_CAUGHT = [
    ("destructive-ddl", "DROP TABLE {t}"),
    ("destructive-ddl", "/*!DROP*/ TABLE {t}"),
    ("destructive-ddl", "/*!50000DROP*/ TABLE {t}"),
    ("destructive-ddl", "DROP/*M!*/ TABLE {t}"),
    ("destructive-ddl", "SELECT 1 # x\n; DROP TABLE {t}"),
    ("destructive-ddl", "SELECT '\\'; DROP TABLE {t}; -- '"),
    ("destructive-ddl", "SELECT 1 /*!99999 ' */ ; DROP TABLE {t}; -- '"),
    ("destructive-ddl", "PREPARE s FROM 'DROP TABLE {t}'"),
    ("destructive-ddl", "EXECUTE IMMEDIATE 'TRUNCATE {t}'"),
    ("unbounded-write", "DELETE FROM {t}"),
    ("unbounded-write", "DELETE FROM {t} /*!50701 WHERE id = 1 */"),
    ("server-side-io", "SELECT `load_file`('/etc/passwd')"),
    ("session-tampering", "SET NAMES gbk"),
]


@pytest.fixture(scope="module")
def ggw(mariadb, idp, pki):
    from helpers import Gateway
    from mysqlgw import mysql_gateway_config, mysql_gateway_env
    cfg = mysql_gateway_config(mariadb, idp, pki,
                               guardrail=[{"pack": p} for p in ALL_PACKS])
    with Gateway(cfg, env=mysql_gateway_env(mariadb)) as g:
        g.pki = pki
        yield g


@pytest.fixture
def table(mariadb):
    """A scratch table in `app` with three rows."""
    name = "t_" + uuid.uuid4().hex[:8]
    mariadb.sql(f"CREATE TABLE app.{name} (id int primary key, note varchar(20));"
                f"INSERT INTO app.{name} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    yield name
    mariadb.sql(f"DROP TABLE IF EXISTS app.{name}")


def count(mariadb, table: str) -> int | None:
    rows = mariadb.sql(f"SELECT count(*) FROM information_schema.TABLES WHERE "
                       f"TABLE_SCHEMA = 'app' AND TABLE_NAME = '{table}'")
    if rows[0][0] == 0:
        return None
    return mariadb.sql(f"SELECT count(*) FROM app.{table}")[0][0]


def connect(ggw, idp, **kw):
    from mysqlgw import pymysql_connect
    return pymysql_connect(ggw, idp.token(groups=("agents",)),
                           client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
                           autocommit=True, **kw)


def assert_blocked(conn, sql: str, rule: str):
    with conn.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError) as e:
            cur.execute(sql)
        assert f'rule "{rule}"' in str(e.value), str(e.value)
        cur.execute("SELECT 1")                     # the session goes on
        assert cur.fetchone() == (1,)


@pytest.mark.parametrize("rule,sql", E2E_CAUGHT, ids=[c[1][:40] for c in E2E_CAUGHT])
def test_gateway_blocks(ggw, idp, mariadb, table, rule, sql):
    with connect(ggw, idp) as conn:
        assert_blocked(conn, sql.format(t=table), rule)
    assert count(mariadb, table) == 3           # the upstream never saw it


@pytest.mark.parametrize("sql_mode,sql", [
    ("NO_BACKSLASH_ESCAPES", "SELECT 'a\\' ; DROP TABLE {t}; -- '"),
    ("ANSI_QUOTES", 'SELECT "a\\" ; DROP TABLE {t}; -- "'),
    ("", 'SELECT "a\\" ; DROP TABLE {t}; -- "'),
    ("MSSQL", "SELECT 1 AS [x'] ; DROP TABLE {t}; -- ']"),
])
def test_gateway_blocks_in_every_sql_mode(ggw, idp, mariadb, table, sql_mode, sql):
    with connect(ggw, idp) as conn:
        with conn.cursor() as cur:
            cur.execute(f"SET SESSION sql_mode = '{sql_mode}'")
        assert_blocked(conn, sql.format(t=table), "destructive-ddl")
    assert count(mariadb, table) == 3


def test_gateway_passes_near_misses(ggw, idp, mariadb, table):
    with connect(ggw, idp) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT 'drop table {table}' AS s, 1 /*!40101 , 2 */")
        assert cur.fetchall() == ((f"drop table {table}", 1, 2),)
        cur.execute(f"DELETE FROM {table} WHERE id = 3")
        cur.execute("SET NAMES utf8mb4")
        cur.execute(f"SELECT note FROM {table} WHERE note = 'a\\'b' OR id = 1")
        assert cur.fetchall() == (("a",),)
    assert count(mariadb, table) == 2


def test_gateway_blocks_prepared(ggw, idp, mariadb, table):
    """COM_STMT_PREPARE text is judged too (mysql-connector's prepared cursor)."""
    from mysqlgw import connector_connect
    import mysql.connector
    conn = connector_connect(ggw, idp.token(groups=("agents",)))
    try:
        cur = conn.cursor(prepared=True)
        with pytest.raises(mysql.connector.Error) as e:
            cur.execute(f"/*!DROP*/ TABLE {table}")
        assert 'rule "destructive-ddl"' in str(e.value)
        cur = conn.cursor(prepared=True)
        cur.execute(f"SELECT note FROM {table} WHERE id = %s", (2,))
        assert [tuple(r) for r in cur.fetchall()] == [("b",)]
    finally:
        conn.close()
    assert count(mariadb, table) == 3


def test_gateway_blocks_from_the_cli(ggw, idp, mariadb, table):
    """The mariadb CLI strips plain comments but sends executable ones: still blocked."""
    from mysqlgw import mysql_cli
    r = mysql_cli(ggw, idp.token(groups=("agents",)), "-e", f"/*!50000 DROP */ TABLE {table}")
    assert r.returncode != 0 and "destructive-ddl" in r.stderr, (r.stdout, r.stderr)
    assert count(mariadb, table) == 3
