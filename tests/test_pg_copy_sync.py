"""COPY FROM STDIN and the Syncs a client sends while the server reads the copy (issues 17/18).

In copy-in mode the server ignores Sync and Flush until CopyDone or CopyFail (protocol docs,
"COPY Operations"). pg8000 sends Parse/Bind/Execute then Sync, and only then the data, CopyDone
and a second Sync: one ReadyForQuery comes back for two Syncs. A gateway that counted both was
one Sync out of step for the rest of the session, and with masking on closed it (XX000). Here:
pg8000's exact message order over a raw socket, the same all pipelined in one write, CopyFail,
a simple Query COPY with a stray Sync, and psycopg's and asyncpg's copy; each followed by a
normal query on the same session. Masking on, masking off with the audit recorder following
the session (light mode; the audit log is on by default), and masking and audit both off.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Iterator

import asyncpg
import psycopg
import pytest

import pgraw
from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import Gateway

SCHEMA = """
SET ROLE app;
DROP SCHEMA IF EXISTS copysync CASCADE;
CREATE SCHEMA copysync;
CREATE TABLE copysync.t (id int, ssn text);
CREATE TABLE copysync.people (id int PRIMARY KEY, ssn text);
INSERT INTO copysync.people VALUES (1, '123-45-6789');
"""
MASKS = [{"columns": ["copysync.people.ssn"], "strategy": "partial", "keep": 4}]
COPY_SQL = b"COPY copysync.t (id, ssn) FROM STDIN"


@pytest.fixture(scope="module")
def schema(pg):
    pg.sql(SCHEMA, dbname="appdb")
    yield
    pg.sql("DROP SCHEMA IF EXISTS copysync CASCADE", dbname="appdb")


@pytest.fixture(scope="module", params=["masking", "recording", "plain"])
def gw(request, pg, idp, schema, tmp_path_factory) -> Iterator[tuple[Gateway, str]]:
    kw = {}
    if request.param == "masking":
        kw["mask"] = MASKS
    cfg = gateway_config(pg, idp, **kw)
    if request.param == "recording":
        cfg["audit"] = {"path": str(tmp_path_factory.mktemp("audit") / "audit"),
                        "flush_interval": "50ms"}
    elif request.param == "plain":
        cfg["audit"] = {"enabled": False}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g, request.param


@pytest.fixture(autouse=True)
def empty_table(pg, schema):
    pg.sql("TRUNCATE copysync.t", dbname="appdb")


def P(sql: bytes) -> bytes:
    return pgraw.typed(b"P", b"\0" + sql + b"\0" + struct.pack("!H", 0))


BIND = pgraw.typed(b"B", b"\0\0" + struct.pack("!HHH", 0, 0, 0))
EXECUTE = pgraw.typed(b"E", b"\0" + struct.pack("!I", 0))
DESCRIBE_S = pgraw.typed(b"D", b"S\0")
SYNC = pgraw.typed(b"S")
FLUSH = pgraw.typed(b"H")
DONE = pgraw.typed(b"c")
ROWS = pgraw.typed(b"d", b"1\tone\n") + pgraw.typed(b"d", b"2\ttwo\n")


def until(c: pgraw.RawConn, last: bytes) -> list[tuple[bytes, bytes]]:
    """Messages up to and including the first of kind `last` (an ErrorResponse before it is
    kept: the caller looks)."""
    got = []
    while True:
        kind, body = c.read_message()
        got.append((kind, body))
        if kind == last:
            return got


def kinds(msgs) -> list[bytes]:
    return [k for k, _ in msgs if k not in (b"N", b"S")]


def tag(msgs) -> bytes:
    return next(b for k, b in msgs if k == b"C").rstrip(b"\0")


def still_usable(c: pgraw.RawConn, masking: bool) -> None:
    """A normal query, twice, then a pipelined extended one: answered in step (and masked)."""
    for _ in range(2):
        c.send(pgraw.typed(b"Q", b"SELECT id, ssn FROM copysync.people\0"))
        got = until(c, b"Z")
        assert kinds(got) == [b"T", b"D", b"C", b"Z"], got
        row = got[1][1]
        assert (b"123-45-6789" in row) != masking and (b"*******6789" in row) == masking
    c.send(P(b"SELECT count(*) FROM copysync.t") + BIND + EXECUTE + SYNC)
    got = until(c, b"Z")
    assert kinds(got) == [b"1", b"2", b"D", b"C", b"Z"], got


def copied(pg) -> str:
    return pg.sql("SELECT string_agg(id || ':' || ssn, ',' ORDER BY id) FROM copysync.t",
                  dbname="appdb").strip()


def test_pg8000_message_order(gw, idp, pg):
    """pg8000 1.31's execute_unnamed, message for message, waiting where it waits."""
    g, mode = gw
    with pgraw.login(*g.address("pg"), idp.token()) as c:
        c.send(P(COPY_SQL) + FLUSH + SYNC)
        assert kinds(until(c, b"Z")) == [b"1", b"Z"]
        c.send(DESCRIBE_S + FLUSH + SYNC + BIND + FLUSH)
        assert kinds(until(c, b"Z")) == [b"t", b"n", b"Z"]
        c.send(EXECUTE + FLUSH + SYNC)
        assert kinds(until(c, b"G")) == [b"2", b"G"]
        c.send(ROWS + DONE + SYNC)
        got = until(c, b"Z")
        assert kinds(got) == [b"C", b"Z"] and tag(got) == b"COPY 2", got
        still_usable(c, mode == "masking")
    assert copied(pg) == "1:one,2:two"


