"""Statement kinds (hoopwire.pg.statements) and allow_kinds rules, unit and end to end.

Unit: a table of statements and their kinds, then generated variants of each (comments, case,
whitespace, wrapped in a CTE / EXPLAIN ANALYZE / PREPARE / DECLARE, joined into one message)
that must keep the kinds the wrapping implies. End to end: a gateway whose `agents` group may
only read; psycopg (extended protocol) and psql (simple Query) see allowed kinds run and the
others refused with 42501, the upstream untouched, and an audit block record naming the kind.
"""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import Gateway, psql, wait_until
from hoopwire.audit import read_records
from hoopwire.config import ConfigError, GuardrailConfig, parse_config
from hoopwire.pg.statements import ALIASES, KINDS, StatementClassifier, kinds_of
from hoopwire.pg.dialect import DIALECT
from hoopwire.policy import PolicyError
from hoopwire.policy.engine import PolicyEngine as _PolicyEngine


def PolicyEngine(guardrails, **kw):
    """The engine in PostgreSQL's dialect, as a postgres connection builds it."""
    return _PolicyEngine(guardrails, views=DIALECT.statement_views, packs=DIALECT.packs, **kw)

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

# (statement, its kinds)
CASES = [
    ("SELECT 1", {"select"}),
    ("VALUES (1), (2)", {"select"}),
    ("TABLE t", {"select"}),
    ("SELECT * FROM t FOR UPDATE", {"select"}),
    ("SELECT 1 INTO t2", {"select", "ddl_create"}),
    ("INSERT INTO t VALUES (1)", {"insert"}),
    ("INSERT INTO t SELECT * FROM s", {"insert"}),
    ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET n = 1", {"insert", "update"}),
    ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", {"insert"}),
    ("UPDATE t SET n = 1 WHERE id = 2", {"update"}),
    ("UPDATE t SET n = 1", {"update_no_where"}),
    ("UPDATE t SET n = 1 WHERE true", {"update_no_where"}),
    ("UPDATE t SET n = 1 WHERE 1 = 1", {"update_no_where"}),
    ("UPDATE t SET n = 1 WHERE CURRENT OF c", {"update"}),
    ("UPDATE t SET n = 1 WHERE id = $1", {"update"}),
    ("DELETE FROM t WHERE id = 2", {"delete"}),
    ("DELETE FROM t", {"delete_no_where"}),
    ("DELETE FROM t WHERE NOT false", {"delete_no_where"}),
    ("DELETE FROM t WHERE 'a' = 'a'", {"delete_no_where"}),
    ("DELETE FROM t WHERE id IN (SELECT id FROM s)", {"delete"}),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", {"merge"}),
    ("UPDATE pg_settings SET setting = 'x' WHERE name = 'work_mem'", {"update_pg_settings"}),
    ("UPDATE pg_catalog.pg_settings SET setting = 'x'", {"update_pg_settings"}),
    ("CREATE TABLE t (id int)", {"ddl_create"}),
    ("CREATE INDEX ON t (id)", {"ddl_create"}),
    ("CREATE VIEW v AS SELECT 1", {"ddl_create"}),
    ("CREATE TABLE t2 AS SELECT * FROM t", {"ddl_create"}),
    ("CREATE TABLE t2 AS WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
     {"ddl_create", "delete_no_where"}),
    ("ALTER TABLE t ADD COLUMN n int", {"ddl_alter"}),
    ("ALTER TABLE t ALTER COLUMN n TYPE bigint", {"ddl_alter"}),
    ("ALTER TABLE t ALTER COLUMN n TYPE bigint USING f(n)", {"ddl_alter", "alter_type_using"}),
    ("ALTER TABLE t RENAME TO u", {"ddl_alter"}),
    ("COMMENT ON TABLE t IS 'x'", {"ddl_alter"}),
    ("DROP TABLE t", {"ddl_drop"}),
    ("DROP INDEX i", {"ddl_drop"}),
    ("TRUNCATE t", {"ddl_truncate"}),
    ("CREATE SCHEMA s", {"ddl_create"}),
    ("CREATE SCHEMA s AUTHORIZATION someone", {"ddl_create", "create_schema_authorization"}),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
     {"ddl_create", "create_function"}),
    ("CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS $$ DELETE FROM t $$",
     {"ddl_create", "create_function"}),
    ("CREATE ROLE r", {"role"}),
    ("ALTER ROLE r SET work_mem = '1MB'", {"role"}),
    ("DROP USER r", {"role"}),
    ("SET work_mem = '1MB'", {"set"}),
    ("SET LOCAL work_mem = '1MB'", {"set"}),
    ("SET ROLE postgres", {"set", "set_role"}),
    ("SET SESSION AUTHORIZATION postgres", {"set", "set_role"}),
    ("RESET ROLE", {"reset", "set_role"}),
    ("RESET work_mem", {"reset"}),
    ("RESET ALL", {"reset"}),
    ("DISCARD ALL", {"reset"}),
    ("SHOW work_mem", {"show"}),
    ("ALTER SYSTEM SET work_mem = '1MB'", {"alter_system"}),
    ("COPY t TO STDOUT", {"copy_to"}),
    ("COPY t FROM STDIN", {"copy_from"}),
    ("COPY t TO '/tmp/x'", {"copy_to", "copy_file"}),
    ("COPY t FROM '/etc/passwd'", {"copy_from", "copy_file"}),
    ("COPY t TO PROGRAM 'cat'", {"copy_to", "copy_program"}),
    ("COPY t FROM PROGRAM 'cat'", {"copy_from", "copy_program"}),
    ("COPY (SELECT 1) TO STDOUT", {"copy_to"}),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", {"copy_to", "delete_no_where"}),
    ("DO $$ BEGIN END $$", {"do"}),
    ("CALL p()", {"call"}),
    ("BEGIN", {"transaction"}),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", {"transaction"}),
    ("COMMIT", {"transaction"}),
    ("SAVEPOINT a", {"transaction"}),
    ("PREPARE p AS SELECT 1", {"prepare", "select"}),
    ("PREPARE p AS DELETE FROM t", {"prepare", "delete_no_where"}),
    ("PREPARE p (int) AS DELETE FROM t WHERE id = $1", {"prepare", "delete"}),
    ("EXECUTE p", {"execute"}),
    ("DEALLOCATE p", {"deallocate"}),
    ("DECLARE c CURSOR FOR SELECT 1", {"declare", "select"}),
    ("FETCH 10 FROM c", {"fetch"}),
    ("MOVE NEXT IN c", {"fetch"}),
    ("CLOSE c", {"close"}),
    ("GRANT SELECT ON t TO PUBLIC", {"grant"}),
    ("GRANT r TO u", {"grant"}),
    ("REVOKE SELECT ON t FROM u", {"revoke"}),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO u", {"grant"}),
    ("VACUUM", {"vacuum"}),
    ("ANALYZE t", {"vacuum"}),
    ("EXPLAIN SELECT 1", {"explain"}),
    ("EXPLAIN DELETE FROM t", {"explain"}),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", {"explain"}),
    ("EXPLAIN ANALYZE DELETE FROM t", {"explain", "delete_no_where"}),
    ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET n = 1 WHERE id = 1", {"explain", "update"}),
    ("EXPLAIN (ANALYZE on) SELECT 1", {"explain", "select"}),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", {"select", "delete_no_where"}),
    ("WITH u AS (UPDATE t SET n = 1 WHERE id = 1 RETURNING *) SELECT 1", {"select", "update"}),
    ("WITH i AS (INSERT INTO t VALUES (1) RETURNING *) DELETE FROM t WHERE id = 3",
     {"insert", "delete"}),
    ("LOCK t", {"other"}),
    ("LISTEN x", {"other"}),
    ("CHECKPOINT", {"other"}),
    ("LOAD 'plpgsql'", {"other"}),
    ("SELEC 1", {"unparsed"}),
    ("SELECT 'unterminated", {"unparsed"}),
    ("SELECT E'\\xff'", {"unparsed"}),     # not UTF-8 once unescaped: the server refuses it too
    ("", set()),
    ("-- only a comment", set()),
]
SELECTS = [s for s, k in CASES if k == {"select"}]
DML = [(s, k) for s, k in CASES if k & {"insert", "update", "update_no_where", "delete",
                                         "delete_no_where"} and len(k) == 1]


