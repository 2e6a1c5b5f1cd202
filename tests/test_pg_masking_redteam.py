"""The masking red team (issue 18): an agent with a valid token on a masking connection, with the
documented defaults (unresolved_columns = "mask", masked_writes = "refuse") and with the
recommended guardrail packs on, tries to get a masked column's value -- or one bit of it -- out.

The judge trusts nothing the gateway says. Each attack is a list of statements with a guess
`{g}` about the masked value; it runs through the gateway on fresh sessions with a right guess
and with a wrong one on the same data, and with the right guess on a copy whose masked value is
another (reset before each run). It leaks when the value (or a piece of it) appears in anything
the client got -- rows, errors, notices -- or when what the client got differs between runs:
then the session learned something about the masked column.
Refusals are fine as long as both runs are refused alike.

Channels that are a property of running a statement at all -- how long it takes, how many rows
it returns, whether it fails -- are declared out of scope in the README and tested as such at
the end: they are stated, not hidden.
"""

from __future__ import annotations

import asyncio
import re
import time

import asyncpg
import psycopg
import pytest

from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway

SECRET = "Zx81qSsnv"          # users.ssn of row 1: no detector knows its shape
OTHER = "Qq7w0Abnv"            # the same row on the copy: same length, same last two (partial)
RIGHT, WRONG = "Zx8", "Qq7"    # guesses of its first characters
FRAGMENTS = ["zx81qssnv", "x81qss", "81qssn", "qq7w0abnv", "q7w0ab", "7w0abn"]

SCHEMA = f"""
SET ROLE app;
DROP SCHEMA IF EXISTS rt CASCADE;
CREATE SCHEMA rt;
CREATE TABLE rt.users (id int PRIMARY KEY, ssn text UNIQUE, name text, flag bool DEFAULT false,
                       note text);
CREATE TABLE rt.log (v text);
CREATE FUNCTION rt.cur() RETURNS refcursor LANGUAGE plpgsql AS
  $$ DECLARE c refcursor; BEGIN OPEN c FOR SELECT ssn || '' AS s FROM rt.users; RETURN c; END $$;
CREATE FUNCTION rt.all_users() RETURNS SETOF rt.users LANGUAGE sql AS 'SELECT * FROM rt.users';
CREATE FUNCTION rt.keep(t text) RETURNS int LANGUAGE sql AS
  $$ INSERT INTO rt.log VALUES (t) RETURNING 1 $$;
RESET ROLE;
"""
RESET = """
TRUNCATE rt.users, rt.log;
INSERT INTO rt.users (id, ssn, name) VALUES (1, '{secret}', 'alice'), (2, 'Ab99zz', 'bob');
"""
MASKS = [{"columns": ["rt.users.ssn"], "strategy": "partial", "keep": 2}]
PACKS = [{"pack": p} for p in ("destructive-ddl", "unbounded-write", "privilege-changes",
                               "server-side-io", "procedural-code", "session-tampering")]

