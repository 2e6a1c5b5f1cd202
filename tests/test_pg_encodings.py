"""An encoding switch cannot carry a statement past the guardrails.

In the Shift-JIS family (2004 variant included), BIG5, GBK, UHC, GB18030 and JOHAB a multibyte
character can end in 0x5C: `E'<0x83><0x5C>' ; DROP TABLE t; --'` is one harmless literal to a
lexer reading ASCII-compatible bytes, and a DROP TABLE to a server reading Shift-JIS. Every way
to reach such an encoding is tried -- SET, a function that calls set_config, UPDATE pg_settings,
the startup packet's client_encoding and `options` in getopt's forms -- and so is pipelining the
payload behind the switch, before the server's ParameterStatus can tell the gateway. The
victim table must survive every one.
"""

from __future__ import annotations

import codecs
import uuid

import psycopg
import pytest
from hypothesis import given, settings, strategies as st

import pgraw
from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway
from hoopwire.pg.encodings import backslash_may_hide, safe_client_encoding

# what the server reports for each, and a Python codec that reads it the same way
UNSAFE = {"SJIS": "shift_jis", "SHIFT_JIS_2004": "shift_jis_2004", "BIG5": "big5",
          "GBK": "gbk", "UHC": "cp949", "GB18030": "gb18030", "JOHAB": "johab"}
# a two-byte character ending in 0x5C that converts to UTF-8 in each (0x83 0x5C is katakana
# SO). UHC and JOHAB have none the server accepts (it checks their trailing bytes' ranges); it
# still measures a high byte as a lead in them, so the gateway refuses them all the same
HIDER = {"SJIS": b"\x83\\", "SHIFT_JIS_2004": b"\x83\\", "BIG5": b"\xa5\\", "GBK": b"\x81\\",
         "GB18030": b"\x81\\"}


@pytest.fixture(scope="module")
def egw(pg, idp):
    pg.sql("CREATE OR REPLACE FUNCTION public.switch_enc(e text) RETURNS text LANGUAGE sql "
           "AS $$ SELECT set_config('client_encoding', e, false) $$;"
           "GRANT EXECUTE ON FUNCTION public.switch_enc(text) TO app;", dbname=APP_DB)
    cfg = gateway_config(pg, idp, guardrail=[{"pack": "destructive-ddl"}])
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


@pytest.fixture
def victim(pg):
    name = "victim_" + uuid.uuid4().hex[:8]
    pg.sql(f"CREATE TABLE {name} (id int); ALTER TABLE {name} OWNER TO app;", dbname=APP_DB)
    yield name
    pg.sql(f"DROP TABLE IF EXISTS {name}", dbname=APP_DB)


def exists(pg, table) -> bool:
    return pg.sql(f"SELECT to_regclass('public.{table}') IS NOT NULL", dbname=APP_DB) == "t"


def payload(table: str, enc: str) -> bytes:
    return b"SELECT E'" + HIDER[enc] + b"' ; DROP TABLE " + table.encode() + b"; --'"


@pytest.mark.parametrize("enc", sorted(HIDER))
def test_payload_is_real(pg, victim, enc):
    """Direct, the payload does drop the table when the server reads it in the encoding (and
    not in UTF-8): otherwise every test below would pass for the wrong reason."""
    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=app dbname={APP_DB} "
                         f"password='{pg.passwords['app']}' sslmode=disable",
                         autocommit=True) as conn:
        conn.pgconn.exec_(payload(victim, enc))
        assert exists(pg, victim)                    # read as UTF-8: one literal
        conn.execute(f"SET client_encoding = '{enc}'")
        res = conn.pgconn.exec_(payload(victim, enc))
        assert res.error_message == b"", res.error_message
    assert not exists(pg, victim)


@pytest.mark.parametrize("enc", sorted(HIDER))
def test_switch_by_function_then_pipelined_payload(egw, pg, idp, victim, enc):
    c = pgraw.login("127.0.0.1", egw.port("pg"), idp.token())
    try:
        # one write: the switch (no text shows it) and the payload behind it
        c.send(pgraw.typed(b"Q", f"SELECT switch_enc('{enc}')".encode() + b"\0") +
               pgraw.typed(b"Q", payload(victim, enc) + b"\0"))
        data, _how = c.read_until_closed(15)
    finally:
        c.close()
    msgs, _ = pgraw.parse_messages(data)
    errors = [pgraw.error_fields(b) for k, b in msgs if k == b"E"]
    assert any(e.get("S") == "FATAL" and e.get("C") == "42501" and enc in e.get("M", "")
               for e in errors), errors
    assert exists(pg, victim)


