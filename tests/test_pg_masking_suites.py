"""What client suites (asyncpg, pg8000) met through a masking gateway (issues 17/18).

* The masker's catalog connection to a database ends with the last session on it, so a client's
  DROP DATABASE of it succeeds as it does directly.
"""

from __future__ import annotations

import psycopg
import pytest

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import Gateway
from hoopwire.pg.masker import ConnectionMasking, WriteGuard

SCHEMA = """
SET ROLE app;
DROP SCHEMA IF EXISTS h3s CASCADE;
CREATE SCHEMA h3s;
CREATE TABLE h3s.people (id int PRIMARY KEY, name text, ssn text);
INSERT INTO h3s.people VALUES (1, 'Ada', '123-45-6789');
"""
MASKS = [{"columns": ["h3s.people.ssn"], "strategy": "redact"}]


@pytest.fixture(scope="module")
def schema(pg):
    pg.sql(SCHEMA, dbname="appdb")
    yield
    pg.sql("DROP SCHEMA IF EXISTS h3s CASCADE", dbname="appdb")


@pytest.fixture(scope="module")
def sgw(pg, idp, schema):
    cfg = gateway_config(pg, idp, mask=MASKS, unresolved_columns="mask",
                         allow_client_database=True)
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def connect(gw, idp, **kw):
    return psycopg.connect(conninfo(gw, idp.token(), **kw), autocommit=True)


def rows(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_drop_database_after_its_last_session(pg, sgw, idp):
    pg.sql("DROP DATABASE IF EXISTS h3_dropme; CREATE DATABASE h3_dropme OWNER app")
    try:
        with connect(sgw, idp, dbname="h3_dropme") as conn:
            assert rows(conn, "select 1") == [(1,)]
        with connect(sgw, idp) as conn:
            # the server waits up to 5 s for other users of the database, then 55006
            cur = conn.execute("DROP DATABASE h3_dropme")
            assert cur.statusmessage == "DROP DATABASE"
    finally:
        pg.sql("DROP DATABASE IF EXISTS h3_dropme WITH (FORCE)")


def test_direct_drop_database_after_its_last_gateway_session(pg, sgw, idp):
    """Dropped outside the gateway (no statement of it seen): the side connection went with
    the last session on the database."""
    pg.sql("DROP DATABASE IF EXISTS h3_dropme2; CREATE DATABASE h3_dropme2 OWNER app")
    try:
        with connect(sgw, idp, dbname="h3_dropme2") as conn:
            assert rows(conn, "select 1") == [(1,)]
        pg.sql("DROP DATABASE h3_dropme2")          # raises on 55006
    finally:
        pg.sql("DROP DATABASE IF EXISTS h3_dropme2 WITH (FORCE)")


class _Cat:
    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1


def test_drop_or_rename_closes_that_catalog_first():
    """The statement itself closes (and forgets) the catalog of the name it drops or renames,
    case aside; other databases' stay."""
    cm = ConnectionMasking.__new__(ConnectionMasking)
    cm.connection = "pg"
    a, b, c = _Cat(), _Cat(), _Cat()
    cm.catalogs = {"Shop": a, "other": b, "old": c}
    cm.database_statement(b'DROP DATABASE IF EXISTS "shop" WITH (FORCE)')
    assert a.closed == 1 and "Shop" not in cm.catalogs
    cm.database_statement(b"ALTER DATABASE other SET work_mem = '4MB'")
    assert b.closed == 0 and "other" in cm.catalogs
    cm.database_statement(b"select 1; alter database OLD rename to new")
    assert c.closed == 1 and cm.catalogs == {"other": b}
    # the relay's policy sees the statement before it goes upstream
    masker = type("M", (), {"relay": None, "conn": cm})()
    assert WriteGuard(None, masker, refuse=False).check(b"Drop Database Other") is None
    assert b.closed == 1 and cm.catalogs == {}
