"""Guardrails on the PostgreSQL path, against a real server and real drivers.

A blocked statement must never reach the upstream: each test that expects a block also checks
that the upstream did not do it (the table is still there, the row is still there).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid

import asyncpg
import psycopg
import pytest

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import Gateway, psql

PACKS = ["destructive-ddl", "unbounded-write", "privilege-changes", "server-side-io",
         "session-tampering"]


def guardrails(extra=()):
    rules = [{"pack": p} for p in PACKS]
    rules.append({"name": "no-billing", "patterns": [r"\bbilling\s*\."], "action": "block",
                  "message": "the billing schema is off limits", "except_groups": ["finance"]})
    rules.append({"name": "watch-pg-sleep", "patterns": [r"\bpg_sleep\b"], "action": "log"})
    rules.extend(extra)
    return rules


@pytest.fixture(scope="module")
def ggw(pg, idp):
    pg.sql("CREATE SCHEMA IF NOT EXISTS billing AUTHORIZATION app;"
           "CREATE TABLE IF NOT EXISTS billing.invoices (id int primary key, amount int);"
           "ALTER TABLE billing.invoices OWNER TO app;", dbname="appdb")
    cfg = gateway_config(pg, idp, guardrail=guardrails(),
                         allow_groups=["agents", "finance"])
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


@pytest.fixture
def table(pg):
    """A scratch table owned by app, with three rows."""
    name = "t_" + uuid.uuid4().hex[:8]
    pg.sql(f"CREATE TABLE {name} (id int primary key, truncate_at timestamptz, note text);"
           f"INSERT INTO {name} VALUES (1, now(), 'a'), (2, now(), 'b'), (3, now(), 'c');"
           f"ALTER TABLE {name} OWNER TO app;", dbname="appdb")
    yield name
    pg.sql(f"DROP TABLE IF EXISTS {name}", dbname="appdb")


def rows(pg, table) -> int:
    return int(pg.sql(f"select count(*) from {table}", dbname="appdb"))


def exists(pg, table) -> bool:
    return pg.sql(f"select to_regclass('{table}') is not null", dbname="appdb") == "t"


def connect(gw, idp, groups=("agents",), **kw):
    return psycopg.connect(conninfo(gw, idp.token(groups=groups)), autocommit=True, **kw)


def assert_blocked(conn, sql, rule=None):
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        conn.execute(sql)
    assert e.value.sqlstate == "42501"
    if rule:
        assert f'rule "{rule}"' in str(e.value)
    # the session stays usable
    assert conn.execute("select 1").fetchone()[0] == 1
    return e.value


CAUGHT = [
    ("destructive-ddl", "DROP TABLE {t}"),
    ("destructive-ddl", "drop table if exists {t} cascade"),
    ("destructive-ddl", "TRUNCATE {t}"),
    ("destructive-ddl", "ALTER TABLE {t} DROP COLUMN note"),
    ("destructive-ddl", "DROP/**/TABLE {t}"),
    ("destructive-ddl", "dRoP\n\t  TaBlE {t}"),
    ("destructive-ddl", "/* hello */ DROP -- comment\n TABLE {t}"),
    ("destructive-ddl", "DROP /* nested /* comment */ still */ TABLE {t}"),
    ("destructive-ddl", "SELECT 1; DROP TABLE {t}"),
    ("unbounded-write", "DELETE FROM {t}"),
    ("unbounded-write", "UPDATE {t} SET note = 'x'"),
    ("unbounded-write", "WITH gone AS (DELETE FROM {t} RETURNING *) SELECT count(*) FROM gone"),
    ("unbounded-write", "DELETE FROM {t} WHERE true"),
    ("privilege-changes", "GRANT ALL ON {t} TO PUBLIC"),
    ("privilege-changes", "CREATE ROLE evil_{u} SUPERUSER"),
    ("privilege-changes", "ALTER ROLE app CREATEROLE"),
    ("server-side-io", "COPY {t} TO PROGRAM 'cat > /tmp/x'"),
    ("server-side-io", "COPY {t} FROM '/etc/passwd'"),
    ("server-side-io", "SELECT pg_read_file('/etc/passwd')"),
    ("server-side-io", "select \"pg_read_file\"('/etc/hosts')"),
    ("server-side-io", "SELECT lo_import('/etc/passwd')"),
    ("server-side-io", "LOAD 'plpgsql'"),
    ("session-tampering", "SET ROLE postgres"),
    ("session-tampering", "SET SESSION AUTHORIZATION postgres"),
    ("session-tampering", "RESET ROLE"),
    ("session-tampering", "SELECT set_config('role', 'postgres', false)"),
]


@pytest.mark.parametrize("rule,sql", CAUGHT, ids=[c[1][:40] for c in CAUGHT])
def test_packs_catch(ggw, idp, pg, table, rule, sql):
    with connect(ggw, idp) as conn:
        assert_blocked(conn, sql.format(t=table, u=uuid.uuid4().hex[:6]), rule)
    assert exists(pg, table) and rows(pg, table) == 3  # the upstream never saw it


NEAR_MISSES = [
    "SELECT 'drop table {t}' AS s",
    "SELECT truncate_at FROM {t}",
    "SELECT $$ DROP TABLE {t} $$",
    "SELECT E'\\'; DROP TABLE {t}; --'",
    'SELECT 1 AS "drop"',
    "SELECT * FROM {t} WHERE note = 'delete from {t}'",
    "DELETE FROM {t} WHERE id = 99",
    "UPDATE {t} SET note = 'x' WHERE id = 99",
    "COPY (SELECT * FROM {t}) TO STDOUT",
    "SELECT count(*) FROM {t} -- DROP TABLE {t}",
    "SELECT /* TRUNCATE {t} */ 1",
    "SHOW search_path",
    "SET search_path = public",
]


@pytest.mark.parametrize("sql", NEAR_MISSES)
def test_near_misses_pass(ggw, idp, pg, table, sql):
    with connect(ggw, idp) as conn:
        cur = conn.cursor()
        if sql.startswith("COPY"):
            with cur.copy(sql.format(t=table)) as copy:
                assert b"".join(bytes(b) for b in copy)
        else:
            cur.execute(sql.format(t=table))
    assert rows(pg, table) == 3


def test_group_scoped_rule(ggw, idp, pg):
    with connect(ggw, idp, groups=("agents",)) as conn:
        assert_blocked(conn, "SELECT * FROM billing.invoices", "no-billing")
    with connect(ggw, idp, groups=("finance",)) as conn:
        assert conn.execute("SELECT count(*) FROM billing.invoices").fetchone()[0] == 0


def test_log_rule_lets_the_statement_through_and_is_recorded(ggw, idp):
    with connect(ggw, idp) as conn:
        conn.execute("SELECT pg_sleep(0.01)")
    ggw.wait_log(r"guardrail matched .*rule=watch-pg-sleep")


def test_block_is_logged_with_identity_and_masked_literals(ggw, idp, pg, table):
    with connect(ggw, idp) as conn:
        assert_blocked(conn, f"DELETE FROM {table} /* secret-{table} */")
        assert_blocked(conn, "SELECT pg_read_file('/etc/shadow-secret-path')")
    line = ggw.wait_log(r"statement blocked .*rule=server-side-io.*").group(0)
    assert "subject=agent-7" in line
    assert "shadow-secret-path" not in ggw.log_text()


def test_prepared_statements_are_judged_at_parse(ggw, idp, pg, table):
    # psycopg: extended protocol with a server-side prepared statement
    with connect(ggw, idp) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"DELETE FROM {table}", prepare=True)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"UPDATE {table} SET note = %s", ["x"])
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE id = %s", [1]).fetchone()[0] == 1
    assert rows(pg, table) == 3

    async def with_asyncpg():
        conn = await asyncpg.connect(host="127.0.0.1", port=ggw.port("pg"), user="agent-7",
                                     password=idp.token(), database="appdb", ssl=False)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.prepare(f"DROP TABLE {table}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"DELETE FROM {table}")
            # the session is still in a clean state
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 3
        finally:
            await conn.close()
    asyncio.run(with_asyncpg())
    assert exists(pg, table)


def test_pipeline_keeps_order_and_fails_like_a_server(ggw, idp, pg, table):
    """In a pipeline the earlier statements' results arrive in order; the blocked one errors
    and the rest of its sync block is skipped, and -- as with any error inside one sync block
    (an implicit transaction) -- the block's earlier writes are rolled back by the server."""
    with connect(ggw, idp) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.pipeline():
                c1 = conn.execute(f"SELECT count(*) FROM {table}")
                conn.execute(f"INSERT INTO {table} VALUES (10, now(), 'kept')")
                conn.execute(f"DELETE FROM {table}")
                conn.execute(f"INSERT INTO {table} VALUES (11, now(), 'skipped')")
        assert c1.fetchone()[0] == 3
        assert conn.execute("select 1").fetchone()[0] == 1
    ids = pg.sql(f"select string_agg(id::text, ',' order by id) from {table}", dbname="appdb")
    assert ids == "1,2,3"


