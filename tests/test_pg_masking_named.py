"""Masking of results a name stands for: SQL EXECUTE of a statement the client Parsed with the
extended protocol (one namespace on the server for both), and FETCH of a cursor declared over a
table made earlier in the same session.

The gateway follows the server's answers: a named Parse counts once ParseComplete says the
server took it, a Close or DEALLOCATE once it is answered; a Parse the server refuses changes
nothing. Every check compares with the server read directly, or with a masked column: masked
columns masked, every other column exactly as the server sent it.
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

import pgraw
from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway

SCHEMA = """
SET ROLE app;
DROP SCHEMA IF EXISTS mexec CASCADE;
CREATE SCHEMA mexec;
CREATE TABLE mexec.users (id int PRIMARY KEY, name text, ssn text);
INSERT INTO mexec.users VALUES (1, 'Alice', '123-45-6789'), (2, 'Bob', '987-65-4321');
CREATE TABLE mexec.pets (id int PRIMARY KEY, nick text);
INSERT INTO mexec.pets VALUES (1, 'Rex'), (2, 'Tom');
"""

# mexec.t2, t3 do not exist when the gateway starts: tests make them in their sessions
MASKS = [{"columns": ["mexec.users.ssn", "mexec.t*.ssn"], "strategy": "redact"}]


@pytest.fixture(scope="module")
def schema(pg):
    pg.sql(SCHEMA, dbname=APP_DB)
    yield
    pg.sql("DROP SCHEMA IF EXISTS mexec CASCADE", dbname=APP_DB)


@pytest.fixture(scope="module")
def mgw(pg, idp, schema):
    # unresolved_columns = "mask": a result the gateway cannot place is masked whole, which is
    # what an EXECUTE of a name it does not know looked like (every column "****")
    cfg = gateway_config(pg, idp, mask=MASKS, unresolved_columns="mask")
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def direct(pg):
    return psycopg.connect(host="127.0.0.1", port=pg.port, user="app", dbname=APP_DB,
                           password=pg.passwords["app"], sslmode="disable", autocommit=True)


def rows_of(messages) -> list[tuple]:
    """DataRow bodies -> tuples of text values (None for NULL)."""
    out = []
    for kind, body in messages:
        if kind != b"D":
            continue
        n = int.from_bytes(body[:2], "big")
        pos, row = 2, []
        for _ in range(n):
            ln = int.from_bytes(body[pos:pos + 4], "big", signed=True)
            pos += 4
            if ln < 0:
                row.append(None)
            else:
                row.append(body[pos:pos + ln].decode())
                pos += ln
        out.append(tuple(row))
    return out


def exchange(conn, data: bytes) -> list[tuple[bytes, bytes]]:
    """Send `data` (ending in one Sync or Query) and read up to its ReadyForQuery."""
    conn.send(data)
    got = []
    while True:
        kind, body = conn.read_message(10.0)
        got.append((kind, body))
        if kind == b"Z":
            return got


def parse(name: bytes, sql: bytes) -> bytes:
    return pgraw.typed(b"P", name + b"\0" + sql + b"\0\0\0") + pgraw.typed(b"S")


def close(name: bytes) -> bytes:
    return pgraw.typed(b"C", b"S" + name + b"\0") + pgraw.typed(b"S")


def query(sql: bytes) -> bytes:
    return pgraw.typed(b"Q", sql + b"\0")


def kinds(messages) -> list[bytes]:
    return [k for k, _b in messages]


def test_sql_execute_of_a_parsed_statement(mgw, idp):
    host, port = mgw.address("pg")
    with pgraw.login(host, port, idp.token()) as c:
        assert kinds(exchange(c, parse(b"s1", b"SELECT ssn, id FROM mexec.users ORDER BY id"))) \
            == [b"1", b"Z"]
        assert kinds(exchange(c, parse(b"s2", b"SELECT 1"))) == [b"1", b"Z"]
        assert rows_of(exchange(c, query(b"EXECUTE s1"))) == [("****", "1"), ("****", "2")]
        assert rows_of(exchange(c, query(b"EXECUTE s2"))) == [("1",)]

        # a second Parse of s1 is refused by the server (42P05): s1 still masks what it did
        got = exchange(c, parse(b"s1", b"SELECT name, id FROM mexec.users ORDER BY id"))
        assert kinds(got) == [b"E", b"Z"]
        assert pgraw.error_fields(got[0][1])["C"] == "42P05"
        assert rows_of(exchange(c, query(b"EXECUTE s1"))) == [("****", "1"), ("****", "2")]
        # ... and a refused Parse of s2 over the masked column does not mask SELECT 1
        got = exchange(c, parse(b"s2", b"SELECT ssn FROM mexec.users WHERE id = 1"))
        assert kinds(got) == [b"E", b"Z"]
        assert rows_of(exchange(c, query(b"EXECUTE s2"))) == [("1",)]

        # Close: the name is gone; a PREPARE under it over another table is judged by its text
        assert kinds(exchange(c, close(b"s1"))) == [b"3", b"Z"]
        exchange(c, query(b"PREPARE s1 AS SELECT nick, id FROM mexec.pets ORDER BY id"))
        assert rows_of(exchange(c, query(b"EXECUTE s1"))) == [("Rex", "1"), ("Tom", "2")]

        # DEALLOCATE: what s1 was is forgotten, for a Parse and for a PREPARE alike
        exchange(c, query(b"DEALLOCATE s1"))
        assert kinds(exchange(c, parse(b"s1", b"SELECT id, ssn FROM mexec.users ORDER BY id"))) \
            == [b"1", b"Z"]
        assert rows_of(exchange(c, query(b"EXECUTE s1"))) == [("1", "****"), ("2", "****")]
        exchange(c, query(b"DEALLOCATE PREPARE s1"))
        exchange(c, query(b"PREPARE s1 AS SELECT nick, id FROM mexec.pets ORDER BY id"))
        assert rows_of(exchange(c, query(b"EXECUTE s1"))) == [("Rex", "1"), ("Tom", "2")]

        # DEALLOCATE ALL / DISCARD ALL forget every name
        exchange(c, query(b"DEALLOCATE s1"))
        for forget in (b"DEALLOCATE ALL", b"DISCARD ALL"):
            assert kinds(exchange(c, parse(b"s1", b"SELECT ssn FROM mexec.users WHERE id = 2"))) \
                == [b"1", b"Z"]
            assert rows_of(exchange(c, query(b"EXECUTE s1"))) == [("****",)]
            exchange(c, query(forget))
            exchange(c, query(b"PREPARE s1 AS SELECT nick FROM mexec.pets WHERE id = 2"))
            assert rows_of(exchange(c, query(b"EXECUTE s1"))) == [("Tom",)]
            exchange(c, query(b"DEALLOCATE s1"))

        # a PREPARE the server refused counts until the name is answered for: a Parse the
        # server takes says what the name holds now (the refused text is not in it)
        got = exchange(c, query(b"PREPARE s3 AS SELECT ssn FROM mexec.nosuch"))
        assert pgraw.error_fields(got[0][1])["C"] == "42P01"
        assert kinds(exchange(c, parse(b"s3", b"SELECT 1"))) == [b"1", b"Z"]
        assert rows_of(exchange(c, query(b"EXECUTE s3"))) == [("1",)]

        # DEALLOCATE and a new PREPARE of the name in one Query: the PREPARE stands
        exchange(c, query(b"DEALLOCATE s3; "
                          b"PREPARE s3 AS SELECT id, ssn FROM mexec.users ORDER BY id"))
        assert rows_of(exchange(c, query(b"EXECUTE s3"))) == [("1", "****"), ("2", "****")]


def test_parsed_name_is_case_exact(mgw, idp):
    """Protocol names are exact bytes; SQL folds an unquoted name to lower case, as the server
    does: `EXECUTE S1` does not run "S1"."""
    host, port = mgw.address("pg")
    with pgraw.login(host, port, idp.token()) as c:
        assert kinds(exchange(c, parse(b"S1", b"SELECT id, ssn FROM mexec.users WHERE id = 1"))) \
            == [b"1", b"Z"]
        assert kinds(exchange(c, parse(b"s1", b"SELECT id, name FROM mexec.users WHERE id = 1"))) \
            == [b"1", b"Z"]
        assert rows_of(exchange(c, query(b'EXECUTE "S1"'))) == [("1", "****")]
        assert rows_of(exchange(c, query(b"EXECUTE S1"))) == [("1", "Alice")]


def test_asyncpg_select_one_and_prepared(mgw, idp, pg):
    """asyncpg Parses named statements: through a masking gateway its results are the
    server's, the masked column aside."""
    async def run(**kw):
        conn = await asyncpg.connect(host="127.0.0.1", ssl=False, **kw)
        try:
            one = await conn.fetchval("select 1")
            stmt = await conn.prepare("SELECT id, name, ssn FROM mexec.users ORDER BY id")
            rows = [tuple(r) for r in await stmt.fetch()]
            # asyncpg's statement name, run by SQL EXECUTE on the same session
            got = [tuple(r) for r in await conn.fetch(f'EXECUTE "{stmt.get_name()}"')]
            return one, rows, got
        finally:
            await conn.close()
    gw_one, gw_rows, gw_exec = asyncio.run(run(port=mgw.port("pg"), user="agent-7",
                                               database=APP_DB, password=idp.token()))
    d_one, d_rows, _ = asyncio.run(run(port=pg.port, user="app", database=APP_DB,
                                       password=pg.passwords["app"]))
    assert gw_one == d_one == 1
    assert gw_rows == [(i, n, "****") for i, n, _s in d_rows]
    assert gw_exec == gw_rows


