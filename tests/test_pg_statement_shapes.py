"""What masking reads from a statement's text, cached by its shape (hoopwire._sqlnorm's
statement_shape: literals and integers set aside), in process: no server. The guardrails' side
of the same cache is in test_policy_engine.py; a reload through a real gateway in
test_pg_guardrails.py.
"""

from __future__ import annotations

from relaywire import USERS_COLUMNS, USERS_OID, _relations, filled_masking, mask_engine

from hoopwire._sqlnorm import statement_shape
from hoopwire.pg.masker import NO_INFO

PEOPLE_OID = USERS_OID + 1
PEOPLE_COLUMNS = [(str(PEOPLE_OID), "public", "people", "r", "1", "id", "23"),
                  (str(PEOPLE_OID), "public", "people", "r", "2", "ssn", "25")]


def test_statement_shape_sets_integers_aside():
    key, code, full = statement_shape(b"SELECT ssn FROM users WHERE id = 48213 AND n = 1", True)
    assert code == [b"select ssn from users where id = 0 and n = 1"] and full[0] is code[0]
    assert key == code[0]
    assert statement_shape(b"select ssn from users where id=7 and n=1")[0] == \
        b"select ssn from users where id=0 and n=1"
    # kept: decimals, hex, 1_000, parameters, names with digits; literals in the full view
    key, code, full = statement_shape(b"select 1.5, 0x1F, 1_000, $12, t1 from t where k = 'a'",
                                      True)
    assert code == [b"select 1.5, 0x1f, 1_000, $12, t1 from t where k = '?'"]
    assert full == [b"select 1.5, 0x1f, 1_000, $12, t1 from t where k = 'a'"]
    assert key == code[0] + b"\1" + full[0]
    assert statement_shape(b"select 1; select 2", False)[0] == b"select 1\0select 0"
    # no key where the text reads two ways, or holds the key's separators
    assert statement_shape(b"select 'a\\b'") is None
    assert statement_shape(b"select 1\0") is None and statement_shape(b"select \1") is None


def test_integers_share_what_masking_reads():
    conn = filled_masking(mask_engine(("public.users.ssn",)))
    a = conn.statement("appdb", b"SELECT ssn FROM users WHERE id = 7")
    b = conn.statement("appdb", b"SELECT ssn FROM users WHERE id = 8")
    assert a.mentions and b.mentions
    assert b.sql == b"SELECT ssn FROM users WHERE id = 8"     # lineage reads its own text
    plain = conn.statement("appdb", b"SELECT abalance FROM accounts WHERE aid = 9")
    assert not plain.mentions
    assert len(conn._shape_facts) == 2
    assert conn.statement("appdb", b"  -- nothing\n") is NO_INFO
    # a COPY's options are read from its own text every time
    c = conn.statement("appdb", b"COPY users TO STDOUT WITH (FORMAT csv)")
    assert c.copies and c.copies[0].csv and len(conn._shape_facts) == 2


def test_a_catalog_read_changes_a_cached_shape():
    """Names move with the catalog: a shape judged before a read is judged again after it."""
    conn = filled_masking(mask_engine(("public.people.ssn",)))
    assert not conn.statement("appdb", b"SELECT id FROM people WHERE id = 7").mentions
    cat = conn.catalog("appdb")
    cat.relations = _relations(USERS_COLUMNS + PEOPLE_COLUMNS)
    cat.on_load(cat)
    assert conn.statement("appdb", b"SELECT id FROM people WHERE id = 8").mentions
