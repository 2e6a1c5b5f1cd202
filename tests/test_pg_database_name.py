"""The database a client names: the connection's, or PostgreSQL's own refusal.

With allow_client_database = false (the default) a client that names another database must not
be put in the connection's database without a word: it gets the answer the server gives for a
database that does not exist, in the server's words. libpq sends the user name when no dbname
is given, and that means the connection's database.
"""

from __future__ import annotations

import psycopg
import pytest

import pgraw

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway


def _direct_error(pg, dbname: str) -> psycopg.OperationalError:
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(f"host=127.0.0.1 port={pg.port} user=app dbname={dbname} "
                        f"password='{pg.passwords['app']}' sslmode=disable").close()
    return ei.value


@pytest.mark.parametrize("dbname", ["postgres", "no_such_db", "template1"])
def test_another_database_is_refused_as_the_server_would(gw, pg, idp, dbname):
    c = pgraw.RawConn("127.0.0.1", gw.port("pg"))
    try:
        c.send(pgraw.startup_packet({"user": "agent-7", "database": dbname}))
        assert c.read_message()[0] == b"R"
        c.send(pgraw.typed(b"p", idp.token().encode() + b"\0"))
        err = c.expect_error_and_close(15)
    finally:
        c.close()
    assert (err["S"], err["C"]) == ("FATAL", "3D000"), err
    # the server's words for a database that is not there (libpq shows them the same way)
    direct = str(_direct_error(pg, "no_such_db")).split("FATAL:")[-1].strip()
    assert err["M"] == direct.replace("no_such_db", dbname), (err, direct)
    gw.wait_log(r"reason=unknown_database")


def test_the_connections_own_and_libpqs_default_are_fine(gw, idp):
    for dbname in (APP_DB, "agent-7"):   # libpq's default dbname is the user name
        with psycopg.connect(conninfo(gw, idp.token(), dbname=dbname)) as c:
            assert c.execute("SELECT current_database()").fetchone() == (APP_DB,)


def test_allow_client_database_picks_it(pg, idp):
    cfg = gateway_config(pg, idp, allow_client_database=True)
    with Gateway(cfg, env=gateway_env(pg)) as g:
        with psycopg.connect(conninfo(g, idp.token(), dbname="postgres")) as c:
            assert c.execute("SELECT current_database()").fetchone() == ("postgres",)