def test_pipelined_copy_with_syncs_before_and_after(gw, idp, pg):
    """The same without waiting: the gateway reads the CopyInResponse after it has forwarded
    the CopyDone and every Sync (the first and the third are inside the copy: ignored)."""
    g, mode = gw
    with pgraw.login(*g.address("pg"), idp.token()) as c:
        c.send(P(COPY_SQL) + BIND + EXECUTE + SYNC + FLUSH + ROWS + SYNC + DONE + SYNC
               + pgraw.typed(b"Q", b"SELECT 1\0"))
        got = until(c, b"Z")
        assert kinds(got) == [b"1", b"2", b"G", b"C", b"Z"] and tag(got) == b"COPY 2", got
        assert kinds(until(c, b"Z")) == [b"T", b"D", b"C", b"Z"]
        still_usable(c, mode == "masking")
    assert copied(pg) == "1:one,2:two"


def test_copy_fail_after_a_sync(gw, idp, pg):
    g, mode = gw
    with pgraw.login(*g.address("pg"), idp.token()) as c:
        c.send(P(COPY_SQL) + BIND + EXECUTE + SYNC)
        assert kinds(until(c, b"G")) == [b"1", b"2", b"G"]
        c.send(ROWS + pgraw.typed(b"f", b"client gave up\0") + SYNC)
        got = until(c, b"Z")
        assert kinds(got) == [b"E", b"Z"], got
        assert pgraw.error_fields(got[0][1])["C"] == "57014"
        still_usable(c, mode == "masking")
    assert copied(pg) == ""


def test_failed_copy_statement_then_stray_copy_done(gw, idp, pg):
    """A COPY the server refuses never enters copy-in: the client's CopyDone is dropped by the
    server and both Syncs are answered."""
    g, mode = gw
    with pgraw.login(*g.address("pg"), idp.token()) as c:
        c.send(P(b"COPY copysync.nosuch FROM STDIN") + BIND + EXECUTE + SYNC + DONE + SYNC)
        got = until(c, b"Z")
        assert kinds(got) == [b"1", b"2", b"E", b"Z"], got
        assert pgraw.error_fields(got[2][1])["C"] == "42P01"
        assert kinds(until(c, b"Z")) == [b"Z"]
        # the same by simple Query, pipelined: the CopyDone sits between two Queries
        c.send(pgraw.typed(b"Q", b"COPY copysync.nosuch FROM STDIN\0") + DONE
               + pgraw.typed(b"Q", b"SELECT 1\0"))
        got = until(c, b"Z")
        assert kinds(got) == [b"E", b"Z"] and pgraw.error_fields(got[0][1])["C"] == "42P01"
        assert kinds(until(c, b"Z")) == [b"T", b"D", b"C", b"Z"]
        still_usable(c, mode == "masking")


def test_simple_query_copy_with_a_sync_inside(gw, idp, pg):
    g, mode = gw
    with pgraw.login(*g.address("pg"), idp.token()) as c:
        c.send(pgraw.typed(b"Q", COPY_SQL + b"\0"))
        assert kinds(until(c, b"G")) == [b"G"]
        c.send(ROWS + SYNC + FLUSH + DONE)
        got = until(c, b"Z")
        assert kinds(got) == [b"C", b"Z"] and tag(got) == b"COPY 2", got
        still_usable(c, mode == "masking")
    assert copied(pg) == "1:one,2:two"