SWITCHES = {"set": "SET client_encoding TO 'SHIFT_JIS_2004'",
            "set_names": "SET NAMES 'sjis'",
            "set_config": "SELECT set_config('client_' || 'encoding', 'SJIS', false)",
            "pg_settings": "UPDATE pg_settings SET setting = 'BIG5' WHERE name = 'client_encoding'",
            "function": "SELECT switch_enc('GBK')"}


@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("how", sorted(SWITCHES))
def test_switch_never_carries_the_payload(egw, pg, idp, victim, how, pipelined):
    """Whatever makes the switch: a rule refuses the text (ERROR 42501, the session goes on
    in its encoding) or the server's report ends the session (FATAL 42501) before anything
    else runs; the payload behind it, sent with it or after its answer, drops nothing."""
    enc = {"set": "SJIS", "set_names": "SJIS", "set_config": "SJIS", "pg_settings": "BIG5",
           "function": "GBK"}[how]
    c = pgraw.login("127.0.0.1", egw.port("pg"), idp.token())
    got: list[tuple[bytes, bytes]] = []

    def pump(ready: int) -> None:
        """Read until `ready` more ReadyForQuery, or until the gateway closes."""
        try:
            while ready:
                kind, body = c.read_message(15)
                got.append((kind, body))
                ready -= kind == b"Z"
        except (EOFError, ConnectionError):
            pass

    try:
        switch = pgraw.typed(b"Q", SWITCHES[how].encode() + b"\0")
        attack = pgraw.typed(b"Q", payload(victim, enc) + b"\0")
        if pipelined:
            c.send(switch + attack)
            pump(2)
        else:
            c.send(switch)
            pump(1)
            try:
                c.send(attack)
            except OSError:
                pass                # closed by the gateway already
            pump(1)
    finally:
        c.close()
    codes = [(pgraw.error_fields(b).get("S"), pgraw.error_fields(b).get("C"))
             for k, b in got if k == b"E"]
    assert exists(pg, victim), codes
    if how in ("set", "set_names"):
        assert ("ERROR", "42501") in codes, codes
    else:
        assert ("FATAL", "42501") in codes, codes
        assert egw.wait_log(r"reason=unsafe_client_encoding")


@pytest.mark.parametrize("params", [
    {"client_encoding": "SJIS"},
    {"client_encoding": "Shift_JIS-2004"},
    {"client_encoding": "big-5"},
    {"options": "-c client_encoding=GBK"},
    {"options": "-cclient_encoding=UHC"},
    {"options": "--client-encoding=JOHAB"},
    {"options": "--client_encoding=GB18030"},
])
def test_startup_packet_cannot_choose_one(egw, pg, idp, params):
    c = pgraw.RawConn("127.0.0.1", egw.port("pg"))
    try:
        c.send(pgraw.startup_packet({"user": "agent-7", "database": APP_DB, **params}))
        kind, body = c.read_message()
        if kind == b"R":
            c.send(pgraw.typed(b"p", idp.token().encode() + b"\0"))
            err = c.expect_error_and_close(15)
        else:
            assert kind == b"E", (kind, body)
            err = pgraw.error_fields(body)
    finally:
        c.close()
    # each of these sets the encoding when sent to the server directly
    assert err.get("C") == "42501" and err.get("S") == "FATAL", err


def test_unicode_text_with_backslashes_still_works(egw, idp):
    """What an encoding could hide is refused only while something is in flight: a quiet
    session's UTF-8 text with backslashes after CJK characters runs, alone and in a pipeline
    of statements that cannot switch anything."""
    with psycopg.connect(conninfo(egw, idp.token()), autocommit=True) as conn:
        assert conn.execute(r"SELECT E'日本\n語'").fetchall() == [("日本\n語",)]
        with conn.pipeline():
            a = conn.execute("SELECT 1")
            b = conn.execute("SELECT %s::text", ("日\\本",))
        assert a.fetchall() == [(1,)] and b.fetchall() == [("日\\本",)]


