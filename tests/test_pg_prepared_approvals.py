"""An approval covers one run of a prepared statement, however it is prepared and run, and the
gateway's picture of names changes only on the server's answers.

The approve rule here times out after 1 s with nobody deciding, so a held statement is refused;
each attack is a way to run a prepared DELETE without it being held: SQL EXECUTE of a protocol
Parse, SQL PREPARE then EXECUTE (or EXPLAIN ANALYZE EXECUTE), redefining a name the server
refuses to redefine, and a Parse the server skipped after an error. (A portal the server
refuses to rebind is followed the same way, in the bookkeeping test below; through a server
it cannot be run after the refusal, which aborts its transaction.) The row must survive every one. The bookkeeping itself
(hoopwire/pg/prepared.py) is driven without a socket too.
"""

from __future__ import annotations

import struct
import uuid

import psycopg
import pytest

import pgraw
from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway
from hoopwire.pg.prepared import PreparedNames, sql_executes, sql_prepares

RULES = [{"name": "deletes-need-a-human", "patterns": [r"\bdelete\b"], "action": "approve",
          "approvers": ["dba"], "timeout": "1s"}]
HELD = ("verdict", b"DELETE ...")


# --- the bookkeeping, without a socket ---------------------------------------------------------

def test_a_refused_redefinition_keeps_the_hold():
    n = PreparedNames()
    n.parse(1, b"s", HELD)
    n.parse_complete()
    n.ready(1, True)
    n.parse(2, b"s", None)          # the server refuses it: s exists
    n.ready(2, True)                # ...so no ParseComplete before its ReadyForQuery
    assert n.statement(3, b"s") == HELD


def test_within_a_batch_the_batchs_own_definition_decides():
    n = PreparedNames()
    n.parse(1, b"", HELD)
    n.parse_complete()
    n.ready(1, True)
    n.parse(2, b"", None)           # same batch as the Bind below: if it fails, so does the Bind
    assert n.statement(2, b"") is None
    # a later batch, before the server answered: either may be true -> held
    assert n.statement(3, b"") == HELD
    n.parse_complete()
    assert n.statement(3, b"") is None


def test_portals_and_close():
    n = PreparedNames()
    n.parse(1, b"s", HELD)
    n.bind(1, b"p", b"s")
    n.parse_complete()
    n.bind_complete()
    n.ready(1, False)               # inside a transaction block: the portal lives on
    assert n.portal(2, b"p") == HELD
    n.bind(2, b"p", b"")            # refused by the server: p exists
    n.ready(2, False)
    assert n.portal(3, b"p") == HELD
    n.ready(3, True)                # the transaction ended: portals are gone
    assert n.portal(4, b"p") is None
    n.close(4, ord("S"), b"s")
    n.close_complete()
    assert n.statement(5, b"s") is None


def test_sql_names():
    assert sql_prepares([b"prepare d(int) as delete from t where id=$1"]) == [b"d"]
    assert sql_prepares([b'prepare "Odd Name" as delete from t']) == [b"Odd Name"]
    assert sql_executes([b"explain analyze execute d(1)", b'execute "x y"']) == [b"d", b"x y"]
    n = PreparedNames()
    n.parse(1, b"Mixed", HELD)
    n.parse_complete()
    assert n.executed_in_sql([b"mixed"]) == HELD     # the normaliser folds case: held