def test_psycopg_and_asyncpg_copy(gw, idp, pg):
    g, mode = gw
    with psycopg.connect(conninfo(g, idp.token()), autocommit=True) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY copysync.t (id, ssn) FROM STDIN") as cp:
                cp.write_row((1, "one"))
            with pytest.raises(RuntimeError):
                with cur.copy("COPY copysync.t (id, ssn) FROM STDIN") as cp:
                    cp.write_row((9, "nine"))
                    raise RuntimeError("abandon")   # psycopg sends CopyFail, raises this
            cur.execute("SELECT ssn FROM copysync.people")
            assert cur.fetchone()[0] == ("*******6789" if mode == "masking" else "123-45-6789")

    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=g.port("pg"), user="agent-7",
                                     password=idp.token(), database="appdb", ssl=False)
        try:
            await conn.copy_records_to_table("t", schema_name="copysync",
                                             records=[(2, "two")], columns=["id", "ssn"])
            return await conn.fetchval("SELECT ssn FROM copysync.people")
        finally:
            await conn.close()

    assert asyncio.run(run()) == ("*******6789" if mode == "masking" else "123-45-6789")
    assert copied(pg) == "1:one,2:two"


# --- the relay's own unit count (issue 17): guardrails and approvals after pg8000's COPY --------
#
# The relay counts units (Query, Sync: one ReadyForQuery each) to tell whether anything is still
# in flight and which batch a prepared name belongs to. Counted, the Sync pg8000 sends inside the
# copy left it one unit ahead for the rest of the session, in every mode: a statement with a
# backslash after a non-ASCII byte was refused as if one were in flight
# (client-encoding-in-flight), and a Parse the server refused was still pending a batch later,
# so the next ParseComplete confirmed it: a SELECT under that name was held for approval.

APPROVE = [{"name": "deletes-need-a-human", "patterns": [r"\bdelete\b"], "action": "approve",
            "approvers": ["dba"], "timeout": "1s"}]
HIDING = "SELECT '竹\\'"        # 竹 ends in 0xB9: BIG5 and friends would take the 0x5C into it


@pytest.fixture(scope="module", params=["masking", "recording", "plain"])
def guarded(request, pg, idp, schema, tmp_path_factory) -> Iterator[tuple[Gateway, str]]:
    kw = {"guardrail": APPROVE, "allow_groups": ["agents", "dba"]}
    if request.param == "masking":
        kw["mask"] = MASKS
    cfg = gateway_config(pg, idp, **kw)
    if request.param == "recording":
        cfg["audit"] = {"path": str(tmp_path_factory.mktemp("audit") / "audit"),
                        "flush_interval": "50ms"}
    elif request.param == "plain":
        cfg["audit"] = {"enabled": False}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g, request.param


def named_parse(name: bytes, sql: bytes) -> bytes:
    return pgraw.typed(b"P", name + b"\0" + sql + b"\0" + struct.pack("!H", 0))


def bind_named(stmt: bytes) -> bytes:
    return pgraw.typed(b"B", b"\0" + stmt + b"\0" + struct.pack("!HHH", 0, 0, 0))


def after_the_copy(c: pgraw.RawConn) -> list:
    """What a session answers to: a Query with a backslash after a non-ASCII byte; a Parse of
    a DELETE under "s" the server refuses; then "s" as a SELECT, run in its own batch and in
    the next one."""
    seen = []
    c.send(pgraw.typed(b"Q", HIDING.encode() + b"\0"))
    got = until(c, b"Z")
    seen.append((kinds(got), [b for k, b in got if k == b"D"],
                 [pgraw.error_fields(b)["C"] for k, b in got if k == b"E"]))
    c.send(named_parse(b"s", b"DELETE FROM copysync.nosuch") + SYNC)
    got = until(c, b"Z")
    seen.append((kinds(got), [pgraw.error_fields(b)["C"] for k, b in got if k == b"E"]))
    c.send(named_parse(b"s", b"SELECT 1") + bind_named(b"s") + EXECUTE + SYNC)
    seen.append(kinds(until(c, b"Z")))
    c.send(bind_named(b"s") + EXECUTE + SYNC)
    got = until(c, b"Z")
    seen.append((kinds(got), [pgraw.error_fields(b).get("M") for k, b in got if k == b"E"]))
    return seen