# (name, statements). Each statement's observations are compared; {g} is the guess.
WRITE_ORACLES = [
    ("update-where", ["UPDATE rt.users SET flag = true WHERE ssn LIKE '{g}%'",
                      "SELECT id, flag FROM rt.users ORDER BY id"]),
    ("update-where-ilike", ["UPDATE rt.users SET note = 'x' WHERE id = 1 AND ssn ILIKE '{g}%'",
                            "SELECT id, note FROM rt.users ORDER BY id"]),
    ("update-where-subquery", ["UPDATE rt.users SET flag = true WHERE id IN "
                               "(SELECT id FROM rt.users WHERE ssn LIKE '{g}%')",
                               "SELECT id, flag FROM rt.users ORDER BY id"]),
    ("update-from", ["UPDATE rt.users SET flag = true FROM rt.users u2 WHERE u2.id = "
                     "rt.users.id AND u2.ssn LIKE '{g}%'",
                     "SELECT id, flag FROM rt.users ORDER BY id"]),
    ("update-where-exists", ["UPDATE rt.users SET flag = true WHERE EXISTS (SELECT 1 FROM "
                             "rt.users u WHERE u.ssn LIKE '{g}%')",
                             "SELECT id, flag FROM rt.users ORDER BY id"]),
    ("update-returning", ["UPDATE rt.users SET note = note WHERE ssn LIKE '{g}%' RETURNING id"]),
    ("update-xmin", ["UPDATE rt.users SET note = note WHERE ssn LIKE '{g}%'",
                     "SELECT id, xmin::text = (SELECT max(xmin::text::bigint)::text FROM "
                     "rt.users) FROM rt.users ORDER BY id"]),
    ("delete-where", ["DELETE FROM rt.users WHERE ssn LIKE '{g}%'",
                      "SELECT id FROM rt.users ORDER BY id"]),
    ("delete-returning", ["DELETE FROM rt.users WHERE ssn LIKE '{g}%' RETURNING id, name"]),
    ("delete-using", ["DELETE FROM rt.users USING rt.users u2 WHERE u2.id = rt.users.id "
                      "AND u2.ssn LIKE '{g}%'", "SELECT id FROM rt.users ORDER BY id"]),
    ("cte-delete", ["WITH d AS (DELETE FROM rt.users WHERE ssn LIKE '{g}%' RETURNING 1) "
                    "SELECT 1", "SELECT id FROM rt.users ORDER BY id"]),
    ("on-conflict-where", ["INSERT INTO rt.users (id, name) VALUES (1, 'x') ON CONFLICT (id) "
                           "DO UPDATE SET flag = true WHERE rt.users.ssn LIKE '{g}%'",
                           "SELECT id, flag FROM rt.users ORDER BY id"]),
    ("on-conflict-set-case", ["INSERT INTO rt.users (id, name) VALUES (1, 'x') ON CONFLICT "
                              "(id) DO UPDATE SET flag = (excluded.name = 'x' AND "
                              "rt.users.ssn LIKE '{g}%')",
                              "SELECT id, flag FROM rt.users ORDER BY id"]),
    ("merge-on", ["MERGE INTO rt.users t USING (SELECT 1 AS id) s ON t.id = s.id AND "
                  "t.ssn LIKE '{g}%' WHEN MATCHED THEN UPDATE SET flag = true",
                  "SELECT id, flag FROM rt.users ORDER BY id"]),
    ("merge-when", ["MERGE INTO rt.users t USING (SELECT 1 AS id) s ON t.id = s.id "
                    "WHEN MATCHED AND t.ssn LIKE '{g}%' THEN UPDATE SET flag = true",
                    "SELECT id, flag FROM rt.users ORDER BY id"]),
    ("merge-delete", ["MERGE INTO rt.users t USING rt.users s ON t.id = s.id AND "
                      "s.ssn LIKE '{g}%' WHEN MATCHED THEN DELETE",
                      "SELECT id FROM rt.users ORDER BY id"]),
    ("insert-select-where", ["INSERT INTO rt.log SELECT 'hit' FROM rt.users WHERE "
                             "ssn LIKE '{g}%'", "SELECT v FROM rt.log"]),
    ("prepared-update", ["PREPARE pu AS UPDATE rt.users SET flag = true WHERE ssn LIKE '{g}%'",
                         "EXECUTE pu", "SELECT id, flag FROM rt.users ORDER BY id"]),
    ("explain-analyze-update", ["EXPLAIN (ANALYZE, COSTS off, TIMING off, SUMMARY off) UPDATE "
                                "rt.users SET flag = true WHERE ssn LIKE '{g}%'",
                                "SELECT id, flag FROM rt.users ORDER BY id"]),
]
# storing through code the gateway cannot read, or in places its catalog cannot see
CODE = [
    ("do-block", ["DO $$ BEGIN UPDATE rt.users SET flag = true WHERE ssn LIKE '{g}%'; END $$",
                  "SELECT id, flag FROM rt.users ORDER BY id"]),
    ("do-block-dynamic", ["DO $$ BEGIN EXECUTE 'INSERT INTO rt.log SELECT s' || 'sn FROM rt.'"
                          " || 'users'; END $$", "SELECT v, '{g}' FROM rt.log ORDER BY v"]),
    ("temp-function-store", [
        "CREATE TEMP TABLE k (v text)",
        "CREATE FUNCTION pg_temp.kp(t text) RETURNS int LANGUAGE sql AS "
        "$$ INSERT INTO k VALUES (t) RETURNING 1 $$",
        "SELECT pg_temp.kp(ssn) FROM rt.users", "SELECT v, '{g}' FROM k ORDER BY v"]),
    ("user-function-store", ["SELECT rt.keep(ssn) FROM rt.users",
                             "SELECT v, '{g}' FROM rt.log ORDER BY v"]),
    ("temp-view", ["CREATE TEMP VIEW tv AS SELECT upper(ssn) AS x FROM rt.users",
                   "SELECT lower(x), '{g}' FROM tv ORDER BY 1"]),
    ("temp-view-filter", ["CREATE TEMP VIEW tv AS SELECT id FROM rt.users WHERE "
                          "ssn LIKE '{g}%'", "SELECT id + 0 FROM tv"]),
    ("trigger", [
        "CREATE TEMP TABLE k (v text)",
        "CREATE FUNCTION pg_temp.tg() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO k VALUES (row_to_json(OLD)::text); RETURN NEW; END $$",
        "CREATE TRIGGER tg BEFORE UPDATE ON rt.users FOR EACH ROW EXECUTE FUNCTION pg_temp.tg()",
        "UPDATE rt.users SET name = name WHERE id = 1",
        "SELECT v, '{g}' FROM k"]),
    ("rule", ["CREATE RULE r AS ON UPDATE TO rt.users DO ALSO INSERT INTO rt.log "
              "VALUES (OLD.ssn)", "UPDATE rt.users SET name = name WHERE id = 1",
              "SELECT v, '{g}' FROM rt.log"]),
]
# reads that must come back masked (the plain expression families are in test_pg_lineage.py)
READS = [
    ("pg-stats", ["ANALYZE rt.users",
                  "SELECT most_common_vals::text, histogram_bounds::text, '{g}' FROM pg_stats "
                  "WHERE schemaname = 'rt' AND tablename LIKE 'u%rs' ORDER BY attname"]),
    ("set-config", ["SELECT set_config('rt.x', ssn, false) FROM rt.users WHERE id = 1",
                    "SELECT current_setting('rt.x'), '{g}'"]),
    ("large-object", ["SELECT lo_from_bytea(4242, convert_to(ssn, 'UTF8')) FROM rt.users "
                      "WHERE id = 1", "SELECT convert_from(lo_get(4242), 'UTF8'), '{g}'",
                      "SELECT lo_unlink(4242)"]),
    ("notify", ["LISTEN ch", "SELECT pg_notify('ch', ssn) FROM rt.users WHERE id = 1",
                "SELECT '{g}'"]),
    ("json-array-format", ["SELECT row_to_json(u)::text, (array_agg(ssn) OVER ())[1], "
                           "format('%s', ssn), to_tsvector('simple', ssn)::text, "
                           "jsonb_agg(u) OVER ()::text, '{g}' FROM rt.users u"]),
    ("range-compare", ["SELECT int4range(1, length(ssn))::text, ssn > '{g}' FROM rt.users"]),
    ("prepare-execute", ["PREPARE p AS SELECT ssn || '', ssn LIKE '{g}%' FROM rt.users",
                         "EXECUTE p"]),
    ("cursor-backward", ["BEGIN", "DECLARE c SCROLL CURSOR FOR SELECT upper(ssn), "
                         "ssn LIKE '{g}%' FROM rt.users ORDER BY id",
                         "FETCH ALL FROM c", "FETCH BACKWARD ALL FROM c", "COMMIT"]),
    ("function-cursor", ["BEGIN", "SELECT rt.cur()", "FETCH ALL FROM \"<unnamed portal 1>\"",
                         "SELECT '{g}'", "COMMIT"]),
    ("copy-force-quote", ["COPY (SELECT upper(ssn), ssn LIKE '{g}%' FROM rt.users) TO STDOUT "
                          "WITH (FORMAT csv, FORCE_QUOTE *)"]),
    ("copy-binary-query", ["COPY (SELECT ssn || '', ssn LIKE '{g}%' FROM rt.users) TO STDOUT "
                           "WITH (FORMAT binary)"]),
    ("copy-binary-row", ["COPY (SELECT row_to_json(u) FROM rt.users u WHERE ssn LIKE '{g}%' "
                         "OR true) TO STDOUT WITH (FORMAT binary)"]),
    ("copy-binary-function", ["COPY (SELECT ssn FROM rt.all_users()) TO STDOUT WITH "
                              "(FORMAT binary)", "SELECT '{g}'"]),
    ("copy-binary-function-unmentioned", ["COPY (SELECT * FROM rt.all_users()) TO STDOUT "
                                          "WITH (FORMAT binary)", "SELECT '{g}'"]),
    ("copy-text-function-unmentioned", ["COPY (SELECT * FROM rt.all_users()) TO STDOUT",
                                        "SELECT '{g}'"]),
    ("explain-verbose", ["EXPLAIN (ANALYZE, VERBOSE, COSTS off, TIMING off, SUMMARY off) "
                         "SELECT upper(ssn) FROM rt.users WHERE id = 1",
                         "SELECT '{g}'"]),
    ("error-cast", ["SELECT ssn::regtype, '{g}' FROM rt.users WHERE id = 1"]),
    ("activity", ["SELECT query <> '', '{g}' FROM pg_stat_activity WHERE pid = "
                  "pg_backend_pid()", "SELECT current_query() <> '', '{g}'",
                  "SELECT count(*) FROM pg_prepared_statements", "SELECT count(*) FROM "
                  "pg_cursors"]),
]
# a second round: state the session can read back that is not a table row
STATE = [
    ("keep-strategy-shift", ["BEGIN", "UPDATE rt.users SET ssn = substr(ssn, 1, 5) WHERE id = 1",
                             "SELECT ssn, '{g}' FROM rt.users WHERE id = 1", "ROLLBACK"]),
    ("keep-strategy-hash", ["BEGIN", "UPDATE rt.users SET ssn = CASE WHEN ssn LIKE '{g}%' THEN "
                            "'yes' ELSE 'no!' END", "SELECT id, ssn FROM rt.users ORDER BY id",
                            "ROLLBACK"]),
    ("for-update-xmax", ["SELECT 1 FROM rt.users WHERE id = 1 AND ssn LIKE '{g}%' FOR UPDATE",
                         "SELECT id, xmax::text <> '0' FROM rt.users ORDER BY id"]),
    ("setval", ["CREATE TEMP SEQUENCE sq", "SELECT setval('sq', ascii(ssn)) FROM rt.users "
                "WHERE id = 1", "SELECT last_value, '{g}' FROM sq"]),
    ("advisory-lock", ["SELECT pg_advisory_lock(ascii(ssn)) FROM rt.users WHERE id = 1",
                       "SELECT objid, '{g}' FROM pg_locks WHERE locktype = 'advisory' AND "
                       "pid = pg_backend_pid()"]),
    ("lo-create", ["SELECT lo_create(ascii(ssn) + 5000) FROM rt.users WHERE id = 1",
                   "SELECT oid::int - 5000, '{g}' FROM pg_largeobject_metadata"]),
    ("setseed", ["SELECT setseed(0.5)",          # random() is the same in every run, unless...
                 "SELECT setseed(ascii(ssn) / 1000.0) FROM rt.users WHERE id = 1",
                 "SELECT random(), '{g}'"]),
    ("rename-column", ["ALTER TABLE rt.users RENAME COLUMN ssn TO s2",
                       "SELECT s2, '{g}' FROM rt.users ORDER BY id"]),
    ("rename-table", ["ALTER TABLE rt.users RENAME TO u2", "SELECT ssn, '{g}' FROM rt.u2"]),
    ("set-schema", ["CREATE SCHEMA rt2", "ALTER TABLE rt.users SET SCHEMA rt2",
                    "SELECT ssn, '{g}' FROM rt2.users"]),
    ("rename-schema", ["ALTER SCHEMA rt RENAME TO rt3", "SELECT ssn, '{g}' FROM rt3.users"]),
    ("generated-column", ["ALTER TABLE rt.users ADD COLUMN g text GENERATED ALWAYS AS "
                          "(ssn || '') STORED", "SELECT g, '{g}' FROM rt.users ORDER BY id"]),
    ("current-of", ["BEGIN", "DECLARE c CURSOR FOR SELECT id FROM rt.users WHERE id = (SELECT "
                    "CASE WHEN ssn LIKE '{g}%' THEN 1 ELSE 2 END FROM rt.users WHERE id = 1)",
                    "FETCH NEXT FROM c", "UPDATE rt.users SET flag = true WHERE CURRENT OF c",
                    "COMMIT", "SELECT id, flag FROM rt.users ORDER BY id"]),
    ("partial-index", ["CREATE INDEX pi ON rt.users (id) WHERE ssn LIKE '{g}%'",
                       "SELECT reltuples FROM pg_class WHERE relname = 'pi'"]),
]
ATTACKS = WRITE_ORACLES + CODE + READS + STATE


