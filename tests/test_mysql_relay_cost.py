"""What the relay remembers to keep guarded and masked point selects out of Python (issue 20).

A COM_QUERY text of a shape judged before (no verdict; masking's reading of it) and a result
whose plan the masker made before are served by the relay from memory (Relay.memo, PlanMemo):
ext/hoopwire/mysql/_relay.pxi, _results.pxi. A memory that outlives what it stands for lets a
value through, so these check what it must keep: its key tells texts apart at least as finely
as the guardrail engine's shape and masking's text_key; and a catalog read (here: a view
redefined through the gateway) is seen by the very next text of a remembered shape and the
very next execute of a prepared statement. Speed is measured in bench/, never asserted here.
"""

from __future__ import annotations

try:
    import _mysql_connector  # noqa: F401  (before hashlib's libcrypto: see test_mysql_masking)
except ImportError:
    pass

import itertools

import pytest

from hoopwire.mysql._sqllex import statement_memo_key, statement_shape
from hoopwire.mysql.masker import text_key

from helpers import Gateway
from mysqlgw import (connector_connect, mysql_gateway_config, mysql_gateway_env,
                     pymysql_connect)
from test_mysql_masking import DB, SSN1, SSN2, db  # noqa: F401

# -- the key ------------------------------------------------------------------------------------

TEMPLATES = [
    "SELECT c FROM sbtest{t} WHERE id={n}",
    "select c from sbtest{t} where id = {n}",
    "SELECT c FROM sbtest{t} WHERE id={n};",
    "SELECT c FROM Sbtest{t} WHERE id={n}",
    "DELETE FROM sink WHERE {n}",
    "DELETE FROM sink WHERE NOT {n}",
    "UPDATE sink SET v = v WHERE id = {n} /* note {t} */",
    "SELECT {n}; DROP TABLE sink",
    "SELECT c FROM t # {n}\nWHERE id = {n}",
    "SELECT c FROM t -- x\nWHERE id={n}",
    "SELECT c FROM t WHERE id IN ({n}, {t})",
    "SELECT @{n}",
    "SELECT c FROM t WHERE id = {n} LIMIT {t}",
    "SELECT 1.{n}, {n}e5, 0x{n} FROM t",
    "SET max_statement_time = {n}",
]
NUMBERS = ["0", "1", "00", "01", "2", "7", "10", "48213", "007", "9999999999"]


def test_one_key_means_one_engine_shape_and_one_text_key():
    """Texts that share a memo key share the guardrail engine's shape (either view) and
    masking's text_key: whatever the relay remembers for one holds for all of them."""
    by_key: dict[bytes, list[bytes]] = {}
    for tpl, n, t in itertools.product(TEMPLATES, NUMBERS, ("1", "3")):
        sql = tpl.format(n=n, t=t).encode()
        key = statement_memo_key(sql)
        if key is not None:
            by_key.setdefault(key, []).append(sql)
    shared = [texts for texts in by_key.values() if len(texts) > 1]
    assert len(shared) >= 10, "the corpus should have texts that share keys"
    for texts in by_key.values():
        for full in (True, False):
            assert len({statement_shape(s, full)[0] for s in texts}) == 1, texts
        assert len({text_key(s) for s in texts}) == 1, texts


def test_integer_classes_keep_their_keys_apart():
    """unbounded-write reads WHERE 0, WHERE 1, WHERE 01 and WHERE 5 apart: so does the key."""
    keys = {statement_memo_key(f"DELETE FROM sink WHERE {n}".encode()) for n in
            ("0", "1", "01", "5")}
    assert len(keys) == 4 and None not in keys
    assert statement_memo_key(b"DELETE FROM sink WHERE 5") == \
        statement_memo_key(b"DELETE FROM sink WHERE 73")