@pytest.mark.parametrize("sql,kinds", CASES, ids=[c[0][:40] or "empty" for c in CASES])
def test_kinds(sql, kinds):
    assert kinds_of(sql) == kinds
    assert StatementClassifier().classify(sql.encode()) == kinds


def test_every_kind_is_named_and_reachable():
    seen = set().union(*(k for _, k in CASES))
    assert seen == set(KINDS)
    assert ALIASES["ddl"] == {"ddl_create", "ddl_alter", "ddl_drop", "ddl_truncate"}


# -- generated variants ----------------------------------------------------------------------

_WS = st.sampled_from([" ", "  ", "\n", "\t", " /* c */ ", " /* a /* nested */ b */ ", " --c\n"])


def _recase(draw, sql: str) -> str:
    """Keywords and identifiers re-cased at random (not inside quotes: the cases hold none)."""
    flips = draw(st.lists(st.booleans(), min_size=len(sql), max_size=len(sql)))
    out, quoted = [], False
    for ch, up in zip(sql, flips):
        quoted ^= ch in "'$"
        out.append(ch if quoted else (ch.upper() if up else ch.lower()))
    return "".join(out)


@st.composite
def variant(draw):
    sql, kinds = draw(st.sampled_from([c for c in CASES if c[1] and c[1] != {"unparsed"}]))
    # whitespace and comments wherever there is a space, keyword case at random
    parts = sql.split(" ")
    text = parts[0] + "".join(draw(_WS) + p for p in parts[1:])
    if "'" not in text and "$" not in text:
        text = _recase(draw, text)
    if draw(st.booleans()):
        text = draw(_WS) + text + draw(st.sampled_from(["", ";", " ; ", ";\n-- end"]))
    return text, kinds