def test_blocked_statement_in_a_transaction_aborts_it_like_a_server(ggw, idp, pg, table):
    with psycopg.connect(conninfo(ggw, idp.token())) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (20, now(), 'in tx')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"DELETE FROM {table}")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.commit()  # the server turns it into a rollback
    assert rows(pg, table) == 3


def test_multi_statement_query_blocks_as_a_whole(ggw, idp, pg, table):
    """psql -c sends both statements as one simple Query: the whole message is refused with
    the guardrail's ERROR (not a FATAL: the session would go on), and neither statement ran."""
    r = psql(conninfo(ggw, idp.token()), "-v", "VERBOSITY=verbose", "-c",
             f"INSERT INTO {table} VALUES (30, now(), 'x'); DROP TABLE {table}")
    # psql exits 1 when a -c command fails (2 would be a lost connection)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    # VERBOSITY=verbose prints the SQLSTATE: "ERROR:  42501: statement blocked by ..."
    assert 'ERROR:  42501: statement blocked by hoopwire rule "destructive-ddl"' in r.stderr, \
        r.stderr
    assert "INSERT" not in r.stdout, r.stdout
    assert exists(pg, table) and rows(pg, table) == 3


def test_copy_data_is_not_sql(ggw, idp, pg, table):
    with connect(ggw, idp) as conn:
        with conn.cursor().copy(f"COPY {table} (id, note) FROM STDIN") as copy:
            copy.write_row((40, "DROP TABLE everything; DELETE FROM x"))
    assert rows(pg, table) == 4


