"""Unmodified drivers work through the gateway by changing host, port and password only."""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from gwfixtures import conninfo
from helpers import ITEMS, psql


def test_psql_through_the_gateway(gw, idp):
    out = psql(conninfo(gw, idp.token()), "-A", "-t", "-v", "ON_ERROR_STOP=1",
               "-c", "select current_user, current_database()",
               "-c", "select name from items order by id")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == "app|appdb"
    assert lines[1:] == [name for _, name in ITEMS]


def test_psycopg_session_with_a_jwt(gw, idp):
    with psycopg.connect(conninfo(gw, idp.token(), application_name="agent-app")) as conn:
        row = conn.execute("select current_user, current_setting('application_name'), "
                           "pg_backend_pid()").fetchone()
        assert row[0] == "app"
        assert row[1] == "agent-app"  # startup parameters reach the upstream
        # the pid the driver was told is the server's own
        assert row[2] == conn.info.backend_pid
        assert conn.execute("select count(*) from items").fetchone()[0] == len(ITEMS)


def test_psycopg_with_an_api_key(gw, idp):
    with psycopg.connect(conninfo(gw, idp.api_keys["ci"], user="ci-bot")) as conn:
        assert conn.execute("select 40 + 2").fetchone()[0] == 42


def test_asyncpg_binary_results_and_prepared_statements(gw, idp):
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=gw.port("pg"), user="agent-7",
                                     password=idp.token(), database="appdb", ssl=False)
        try:
            assert await conn.fetchval("select $1::int + 1", 41) == 42
            stmt = await conn.prepare("select id, name from items where id = $1")
            assert tuple(await stmt.fetchrow(2)) == ITEMS[1]
            assert await conn.fetchval("select pg_backend_pid()") == conn.get_server_pid()
            rows = await conn.fetch("select g, md5(g::text) from generate_series(1, 5000) g")
            assert len(rows) == 5000
        finally:
            await conn.close()
    asyncio.run(main())


def test_errors_from_the_server_pass_through_and_the_session_continues(gw, idp):
    with psycopg.connect(conninfo(gw, idp.token()), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from no_such_table")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        assert conn.execute("select 1").fetchone()[0] == 1


def test_transactions_keep_their_state(gw, idp):
    with psycopg.connect(conninfo(gw, idp.token())) as conn:
        conn.execute("create temp table t (a int)")
        conn.execute("insert into t values (1)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.rollback()
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from t")