@given(variant())
@PROPS
def test_variants_keep_their_kinds(case):
    sql, kinds = case
    assert StatementClassifier().classify(sql.encode()) == kinds, sql


@given(st.sampled_from(DML), st.sampled_from(["EXPLAIN ANALYZE ", "PREPARE p AS ",
                                                "EXPLAIN (ANALYZE) ", "CTE", "COPY"]))
@PROPS
def test_wrapped_writes_show_through(case, wrap):
    """A write inside EXPLAIN ANALYZE, PREPARE, a CTE or COPY (…) TO keeps its kind."""
    sql, kinds = case
    if wrap == "CTE":
        text, outer = f"WITH w AS ({sql} RETURNING *) SELECT * FROM w", {"select"}
    elif wrap == "COPY":
        text, outer = f"COPY ({sql} RETURNING *) TO STDOUT", {"copy_to"}
    else:
        text, outer = wrap + sql, {"explain" if wrap.startswith("EXPLAIN") else "prepare"}
    assert StatementClassifier().classify(text.encode()) == kinds | outer, text


@given(st.lists(st.sampled_from([c for c in CASES if c[1] and c[1] != {"unparsed"}]),
                min_size=2, max_size=5))
@PROPS
def test_a_message_has_the_kinds_of_all_its_statements(cases):
    text = "; ".join(s for s, _ in cases)
    assert StatementClassifier().classify(text.encode()) == set().union(*(k for _, k in cases))


def test_backslash_is_read_both_ways():
    """With standard_conforming_strings off the server reads '\\'' as a quote: the DELETE is
    then a statement of its own, and the classifier must see it either way."""
    sql = b"SELECT 'a\\', ' ; DELETE FROM t; --'"
    assert kinds_of(sql.decode()) == {"select"}
    assert StatementClassifier().classify(sql) == {"select", "delete_no_where"}
    # and not from a cache entry of the same shape without a backslash
    c = StatementClassifier()
    assert c.classify(b"SELECT 'a'; SELECT 'b'") == {"select"}
    assert c.classify(sql) == {"select", "delete_no_where"}


def test_cache_by_normalised_text():
    c = StatementClassifier(cache_size=2)
    assert c.classify(b"SELECT * FROM t WHERE n = 'a'") == {"select"}
    assert c.classify(b"select  *  from t /* x */ where n = 'bbb'") == {"select"}
    assert c.parses == 1    # same shape, other literal: one parse
    # a parse the parser refuses is not cached: the same shape, well formed, is not refused
    assert c.classify(b"SELECT E'\\xff'") == {"unparsed"}
    assert c.classify(b"SELECT E'\\x41'") == {"select"}
    # bounded: the oldest shape goes
    c.classify(b"DELETE FROM t")
    c.classify(b"UPDATE t SET n = 1 WHERE id = 1")
    n = c.parses
    c.classify(b"SELECT * FROM t WHERE n = 'c'")
    assert c.parses == n + 1


# -- config ----------------------------------------------------------------------------------

def _doc(rule: dict) -> dict:
    return {"identity": {"api_key": [{"name": "k", "sha256": "0" * 64}]},
            "connection": [{"name": "pg", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1",
                            "database": "d", "user": "u", "guardrail": [rule]}]}


