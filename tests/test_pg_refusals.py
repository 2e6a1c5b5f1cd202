"""A refused statement never runs: approvals that time out, on every path a driver takes.

An Execute that the gateway refuses (its approval denied or timed out) is replaced by a marker
whose error stands for it. Whatever else the gateway adds to the client's messages -- with
masking on it asks the server for a portal's description when the client did not -- must not
bring the refused Execute back. Each case runs the same DELETE through a stock driver with
masking off and on, lets the approval time out, and checks the row is still there and no
server backend ever ran the DELETE.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import psycopg
import pytest

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway

RULES = [{"name": "deletes-need-a-human", "patterns": [r"\bdelete\b"], "action": "approve",
          "approvers": ["dba"], "timeout": "1s"}]
MASKS = [{"columns": ["*.secret"], "strategy": "redact"}]


@pytest.fixture(scope="module", params=["plain", "masking"])
def rgw(request, pg, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refusals")
    kw = {"mask": MASKS} if request.param == "masking" else {}
    cfg = gateway_config(pg, idp, guardrail=RULES, allow_groups=["agents", "dba"], **kw)
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db", "poll_interval": "100ms"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


@pytest.fixture
def table(pg):
    name = "ref_" + uuid.uuid4().hex[:8]
    pg.sql(f"CREATE TABLE {name} (id int primary key, secret text);"
           f"INSERT INTO {name} SELECT g, 's' || g FROM generate_series(1, 40) g;"
           f"ALTER TABLE {name} OWNER TO app;", dbname=APP_DB)
    yield name
    pg.sql(f"DROP TABLE IF EXISTS {name}", dbname=APP_DB)


def rows(pg, table) -> int:
    return int(pg.sql(f"SELECT count(*) FROM {table}", dbname=APP_DB))


def ran_delete(pg, table) -> bool:
    """Whether a server backend's current or last statement was the DELETE (pg_stat_activity
    keeps the text of an idle backend's last statement)."""
    return pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE "
                  f"'delete from {table}%'") != "0"


def _refused(e: BaseException) -> bool:
    return "no decision in time" in str(e)


def test_asyncpg_execute_with_a_parameter(rgw, pg, idp, table):
    # asyncpg: Parse + Describe(statement) + Sync, then Bind + Execute + Sync: no portal
    # Describe, so a masking gateway adds its own
    async def run():
        c = await asyncpg.connect(host="127.0.0.1", port=rgw.port("pg"), user="agent-7",
                                  password=idp.token(), database=APP_DB, ssl=False)
        try:
            with pytest.raises(asyncpg.PostgresError) as err:
                await c.execute(f"DELETE FROM {table} WHERE id = $1", 31)
            assert _refused(err.value), err.value
            assert await c.fetchval("SELECT 7") == 7
        finally:
            await c.close()
    asyncio.run(asyncio.wait_for(run(), 60))
    assert rows(pg, table) == 40 and not ran_delete(pg, table)


def test_asyncpg_prepared_statement_run_twice(rgw, pg, idp, table):
    async def run():
        c = await asyncpg.connect(host="127.0.0.1", port=rgw.port("pg"), user="agent-7",
                                  password=idp.token(), database=APP_DB, ssl=False)
        try:
            st = await c.prepare(f"DELETE FROM {table} WHERE id = $1 RETURNING secret")
            for i in (5, 6):
                with pytest.raises(asyncpg.PostgresError) as err:
                    await st.fetch(i)
                assert _refused(err.value), err.value
        finally:
            await c.close()
    asyncio.run(asyncio.wait_for(run(), 60))
    assert rows(pg, table) == 40 and not ran_delete(pg, table)


@pytest.mark.parametrize("prepare", [False, True])
def test_psycopg_with_parameters(rgw, pg, idp, table, prepare):
    with psycopg.connect(conninfo(rgw, idp.token()), autocommit=True) as c:
        with pytest.raises(psycopg.Error) as err:
            c.execute(f"DELETE FROM {table} WHERE id = %s", (31,), prepare=prepare)
        assert _refused(err.value), err.value
        assert c.execute("SELECT 8").fetchall() == [(8,)]
    assert rows(pg, table) == 40 and not ran_delete(pg, table)


def test_psycopg_pipeline(rgw, pg, idp, table):
    with psycopg.connect(conninfo(rgw, idp.token()), autocommit=True) as c:
        with pytest.raises(psycopg.Error) as err:
            with c.pipeline():
                c.execute("SELECT %s::int", (1,))
                c.execute(f"DELETE FROM {table} WHERE id = %s", (32,))
                c.execute(f"DELETE FROM {table} WHERE id = %s", (33,))
        assert _refused(err.value), err.value
        assert c.execute("SELECT 9").fetchall() == [(9,)]
    assert rows(pg, table) == 40 and not ran_delete(pg, table)


def test_psycopg_inside_a_transaction(rgw, pg, idp, table):
    with psycopg.connect(conninfo(rgw, idp.token())) as c:
        c.execute("SELECT 1")
        with pytest.raises(psycopg.Error) as err:
            c.execute(f"DELETE FROM {table} WHERE id = %s", (34,))
        assert _refused(err.value), err.value
        c.rollback()
        assert c.execute("SELECT 10").fetchall() == [(10,)]
    assert rows(pg, table) == 40 and not ran_delete(pg, table)