@pytest.fixture(scope="module")
def schema(pg):
    pg.sql(SCHEMA, dbname=APP_DB)
    yield
    pg.sql("DROP SCHEMA IF EXISTS rt CASCADE", dbname=APP_DB)


@pytest.fixture(scope="module")
def rgw(pg, idp, schema):
    """Connection "pg": the documented defaults; "pgp": the same with every built-in pack."""
    cfg = gateway_config(pg, idp, mask=MASKS)
    cfg["connection"].append(dict(cfg["connection"][0], name="pgp", guardrail=PACKS))
    cfg["connection"].append(dict(cfg["connection"][0], name="pga", masked_writes="allow"))
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


SCHEMA_BACK = """
DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'rt3') THEN
    ALTER SCHEMA rt3 RENAME TO rt; END IF;
  IF EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'rt2' AND tablename = 'users') THEN
    ALTER TABLE rt2.users SET SCHEMA rt; END IF;
  IF EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'rt' AND tablename = 'u2') THEN
    ALTER TABLE rt.u2 RENAME TO users; END IF;
  IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'rt' AND
             table_name = 'users' AND column_name = 's2') THEN
    ALTER TABLE rt.users RENAME COLUMN s2 TO ssn; END IF;
END $$;
DROP SCHEMA IF EXISTS rt2 CASCADE;
ALTER TABLE rt.users DROP COLUMN IF EXISTS g;
DROP INDEX IF EXISTS rt.pi;
"""