@pytest.mark.parametrize("rule,key,reason", [
    ({"name": "ro", "allow_kinds": ["select", "selct"]}, "connection[0].guardrail[0].allow_kinds[1]",
     "unknown statement kind 'selct'"),
    ({"name": "ro", "allow_kinds": []}, "connection[0].guardrail[0].allow_kinds",
     "name at least one statement kind"),
    ({"name": "ro", "allow_kinds": ["select"], "pack": "destructive-ddl"},
     "connection[0].guardrail[0].allow_kinds", "one of them"),
    ({"name": "ro", "allow_kinds": ["select"], "scan_literals": True},
     "connection[0].guardrail[0].scan_literals", "no patterns"),
    ({"allow_kinds": ["select"]}, "connection[0].guardrail[0].name", "is required"),
    ({"name": "ro", "allow_kinds": "select, insert"}, "connection[0].guardrail[0].allow_kinds[0]",
     "unknown statement kind 'select, insert'"),
])
def test_config_errors_name_the_key(rule, key, reason):
    from hoopwire.core.gateway import build_policies
    from hoopwire.protocols import REGISTRY
    with pytest.raises(ConfigError) as e:
        build_policies(parse_config(_doc(rule)), REGISTRY)
    assert any(k == key and reason in r for k, r in e.value.problems), e.value.problems


def test_config_accepts_kinds_and_the_alias():
    from hoopwire.core.gateway import build_policies
    from hoopwire.protocols import REGISTRY
    engines = build_policies(parse_config(_doc({"name": "ro", "allow_kinds": ["select", "ddl"],
                                                "groups": ["agents"]})), REGISTRY)
    policy = engines["pg"].for_groups({"agents"})
    assert policy.check(b"CREATE TABLE x (a int)") is None
    v = policy.check(b"DELETE FROM x")
    assert v.action == "block" and v.kinds == ("delete_no_where",) and "delete_no_where" in v.message
    assert engines["pg"].for_groups({"others"}).check(b"DELETE FROM x") is None


def test_a_log_kind_rule_lets_the_statement_through_and_names_the_kind():
    from hoopwire.pg.statements import CLASSIFIER
    e = PolicyEngine((GuardrailConfig(name="watch", allow_kinds=("select",), action="log"),
                      GuardrailConfig(name="ro", allow_kinds=("select", "delete")),),
                     classifier=CLASSIFIER)
    v = e.for_groups(set()).check(b"DELETE FROM t WHERE id = 1")
    assert (v.action, v.rule, v.kinds, v.matched) == ("log", "watch", ("delete",), ("watch",))
    v = e.for_groups(set()).check(b"DELETE FROM t")     # both refuse it: block wins
    assert (v.action, v.rule, v.matched) == ("block", "ro", ("watch", "ro"))


def test_the_engine_takes_no_grammar_of_its_own():
    """Without a classifier (another protocol) an allow_kinds rule is a config error, and
    the engine module does not import the PostgreSQL side."""
    with pytest.raises(PolicyError) as e:
        PolicyEngine((GuardrailConfig(name="ro", allow_kinds=("select",)),))
    assert e.value.problems[0][0] == "guardrail[0].allow_kinds"
    import hoopwire.policy.engine as engine_module
    src = open(engine_module.__file__).read()
    assert not re.search(r"^\s*(from|import)\s+(hoopwire\.pg|pglast)", src, re.M)


def test_no_kind_rule_no_parse():
    """A group policy with no kind rule never calls the classifier."""
    class Counting(StatementClassifier):
        def classify(self, sql):
            raise AssertionError("classified")
    e = PolicyEngine((GuardrailConfig(name="dd", pack="destructive-ddl"),
                      GuardrailConfig(name="ro", allow_kinds=("select",), groups=("agents",))),
                     classifier=Counting())
    assert e.for_groups({"others"}).check(b"DELETE FROM t") is None
    assert e.for_groups({"others"}).check(b"DROP TABLE t").rule == "dd"
    # and a block by pattern needs no parse either
    assert e.for_groups({"agents"}).check(b"DROP TABLE t").rule == "dd"


# -- end to end ------------------------------------------------------------------------------

ALLOWED = ["select", "insert", "update", "transaction", "set", "show", "prepare", "execute",
           "deallocate", "explain"]