def test_guardrails_and_approvals_after_pg8000_copy(guarded, idp, pg):
    g, mode = guarded
    with pgraw.login(*g.address("pg"), idp.token()) as c:
        fresh = after_the_copy(c)
    assert fresh == [([b"T", b"D", b"C", b"Z"], [fresh[0][1][0]], []),
                     ([b"E", b"Z"], ["42P01"]),
                     [b"1", b"2", b"D", b"C", b"Z"],
                     ([b"2", b"D", b"C", b"Z"], [])], fresh
    assert "竹\\".encode() in fresh[0][1][0]
    with pgraw.login(*g.address("pg"), idp.token()) as c:
        c.send(P(COPY_SQL) + FLUSH + SYNC)
        assert kinds(until(c, b"Z")) == [b"1", b"Z"]
        c.send(DESCRIBE_S + FLUSH + SYNC + BIND + FLUSH)
        assert kinds(until(c, b"Z")) == [b"t", b"n", b"Z"]
        c.send(EXECUTE + FLUSH + SYNC)
        assert kinds(until(c, b"G")) == [b"2", b"G"]
        c.send(ROWS + DONE + SYNC)
        assert kinds(until(c, b"Z")) == [b"C", b"Z"]
        assert after_the_copy(c) == fresh
        still_usable(c, mode == "masking")
    assert copied(pg) == "1:one,2:two"


def test_guardrails_after_pipelined_and_simple_query_copies(guarded, idp, pg):
    """The Syncs already sent when the CopyInResponse arrives (pipelined), and one sent inside
    a simple Query's copy, are no units either: nothing is in flight afterwards."""
    g, mode = guarded
    with pgraw.login(*g.address("pg"), idp.token()) as c:
        c.send(P(COPY_SQL) + BIND + EXECUTE + SYNC + FLUSH + ROWS + SYNC + DONE + SYNC)
        assert kinds(until(c, b"Z")) == [b"1", b"2", b"G", b"C", b"Z"]
        c.send(pgraw.typed(b"Q", COPY_SQL + b"\0"))
        assert kinds(until(c, b"G")) == [b"G"]
        c.send(ROWS + SYNC + DONE)
        assert kinds(until(c, b"Z")) == [b"C", b"Z"]
        c.send(pgraw.typed(b"Q", HIDING.encode() + b"\0"))
        assert kinds(until(c, b"Z")) == [b"T", b"D", b"C", b"Z"]
        still_usable(c, mode == "masking")
    assert copied(pg) == "1:one,1:one,2:two,2:two"


# --- the same count in-process, at the moment the CopyInResponse arrives ------------------------
# (Through a server the count is right again once the copy's ReadyForQuery comes; what is in
# flight between the CopyInResponse and it is only seen here.)

@pytest.mark.parametrize("mode", ["masking", "recording", "plain"])
def test_units_at_the_copy_in_response(mode):
    from relaywire import Wire, complete, message, ready
    w = Wire(mask=mode == "masking", record=mode != "plain")
    r = w.relay
    G = message(b"G", b"\0" + struct.pack("!H", 0))
    q = lambda sql: pgraw.typed(b"Q", sql + b"\0")
    # pipelined: a Sync inside the copy, its end, a Sync after and a Query, all before the G
    w.from_client(P(COPY_SQL) + BIND + EXECUTE + SYNC + FLUSH + ROWS + SYNC + DONE + SYNC
                  + q(b"SELECT 1"))
    assert (r.units_sent, r.units_done) == (4, 0)
    # (masking: the relay described the portal before the Execute, and takes the NoData)
    w.from_server(message(b"1") + message(b"2") + (message(b"n") if mode == "masking" else b"")
                  + G)
    # the two Syncs up to the CopyDone are done; the last Sync and the Query are in flight
    assert (r.units_sent, r.units_done, r.in_copy_in) == (4, 2, False)
    w.from_server(complete(b"COPY 2") + ready() + complete(b"SELECT 1") + ready())
    assert (r.units_sent, r.units_done) == (4, 4)
    # a refused simple-Query COPY's stray CopyDone, then a COPY by Query with a Sync inside
    w.from_client(q(b"COPY nosuch FROM STDIN") + DONE + q(COPY_SQL))
    w.from_server(pgraw.typed(b"E", b"SERROR\0C42P01\0Mno\0\0") + ready() + G)
    assert (r.units_sent, r.units_done, r.in_copy_in) == (6, 5, True)
    w.from_client(ROWS + SYNC + DONE)
    assert (r.units_sent, r.in_copy_in) == (6, False)
    w.from_server(complete(b"COPY 2") + ready())
    assert (r.units_sent, r.units_done) == (6, 6)