@pytest.mark.parametrize("sql", [
    b"SELECT c FROM t WHERE name = 'x'",            # a literal: the full view differs
    b'SELECT c FROM t WHERE name = "x"',            # a string, or a name under ANSI_QUOTES
    b"SELECT `c` FROM t",
    b"SELECT /*! c */ FROM t",                      # executable comments
    b"SELECT /*M!100000 c */ FROM t",
    b"SELECT /*!50700 c */ FROM t",
    b"SELECT c FROM t ORDER BY 2",                  # text_key keeps these numbers
    b"SELECT c, COUNT(*) FROM t GROUP BY c HAVING 1",
    b"PREPARE s FROM @q",
    b"EXECUTE s",
    b"CALL p(1)",
    b"SELECT c FROM t\xa0WHERE id = 1",             # a byte some charsets read as a space
    b"SELECT 'caf\xc3\xa9'",
    b"SELECT 1\x00",
    b"",
])
def test_texts_the_key_does_not_cover(sql):
    assert statement_memo_key(sql) is None


# -- end to end: what a remembered shape or plan must not outlive ----------------------------------

@pytest.fixture(scope="module")
def costgw(db, idp, pki):  # noqa: F811
    cfg = mysql_gateway_config(
        db, idp, pki, database=DB,
        guardrail=[{"pack": p} for p in ("destructive-ddl", "unbounded-write",
                                          "privilege-changes", "server-side-io",
                                          "session-tampering")],
        mask=[{"columns": [f"{DB}.users.ssn"], "strategy": "redact"}],
        # the test redefines a view over ssn through the gateway, which "refuse" blocks
        masked_writes="allow")
    # one worker: the two sessions below share one catalog (a worker reads its own)
    with Gateway(cfg, env=mysql_gateway_env(db), workers=1) as g:
        g.pki = pki
        yield g


def _one(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_remembered_shape_sees_the_catalog_read_after_a_view_changes(costgw, idp, db):  # noqa: F811
    """A view that read a name is redefined, through the gateway, to read ssn. The next text
    of the shape the relay remembered (new literal) and the next execute of a prepared
    statement whose plan it remembered are masked: both were planned again after the read."""
    # CAST to one type and length: the column definitions stay byte for byte the same when the
    # view changes, so only the catalog read can tell the two results apart
    db.sql(f"CREATE OR REPLACE VIEW {DB}.v_cost AS SELECT id, CAST(name AS CHAR(40)) AS a "
           f"FROM {DB}.users")
    # autocommit: an open transaction's metadata lock on the view would hold the DDL
    text = pymysql_connect(costgw, idp.token(), database=DB, autocommit=True)
    prep = connector_connect(costgw, idp.token(), database=DB, autocommit=True)
    try:
        cur = prep.cursor(prepared=True)
        sel = "SELECT a FROM v_cost WHERE id = %s"

        def execute(i):
            cur.execute(sel, (i,))
            (row,) = cur.fetchall()
            return row[0].decode() if isinstance(row[0], (bytes, bytearray)) else row[0]
        for _ in range(3):        # the first of each judges and plans; then the memory serves
            assert _one(text, "SELECT a FROM v_cost WHERE id = 1") == (("Ada",),)
            assert _one(text, "SELECT a FROM v_cost WHERE id = 2") == (("Alan",),)
            assert execute(1) == "Ada" and execute(2) == "Alan"
        # a guardrail still blocks what it blocked, next to the remembered shapes
        with pytest.raises(Exception, match="blocked"):
            _one(text, "DELETE FROM sink WHERE 5")
        # the DDL goes through the gateway: the catalog is read again before the next
        # statement of this session, and its generation moves for every session
        _one(text, "CREATE OR REPLACE VIEW v_cost AS SELECT id, CAST(ssn AS CHAR(40)) AS a "
                   f"FROM {DB}.users")
        got = _one(text, "SELECT a FROM v_cost WHERE id = 2")
        assert got == (("****",),), got
        assert SSN2 not in str(got)
        # the prepared statement's session did not run the DDL; the read it started has landed
        # (the text session's statement waited for it), and the plan remembered from before
        # the read must not serve this execute
        got = execute(1)
        assert got == "****" and SSN1 not in got, got
    finally:
        text.close()
        prep.close()
        db.sql(f"DROP VIEW IF EXISTS {DB}.v_cost")