def test_declare_over_a_table_made_in_the_session(mgw, idp, pg):
    with direct(pg) as d:
        d.execute("DROP TABLE IF EXISTS mexec.t2")
    with psycopg.connect(conninfo(mgw, idp.token()), autocommit=True) as c:
        c.execute("SELECT 1")       # a first statement: the gateway's catalog has no t2
        c.execute("CREATE TABLE mexec.t2 (id int, ssn text)")
        c.execute("INSERT INTO mexec.t2 VALUES (1, '111-22-3333'), (2, '444-55-6666')")
        with c.transaction():
            c.execute("DECLARE cur CURSOR FOR SELECT id, ssn FROM mexec.t2 ORDER BY id")
            got = c.execute("FETCH ALL FROM cur").fetchall()
        # the same DECLARE again (a loop's): the catalog has read t2 by now
        with c.transaction():
            c.execute("DECLARE cur CURSOR FOR SELECT id, ssn FROM mexec.t2 ORDER BY id")
            again = c.execute("FETCH ALL FROM cur").fetchall()
    with direct(pg) as d:
        clear = d.execute("SELECT id, ssn FROM mexec.t2 ORDER BY id").fetchall()
        d.execute("DROP TABLE mexec.t2")
    assert clear == [(1, "111-22-3333"), (2, "444-55-6666")]
    # sent before the catalog read t2, nothing of the DECLARE can be placed, and every column
    # is masked: the safe error (SessionMasker._fetched says why it is not placed again at
    # FETCH, and what would keep id). ssn is never clear; id is clear or masked.
    for rows in (got, again):
        assert [r[1] for r in rows] == ["****", "****"]
        assert [r[0] for r in rows] in ([1, 2], [None, None])