def test_pipelined_hidden_backslash_is_refused_not_run(egw, idp):
    c = pgraw.login("127.0.0.1", egw.port("pg"), idp.token())
    try:
        c.send(pgraw.typed(b"Q", b"SELECT pg_sleep(0.2)\0") +
               pgraw.typed(b"Q", "SELECT E'日\\n'".encode() + b"\0"))
        seen = []
        while len([k for k, _ in seen if k == b"Z"]) < 2:
            seen.append(c.read_message(15))
        errors = [pgraw.error_fields(b) for k, b in seen if k == b"E"]
        assert [e["C"] for e in errors] == ["42501"], errors
        assert "client encoding" in errors[0]["M"]
        # once nothing is in flight, the same text runs
        c.send(pgraw.typed(b"Q", "SELECT E'日\\n'".encode() + b"\0"))
        kinds = []
        while not kinds or kinds[-1] != b"Z":
            kinds.append(c.read_message(15)[0])
        assert b"E" not in kinds and b"D" in kinds
    finally:
        c.close()


# --- the check itself, against Python's codecs -------------------------------------------------

_BYTES = st.lists(st.sampled_from([0x5C, 0x27, 0x41, 0x30, 0x39, 0x20, 0x81, 0x83, 0x8E, 0x8F,
                                   0xA1, 0xA5, 0xC3, 0xDF, 0xE0, 0xE6, 0xFC, 0xFE]),
                  max_size=12).map(bytes)


@settings(max_examples=3000, deadline=None)
@given(_BYTES)
def test_no_hidden_backslash_means_every_encoding_agrees(text):
    """Whenever backslash_may_hide says no, each unsafe encoding that can read the bytes at all
    reads every 0x5C as a character of its own: the bytes before it decode completely."""
    if backslash_may_hide(text):
        return
    for codec in UNSAFE.values():
        try:
            codecs.decode(text, codec)
        except UnicodeDecodeError:
            continue          # the server refuses such text outright
        for i, b in enumerate(text):
            if b == 0x5C:
                codecs.decode(text[:i], codec)      # raises if 0x5C ends a character


def test_allow_list():
    for name in ("UTF8", "utf8", "LATIN1", "WIN1252", "EUC_JP", "EUC_JIS_2004", "SQL_ASCII",
                 None):
        assert safe_client_encoding(name), name
    for name in list(UNSAFE) + ["shift_jis_2004", "Big5", "MULE", "UNKNOWN"]:
        assert not safe_client_encoding(name), name


# -- masking reads statement text too -------------------------------------------------------------

@pytest.mark.parametrize("masked_writes", ["refuse", "allow"])
def test_a_masking_connection_without_guardrails_refuses_them_too(pg, idp, masked_writes):
    """Masking decides by statement text what an expression reads (what it mentions, its
    lineage): `SELECT E'<hider>', upper(ssn) FROM users --'` in Shift-JIS hides the column from
    the lexer as a guardrail pattern would be hidden. No guardrail configured, either setting of
    masked_writes: the encoding is refused at startup and a switch ends the session."""
    cfg = gateway_config(pg, idp, masked_writes=masked_writes,
                         mask=[{"columns": ["*.secret_col"], "strategy": "redact"}])
    with Gateway(cfg, env=gateway_env(pg)) as g:
        c = pgraw.RawConn("127.0.0.1", g.port("pg"))
        try:
            c.send(pgraw.startup_packet({"user": "agent-7", "database": APP_DB,
                                         "client_encoding": "SJIS"}))
            kind, body = c.read_message()
            assert kind == b"R", (kind, body)
            c.send(pgraw.typed(b"p", idp.token().encode() + b"\0"))
            err = c.expect_error_and_close(15)
        finally:
            c.close()
        assert err.get("C") == "42501" and err.get("S") == "FATAL", err
        with psycopg.connect(conninfo(g, idp.token()), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            with pytest.raises(psycopg.Error, match="client encoding"):
                conn.execute("SET client_encoding = 'SJIS'")
                conn.execute("select 2")
