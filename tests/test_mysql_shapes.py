"""MySQL guardrail verdicts cached by statement shape (hoopwire.mysql._sqllex.statement_shape:
integers written 0, 1, 00 or 2): in process over every MySQL pack's examples with their numbers
varied, and a reload changing a cached verdict through a real MariaDB gateway.
"""

from __future__ import annotations

import re
import signal

import pytest

from hoopwire.config import GuardrailConfig
from hoopwire.mysql._sqllex import statement_shape
from hoopwire.mysql.dialect import DIALECT
from hoopwire.mysql.packs import PACKS
from hoopwire.policy import PolicyEngine

import test_mysql_guardrails as guardrails
import test_mysql_redteam_ddl as redteam


def engine(*rules: GuardrailConfig, shaped: bool = True) -> PolicyEngine:
    """As a MySQL connection builds it (hoopwire/core/gateway.py), or without the shape cache."""
    rules = DIALECT.implied_guardrails(tuple(rules))
    return PolicyEngine(rules, views=DIALECT.statement_views, classifier=DIALECT.classifier(rules),
                        packs=DIALECT.packs, shape=DIALECT.statement_shape if shaped else None)


def every_pack(shaped: bool = True):
    return engine(*(GuardrailConfig(name=p, pack=p) for p in PACKS), shaped=shaped).for_groups(())


def blocked_by(policy, sql: bytes):
    v = policy.check(sql)
    return v.rule if v is not None and v.action == "block" else None


def test_statement_shape_sets_integers_aside():
    key, code, full = statement_shape(b"SELECT c FROM sbtest1 WHERE id=48213", True)
    assert code == [b"select c from sbtest1 where id=2"] and full[0] is code[0] and key == code[0]
    assert statement_shape(b"select c from sbtest1 where id=7")[0] == key
    # the four classes unbounded-write tells apart; decimals, exponents, hex and names kept
    assert statement_shape(b"DELETE FROM t WHERE 0 OR 1 OR 01 OR 007 OR 10 OR 5")[1] == \
        [b"delete from t where 0 or 1 or 00 or 00 or 2 or 2"]
    key, code, full = statement_shape(b"select 1.5, 1e5, 0x1F, 1abc, t1 from t where k = 'a'",
                                      True)
    assert code == [b"select 1.5, 1e5, 0x1f, 1abc, t1 from t where k = '?'"]
    assert full == [b"select 1.5, 1e5, 0x1f, 1abc, t1 from t where k = 'a'"]
    assert key == code[0] + b"\1" + full[0]
    assert statement_shape(b"select 1; select 3")[0] == b"select 1\0select 2"
    # no key where the first reading does not decide, or the bytes are not plainly ASCII
    for sql in (b"select 'a\\'b'", b'select "x"', b"select [x]", b"select /*!50700 1 */",
                b"select /*M! 1 */", b"PREPARE s FROM 'select 1'", b"EXECUTE IMMEDIATE 'x'",
                "select 'é'".encode(), b"select 1\xa0", b"select 1\0", b"select \1"):
        assert statement_shape(sql, True) is None, sql
    # a versioned comment every supported server runs is plain code
    assert statement_shape(b"select /*!40101 1 */")[1] == [b"select 1"]


def _sql(case) -> bytes:
    sql = case[1] if isinstance(case, tuple) else case
    return sql if isinstance(sql, bytes) else sql.encode()


EXAMPLES = sorted({_sql(c) for c in (guardrails.CAUGHT + guardrails.NEAR_MISSES
                                     + guardrails.E2E_CAUGHT + redteam.CAUGHT
                                     + redteam.NEAR_MISSES)})
NUMBERS = (b"0", b"1", b"5", b"01", b"00", b"10", b"2", b"48213", b"99999999999999999999")
# where the packs read an integer's value, written with every number in every place
WHERE = [b"DELETE FROM t WHERE %s", b"UPDATE t SET a = 3 WHERE %s", b"DELETE FROM t WHERE (%s)",
         b"DELETE FROM t WHERE NOT %s", b"DELETE FROM t WHERE %s LIMIT 4",
         b"delete from t where ((%s));", b"UPDATE t SET a=2 WHERE %s ORDER BY id"]
_INTEGER = re.compile(rb"(?<![\w.$'])\d+(?![\w.])")


def _varied() -> list[bytes]:
    out = []
    for sql in EXAMPLES:
        out.append(sql)
        if _INTEGER.search(sql):
            out += [_INTEGER.sub(n, sql) for n in NUMBERS]
    for form in WHERE:
        out += [form % n for n in NUMBERS]
        out += [form % (a + b" = " + b) for a in NUMBERS[:4] for b in NUMBERS[:4]]
        out += [form % (a + b"=" + b) for a in (b"1", b"11") for b in (b"1", b"10")]
    return out


VARIED = _varied()


@pytest.mark.parametrize("pack", list(PACKS))
def test_shape_verdicts_agree_with_each_pack_scanned_alone(pack):
    """Every example of every MySQL pack, numbers varied (the same text with 0, 1, 5, 01, 10
    ... in each integer's place, one after another): through one long-lived engine that caches
    by shape, each text gets the verdict the pack alone gives that text with no shape cache,
    whatever was judged before it -- forwards and backwards."""
    for texts in (VARIED, VARIED[::-1]):
        shaped = engine(GuardrailConfig(name=pack, pack=pack)).for_groups(())
        plain = engine(GuardrailConfig(name=pack, pack=pack), shaped=False).for_groups(())
        assert shaped._shape is not None and plain._shape is None
        for sql in texts:
            assert blocked_by(shaped, sql) == blocked_by(plain, sql), sql
    assert len(VARIED) > 1000


