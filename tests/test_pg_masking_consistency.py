"""One masked column, masked the same way whichever way it is read (issue 18).

`COPY (SELECT id, ssn FROM users) TO STDOUT` has no RowDescription to name its columns; it must
still mask ssn by ssn's own rule (here partial, the last 4 kept), as `SELECT id, ssn` and
`COPY users (id, ssn)` do, and keep `****` only where the value is computed from ssn. What
it masked is counted (audit record, replay). The error-text counter counts server text the
gateway withheld, never the gateway's own block errors. Every check compares with the server
read directly: masked columns masked, every other value exactly as the server sent it.
"""

from __future__ import annotations

import re
import urllib.request

import psycopg
import pytest

import pgraw
from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway, wait_until
from hoopwire.audit import read_records

SCHEMA = """
SET ROLE app;
DROP SCHEMA IF EXISTS mcons CASCADE;
CREATE SCHEMA mcons;
CREATE TABLE mcons.users (id int PRIMARY KEY, name text, ssn text);
INSERT INTO mcons.users VALUES (1, 'Alice', '123-45-6789'), (2, 'Bob', '987-65-4321'),
    (3, 'Carol', '555-12-3456');
CREATE VIEW mcons.v AS SELECT id, ssn FROM mcons.users;
CREATE VIEW mcons.vx AS SELECT id, substr(ssn, 1, 6) AS ssn FROM mcons.users;
"""

MASKS = [{"columns": ["mcons.users.ssn"], "strategy": "partial", "keep": 4}]
BLOCK = [{"name": "no-blockme", "patterns": [r"\bblockme\b"], "action": "block"}]
PARTIAL = ["*******6789", "*******4321", "*******3456"]


@pytest.fixture(scope="module")
def schema(pg):
    pg.sql(SCHEMA, dbname=APP_DB)
    yield
    pg.sql("DROP SCHEMA IF EXISTS mcons CASCADE", dbname=APP_DB)


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mcons-audit")


@pytest.fixture(scope="module")
def mgw(pg, idp, schema, audit_dir):
    cfg = gateway_config(pg, idp, mask=MASKS, guardrail=BLOCK)
    cfg["audit"] = {"path": str(audit_dir / "log"), "flush_interval": "50ms"}
    cfg["state"] = {"url": f"sqlite:///{audit_dir}/state.db"}
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def direct(pg):
    return psycopg.connect(host="127.0.0.1", port=pg.port, user="app", dbname=APP_DB,
                           password=pg.passwords["app"], sslmode="disable", autocommit=True)


def copy_rows(conn, sql: str) -> list[list[str]]:
    """A text COPY's lines split into values (no value here holds a tab or an escape)."""
    with conn.cursor() as cur, cur.copy(sql) as cp:
        data = b"".join(bytes(b) for b in cp).decode()
    return [line.split("\t") for line in data.splitlines()]


def select_rows(conn, sql: str) -> list[list[str]]:
    return [[str(v) for v in row] for row in conn.execute(sql).fetchall()]


def test_copy_query_masks_a_plain_column_by_its_rule(mgw, idp, pg):
    sql = "SELECT id, ssn FROM mcons.users ORDER BY id"
    with direct(pg) as d:
        raw = copy_rows(d, f"COPY ({sql}) TO STDOUT")
    assert [r[1] for r in raw] == ["123-45-6789", "987-65-4321", "555-12-3456"]
    with psycopg.connect(conninfo(mgw, idp.token()), autocommit=True) as c:
        selected = select_rows(c, sql)
        copied = copy_rows(c, f"COPY ({sql}) TO STDOUT")
        table = copy_rows(c, "COPY mcons.users (id, ssn) TO STDOUT")
        # the same read through a view over the column, and written with qualified names
        view = copy_rows(c, "COPY (SELECT * FROM mcons.v ORDER BY id) TO STDOUT")
        qualified = copy_rows(c, "COPY (SELECT mcons.users.id, mcons.users.ssn "
                                 "FROM mcons.users ORDER BY 1) TO STDOUT")
        aliased = copy_rows(c, "COPY (SELECT u.id, u.ssn AS s FROM mcons.users u "
                               "ORDER BY u.id) TO STDOUT")
    expected = [[r[0], p] for r, p in zip(raw, PARTIAL)]
    assert selected == expected
    assert copied == expected
    assert sorted(table) == expected
    assert view == expected
    assert aliased == expected
    assert qualified == expected


def test_copy_query_csv_header_keeps_the_names(mgw, idp):
    sql = "SELECT id, ssn, name FROM mcons.users ORDER BY id"
    with psycopg.connect(conninfo(mgw, idp.token()), autocommit=True) as c:
        with c.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)") as cp:
            lines = b"".join(bytes(b) for b in cp).decode().splitlines()
    assert lines == ["id,ssn,name", "1,*******6789,Alice", "2,*******4321,Bob",
                     "3,*******3456,Carol"]