# --- through a gateway -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def agw(pg, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prepared")
    cfg = gateway_config(pg, idp, guardrail=RULES, allow_groups=["agents", "dba"])
    cfg["state"] = {"url": f"sqlite:///{tmp}/state.db", "poll_interval": "100ms"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


@pytest.fixture
def table(pg):
    name = "prep_" + uuid.uuid4().hex[:8]
    pg.sql(f"CREATE TABLE {name} (id int primary key);"
           f"INSERT INTO {name} SELECT generate_series(1, 20);"
           f"ALTER TABLE {name} OWNER TO app;", dbname=APP_DB)
    yield name
    pg.sql(f"DROP TABLE IF EXISTS {name}", dbname=APP_DB)


def rows(pg, table) -> int:
    return int(pg.sql(f"SELECT count(*) FROM {table}", dbname=APP_DB))


def parse(name: bytes, sql: bytes) -> bytes:
    return pgraw.typed(b"P", name + b"\0" + sql + b"\0" + struct.pack("!h", 0))


def bind(portal: bytes, stmt: bytes, *params: bytes) -> bytes:
    body = portal + b"\0" + stmt + b"\0" + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", len(p)) + p
    return pgraw.typed(b"B", body + struct.pack("!h", 0))


def execute(portal: bytes = b"") -> bytes:
    return pgraw.typed(b"E", portal + b"\0" + struct.pack("!i", 0))


SYNC = pgraw.typed(b"S")


def query(sql: str) -> bytes:
    return pgraw.typed(b"Q", sql.encode() + b"\0")


def run(c, data: bytes, units: int = 1):
    """Send, then read up to `units` ReadyForQuery: the errors (SQLSTATE, message) seen."""
    c.send(data)
    errors = []
    while units:
        kind, body = c.read_message(30)
        if kind == b"E":
            f = pgraw.error_fields(body)
            errors.append((f.get("C"), f.get("M", "")))
        units -= kind == b"Z"
    return errors


def refused(errors) -> bool:
    return any(code == "42501" and "no decision in time" in msg for code, msg in errors)


@pytest.fixture
def conn(agw, idp):
    c = pgraw.login("127.0.0.1", agw.port("pg"), idp.token())
    yield c
    c.close()


def test_protocol_parse_run_by_sql_execute(conn, pg, table):
    assert run(conn, parse(b"d1", f"DELETE FROM {table} WHERE id = $1".encode()) + SYNC) == []
    assert refused(run(conn, query("EXECUTE d1(5)")))
    assert refused(run(conn, query("execute D1 (6)")))          # names fold case in SQL
    assert rows(pg, table) == 20


def test_sql_prepare_then_execute(conn, pg, table):
    # defining runs nothing: the PREPARE goes through, each run of it waits
    assert run(conn, query(f"PREPARE d2(int) AS DELETE FROM {table} WHERE id = $1")) == []
    assert refused(run(conn, query("EXECUTE d2(5)")))
    assert refused(run(conn, query("EXPLAIN ANALYZE EXECUTE d2(6)")))
    assert refused(run(conn, query("SELECT 1; EXECUTE d2(7)")))
    # and through the protocol, the same name
    assert refused(run(conn, bind(b"", b"d2", b"8") + execute() + SYNC))
    assert rows(pg, table) == 20


def test_a_redefinition_the_server_refuses_does_not_lift_the_hold(conn, pg, table):
    assert run(conn, parse(b"s", f"DELETE FROM {table} WHERE id = $1".encode()) + SYNC) == []
    errs = run(conn, parse(b"s", b"SELECT $1::int") + SYNC)
    assert [c for c, _ in errs] == ["42P05"]                    # s exists: the server says no
    assert refused(run(conn, bind(b"", b"s", b"9") + execute() + SYNC))
    assert rows(pg, table) == 20


def test_a_parse_skipped_after_an_error_does_not_lift_the_hold(conn, pg, table):
    assert run(conn, parse(b"", f"DELETE FROM {table} WHERE id = $1".encode()) + SYNC) == []
    # an error first: the server skips the Parse that follows, up to Sync
    errs = run(conn, execute(b"no_such_portal") + parse(b"", b"SELECT $1::int") + SYNC)
    assert [c for c, _ in errs] == ["34000"]
    assert refused(run(conn, bind(b"", b"", b"12") + execute() + SYNC))
    assert rows(pg, table) == 20


def test_prepared_selects_and_drivers_are_not_held(agw, idp, pg, table):
    with psycopg.connect(conninfo(agw, idp.token()), autocommit=True) as c:
        for i in range(3):
            assert c.execute(f"SELECT count(*) FROM {table} WHERE id > %s", (i,),
                             prepare=True).fetchone()[0] == 20 - i
        c.execute("PREPARE q AS SELECT 42")
        assert c.execute("EXECUTE q").fetchone() == (42,)


def test_recording_and_approvals_follow_the_same_answers(pg, idp, tmp_path, table):
    """With recording on, the statement records follow every ParseComplete too: the names the
    approvals follow must not take those answers away from them (the session was closed with
    'could not mask this result' when they did)."""
    cfg = gateway_config(pg, idp, guardrail=RULES, allow_groups=["agents", "dba"])
    cfg["state"] = {"url": f"sqlite:///{tmp_path}/state.db", "poll_interval": "100ms"}
    cfg["audit"] = {"path": str(tmp_path / "audit"), "flush_interval": "50ms"}
    with Gateway(cfg, env=gateway_env(pg)) as g, \
            psycopg.connect(conninfo(g, idp.token()), autocommit=True) as c:
        for i in range(7):
            assert c.execute(f"SELECT count(*) FROM {table} WHERE id > %s", (i,),
                             prepare=i % 2 == 0).fetchone()[0] == 20 - i
        with c.pipeline():
            a = c.execute("SELECT %s::int", (1,))
            b = c.execute("SELECT %s::int", (2,))
        assert a.fetchone() == (1,) and b.fetchone() == (2,)
