"""Red team of session 5's fast paths and caches: each test here is a way around one of them that
was found by attacking it with a valid agent token, against the real servers.

* destructive-ddl (hoopwire/pg/packs.py, _subcommand): the ALTER TABLE subcommand patterns start
  right after the relation's name, which gram.y's relation_expr also writes ONLY ( name ): every
  destructive subcommand after that form passed the pack.
* PostgreSQL DECLARE re-placed at FETCH (hoopwire/pg/masker.py, SessionMasker._fetched): the guard
  "no DDL answered since the DECLARE ran" counts this session's DDL only. A second session with
  the same token replaces the view after the DECLARE; the FETCH is judged by the new definition
  while the cursor returns what the old one read. Not fixed here (the session-local guard cannot
  see another session's DDL; a sound fix changes what FETCH of such a cursor may place): this
  test fails until it is.
* HTTP text masking's hold-back (hoopwire/http/jsonmask.py, TextStream._flush): the cut stops at
  the end of the hit before the one it holds back; when that hit ends with the next one's key
  word (`ops@corp.token: <value>`), the word left with it and the value was scanned without it:
  the secret reached the client in clear.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

import httpx
import psycopg
import pytest

from gwfixtures import conninfo
from httpfixtures import HttpGateway, bearer, http_config, http_env, serve_threaded
from test_pg_masking_named import direct, mgw, schema  # noqa: F401
from test_pg_redteam_ddl import (PACK, blocked_by, connect, ddlgw, destructive,  # noqa: F401
                                 engine, snapshot, table, variants)
from hoopwire.config import GuardrailConfig

# -- destructive-ddl: ALTER TABLE ONLY ( name ) ---------------------------------------------------

ONLY_PAREN = [
    "ALTER TABLE ONLY ({t}) DROP COLUMN {c}",
    "ALTER TABLE ONLY({t})DROP {c}",
    "ALTER TABLE IF EXISTS ONLY ( {t} ) DROP CONSTRAINT k",
    "ALTER TABLE ONLY ({t}) RENAME TO moved",
    "ALTER TABLE ONLY ({t}) RENAME COLUMN {c} TO moved",
    "ALTER TABLE ONLY ({t}) RENAME {c} TO moved",
    "ALTER TABLE ONLY ({t}) SET SCHEMA elsewhere",
    "ALTER TABLE ONLY ({t}) ALTER COLUMN {c} TYPE text USING NULL",
    "ALTER TABLE ONLY ({t}) ALTER {c} SET DATA TYPE int",
    "ALTER TABLE ONLY ({t}) DETACH PARTITION p1",
    "ALTER TABLE ONLY ({t}) NO INHERIT parent",
    "ALTER TABLE ONLY ({t}) SET UNLOGGED",
    "ALTER FOREIGN TABLE ONLY ({t}) DROP COLUMN {c}",
]


@pytest.fixture(scope="module")
def ddl_pack():
    return engine(GuardrailConfig(name=PACK, pack=PACK))


@pytest.mark.parametrize("template", ONLY_PAREN)
def test_only_parenthesised_name_is_read_as_a_name(ddl_pack, template):
    """PostgreSQL's parse tree calls every spelling destructive; the pack blocks each one."""
    for sql in variants(template, 12, 500 + ONLY_PAREN.index(template)):
        assert destructive(sql), ("the oracle disagrees with the generator", sql)
        assert blocked_by(ddl_pack, sql.encode()) == PACK, sql


def test_only_parenthesised_harmless_still_passes(ddl_pack):
    for sql in ("ALTER TABLE ONLY (t) ADD COLUMN extra int",
                "ALTER TABLE ONLY (t) ALTER COLUMN c SET DEFAULT 1",
                "ALTER TABLE ONLY (t) ADD COLUMN rename int, ALTER COLUMN type SET DEFAULT 1",
                "ALTER TABLE ONLY (t) RENAME CONSTRAINT k TO k2"):
        assert not destructive(sql), sql
        assert ddl_pack.check(sql.encode()) is None, sql