def _reset(pg, secret=SECRET):
    pg.sql(SCHEMA_BACK + "DROP RULE IF EXISTS r ON rt.users; DROP TRIGGER IF EXISTS tg ON rt.users;"
           "SELECT lo_unlink(oid) FROM pg_largeobject_metadata;" + RESET.format(secret=secret),
           dbname=APP_DB)


def observe(gw, idp, name: str, stmts: list[str], guess: str) -> list:
    """What the client sees of each statement: rows, or the error's SQLSTATE and every text
    field; notices and notifications too."""
    out: list = []
    with psycopg.connect(conninfo(gw, idp.token(), name=name), autocommit=True) as c:
        c.add_notice_handler(lambda d: out.append(("notice", d.sqlstate, d.message_primary,
                                                   d.message_detail, d.context)))
        c.add_notify_handler(lambda n: out.append(("notify", n.channel, n.payload)))
        for s in stmts:
            s = s.replace("{g}", guess)
            try:
                if s.startswith("COPY"):
                    with c.cursor().copy(s) as cp:
                        data = b"".join(bytes(b) for b in cp)
                    out.append(("copy", data.replace(guess.encode(), b"{g}")))
                    continue
                cur = c.execute(s)
                rows = cur.fetchall() if cur.description else None
                out.append(("rows", repr(rows).replace(guess, "{g}"), cur.statusmessage))
            except psycopg.Error as e:
                d = e.diag
                out.append(("error", e.sqlstate, d.message_primary, d.message_detail,
                            d.message_hint, d.context, d.internal_query))
                if c.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    c.rollback()
        c.execute("SELECT 1")          # notifications that came last
    return out


