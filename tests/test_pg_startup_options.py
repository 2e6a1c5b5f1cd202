"""Startup `options`, read as the server reads them (getopt), and judged as the SETs they are.

`-ecrole=postgres` is `-e -c role=postgres` to the server. The gateway's reading is checked
against the server's own: for generated option strings, every setting the server took from the
startup packet (pg_settings.source = 'client') must be one the gateway reported -- or the
gateway refused the string.
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pgraw
from gwfixtures import gateway_config, gateway_env
from helpers import APP_DB, Gateway
from hoopwire.pg import options


def test_getopt_forms():
    assert options.settings("-ecrole=postgres") == [("datestyle", "euro"), ("role", "postgres")]
    assert options.settings("-c role=x --search-path=a -c\\ x=y") == [
        ("role", "x"), ("search_path", "a"), (" x", "y")]
    for bad in ("-c", "role=x", "-B 10", "-x", "-c role", "-d 5", "-"):
        with pytest.raises(options.OptionsRefused):
            options.settings(bad)


_WORDS = st.sampled_from(["-c", "-e", "-ec", "-ecrole=app", "--", "-S", "-S4MB", "-Sc",
                          "role=app", "application_name=x", "work_mem=8MB", "search_path=a",
                          "--application-name=y", "-cwork_mem=2MB", "-P", "-fs", "-s",
                          "-tpa", "-O", "datestyle=iso", "-cdatestyle=sql"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_WORDS, min_size=1, max_size=4).map(" ".join))
def test_the_gateway_reads_options_as_the_server_does(pg, opts):
    try:
        ours = {name.lower() for name, _ in options.settings(opts)}
    except options.OptionsRefused:
        return              # refused before the server sees it: stricter is fine
    try:
        with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=app dbname={APP_DB} "
                             f"password='{pg.passwords['app']}' sslmode=disable",
                             options=opts) as c:
            theirs = {r[0].lower() for r in c.execute(
                "SELECT name FROM pg_settings WHERE source = 'client'").fetchall()}
    except psycopg.OperationalError:
        return              # the server refused it itself
    theirs.discard("client_encoding")       # libpq's own, not from options
    assert theirs <= ours, (opts, theirs, ours)


@pytest.fixture(scope="module")
def ogw(pg, idp):
    # a role `app` may switch to: only the gateway's rule stands between the agent and it
    pg.sql("DO $$ BEGIN CREATE ROLE tamper_target; EXCEPTION WHEN duplicate_object THEN NULL; "
           "END $$; GRANT tamper_target TO app;")
    cfg = gateway_config(pg, idp, guardrail=[{"pack": "session-tampering"}])
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


def _login(gw, idp, opts):
    c = pgraw.RawConn("127.0.0.1", gw.port("pg"))
    try:
        c.send(pgraw.startup_packet({"user": "agent-7", "database": APP_DB, "options": opts}))
        assert c.read_message()[0] == b"R"
        c.send(pgraw.typed(b"p", idp.token().encode() + b"\0"))
        while True:
            kind, body = c.read_message(15)
            if kind == b"E":
                return pgraw.error_fields(body)
            if kind == b"Z":
                return None
    finally:
        c.close()


@pytest.mark.parametrize("opts", ["-ecrole=tamper_target", "-c role=tamper_target",
                                  "--role=tamper_target", "-e -crole=tamper_target",
                                  "-S8MB -ecrole=tamper_target", "-- role=tamper_target",
                                  "-B 10", "-W 1",
                                  "plain"])
def test_role_switches_and_server_switches_are_refused(ogw, pg, idp, opts):
    if "role=" in opts and not opts.startswith("-- "):
        # direct, the server takes it: the refusal below is the gateway's
        with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=app dbname={APP_DB} "
                             f"password='{pg.passwords['app']}' sslmode=disable",
                             options=opts) as c:
            assert c.execute("SELECT current_user").fetchone() == ("tamper_target",)
    err = _login(ogw, idp, opts)
    assert err is not None and (err["S"], err["C"]) == ("FATAL", "42501"), (opts, err)


@pytest.mark.parametrize("opts", ["-e", "-c search_path=public", "--application-name=x -S 8MB"])
def test_harmless_switches_pass(ogw, idp, opts):
    assert _login(ogw, idp, opts) is None