@pytest.mark.parametrize("sql", [
    "ALTER TABLE ONLY ({t}) RENAME TO {t}_moved",
    "ALTER TABLE IF EXISTS ONLY ( public . {t} ) RENAME TO {t}_moved",
    "ALTER TABLE ONLY({t})SET SCHEMA elsewhere",
    "ALTER TABLE ONLY ({t}) DETACH PARTITION {t}_p1",
    "ALTER TABLE ONLY ({t}_p1) SET UNLOGGED",
])
def test_gateway_blocks_only_parenthesised(ddlgw, idp, pg, table, sql):  # noqa: F811
    """End to end against PostgreSQL (each of these runs there and does its damage: the
    mutation run without the fix saw every one pass): blocked, and the table is what it was.
    (ALTER COLUMN ... TYPE and RENAME COLUMN with ONLY are refused by the server itself on a
    partitioned table, so they are checked against the pack alone, above.)"""
    before = snapshot(pg, table)
    persistence = pg.sql(f"SELECT relpersistence FROM pg_class WHERE relname = '{table}_p1'",
                         dbname="appdb")
    with connect(ddlgw, idp) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            conn.execute(sql.format(t=table))
        assert f'rule "{PACK}"' in str(e.value), str(e.value)
    assert snapshot(pg, table) == before
    assert pg.sql(f"SELECT relpersistence FROM pg_class WHERE relname = '{table}_p1'",
                  dbname="appdb") == persistence == "p"


# -- PostgreSQL: a DECLARE re-placed at FETCH after another session's DDL ---------------------------

def test_declare_then_another_sessions_ddl_keeps_the_old_reading(mgw, idp, pg):  # noqa: F811
    """The view reads ssn when the cursor is declared (WITH HOLD: its rows are the old
    definition's); a second session of the same agent replaces it with one reading name. The
    FETCH returns ssn values: they must come back masked."""
    with psycopg.connect(conninfo(mgw, idp.token()), autocommit=True) as c, \
            psycopg.connect(conninfo(mgw, idp.token()), autocommit=True) as other:
        c.execute("CREATE VIEW mexec.v9 AS SELECT id, ssn AS x FROM mexec.users")
        c.execute("DECLARE c9 CURSOR WITH HOLD FOR SELECT id, x FROM mexec.v9 ORDER BY id")
        other.execute("CREATE OR REPLACE VIEW mexec.v9 AS SELECT id, name AS x FROM mexec.users")
        got = c.execute("FETCH ALL FROM c9").fetchall()
        c.execute("CLOSE c9")
    with direct(pg) as d:
        d.execute("DROP VIEW IF EXISTS mexec.v9")
    assert "123-45-6789" not in str(got) and "987-65-4321" not in str(got), got
    assert [r[1] for r in got] == ["****", "****"], got


# -- HTTP: a text stream's hold-back and a key word at the end of the hit before ------------------

SECRET = b"Zq8vT2mK9pL4xR7nW3yB6cF1"


def _key_after_address(pad: int) -> bytes:
    return (b"x" * pad + b" ops@corp.token: " + SECRET + b" and more text " +
            b"y" * 3000)


def test_text_stream_keeps_a_key_word_the_hit_before_ends_with():
    """Fed in two pieces split at every offset around the pair, the stream masks as the whole
    text does: the value after `token:` never leaves in clear."""
    from hoopwire.config import MaskConfig
    from hoopwire.http.jsonmask import TEXT_TAIL, JsonMasker
    from hoopwire.masking import MaskEngine

    masks = (MaskConfig(detectors=("EMAIL", "GENERIC_API_KEY"), strategy="redact"),)
    m = JsonMasker(masks, MaskEngine(masks, hash_key=b"k"), 1 << 20)
    text = _key_after_address(200)
    want, _ = m.engine.mask_text(text)
    assert SECRET not in want and b"ops@corp" not in want
    at = text.index(b"ops@")
    for k in range(at, at + 80):
        s = m.text_stream()
        got = s.feed(text[:k + TEXT_TAIL]) + s.feed(text[k + TEXT_TAIL:]) + s.end()
        assert SECRET[:8] not in got, (k, got[at - 10:at + 80])
        assert got == want, k


# every line an address whose domain ends in the key word of the value after it
KEY_LINES = b"".join(b"ops%d@corp.token: Zq8vT2mK9pL4xR7n%08d\n" % (i, i) for i in range(4000))


class _Keys(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 -- http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(KEY_LINES), 4096):
            part = KEY_LINES[i:i + 4096]
            self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def keys_upstream():
    with serve_threaded(_Keys) as url:
        yield url


def test_streamed_text_through_the_gateway_masks_every_value(keys_upstream, idp):
    """End to end: a chunked text/plain response of such lines (160 KiB) through a gateway
    with the EMAIL and GENERIC_API_KEY detectors. Wherever the stream's cuts fall, no value
    reaches the client (the mutation run, without the fix, had 3 of the 4000 in clear)."""
    masks = [{"detectors": ["EMAIL", "GENERIC_API_KEY"], "strategy": "redact"}]
    cfg = http_config(keys_upstream, idp, mask=masks, upstream_timeout="60s",
                      request_timeout="60s")
    with HttpGateway(cfg, env=http_env()) as g:
        r = httpx.get(g.url("/keys"), headers=bearer(idp.token()), timeout=60)
    assert r.status_code == 200
    body = r.content
    assert body.count(b"\n") == 4000, body[:200]
    leaked = body.count(b"Zq8vT2mK")
    assert leaked == 0, (leaked, body[:300])