def _leak(a: list, b: list) -> list:
    text = repr(a).lower() + repr(b).lower()
    found = [f for f in FRAGMENTS if f in text]
    if found:
        return [("value", found)]
    if a != b:
        return [("bit", [(x, y) for x, y in zip(a, b) if x != y] or [a, b])]
    return []


def _run(pg, rgw, idp, name, stmts):
    """Three runs: the data and a right guess, the data and a wrong guess, the copy (another
    value in the masked column) and the right guess. Returns the first and one that differs
    from it, if any."""
    _reset(pg)
    right = observe(rgw, idp, name, stmts, RIGHT)
    _reset(pg)
    wrong = observe(rgw, idp, name, stmts, WRONG)
    if wrong != right:
        return right, wrong
    _reset(pg, OTHER)
    return right, observe(rgw, idp, name, stmts, RIGHT)


def test_the_attacks_do_work_without_the_gateway(pg, schema):
    """Sent straight to the server, most attacks reveal the value or the guess's truth (the
    others stay as a guard: each runs on every path below)."""
    direct = {"host": "127.0.0.1", "port": pg.port, "user": "app", "dbname": APP_DB,
              "password": pg.passwords["app"], "sslmode": "disable"}

    working = []
    for name, stmts in WRITE_ORACLES + CODE:
        outs = []
        for g in (RIGHT, WRONG):
            _reset(pg)
            out = []
            with psycopg.connect(**direct, autocommit=True) as c:
                for s in stmts:
                    try:
                        cur = c.execute(s.replace("{g}", g))
                        out.append(repr(cur.fetchall()).replace(g, "{g}")
                                   if cur.description else None)
                    except psycopg.Error as e:
                        out.append(e.sqlstate)
            outs.append(out)
        if outs[0] != outs[1] or any(f in repr(outs).lower() for f in FRAGMENTS):
            working.append(name)
    assert len(working) >= 0.9 * len(WRITE_ORACLES + CODE), \
        sorted({n for n, _s in WRITE_ORACLES + CODE} - set(working))