def test_every_pack_together_agrees():
    shaped, plain = every_pack(), every_pack(shaped=False)
    assert shaped._shape is not None
    for sql in VARIED:
        assert (blocked_by(shaped, sql) is None) == (blocked_by(plain, sql) is None), sql


def test_tautology_and_not_share_no_verdict():
    """sysbench's select with a new id each time is judged once; writes that differ only in an
    integer, one of them always true, get their own verdicts whichever comes first."""
    eng = engine(*(GuardrailConfig(name=p, pack=p) for p in PACKS))
    pol = eng.for_groups(())
    for n in (48213, 7, 2, 10, 99999999999999999999):
        assert pol.check(b"SELECT c FROM sbtest1 WHERE id=%d" % n) is None
    assert eng.misses == 1
    for safe, always in ((b"0", b"5"), (b"0", b"1"), (b"2 = 1", b"1 = 1"), (b"1 = 10", b"1 = 1"),
                         (b"NOT 2", b"NOT 0"), (b"00", b"10")):
        for first, second in ((safe, always), (always, safe)):
            pol = engine(*(GuardrailConfig(name=p, pack=p) for p in PACKS)).for_groups(())
            got = [blocked_by(pol, b"DELETE FROM t WHERE " + w) for w in (first, second, first)]
            want = ["unbounded-write" if w == always else None for w in (first, second, first)]
            assert got == want, (first, second, got)


@pytest.mark.parametrize("version", [b"50700", b"99999", b"80000"])
def test_a_versioned_comment_does_not_share_a_verdict(version):
    """`/*!NNNNN ... */` runs on a server at or above NNNNN (MariaDB skips 50700-99999): the
    number is not in the views, so a text holding one has no shape. A WHERE some servers skip
    is no WHERE there; below 50600 every supported server runs it."""
    pol = every_pack()
    runs = b"DELETE FROM t /*!40101 WHERE id = 5 */"
    skipped = b"DELETE FROM t /*!" + version + b" WHERE id = 5 */"
    assert blocked_by(pol, runs) is None
    assert blocked_by(pol, skipped) == "unbounded-write"
    assert blocked_by(pol, runs.replace(b"5", b"6")) is None
    pol = every_pack()
    assert blocked_by(pol, skipped) == "unbounded-write"
    assert blocked_by(pol, runs) is None
    assert blocked_by(pol, b"DELETE FROM t /*!" + version + b" WHERE id = 7 */") == \
        "unbounded-write"


def test_a_sixth_version_digit_is_code_on_mysql():
    """MySQL reads five version digits and runs the sixth as code; MariaDB reads six. The
    first reading (MariaDB's) saw WHERE alone; MySQL deletes every row."""
    for pol in (every_pack(), every_pack(shaped=False)):
        assert blocked_by(pol, b"DELETE FROM t WHERE /*!000001*/") == "unbounded-write"
        assert blocked_by(pol, b"DELETE FROM t WHERE /*!000000*/ id = 3") is None


# -- through a real MariaDB gateway ---------------------------------------------------------------

def test_a_reload_changes_a_verdict_cached_by_shape(mariadb, idp, pki):
    """`WHERE id = 2` passes after `WHERE id = 3` did; `WHERE 1` -- another integer -- is still
    refused; a reload's new rule refuses the shape an open session had passed before."""
    from helpers import Gateway
    from mysqlgw import mysql_gateway_config, mysql_gateway_env, pymysql_connect
    name = "t_shape_reload"
    mariadb.sql(f"DROP TABLE IF EXISTS app.{name}; CREATE TABLE app.{name} "
                f"(id int primary key, note varchar(20)); "
                f"INSERT INTO app.{name} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    cfg = mysql_gateway_config(mariadb, idp, pki, guardrail=[{"pack": "unbounded-write"}])
    try:
        with Gateway(cfg, env=mysql_gateway_env(mariadb)) as g:
            cfg, g.pki = g.config, pki
            with pymysql_connect(g, idp.token(groups=("agents",)), autocommit=True) as conn:
                with conn.cursor() as cur:
                    cur.execute(f"UPDATE {name} SET note = 'x' WHERE id = 3")
                    cur.execute(f"UPDATE {name} SET note = 'y' WHERE id = 2")
                guardrails.assert_blocked(conn, f"UPDATE {name} SET note = 'z' WHERE 1",
                                          "unbounded-write")
                assert mariadb.sql(f"SELECT group_concat(note ORDER BY id) FROM app.{name}"
                                   )[0][0] == "a,y,x"
                cfg["connection"][0]["guardrail"].append(
                    {"name": "no-note-updates", "patterns": [r"\bset\s+note\b"]})
                g.write_config(cfg)
                g.signal(signal.SIGHUP)
                g.wait_log(r"configuration reloaded")
                # the very shape `WHERE id = 2` had (literals are in the key: the implied
                # charset rule reads them), passed before the reload
                guardrails.assert_blocked(conn, f"UPDATE {name} SET note = 'y' WHERE id = 3",
                                          "no-note-updates")
            assert mariadb.sql(f"SELECT note FROM app.{name} WHERE id = 3")[0][0] == "x"
    finally:
        mariadb.sql(f"DROP TABLE IF EXISTS app.{name}")