def test_computed_values_stay_withheld_whole(mgw, idp, pg):
    """A value computed from ssn, or read through a view or a subquery that computes it,
    is no plain column: `****`, in a COPY as in a SELECT (the partial rule on
    `substr(ssn, 1, 6)` would show its last 4: characters 3-6)."""
    reads = ["SELECT id, substr(ssn, 1, 6) FROM mcons.users ORDER BY id",
             "SELECT id, ssn FROM mcons.vx ORDER BY id",
             "SELECT s.id, s.ssn FROM (SELECT id, substr(ssn, 1, 6) AS ssn FROM mcons.users) s "
             "ORDER BY s.id",
             # (no ORDER BY: a sorted set operation reads every column into every output)
             "SELECT id, ssn FROM mcons.users UNION ALL SELECT 4, 'x'"]
    with psycopg.connect(conninfo(mgw, idp.token()), autocommit=True) as c:
        for sql in reads:
            selected = sorted(select_rows(c, sql))
            copied = sorted(copy_rows(c, f"COPY ({sql}) TO STDOUT"))
            assert copied == selected, sql
            assert all(r[1] == "****" for r in copied), (sql, copied)
            assert [r[0] for r in copied] == [str(i) for i in range(1, len(copied) + 1)], sql


def _statement_masked(audit_dir, marker: str) -> list[int]:
    out = []
    for r in read_records(str(audit_dir / "log")):
        if r.get("type") == "statement" and marker in (r.get("statement") or ""):
            out.append(r["masked"])
    return out


def test_copy_counts_what_it_masked(mgw, idp, audit_dir):
    """Three rows, one masked value each: the audit record says 3 for the SELECT, for the COPY
    of it, and for a COPY whose values are withheld whole (the unresolved rule's masks)."""
    reads = {"cnt_select": "SELECT id, ssn AS cnt_select FROM mcons.users",
             "cnt_copy": "COPY (SELECT id, ssn AS cnt_copy FROM mcons.users) TO STDOUT",
             "cnt_computed": "COPY (SELECT id, upper(ssn) AS cnt_computed FROM mcons.users) "
                             "TO STDOUT"}
    with psycopg.connect(conninfo(mgw, idp.token()), autocommit=True) as c:
        for sql in reads.values():
            if sql.startswith("COPY"):
                copy_rows(c, sql)
            else:
                c.execute(sql).fetchall()
        c.execute("SELECT 1 AS cnt_done")
    wait_until(lambda: _statement_masked(audit_dir, "cnt_done"), 15, "audit records")
    got = {k: _statement_masked(audit_dir, k) for k in reads}
    assert got == {k: [3] for k in reads}, got


def _error_text_count(gw) -> float:
    text = urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10).read().decode()
    m = re.search(r'hoopwire_masked_values_total\{connection="pg",kind="column",'
                  r'name="error-text"\} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_error_text_counts_server_text_only(mgw, idp):
    """Four guardrail blocks (two simple Queries, two extended) are the gateway's own errors:
    nothing withheld, nothing counted. One server error that quotes a value is withheld and
    counted once."""
    before = _error_text_count(mgw)
    host, port = mgw.address("pg")
    with pgraw.login(host, port, idp.token()) as raw:
        for _ in range(2):
            raw.send(pgraw.typed(b"Q", b"SELECT 1 AS blockme\0"))
            kind, body = raw.read_message(10.0)
            assert kind == b"E"
            f = pgraw.error_fields(body)
            assert f["C"] == "42501" and "no-blockme" in f["M"], f
            assert raw.read_message(10.0)[0] == b"Z"
    with psycopg.connect(conninfo(mgw, idp.token()), autocommit=True) as c:
        for _ in range(2):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-blockme"):
                c.execute("SELECT %s::text AS blockme", ["x"])
    assert _error_text_count(mgw) == before
    with psycopg.connect(conninfo(mgw, idp.token()), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as e:
            c.execute("SELECT ssn::int FROM mcons.users WHERE id = 1")
        assert "6789" not in str(e.value)
        assert "withheld by hoopwire masking" in str(e.value)
    assert _error_text_count(mgw) == before + 1


def test_binary_copy_of_a_query_stays_typed(mgw, idp):
    """Binary COPY carries no types, and of a query the gateway names no column: under
    unresolved_columns = "mask" (the default) every value is masked whole, as NULL -- valid
    in any type (`****` read as an int4 is 707406378). Binary COPY of the table is masked
    like a binary result, by each column's rule and type."""
    with psycopg.connect(conninfo(mgw, idp.token()), autocommit=True) as c:
        with c.cursor() as cur, cur.copy("COPY (SELECT id, ssn FROM mcons.users) TO STDOUT "
                                         "WITH (FORMAT binary)") as cp:
            cp.set_types(["int4", "text"])
            assert list(cp.rows()) == [(None, None)] * 3
        with c.cursor() as cur, cur.copy("COPY mcons.users (id, ssn) TO STDOUT "
                                         "WITH (FORMAT binary)") as cp:
            cp.set_types(["int4", "text"])
            got = sorted(cp.rows())
        assert got == [(1, "*******6789"), (2, "*******4321"), (3, "*******3456")]
        assert c.execute("SELECT 1").fetchone() == (1,)
