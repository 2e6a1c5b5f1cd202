"""Masking on the PostgreSQL path: real server, real drivers, every way data comes back.

The fixture schema (crm) holds realistic rows: users with SSNs, e-mail addresses and passwords,
payments with card numbers and IBANs, API keys, and free-text notes with secrets inside. Column
rules mask users.ssn (partial), *.password (redact), payments.card (partial) and api_keys.token
(hash); detectors catch what is in free text.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import urllib.request

import asyncpg
import psycopg
import pytest

import pgraw
from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import Gateway, psql
from hoopwire.masking.strategies import Strategy

MASK_KEY = "k" * 32     # the connections' HMAC key (hash and format strategies)
GH = "ghp_" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
AWS = "AKIAIOSFODNN7EXAMPLE"

SCHEMA = f"""
SET ROLE app;
DROP SCHEMA IF EXISTS crm CASCADE;
CREATE SCHEMA crm;
CREATE TABLE crm.users (id int PRIMARY KEY, name text, email text UNIQUE, ssn text UNIQUE,
                        password text, phone text, notes text);
CREATE TABLE crm.payments (id int PRIMARY KEY, user_id int REFERENCES crm.users, card text,
                           amount numeric, iban text);
CREATE TABLE crm.api_keys (id int PRIMARY KEY, user_id int, token text NOT NULL,
                           label text);
INSERT INTO crm.users VALUES
  (1, 'Alice Martin', 'alice@example.com', '123-45-6789', 's3cret!', '+14155552671',
   'called about invoice 42; her key {AWS} was pasted in chat'),
  (2, 'Bob Okafor', 'bob@example.org', '987-65-4321', 'hunter2', '+442071838750',
   'prefers email; version 10.2.3.4 of the app'),
  (3, 'Chloé Dubois', 'chloe@example.net', '555-12-3456', 'pa$$', '+33142685300',
   'uuid 3f1c2b8e-1d2a-4c5b-9e8f-0a1b2c3d4e5f is not a key');
INSERT INTO crm.payments VALUES
  (1, 1, '4111111111111111', 19.99, 'DE89370400440532013000'),
  (2, 2, '5500005555555559', 5.00, 'GB82WEST12345698765432'),
  (3, 3, '4111111111111112', 7.50, 'FR1420041010050500013M02606');
INSERT INTO crm.api_keys VALUES (1, 1, '{GH}', 'ci'), (2, 2, 'sk_live_0123456789abcdef', 'billing');
CREATE TABLE crm.vault (id int PRIMARY KEY, pin int, blob bytea, ref uuid, doc jsonb, tags text[]);
INSERT INTO crm.vault VALUES (1, 4321, '\\xdeadbeef', '3f1c2b8e-1d2a-4c5b-9e8f-0a1b2c3d4e5f',
                              '{{"ssn": "123-45-6789", "n": 1}}', ARRAY['alice@example.com', 'x']);