@pytest.mark.parametrize("conn", ["pg", "pgp"])
@pytest.mark.parametrize("name,stmts", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_learns_nothing(pg, rgw, idp, conn, name, stmts):
    right, wrong = _run(pg, rgw, idp, conn, stmts)
    assert not _leak(right, wrong), (right, wrong)


RETURNING = [
    ["UPDATE rt.users SET note = note WHERE ssn LIKE '{g}%' RETURNING id, name"],
    ["DELETE FROM rt.users WHERE ssn LIKE '{g}%' RETURNING id"],
    ["WITH d AS (UPDATE rt.users SET note = 'x' WHERE ssn LIKE '{g}%' RETURNING id) "
     "SELECT id FROM d"],
    ["INSERT INTO rt.users (id) VALUES (1), (2) ON CONFLICT (id) DO UPDATE SET note = 'y' "
     "WHERE rt.users.ssn LIKE '{g}%' RETURNING id"],
]


@pytest.mark.parametrize("stmts", RETURNING)
def test_returning_reads_what_chose_its_rows(pg, rgw, idp, stmts):
    """With masked_writes = "allow" the write runs; the rows RETURNING gives are the rows the
    conditions chose, so their values read the masked column (only their number shows)."""
    _reset(pg)
    got = observe(rgw, idp, "pga", stmts, RIGHT)[0]
    assert got[0] == "rows" and got[1] != "[]", got
    assert re.sub(r"None|'\*+'|[\[\](), ]", "", got[1]) == "", got     # every value masked


# --------------------------------------------------------------------------------------------
# generated: every write statement kind x every way a condition can read the column

CONDITIONS = ["{q}ssn LIKE '{g}%'", "left({q}ssn, 3) = '{g}'", "position('{g}' in {q}ssn) = 1",
              "{q}ssn ~ '^{g}'", "starts_with({q}ssn, '{g}')",
              "({q}ssn >= '{g}' AND {q}ssn < '{g}~')", "substr(upper({q}ssn), 1, 3) = upper('{g}')",
              "{q}id IN (SELECT x.id FROM rt.users x WHERE x.ssn LIKE '{g}%')",
              "md5({q}ssn) IS NOT NULL AND {q}ssn::bytea::text LIKE '%' AND {q}ssn LIKE '{g}%'"]
# (statements, qualifier of the target's columns in the condition)
SHAPES = [
    (["UPDATE rt.users SET flag = true WHERE {c}", "SELECT id, flag FROM rt.users ORDER BY id"],
     ""),
    (["DELETE FROM rt.users WHERE {c}", "SELECT id FROM rt.users ORDER BY id"], ""),
    (["UPDATE rt.users SET name = name WHERE {c} RETURNING id"], ""),
    (["DELETE FROM rt.users WHERE {c} RETURNING id"], ""),
    (["INSERT INTO rt.users (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET flag = true "
      "WHERE {c}", "SELECT id, flag FROM rt.users ORDER BY id"], "rt.users."),
    (["MERGE INTO rt.users t USING (VALUES (1)) s(id) ON t.id = s.id AND {c} WHEN MATCHED "
      "THEN UPDATE SET flag = true", "SELECT id, flag FROM rt.users ORDER BY id"], "t."),
    (["MERGE INTO rt.users t USING (VALUES (1)) s(id) ON t.id = s.id WHEN MATCHED AND {c} "
      "THEN DELETE", "SELECT id FROM rt.users ORDER BY id"], "t."),
]


def _generated():
    return [pytest.param([stmts[0].replace("{c}", cond.replace("{q}", q))] + stmts[1:],
                         id=f"s{i}-c{j}")
            for i, (stmts, q) in enumerate(SHAPES) for j, cond in enumerate(CONDITIONS)]


# spellings of the same statement: quoting, case, comments, Unicode escapes, several statements
EVASIONS = [
    lambda q: q,
    lambda q: q.replace("rt.users", 'rt."users"').replace("ssn", '"ssn"'),
    lambda q: q.upper().replace("'{G}%'", "'{g}%'").replace("'{G}'", "'{g}'"),
    lambda q: q.replace("rt.users", "rt./**/users").replace(" WHERE ", " /* x */ WHERE "),
    lambda q: q.replace("rt.users", 'rt.U&"user\\0073"').replace("ssn", 'U&"ss\\006e"'),
    lambda q: "SELECT 1; " + q,
]


def _evasions():
    out = []
    for i, (stmts, q) in enumerate(SHAPES[:2] + SHAPES[4:6]):
        base = stmts[0].replace("{c}", f"{q}ssn LIKE '{{g}}%'")
        for j, ev in enumerate(EVASIONS):
            out.append(pytest.param([ev(base)] + stmts[1:], id=f"s{i}-e{j}"))
    return out


@pytest.mark.parametrize("stmts", _evasions())
def test_write_oracle_spellings(pg, rgw, idp, stmts):
    right, other = _run(pg, rgw, idp, "pg", stmts)
    assert not _leak(right, other), (right, other)
    assert right[0][0] == "error" and "masked-write" in (right[0][2] or ""), right[0]


def test_write_oracles_over_asyncpg(pg, rgw, idp):
    """The extended protocol (Parse, binary results) is judged the same."""
    async def run(stmts, guess):
        c = await asyncpg.connect(host="127.0.0.1", port=rgw.port("pg"), user="agent-7",
                                  database=APP_DB, password=idp.token(), ssl=False, timeout=10)
        out = []
        try:
            for s in stmts:
                try:
                    out.append(repr(await c.fetch(s.replace("{g}", guess))))
                except asyncpg.PostgresError as e:
                    out.append((e.sqlstate, str(e)[:60]))
        finally:
            await c.close()
        return out
    for stmts, q in SHAPES:
        for cond in CONDITIONS[:3]:
            sql = [stmts[0].replace("{c}", cond.replace("{q}", q))] + stmts[1:]
            _reset(pg)
            right = asyncio.run(run(sql, RIGHT))
            _reset(pg)
            wrong = asyncio.run(run(sql, WRONG))
            assert right == wrong and right[0][0] == "42501", (sql, right, wrong)


@pytest.mark.parametrize("stmts", _generated())
def test_generated_write_oracles(pg, rgw, idp, stmts):
    right, wrong = _run(pg, rgw, idp, "pg", stmts)
    assert not _leak(right, wrong), (right, wrong)
    # and refused, not silently passed: a refusal names the masked-write rule
    assert right[0][0] == "error" and "masked-write" in (right[0][2] or ""), right[0]


# --------------------------------------------------------------------------------------------
# out of scope, stated: timing, row counts, whether a statement fails

def test_stated_side_channels_remain(pg, rgw, idp):
    """These are documented as not guaranteed (README "Masking", What is not guaranteed): the
    test pins that they are what the README says, so a change shows up here."""
    _reset(pg)
    with psycopg.connect(conninfo(rgw, idp.token()), autocommit=True) as c:
        def took(g):
            t = time.monotonic()
            c.execute("SELECT pg_sleep(CASE WHEN ssn LIKE %s THEN 2 ELSE 0 END) FROM rt.users "
                      "WHERE id = 1", (g + "%",)).fetchall()
            return time.monotonic() - t
        # timing: the right guess sleeps, and pg_sleep never ends early, so it takes 2 s at
        # least; the wrong one is a one-row query (tens of ms). (With 0.3 s and "more than
        # 0.2 s apart", 0.1 s on a loaded machine's wrong-guess round trip would fail it.)
        assert took(RIGHT) >= 2.0 > took(WRONG)
        n = [len(c.execute("SELECT 1 FROM rt.users WHERE ssn LIKE %s", (g + "%",)).fetchall())
             for g in (RIGHT, WRONG)]
        assert n == [1, 0]                               # the number of rows
        codes = []
        for g in (RIGHT, WRONG):
            try:
                c.execute("SELECT 1 / (CASE WHEN ssn LIKE %s THEN 0 ELSE 1 END) FROM rt.users "
                          "WHERE id = 1", (g + "%",)).fetchall()
                codes.append(None)
            except psycopg.Error as e:
                codes.append(e.sqlstate)
        assert codes == ["22012", None]                  # whether it fails
