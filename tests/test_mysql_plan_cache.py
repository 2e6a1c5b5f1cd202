"""MySQL result plans keyed by the raw bytes of the column definitions (ColumnDefs).

The relay hands the masker a result's column definitions as the upstream sent them; the masker
keys its plan cache by those bytes and decodes them only on a miss. A stale plan leaks data, so
these check that every other input of a plan still tells results apart when the bytes are the
same: the statement (its lineage), the catalog read, the default schema -- and that different
bytes under one statement do not share a plan. Real MariaDB (tests/mysqlfixtures.py); the
definitions are the server's, re-encoded as the wire carries them.
"""

from __future__ import annotations

import struct

from hoopwire.mysql import packets as ref
from hoopwire.mysql._wire import ColumnDefs
from hoopwire.mysql.masker import SessionMasker

from test_mysql_masking import (DB, apply, client, db, masking, results,  # noqa: F401
                                run)


def wire(cols) -> ColumnDefs:
    """The definitions as the relay collects them: each payload after its 3-byte length."""
    out = []
    for c in cols:
        p = ref.column_definition(*c)
        out.append(struct.pack("<I", len(p))[:3] + p)
    return ColumnDefs(b"".join(out))


def server_result(db, sql):
    with client(db) as c:
        (cols, rows), = results(c, sql)
    return cols, rows


def test_column_defs_decode_as_the_tuples(db):
    cols, _rows = server_result(db, "SELECT id, name, ssn FROM users")
    defs = wire(cols)
    assert list(defs) == cols and len(defs) == 3 and defs[2] == cols[2]


def test_same_definitions_different_lineage_masked_differently(db):
    """Both statements answer one column `v` of the same definition bytes; only the second
    reads ssn. A key without the statement would hand the second the first's plan."""
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    one = "SELECT CAST(name AS CHAR(40)) AS v FROM users WHERE id = 1"
    two = "SELECT CAST(ssn AS CHAR(40)) AS v FROM users WHERE id = 1"
    cols1, rows1 = server_result(db, one)
    cols2, rows2 = server_result(db, two)
    assert wire(cols1).raw == wire(cols2).raw
    info1 = masker.statement(one.encode())
    assert apply(masker.result_plan(info1, 0, wire(cols1), False), rows1) == [[b"Ada"]]
    # cached: the same statement and bytes reuse the plan
    p = masker.result_plan(info1, 0, wire(cols1), False)
    assert masker.result_plan(info1, 0, wire(cols1), False) is p
    info2 = masker.statement(two.encode())
    got = apply(masker.result_plan(info2, 0, wire(cols2), False), rows2)
    assert got == [[b"****"]], got


def test_different_definitions_one_statement_not_shared(db):
    """One statement info (as a prepared statement keeps it), two results whose definitions
    differ only in org_name: the plan of the one from name must not serve the one from ssn."""
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    sql = "SELECT name AS x FROM users WHERE id = 1"
    info = masker.statement(sql.encode())
    cols1, rows1 = server_result(db, sql)
    cols2, rows2 = server_result(db, "SELECT ssn AS x FROM users WHERE id = 1")
    assert [c[4] for c in cols1] == ["name"] and [c[4] for c in cols2] == ["ssn"]
    assert apply(masker.result_plan(info, 0, wire(cols1), False), rows1) == [[b"Ada"]]
    got = apply(masker.result_plan(info, 0, wire(cols2), False), rows2)
    assert got == [[b"****"]], got


def test_catalog_read_between_identical_results_changes_the_plan(db):
    """The view is redefined to read ssn; its definition bytes stay the same. After the
    catalog is read again the same statement and bytes must get a new plan."""
    db.sql(f"CREATE OR REPLACE VIEW {DB}.v_d3 AS SELECT id, CAST(name AS CHAR(40)) AS a "
           f"FROM {DB}.users")
    try:
        conn = masking(db)
        masker = SessionMasker(conn, DB)
        sql = "SELECT v_d3.a, u.ssn FROM v_d3 JOIN users u ON u.id = v_d3.id WHERE u.id = 1"
        info = masker.statement(sql.encode())
        cols, rows = server_result(db, sql)
        plan = masker.result_plan(info, 0, wire(cols), True)
        assert apply(plan, rows) == [[b"Ada", b"****"]]
        assert masker.result_plan(info, 0, wire(cols), True) is plan
        db.sql(f"CREATE OR REPLACE VIEW {DB}.v_d3 AS SELECT id, CAST(ssn AS CHAR(40)) AS a "
               f"FROM {DB}.users")
        cols2, rows2 = server_result(db, sql)
        assert wire(cols2).raw == wire(cols).raw
        conn.catalog.invalidate()                  # as a DDL statement or the TTL does
        run(conn.catalog.load())
        got = apply(masker.result_plan(info, 0, wire(cols2), True), rows2)
        assert got == [[b"****", b"****"]], got
    finally:
        db.sql(f"DROP VIEW IF EXISTS {DB}.v_d3")


def test_schema_change_between_identical_results_changes_the_plan(db):
    """Unqualified names are placed in the default schema: after USE of another schema and
    back, the same bytes are planned again (the cache was cleared, not reused across)."""
    conn = masking(db)
    masker = SessionMasker(conn, DB)
    sql = "SELECT CAST(ssn AS CHAR(40)) AS v FROM users WHERE id = 1"
    info = masker.statement(sql.encode())
    cols, rows = server_result(db, sql)
    p1 = masker.result_plan(info, 0, wire(cols), False)
    assert apply(p1, rows) == [[b"****"]]
    masker.schema_changed("other")
    assert masker.result_plan(info, 0, wire(cols), False) is not p1


# -- the relay's side: what it hands the masker -----------------------------------------------

def test_relay_hands_the_definitions_as_sent():
    """Each result's definitions, each after its 3-byte length, and only that result's (the
    buffer starts again at every column count); decoded, the tuples the masker reads."""
    from test_mysql_relay import (CAPS, CAPS_EOF, PlanningMasker, Wire, coldef, com_query,
                                  result)

    class Keys(PlanningMasker):
        def result_plan(self, info, index, columns, binary):
            self.raws = getattr(self, "raws", []) + [columns.raw]
            return super().result_plan(info, index, columns, binary)

    def framed(*defs):
        return b"".join(struct.pack("<I", len(d))[:3] + d for d in defs)

    for caps in (CAPS, CAPS_EOF):
        m = Keys()
        w = Wire(caps=caps, masker=m)
        deprecate = caps == CAPS
        w.send(com_query(b"SELECT id, ssn FROM customers"))
        w.answer(result([[b"1", b"123-45-6789"]], names=("id", "ssn"), deprecate=deprecate))
        w.send(com_query(b"SELECT ssn FROM customers"))
        got = w.answer(result([[b"123-45-6789"]], names=("ssn",), deprecate=deprecate))
        assert b"123-45-6789" not in got
        assert m.raws == [framed(coldef("id"), coldef("ssn")), framed(coldef("ssn"))]
        assert m.calls[0][2] == ["id", "ssn"] and m.calls[1][2] == ["ssn"]