@pytest.fixture(scope="module")
def kgw(pg, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kinds")
    cfg = gateway_config(pg, idp, guardrail=[
        {"name": "agents-read-write", "allow_kinds": ALLOWED, "groups": ["agents"],
         "message": "agents read and write rows, nothing else"}])
    cfg["audit"] = {"path": str(tmp / "audit"), "flush_interval": "50ms"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        g.audit_path = tmp / "audit"
        yield g


@pytest.fixture
def table(pg):
    name = "k_" + uuid.uuid4().hex[:8]
    pg.sql(f"CREATE TABLE {name} (id int primary key, note text);"
           f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b'), (3, 'c');"
           f"ALTER TABLE {name} OWNER TO app;", dbname="appdb")
    yield name
    pg.sql(f"DROP TABLE IF EXISTS {name}", dbname="appdb")


def _rows(pg, table) -> int:
    return int(pg.sql(f"select count(*) from {table}", dbname="appdb"))


REFUSED = [
    ("DELETE FROM {t}", "delete_no_where"),
    ("DELETE FROM {t} WHERE id = 1", "delete"),
    ("UPDATE {t} SET note = 'x'", "update_no_where"),
    ("WITH d AS (DELETE FROM {t} RETURNING *) SELECT count(*) FROM d", "delete_no_where"),
    ("EXPLAIN ANALYZE DELETE FROM {t}", "delete_no_where"),
    ("PREPARE p_del AS DELETE FROM {t}", "delete_no_where"),
    ("SELECT 1; TRUNCATE {t}", "ddl_truncate"),
    ("/* hi */ dElEtE -- x\n FROM {t}", "delete_no_where"),
    ("COPY (SELECT 1) TO STDOUT", "copy_to"),
    ("SET ROLE app", "set_role"),
    ("SELEC 1", "unparsed"),
]


def _blocks(path, kind: str) -> list[dict]:
    """The audit log's block records that name `kind`."""
    if not path.is_dir():
        return []
    return [r for r in read_records(str(path)) if r["type"] == "statement.blocked"
            and kind in r.get("kinds", ())]


@pytest.mark.parametrize("sql,kind", REFUSED, ids=[r[0][:30] for r in REFUSED])
def test_psycopg_refused_kinds(kgw, idp, pg, table, sql, kind):
    before = len(_blocks(kgw.audit_path, kind))
    with psycopg.connect(conninfo(kgw, idp.token(groups=["agents"])), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute(sql.format(t=table), prepare=False)   # extended protocol (Parse)
        assert e.value.sqlstate == "42501"
        assert 'rule "agents-read-write"' in str(e.value) and kind in str(e.value)
        assert c.execute("SELECT 1").fetchone() == (1,)    # the session goes on
    assert _rows(pg, table) == 3
    wait_until(lambda: len(_blocks(kgw.audit_path, kind)) > before, 10,
               f"an audit block record naming {kind}")
    rec = _blocks(kgw.audit_path, kind)[-1]
    assert rec["rule"] == "agents-read-write" and rec["rules"] == ["agents-read-write"]


def test_psycopg_allowed_kinds_run(kgw, idp, pg, table):
    with psycopg.connect(conninfo(kgw, idp.token(groups=["agents"])), autocommit=True) as c:
        assert c.execute(f"SELECT count(*) FROM {table} WHERE id > %s", (0,)).fetchone() == (3,)
        c.execute(f"INSERT INTO {table} VALUES (%s, %s)", (4, "d"))
        c.execute(f"UPDATE {table} SET note = %s WHERE id = %s", ("z", 4))
        with c.transaction():
            c.execute(f"SELECT * FROM {table} WHERE id = 1")
        c.execute("SET work_mem = '2MB'")
        assert c.execute("SHOW work_mem").fetchone() == ("2MB",)
        c.execute(f"EXPLAIN DELETE FROM {table}")    # planned, not run
        c.execute(f"PREPARE p_up AS UPDATE {table} SET note = 'y' WHERE id = 4")
        c.execute("EXECUTE p_up")
    assert _rows(pg, table) == 4


def test_other_groups_are_not_held_to_the_list(kgw, idp, pg, table):
    with psycopg.connect(conninfo(kgw, idp.token(groups=["analysts"])), autocommit=True) as c:
        c.execute(f"DELETE FROM {table} WHERE id = 1")
    assert _rows(pg, table) == 2


def test_psql_simple_query(kgw, idp, pg, table):
    dsn = conninfo(kgw, idp.token(groups=["agents"]))
    ok = psql(dsn, "-At", "-c", f"SELECT count(*) FROM {table}")
    assert ok.returncode == 0 and ok.stdout.strip() == "3", ok.stderr
    for sql, kind in [(f"DELETE FROM {table}", "delete_no_where"),
                      (f"INSERT INTO {table} VALUES (9, 'x'); DROP TABLE {table}", "ddl_drop"),
                      (f"EXPLAIN ANALYZE DELETE FROM {table}", "delete_no_where")]:
        r = psql(dsn, "-v", "VERBOSITY=verbose", "-c", sql)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert 'ERROR:  42501: statement blocked by hoopwire rule "agents-read-write": ' \
               f"statement kind {kind} not allowed" in r.stderr, r.stderr
    assert _rows(pg, table) == 3
    # psql's own \d runs catalog SELECTs: still allowed
    r = psql(dsn, "-c", rf"\d {table}")
    assert r.returncode == 0 and "note" in r.stdout, r.stderr


def test_startup_role_is_a_set_role(kgw, idp):
    """options=-c role=… would be a SET ROLE no statement shows; other startup settings
    (application_name, client_encoding) are not held to the list."""
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(conninfo(kgw, idp.token(groups=["agents"]), options="-c role=app"))
    assert "agents-read-write" in str(e.value) and "set_role" in str(e.value)
    with psycopg.connect(conninfo(kgw, idp.token(groups=["agents"]), application_name="x",
                                  options="-c work_mem=3MB")) as c:
        assert c.execute("SHOW work_mem").fetchone() == ("3MB",)


# -- pg_dump's set_config(name, ...) FROM pg_settings ----------------------------------------

PG_DUMP = ("SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings "
           "WHERE name = 'restrict_nonsystem_relation_kind'")
NOT_PG_DUMP = [
    PG_DUMP.replace("'restrict_nonsystem_relation_kind'", "'role'"),
    PG_DUMP.replace("'restrict_nonsystem_relation_kind'", "'session_authorization'"),
    PG_DUMP.replace("'restrict_nonsystem_relation_kind'", "'client_encoding'"),
    PG_DUMP + " OR true",
    PG_DUMP + " OR name = 'role'",
    PG_DUMP.replace("WHERE name =", "WHERE setting ="),
    PG_DUMP.replace("set_config(name,", "set_config(name || '',"),
    PG_DUMP.replace("set_config(name,", "set_config(lower(name),"),
    PG_DUMP.replace("false)", "true)"),
    PG_DUMP.replace("FROM pg_settings", "FROM pg_settings s"),
    PG_DUMP.replace("FROM pg_settings", "FROM other.pg_settings"),
    PG_DUMP.replace("FROM pg_settings", "FROM pg_settings, pg_roles"),
    PG_DUMP.replace("SELECT ", "SELECT rolname, "),
    PG_DUMP + "; SET ROLE postgres",
    "SET ROLE postgres; " + PG_DUMP,
    PG_DUMP + " UNION SELECT set_config('role', 'postgres', false)",
    "WITH x AS (SELECT 1) " + PG_DUMP,
    PG_DUMP.replace("'view, foreign-table'", "'a\\'"),     # reads otherwise with scs off
]


def _session_tampering():
    from hoopwire.pg.statements import CLASSIFIER
    return PolicyEngine((GuardrailConfig(name="session-tampering", pack="session-tampering"),
                         GuardrailConfig(name="no-settings", patterns=(r"\bpg_settings\b",),
                                         groups=("strict",))),
                        classifier=CLASSIFIER)


@given(st.sampled_from(["", "pg_catalog."]), st.sampled_from(["", "pg_catalog."]),
       st.sampled_from([" ", "\n", " /* x */ "]), st.booleans())
@PROPS
def test_pg_dump_set_config_is_judged_by_its_literal_form(fn, rel, ws, upper):
    sql = PG_DUMP.replace("set_config(", fn + "set_config(").replace(
        "FROM pg_settings", "FROM " + rel + "pg_settings").replace(" ", ws)
    sql = sql.upper().replace("'VIEW, FOREIGN-TABLE'", "'view, foreign-table'").replace(
        "'RESTRICT_NONSYSTEM_RELATION_KIND'", "'restrict_nonsystem_relation_kind'") if upper else sql
    e = _session_tampering()
    assert e.for_groups(set()).check(sql.encode()) is None, sql
    # the connection's own patterns still read the text as written
    assert e.for_groups({"strict"}).check(sql.encode()).rule == "no-settings"


@pytest.mark.parametrize("sql", NOT_PG_DUMP)
def test_other_computed_set_configs_stay_refused(sql):
    v = _session_tampering().for_groups(set()).check(sql.encode())
    assert v is not None and v.rule == "session-tampering", sql