CREATE VIEW crm.user_view AS SELECT id, name, ssn AS tax_id, upper(email) AS email_u FROM crm.users;
CREATE VIEW crm.user_view2 AS SELECT id, tax_id FROM crm.user_view;
"""

MASKS = [
    {"columns": ["crm.users.ssn"], "strategy": "partial", "keep": 4},
    {"columns": ["*.password"], "strategy": "redact"},
    {"columns": ["crm.payments.card"], "strategy": "partial", "keep": 4},
    {"columns": ["crm.api_keys.token"], "strategy": "hash"},
    {"columns": ["crm.vault.pin", "crm.vault.blob", "crm.vault.ref"], "strategy": "format"},
    {"detectors": ["EMAIL", "US_SSN", "CREDIT_CARD", "AWS_ACCESS_KEY_ID", "GITHUB_TOKEN", "IBAN"],
     "strategy": "redact"},
]


@pytest.fixture(scope="module")
def crm(pg):
    pg.sql(SCHEMA, dbname="appdb")
    yield
    pg.sql("DROP SCHEMA IF EXISTS crm CASCADE", dbname="appdb")


def _gateway(pg, idp, admin=None, **kw):
    cfg = gateway_config(pg, idp, admin=admin, mask=MASKS, mask_hash_key_env="MASK_KEY", **kw)
    env = gateway_env(pg)
    env["MASK_KEY"] = MASK_KEY
    return Gateway(cfg, env=env)


@pytest.fixture(scope="module")
def mgw(pg, idp, crm):
    with _gateway(pg, idp) as g:
        yield g


@pytest.fixture(scope="module")
def mgw_block(pg, idp, crm):
    with _gateway(pg, idp, name="pgb", unresolved_columns="block", binary_copy="refuse") as g:
        yield g


@pytest.fixture(scope="module")
def mgw_mask(pg, idp, crm):
    with _gateway(pg, idp, name="pgm", unresolved_columns="mask") as g:
        yield g


def connect(gw, idp, name="pg", **kw):
    return psycopg.connect(conninfo(gw, idp.token(), name=name), autocommit=True, **kw)


def q(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


SSN_MASKED = {"*******6789", "*******4321", "*******3456"}


def test_column_rules_through_alias_star_and_order(mgw, idp):
    with connect(mgw, idp) as c:
        rows = q(c, "SELECT ssn AS x, name FROM crm.users ORDER BY id")
        assert [r[0] for r in rows] == ["*******6789", "*******4321", "*******3456"]
        assert rows[2][1] == "Chloé Dubois"
        star = q(c, "SELECT * FROM crm.users ORDER BY id")
        assert star[0][1] == "Alice Martin"
        assert star[0][2] == "****"                # email: detector
        assert star[0][3] == "*******6789"
        assert star[0][4] == "****"                # password: column rule
        assert AWS not in star[0][6] and "****" in star[0][6]
        assert "10.2.3.4" in star[1][6]            # IPV4 is not among the detectors here
        assert "3f1c2b8e-1d2a-4c5b-9e8f-0a1b2c3d4e5f" in star[2][6]


def test_views_joins_ctes_and_subqueries(mgw, idp):
    with connect(mgw, idp) as c:
        assert {r[0] for r in q(c, "SELECT tax_id FROM crm.user_view")} == SSN_MASKED
        assert {r[0] for r in q(c, "SELECT tax_id FROM crm.user_view2")} == SSN_MASKED
        assert {r[0] for r in q(c, "SELECT email_u FROM crm.user_view")} == {"****"}
        rows = q(c, "WITH u AS (SELECT id, ssn FROM crm.users) "
                    "SELECT p.card, u.ssn, p.amount FROM crm.payments p JOIN u ON u.id = p.user_id "
                    "ORDER BY p.id")
        assert rows[0][0] == "************1111" and rows[0][1] == "*******6789"
        assert str(rows[0][2]) == "19.99"
        rows = q(c, "SELECT (SELECT ssn FROM crm.users u WHERE u.id = p.user_id) AS s, iban "
                    "FROM crm.payments p ORDER BY id")
        # a scalar subquery is an expression: no source column, so the detectors decide
        assert rows[0][0] == "****" and rows[0][1] == "****"


def test_hash_is_stable_and_keyed(mgw, idp):
    with connect(mgw, idp) as c:
        a = q(c, "SELECT token FROM crm.api_keys ORDER BY id")
        b = q(c, "SELECT token AS t FROM crm.api_keys ORDER BY id")
    assert a == b
    assert all(r[0].startswith("h:") and GH not in r[0] for r in a)


def test_expression_columns_fall_back_to_detectors(mgw, idp):
    with connect(mgw, idp) as c:
        rows = q(c, "SELECT upper(ssn), concat(ssn), ssn || '' FROM crm.users WHERE id = 1")
        assert rows == [("****", "****", "****")]


def test_unresolved_block_refuses_and_session_goes_on(mgw_block, idp):
    with connect(mgw_block, idp, name="pgb") as c:
        # lineage places upper(password): masked by the password rule, not refused; block
        # refuses what lineage cannot place (SQL text run by a function) when masked data is named
        assert q(c, "SELECT upper(password) FROM crm.users WHERE id = 1") == [("****",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="masked column"):
            q(c, "SELECT query_to_xml('SELECT password FROM crm.users', true, true, '')")
        assert q(c, "SELECT password FROM crm.users WHERE id = 1") == [("****",)]
        # an expression over nothing masked is no reason to refuse
        assert q(c, "SELECT count(*), max(name) FROM items") == [(len(q(c, "SELECT * FROM items")), q(c, "SELECT max(name) FROM items")[0][0])]
        # a whole-row reference reads every column, the masked ones too: masked whole
        assert q(c, "SELECT row_to_json(u) FROM crm.users u WHERE id = 1") == [("****",)]
        assert q(c, "SELECT max(tax_id) FROM crm.user_view") == [("****",)]
        assert q(c, "SELECT 1") == [(1,)]


def test_unresolved_mask_masks_the_expressions(mgw_mask, idp):
    with connect(mgw_mask, idp, name="pgm") as c:
        rows = q(c, "SELECT id, upper(password), password || 'x' FROM crm.users ORDER BY id")
        assert rows[0] == (1, "****", "****")
        assert q(c, "SELECT 1 + 1") == [(2,)]


def test_asyncpg_binary_prepared(mgw, idp):
    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=mgw.port("pg"), user="agent-7",
                                     database="appdb", password=idp.token(), ssl=False)
        try:
            stmt = await conn.prepare("SELECT u.id, ssn, card, amount FROM crm.users u "
                                      "JOIN crm.payments p ON p.user_id = u.id ORDER BY id")
            first = await stmt.fetch()
            again = await stmt.fetch()          # Bind + Execute only: no new RowDescription
            one = await conn.fetchrow("SELECT password, email, id FROM crm.users WHERE id = $1", 2)
            async with conn.transaction():
                cur = [r async for r in conn.cursor("SELECT ssn FROM crm.users ORDER BY id",
                                                    prefetch=1)]
            return first, again, one, cur
        finally:
            await conn.close()
    first, again, one, cur = asyncio.run(run())
    assert first == again
    assert [tuple(r) for r in first][0][:3] == (1, "*******6789", "************1111")
    assert tuple(one) == ("****", "****", 2)
    assert [r[0] for r in cur] == ["*******6789", "*******4321", "*******3456"]


def test_extended_protocol_without_describe(mgw, idp):
    """Parse / Bind / Execute / Sync and never a Describe: the rows are masked all the same."""
    host, port = mgw.address("pg")
    with pgraw.login(host, port, idp.token()) as conn:
        sql = b"SELECT ssn, password FROM crm.users WHERE id = 1\0"
        conn.send(pgraw.typed(b"P", b"s1\0" + sql + b"\0\0")
                  + pgraw.typed(b"B", b"\0s1\0" + b"\0\0\0\0\0\0")
                  + pgraw.typed(b"E", b"\0\0\0\0\0")
                  + pgraw.typed(b"B", b"\0s1\0" + b"\0\0\0\0\0\0")
                  + pgraw.typed(b"E", b"\0\0\0\0\0")
                  + pgraw.typed(b"S"))
        got = []
        while True:
            kind, body = conn.read_message()
            got.append(kind)
            if kind == b"D":
                assert b"123-45-6789" not in body and b"s3cret" not in body
                assert b"*******6789" in body
            if kind == b"Z":
                break
        # exactly what the client asked for: no RowDescription it did not request
        assert got == [b"1", b"2", b"D", b"C", b"2", b"D", b"C", b"Z"]


def test_pipeline_mode(mgw, idp):
    with connect(mgw, idp) as c:
        with c.pipeline():
            cur1 = c.execute("SELECT ssn FROM crm.users WHERE id = %s", (1,))
            cur2 = c.execute("SELECT card FROM crm.payments WHERE id = %s", (2,))
            cur3 = c.execute("SELECT name FROM crm.users WHERE id = %s", (3,))
        assert cur1.fetchall() == [("*******6789",)]
        assert cur2.fetchall() == [("************5559",)]
        assert cur3.fetchall() == [("Chloé Dubois",)]


def test_long_pipelines_keep_every_result_in_step(mgw, idp):
    # Hundreds of requests outstanding at once, after a short pipeline has moved the start of
    # the gateway's request ring: it must grow while wrapped and still pair every answer with
    # its request.
    with connect(mgw, idp) as c:
        for rounds in (3, 300):
            with c.pipeline():
                curs = [c.execute("SELECT ssn, name FROM crm.users WHERE id = %s", (1 + i % 2,))
                        for i in range(rounds)]
            want = [[("*******6789", "Alice Martin")], [("*******4321", "Bob Okafor")]]
            assert [cur.fetchall() for cur in curs] == [want[i % 2] for i in range(rounds)]


def test_multi_statement_query_and_server_side_cursor(mgw, idp):
    with connect(mgw, idp) as c:
        with c.cursor() as cur:
            cur.execute("SELECT name FROM crm.users WHERE id = 1; SELECT ssn FROM crm.users WHERE id = 1")
            assert cur.fetchall() == [("Alice Martin",)]
            assert cur.nextset() and cur.fetchall() == [("*******6789",)]
        with c.transaction():
            with c.cursor(name="ssc") as cur:
                cur.execute("SELECT id, ssn FROM crm.users ORDER BY id")
                assert [r[1] for r in cur.fetchmany(2)] == ["*******6789", "*******4321"]


def test_copy_out_text_and_csv(mgw, idp):
    with connect(mgw, idp) as c, c.cursor() as cur:
        with cur.copy("COPY crm.users (id, ssn, name) TO STDOUT") as cp:
            text = b"".join(bytes(b) for b in cp)
        assert b"123-45-6789" not in text and b"*******6789" in text
        assert "Chloé Dubois".encode() in text
        with cur.copy("COPY crm.users TO STDOUT WITH (FORMAT csv, HEADER)") as cp:
            csv = b"".join(bytes(b) for b in cp)
        lines = csv.decode().splitlines()
        assert lines[0].startswith("id,name,email,ssn,password")
        assert "*******6789" in lines[1] and "s3cret" not in csv.decode()
        with cur.copy("COPY (SELECT notes, ssn FROM crm.users) TO STDOUT") as cp:
            rows = b"".join(bytes(b) for b in cp)
        assert AWS.encode() not in rows and b"123-45-6789" not in rows


def test_copy_binary_masked_by_column_rules(mgw, idp):
    with connect(mgw, idp) as c, c.cursor() as cur:
        with cur.copy("COPY crm.users (id, ssn) TO STDOUT (FORMAT binary)") as cp:
            cp.set_types(["int4", "text"])
            rows = list(cp.rows())
    assert rows[0] == (1, "*******6789")


def test_copy_binary_refused(mgw_block, idp):
    with connect(mgw_block, idp, name="pgb") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="binary COPY"):
            with c.cursor() as cur, cur.copy("COPY crm.users TO STDOUT (FORMAT binary)") as cp:
                list(cp)
        assert q(c, "SELECT 1") == [(1,)]


def test_error_and_notice_fields(mgw, idp):
    with connect(mgw, idp) as c:
        with pytest.raises(psycopg.errors.UniqueViolation) as ei:
            q(c, "INSERT INTO crm.users (id, email, ssn) VALUES (9, 'x@example.com', '123-45-6789')")
        detail = ei.value.diag.message_detail
        assert "123-45-6789" not in detail and "****" in detail
        with pytest.raises(psycopg.errors.NotNullViolation) as ei:
            q(c, f"INSERT INTO crm.api_keys (id, user_id, token, label) VALUES (7, 1, NULL, '{AWS}')")
        assert AWS not in (ei.value.diag.message_detail or "")
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        try:      # DO blocks are refused by masked_writes = "refuse" (test_pg_masking_redteam.py)
            c.execute("DO $$ BEGIN RAISE NOTICE 'found %', (SELECT email FROM crm.users "
                      "WHERE id = 1); END $$")
            assert notices and "alice@example.com" not in notices[0]
        except psycopg.errors.InsufficientPrivilege as e:
            assert "masked-write" in str(e)
        with pytest.raises((psycopg.errors.RaiseException,
                            psycopg.errors.InsufficientPrivilege)) as ei:
            c.execute("DO $$ BEGIN RAISE EXCEPTION 'leak %', (SELECT ssn FROM crm.users WHERE id = 1); END $$")
        assert "123-45-6789" not in str(ei.value)


def test_data_errors_do_not_echo_masked_values(mgw, idp):
    """A cast that fails quotes its input: the gateway withholds it (SQLSTATE class 22)."""
    with connect(mgw, idp) as c:
        for sql in ("SELECT password::int FROM crm.users WHERE id = 1",
                    "SELECT ssn::date FROM crm.users WHERE id = 2",
                    "SELECT (password || '')::json FROM crm.users WHERE id = 1",
                    "SELECT token::uuid FROM crm.api_keys WHERE id = 2"):
            with pytest.raises(psycopg.DataError) as ei:
                q(c, sql)
            d = ei.value.diag
            text = " ".join(str(x) for x in (ei.value, d.message_detail, d.context) if x)
            for secret in ("s3cret", "987-65-4321", "sk_live_0123456789abcdef"):
                assert secret not in text, (sql, text)
            assert ei.value.sqlstate.startswith("22")
        assert q(c, "SELECT 1") == [(1,)]


def test_notify_payload(mgw, idp):
    with connect(mgw, idp) as listener, connect(mgw, idp) as sender:
        listener.execute("LISTEN crm_events")
        sender.execute(f"NOTIFY crm_events, 'rotated {GH} for alice@example.com'")
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert len(got) == 1
        n = got[0]
        assert n.channel == "crm_events"
        assert GH not in n.payload and "alice@example.com" not in n.payload
        assert n.payload.startswith("rotated ****")


def test_large_row_split_across_reads(mgw, idp):
    with connect(mgw, idp) as c:
        big = "x" * 3_000_000
        # (an expression over name, not ssn: one over ssn is masked whole, by lineage)
        rows = q(c, f"SELECT repeat('x', 3000000) || ' {AWS} ' || name || 'é', ssn FROM crm.users "
                    "WHERE id = 1")
        assert rows[0][0].startswith(big) and AWS not in rows[0][0]
        assert rows[0][0].endswith(" Alice Martiné")
        assert rows[0][1] == "*******6789"


def test_new_table_after_ddl_is_masked(mgw, idp):
    with connect(mgw, idp) as c:
        q(c, "SELECT 1")
        c.execute("CREATE TABLE crm.late (id int, password text)")
        c.execute("INSERT INTO crm.late VALUES (1, 'topsecret')")
        assert q(c, "SELECT password AS p FROM crm.late") == [("****",)]
        # renaming a masked column moves its values out of the rule's name: refused by
        # masked_writes = "refuse" (tests/test_pg_masking_redteam.py)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="masked-write"):
            c.execute("ALTER TABLE crm.late RENAME COLUMN password TO pw")
        assert q(c, "SELECT password FROM crm.late") == [("****",)]


def test_fastpath_refused_while_masking(mgw, idp):
    host, port = mgw.address("pg")
    with pgraw.login(host, port, idp.token()) as conn:
        # FunctionCall of int4pl (oid 177): refused, session goes on
        conn.send(pgraw.typed(b"F", struct.pack("!IhhIIIIh", 177, 0, 2, 4, 1, 4, 2, 0)))
        kind, body = conn.read_message()
        assert kind == b"E"
        assert pgraw.error_fields(body)["C"] == "42501"
        assert conn.read_message()[0] == b"Z"


def test_metrics_count_masked_values(mgw, idp):
    with connect(mgw, idp) as c:
        q(c, "SELECT ssn FROM crm.users")
    text = urllib.request.urlopen(mgw.admin_url + "/metrics", timeout=5).read().decode()
    m = re.search(r'hoopwire_masked_values_total\{connection="pg",kind="column",name="mask\[0\]"\} (\S+)',
                  text)
    assert m and float(m.group(1)) >= 3
    assert "123-45-6789" not in text


def test_typed_values_stay_valid_in_text_and_binary(mgw, idp, pg):
    """A masked int, bytea or uuid is still a value of its type (or NULL) in both formats; a
    detector hit inside json or a text[] keeps the container well formed.

    crm.vault.pin, .blob and .ref have the `format` rule. int and uuid are not text-like: NULL
    in both formats. bytea in binary is text-like (README, Masking): it takes the strategy's
    output. bytea in text format is hex (`\\xdeadbeef`), which `format` cannot rewrite into
    valid hex, so the whole value becomes `****` -- valid bytea in the escape format, which
    the client reads as those four bytes (ext/hoopwire/_mask.pyx, RowPlan._whole_one, K_OPAQUE)."""
    original = bytes.fromhex("deadbeef")
    # what the table holds (SCHEMA is an f-string: a single backslash there would store 'Þadbeef')
    assert pg.sql("SELECT encode(blob, 'hex') FROM crm.vault", dbname="appdb") == original.hex()
    with connect(mgw, idp) as c:
        pin, blob, ref, doc, tags = q(c, "SELECT pin, blob, ref, doc, tags FROM crm.vault")[0]
    assert pin is None and ref is None
    assert blob == b"****"
    # the detectors (redact) mask in place: the json stays an object, the array an array
    assert doc == {"ssn": "****", "n": 1}
    assert tags == ["****", "x"]

    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=mgw.port("pg"), user="agent-7",
                                     database="appdb", password=idp.token(), ssl=False)
        try:
            return await conn.fetchrow("SELECT pin, blob, ref, doc, tags FROM crm.vault")
        finally:
            await conn.close()
    row = asyncio.run(run())
    assert row["pin"] is None and row["ref"] is None
    # binary bytea: the `format` strategy's output for the raw bytes, under the gateway's key
    assert row["blob"] == Strategy("format", key=MASK_KEY.encode()).whole(original)
    assert row["blob"] != original
    assert json.loads(row["doc"]) == {"ssn": "****", "n": 1}
    # a binary array holding a hit cannot be rewritten in place: it becomes NULL, never garbage
    assert row["tags"] is None


def test_psql_client(mgw, idp, pg):
    out = psql("-h", "127.0.0.1", "-p", str(mgw.port("pg")), "-U", "agent-7", "-d", "appdb",
               "-At", "-c", "SELECT id, ssn, email FROM crm.users ORDER BY id",
               "-c", "\\copy (SELECT ssn FROM crm.users) TO STDOUT", password=idp.token())
    assert out.returncode == 0, out.stderr
    assert "1|*******6789|****" in out.stdout
    assert "123-45-6789" not in out.stdout


def test_returning_and_function_results(mgw, idp, pg):
    """RETURNING names its table's columns in RowDescription (masked by column rules); a
    set-returning function's columns have no source: detectors only (a documented limit)."""
    with connect(mgw, idp) as c:
        # made directly: masked_writes = "refuse" refuses CREATE FUNCTION through the gateway
        from helpers import APP_DB
        pg.sql("SET ROLE app; CREATE OR REPLACE FUNCTION crm.all_users() RETURNS SETOF "
               "crm.users LANGUAGE sql AS 'SELECT * FROM crm.users'", dbname=APP_DB)
        with c.transaction(force_rollback=True):
            got = q(c, "UPDATE crm.users SET name = name WHERE id = 1 RETURNING ssn, password")
        assert got == [("*******6789", "****")]
        rows = q(c, "SELECT ssn, password FROM crm.all_users() WHERE id = 1")
        assert rows[0][0] == "****"             # the US_SSN detector; password: see README