def test_startup_parameters_cannot_switch_roles(ggw, idp):
    with pytest.raises(psycopg.OperationalError, match="blocked"):
        psycopg.connect(conninfo(ggw, idp.token(), options="-c role=postgres"))
    with connect(ggw, idp, options="-c search_path=public") as conn:
        assert conn.execute("show search_path").fetchone()[0] == "public"


def test_reload_adds_a_rule_for_open_sessions(pg, idp):
    cfg = gateway_config(pg, idp, guardrail=[{"pack": "destructive-ddl"}])
    with Gateway(cfg, env=gateway_env(pg)) as g:
        cfg = g.config  # with the ports it was given
        with connect(g, idp) as conn:
            assert conn.execute("SELECT 'no rule yet', count(*) FROM items").fetchone()[1] == 3
            cfg["connection"][0]["guardrail"].append(
                {"name": "no-items", "patterns": [r"\bitems\b"], "message": "items are frozen"})
            g.write_config(cfg)
            g.signal(signal.SIGHUP)
            g.wait_log(r"configuration reloaded")
            assert_blocked(conn, "SELECT count(*) FROM items", "no-items")
        # an invalid pattern at reload keeps the old rules and says why
        cfg["connection"][0]["guardrail"].append({"name": "broken", "patterns": ["(unclosed"]})
        g.write_config(cfg)
        g.signal(signal.SIGHUP)
        g.wait_log(r"reload rejected.*")
        assert "broken" in g.log_text()
        with connect(g, idp) as conn:
            assert_blocked(conn, "SELECT count(*) FROM items", "no-items")