# -- HTTP body readings: escapes the upstream's parser reads and the gateway's parse refused ---

@pytest.mark.parametrize("body, ctype", [
    # orjson refuses NaN and a lone surrogate; Python's json (Flask, Django) takes both
    (b'{"q": "DR\\u004fP TABLE", "x": NaN}', b"application/json"),
    (b'{"q": "\\ud800 DR\\u004fP TABLE"}', b"application/json"),
    (b'"DR\\u004fP TABLE"', b"application/json"),                   # a top-level string
    # a multipart part's JSON (Spring's @RequestPart reads it through Jackson)
    (b'--b\r\nContent-Disposition: form-data; name="p"\r\nContent-Type: application/json\r\n'
     b'\r\n{"sql": "DR\\u004fP TABLE"}\r\n--b--\r\n', b"multipart/form-data; boundary=b"),
    (b"<q>DR&#79;P TABLE</q>", b"application/xml"),                  # an XML character reference
    (b"<q>DR&#x4f;P TABLE</q>", b"text/xml"),
])
def test_escaped_values_are_read_whatever_a_parser_makes_of_the_rest(body, ctype):
    from hoopwire.http.dialect import body_text
    assert b"DROP TABLE" in body_text(body, [ctype], [])


def test_an_escaped_backslash_is_not_read_as_an_escape():
    from hoopwire.http.dialect import body_text
    assert b"DROP" not in body_text(b'{"a": "\\\\u0044ROP"}', [b"application/json"], [])


# -- PostgreSQL: Syncs pipelined behind a COPY past what the relay's unit mask remembers -------

@pytest.mark.parametrize("nsync", [3, 64, 200])
def test_syncs_behind_a_copy_never_put_the_unit_count_ahead(ddlgw, idp, nsync):
    """COPY ... FROM STDIN with N Syncs pipelined behind it (the server ignores them in
    copy-in): at N = 64 a Sync shared the COPY's own bit in the relay's 64-unit mask, the
    COPY's Query was counted dropped, and the in-flight test (a statement with a backslash
    after a non-ASCII byte while a client-encoding change may be on its way) stopped
    guarding: the pipelined statement reached the server."""
    import pgraw
    from test_pg_masking_named import exchange, kinds, query
    host, port = ddlgw.address("pg")
    with pgraw.login(host, port, idp.token()) as c:
        exchange(c, query(b"CREATE TEMP TABLE rvc (a text)"))
        c.send(query(b"COPY rvc FROM STDIN; SELECT pg_sleep(1)") + pgraw.typed(b"S") * nsync)
        kind, _ = c.read_message(10.0)
        assert kind == b"G"
        c.send(pgraw.typed(b"c") + query(b"SELECT '\x95\\' AS x"))
        errors, ready = [], 0
        while ready < 2:
            kind, body = c.read_message(10.0)
            if kind == b"E":
                errors.append(pgraw.error_fields(body))
            ready += kind == b"Z"
        assert [e["C"] for e in errors] == ["42501"]
        assert "client-encoding-in-flight" in errors[0]["M"]
        # and the session goes on
        assert b"E" not in kinds(exchange(c, query(b"SELECT 1")))


def test_parsed_names_that_are_no_utf8_do_not_unmask_each_other(mgw, idp):  # noqa: F811
    """Under LATIN1 (a safe client encoding) b"\\xe9" and b"\\xe8" both read as U+FFFD: the
    second Parse replaced what SQL EXECUTE of the first was judged by, and its upper(ssn) came
    back clear."""
    import pgraw
    from test_pg_masking_named import exchange, kinds, parse, query, rows_of
    host, port = mgw.address("pg")
    with pgraw.login(host, port, idp.token()) as c:
        assert b"E" not in kinds(exchange(c, query(b"SET client_encoding TO 'LATIN1'")))
        exchange(c, parse(b"\xe9", b"SELECT upper(ssn) AS x FROM mexec.users WHERE id = 1"))
        exchange(c, parse(b"\xe8", b"SELECT 'a'::text AS x"))
        got = rows_of(exchange(c, query(b'EXECUTE "\xe9"')))
    assert len(got) == 1 and got[0][0] in (None, "****")
