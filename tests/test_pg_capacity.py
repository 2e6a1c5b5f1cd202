"""Capacity as a client sees it: the 53300 of a full listener reaches drivers the way the
server's own does (after the SSLRequest is answered), and sockets that never finish a handshake
do not take the slots of clients that log in."""

from __future__ import annotations

import socket
import time
import urllib.request

import psycopg
import pytest

import pgraw
from gwfixtures import conninfo, gateway_config, gateway_env
from helpers import APP_DB, Gateway


@pytest.fixture
def small(pg, idp, pki):
    cfg = gateway_config(pg, idp, max_connections=2, max_handshakes=3,
                         tls_cert=pki.server_cert, tls_key=pki.server_key,
                         require_tls=False)   # sslmode=disable clients are part of the test
    with Gateway(cfg, env=gateway_env(pg)) as g:
        yield g


@pytest.mark.parametrize("sslmode", ["disable", "prefer", "require"])
def test_a_full_listener_answers_53300_to_every_driver(small, idp, sslmode):
    token = idp.token()
    with psycopg.connect(conninfo(small, token)) as a, psycopg.connect(conninfo(small, token)) as b:
        assert a.execute("SELECT 1").fetchone() == (1,) and b.execute("SELECT 2").fetchone() == (2,)
        with pytest.raises(psycopg.OperationalError) as ei:
            psycopg.connect(conninfo(small, token, sslmode=sslmode)).close()
        # libpq hands the server's words through; before, an answer in place of the
        # SSLRequest read as "error response during SSL exchange"
        assert "sorry, too many clients already" in str(ei.value), ei.value
        assert "SSL exchange" not in str(ei.value)


def test_raw_sslrequest_then_the_error(small, idp):
    token = idp.token()
    with psycopg.connect(conninfo(small, token)), psycopg.connect(conninfo(small, token)):
        c = pgraw.RawConn("127.0.0.1", small.port("pg"))
        try:
            c.send(pgraw.untyped(b"\x04\xd2\x16\x2f"))        # SSLRequest
            assert c.read_exact(1) in (b"S", b"N")
        finally:
            c.close()
        c = pgraw.RawConn("127.0.0.1", small.port("pg"))
        try:
            c.send(pgraw.startup_packet({"user": "agent-7", "database": APP_DB}))
            err = c.expect_error_and_close(15)
        finally:
            c.close()
        assert (err["S"], err["C"]) == ("FATAL", "53300"), err


def test_silent_sockets_take_no_session_slot(pg, idp):
    cfg = gateway_config(pg, idp, max_connections=2, max_handshakes=50)
    with Gateway(cfg, env=gateway_env(pg)) as g:
        silent = [socket.create_connection(("127.0.0.1", g.port("pg"))) for _ in range(6)]
        try:
            # six sockets that never send a byte, against two session slots: before, the
            # next client was refused until the handshake timeout freed a slot
            with psycopg.connect(conninfo(g, idp.token())) as a, \
                    psycopg.connect(conninfo(g, idp.token())) as b:
                assert a.execute("SELECT 1").fetchone() == (1,)
                assert b.execute("SELECT 1").fetchone() == (1,)
        finally:
            for s in silent:
                s.close()


def test_over_the_handshake_limit_is_answered_at_once(pg, idp):
    cfg = gateway_config(pg, idp, max_handshakes=2)
    with Gateway(cfg, env=gateway_env(pg)) as g:
        silent = [socket.create_connection(("127.0.0.1", g.port("pg"))) for _ in range(2)]
        try:
            g.wait_log(r"listening")
            c = pgraw.RawConn("127.0.0.1", g.port("pg"))
            try:
                c.send(pgraw.startup_packet({"user": "agent-7", "database": APP_DB}))
                # answered, not left to the 15 s handshake timeout (the read's own 10 s bound)
                err = c.expect_error_and_close(10)
            finally:
                c.close()
            assert (err["S"], err["C"]) == ("FATAL", "53300"), err
            g.wait_log(r"reason=too_many_handshakes")
        finally:
            for s in silent:
                s.close()
        # once the gateway has seen them go (it counts them as client_gone), clients get in
        deadline = time.monotonic() + 15
        while _gone(g) < 2:
            assert time.monotonic() < deadline, "the closed sockets were never noticed"
            time.sleep(0.05)
        with psycopg.connect(conninfo(g, idp.token())) as a:
            assert a.execute("SELECT 1").fetchone() == (1,)


def _gone(g) -> float:
    text = urllib.request.urlopen(g.admin_url + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("hoopwire_connections_total{") and 'result="client_gone"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