def test_a_reload_changes_a_verdict_cached_by_shape(pg, idp, table):
    """Verdicts are cached by statement shape (integers set aside): `WHERE id = 2` passes after
    `WHERE id = 3` passed, `WHERE 1 = 1` -- another integer -- is still refused; a reload's new
    rule refuses the shape an open session had passed before."""
    cfg = gateway_config(pg, idp, guardrail=[{"pack": "unbounded-write"}])
    with Gateway(cfg, env=gateway_env(pg)) as g:
        cfg = g.config
        with connect(g, idp) as conn:
            conn.execute(f"UPDATE {table} SET note = 'x' WHERE id = 3")
            conn.execute(f"UPDATE {table} SET note = 'y' WHERE id = 2")
            assert_blocked(conn, f"UPDATE {table} SET note = 'z' WHERE 1 = 1", "unbounded-write")
            assert pg.sql(f"select string_agg(note, ',' order by id) from {table}",
                          dbname="appdb") == "a,y,x"
            cfg["connection"][0]["guardrail"].append(
                {"name": "no-note-updates", "patterns": [r"\bset\s+note\b"]})
            g.write_config(cfg)
            g.signal(signal.SIGHUP)
            g.wait_log(r"configuration reloaded")
            # the very shape `WHERE id = 2` had, passed before the reload
            assert_blocked(conn, f"UPDATE {table} SET note = 'y' WHERE id = 3", "no-note-updates")
        assert pg.sql(f"select note from {table} where id = 3", dbname="appdb") == "x"


def test_check_config_names_a_bad_pattern(pg, idp, tmp_path):
    import os
    import sys
    from helpers import REPO_ROOT, to_toml
    cfg = gateway_config(pg, idp, listen="127.0.0.1:1",
                         guardrail=[{"name": "bad-one", "patterns": ["ok", "(unclosed"]}])
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    r = subprocess.run([sys.executable, "-m", "hoopwire", "check-config", str(path)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO_ROOT,
                                                            **gateway_env(pg)}, timeout=60)
    assert r.returncode == 1
    assert "bad-one" in r.stderr and "(unclosed" in r.stderr


def test_approve_rules_need_approvers(pg, idp):
    from helpers import GatewayError
    cfg = gateway_config(pg, idp, guardrail=[{"name": "ask", "patterns": ["delete"],
                                              "action": "approve"}])
    with pytest.raises(GatewayError, match="approvers"):
        # only a deadline for exiting: at 10 s, a loaded machine's start-up (imports alone
        # take a second or two here) could outlast it, and the error then named no approvers
        Gateway(cfg, env=gateway_env(pg), timeout=60)


def test_client_encodings_that_can_hide_a_quote_are_refused(pg, idp):
    """SJIS and friends have characters ending in a backslash byte: a quote could hide from the
    normaliser. Refused at startup and by SET, even without the session-tampering pack."""
    cfg = gateway_config(pg, idp, guardrail=[{"pack": "destructive-ddl"}])
    with Gateway(cfg, env=gateway_env(pg)) as g:
        with pytest.raises(psycopg.OperationalError, match="client encoding"):
            psycopg.connect(conninfo(g, idp.token(), client_encoding="SJIS"))
        with pytest.raises(psycopg.OperationalError, match="client encoding"):
            psycopg.connect(conninfo(g, idp.token(), options="-c client_encoding=sjis"))
        with connect(g, idp) as conn:
            assert_blocked(conn, "SET client_encoding = 'SJIS'", "unsafe-client-encoding")
            assert_blocked(conn, "SET NAMES 'big5'")
            conn.execute("SET client_encoding = 'LATIN1'")  # single-byte: fine


def test_reload_judges_what_open_sessions_set_before_rules_existed(pg, idp):
    """A session that switched to an encoding that can hide a quote while no rule applied is
    closed when a reload brings rules; a plain session carries on under them."""
    with Gateway(gateway_config(pg, idp), env=gateway_env(pg)) as g:
        cfg = g.config
        tainted = connect(g, idp)
        tainted.execute("SET client_encoding = 'SJIS'")
        plain = connect(g, idp)
        cfg["connection"][0]["guardrail"] = [{"pack": "destructive-ddl"}]
        g.write_config(cfg)
        g.signal(signal.SIGHUP)
        g.wait_log(r"configuration reloaded")
        g.wait_log(r"session closed .*reason=policy_reload")
        with pytest.raises(psycopg.Error, match="client encoding"):
            tainted.execute("select 1")  # the FATAL says why
        assert tainted.closed
        assert_blocked(plain, "DROP TABLE items", "destructive-ddl")
        plain.close()