def test_declare_sent_before_the_ddl_is_answered(mgw, idp, pg):
    """Two Queries in one write: the gateway reads the DECLARE before the CREATE's answer."""
    host, port = mgw.address("pg")
    with pgraw.login(host, port, idp.token()) as c:
        first = exchange(c, query(b"CREATE TABLE mexec.t3 (id int, ssn text); "
                                  b"INSERT INTO mexec.t3 VALUES (3, '777-88-9999')")
                         + query(b"BEGIN; DECLARE c3 CURSOR FOR SELECT id, ssn FROM mexec.t3; "
                                 b"FETCH ALL FROM c3; COMMIT"))
        second = exchange(c, b"")       # (the second Query's answer, up to its ReadyForQuery)
    with direct(pg) as d:
        d.execute("DROP TABLE mexec.t3")
    assert b"E" not in kinds(first) + kinds(second)
    assert rows_of(first + second) in ([("3", "****")], [(None, "****")], [("****", "****")])


def test_declare_then_ddl_keeps_what_the_cursor_was_planned_on(mgw, idp, pg):
    """A view replaced after the DECLARE ran: the cursor still returns what the old one read
    (ssn), so the DECLARE is not judged on the catalog read after the new definition. (WITH
    HOLD, outside a transaction: a catalog read waits for a transaction's DDL locks.)"""
    with psycopg.connect(conninfo(mgw, idp.token()), autocommit=True) as c:
        c.execute("CREATE VIEW mexec.v5 AS SELECT id, ssn AS x FROM mexec.users")
        c.execute("DECLARE c5 CURSOR WITH HOLD FOR SELECT id, x FROM mexec.v5 ORDER BY id")
        c.execute("CREATE OR REPLACE VIEW mexec.v5 AS SELECT id, name AS x FROM mexec.users")
        got = c.execute("FETCH ALL FROM c5").fetchall()
        c.execute("CLOSE c5")
        c.execute("DROP VIEW mexec.v5")
    assert [r[1] for r in got] == ["****", "****"]
